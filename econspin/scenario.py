"""The typed scenario: what a YAML file may say, validated before anything is allocated.

A scenario is a tree of pydantic models; unknown keys are refused, every default is filled
in, and the same object drives Python, the command line and sweeps. ``Scenario.from_yaml``
reads a file with ``yaml.safe_load`` and turns any problem into a :class:`ScenarioError`
whose message is one line naming the file and the key path.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from econspin.precision import precision_conflict
from econspin.random_graphs import TORCH_GENERATORS, check_parameters
from econspin.response import RESPONSES
from econspin.scenario_base import NonNegativeFloat, PositiveFloat, ScenarioError, ScenarioWarning, StrictModel
from econspin.scenario_messages import describe_validation_error, suggest
from econspin.scenario_population import (
    Correction,
    MoneyDistribution,
    Population,
    Projections,
    Temperature,
    TemperatureDistribution,
    TemperatureSchedule,
    VectorDistribution,
)

# the parts of a scenario, importable from here as from the modules that define them
__all__ = [
    "Correction",
    "Couplings",
    "Event",
    "Market",
    "MoneyDistribution",
    "Network",
    "Population",
    "Projections",
    "Run",
    "Scenario",
    "ScenarioError",
    "ScenarioWarning",
    "Temperature",
    "TemperatureDistribution",
    "TemperatureSchedule",
    "VectorDistribution",
    "check_network",
    "resolved_kernel",
]


class Network(StrictModel):
    """A trade network: a networkx generator with its parameters, or an edge-list file."""

    generator: str | None = None
    params: dict[str, Any] = {}
    edge_list: str | None = None
    seed: int | None = None
    # dense: an N x N mask (cost N^2 per round); sparse: compressed rows (cost and memory grow
    # with the number of edges); auto: sparse below N^2 / 16 directed edges
    layout: Literal["auto", "dense", "sparse"] = "auto"
    # who draws a generator's graph: networkx, or econspin's O(E) torch sampler (G(n, p), G(n, m),
    # stochastic_block_model); auto: torch from 10 000 agents on (econspin.network)
    sampler: Literal["auto", "networkx", "torch"] = "auto"

    @model_validator(mode="after")
    def _one_source(self):
        if (self.generator is None) == (self.edge_list is None):
            raise ValueError("give exactly one of generator or edge_list")
        if self.edge_list is not None:  # a file is read, not drawn: only the direction of its edges is an option
            if self.seed is not None:
                raise ValueError("seed: an edge list is read from its file, nothing is drawn; remove it")
            unread = sorted(set(self.params) - {"directed"})
            if unread:
                raise ValueError(f"params.{unread[0]}: an edge list reads only params.directed; remove it")
        return self


class Couplings(StrictModel):
    """Fixed couplings J instead of attention (the kinetic Ising special case)."""

    file: str | None = None  # .npz with the coupling matrix (and optionally fields)
    coupling_key: str = "J"
    field_key: str | None = None
    curie_weiss: float | None = None  # J_ij = J / N for i != j

    @model_validator(mode="after")
    def _one_source(self):
        if (self.file is None) == (self.curie_weiss is None):
            raise ValueError("give exactly one of file or curie_weiss")
        if self.curie_weiss is not None and (self.coupling_key != "J" or self.field_key is not None):
            key = "field_key" if self.field_key is not None else "coupling_key"
            raise ValueError(f"{key}: curie_weiss couplings are made, not read from a file; remove it")
        return self


class Market(StrictModel):
    """The market every population trades in."""

    d: Annotated[int, Field(gt=0)] = 16
    heads: Annotated[int, Field(gt=0)] = 1
    d_k: Annotated[int, Field(gt=0)] | None = None  # default d
    d_v: Annotated[int, Field(gt=0)] | None = None  # default d
    mode: Literal["expected", "sampled"] = "expected"
    response: Literal["sphere", "large_d", "vmf", "linear"] = "large_d"
    output: Literal["random", "identity"] = "random"  # W_O: N(0, 1/(H d_v)), or I / H (needs d_v = d)
    radius: PositiveFloat | None = None  # default sqrt(d)
    visibility: float = 0.0  # gamma: utility premium gamma * log(w_j / mean w)
    spend_rule: Literal["share", "unit"] = "share"
    unit: PositiveFloat = 1.0
    network: Network | None = None
    couplings: Couplings | None = None

    @property
    def key_dimension(self) -> int:
        return self.d_k or self.d

    @property
    def value_dimension(self) -> int:
        return self.d_v or self.d

    @property
    def spin_radius(self) -> float:
        return self.radius if self.radius is not None else math.sqrt(self.d)


class Run(StrictModel):
    """How long, how many copies, where."""

    steps: Annotated[int, Field(gt=0)] = 100
    replicas: Annotated[int, Field(gt=0)] = 1
    seed: int = 0  # any whole number: hashed into each stream's key (econspin.randomness)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "float64"] = "float32"
    chunk: Annotated[int, Field(gt=0)] | None = None  # buyer rows per block; None: from memory
    memory_budget_mb: PositiveFloat = 1024.0
    # the market step: auto takes the fast paths where they apply (econspin.uniform where choice
    # ignores utilities, econspin.fused and econspin.fused_sampled for the attention market, either
    # mode), reference the readable blocks (econspin.market), flex the expected mode as
    # FlexAttention passes (econspin.flex: compiled on CUDA, eager and slow on a CPU; sampled mode fused),
    # triton the blocks as Triton programs, either mode (econspin.triton_blocks: compiled on CUDA,
    # interpreted and slow on a CPU; needs the triton package)
    kernel: Literal["auto", "reference", "fused", "flex", "triton"] = "auto"
    # the round through torch.compile (econspin.compiled): off (eager, the default), default, or
    # reduce-overhead (CUDA graphs on a GPU; default on the CPU)
    compile: Literal["off", "default", "reduce-overhead"] = "off"
    # the precision of the fused kernels' utilities product (econspin.precision): full (run.dtype),
    # bfloat16 (bf16 operands, float32 sums) or tf32 (CUDA tensor cores); float32 runs only
    utility_precision: Literal["full", "bfloat16", "tf32"] = "full"


class Event(StrictModel):
    """At round ``at``, change a population: its temperature, and/or shift its field h."""

    at: Annotated[int, Field(ge=0)]
    population: str
    temperature: NonNegativeFloat | None = None
    field_shift: float | None = None  # added to h along the population's own unit direction


class Scenario(StrictModel):
    """A whole economy: populations, market, run settings and events."""

    name: str = "scenario"
    description: str = ""
    populations: dict[str, Population]
    market: Market = Market()
    run: Run = Run()
    events: list[Event] = []

    @field_validator("populations")
    @classmethod
    def _some_population(cls, populations):
        if not populations:
            raise ValueError("at least one population is needed")
        return populations

    @model_validator(mode="after")
    def _consistent(self):
        for index, event in enumerate(self.events):
            if event.population not in self.populations:
                raise ValueError(
                    f"events.{index}.population: unknown population {event.population!r}; "
                    f"populations are {sorted(self.populations)}"
                )
        if self.market.couplings is None and not any(p.sells for p in self.populations.values()):
            raise ValueError("market: no population sells; set sells: true on one")
        for name, population in self.populations.items():
            if population.correction.form == "tap" and not RESPONSES[self.market.response].finite_temperature:
                finite = " or ".join(sorted(key for key, value in RESPONSES.items() if value.finite_temperature))
                raise ValueError(
                    f"populations.{name}.correction.form: tap needs a finite-temperature "
                    f"response (market.response {finite}), not {self.market.response}"
                )
            square = {self.market.d, self.market.key_dimension, self.market.value_dimension}
            if population.projections.init == "identity" and len(square) > 1:
                raise ValueError(f"populations.{name}.projections.init: identity needs d_k = d_v = d")
        if self.market.output == "identity" and self.market.value_dimension != self.market.d:
            raise ValueError("market.output: identity needs d_v = d")
        if self.market.network is not None:
            check_network(self.market.network, self.population_sizes)
        if self.market.couplings is not None and self.market.network is not None:
            # with fixed couplings no one trades (a_i = sum_j J_ij x_j): a network would restrict nothing
            raise ValueError(
                "market.network: market.couplings replaces the trade market with fixed couplings, so no trade "
                "network is read; remove one of market.network and market.couplings"
            )
        if self.run.kernel in ("fused", "flex", "triton") and self.market.couplings is not None:
            raise ValueError(
                f"run.kernel: {self.run.kernel} covers the attention market, not fixed couplings; use auto"
            )
        self._check_utility_precision()
        return self

    def _check_utility_precision(self):
        """run.utility_precision against the file's own settings (device and network: when built)."""
        run = self.run
        kernel = resolved_kernel(run.kernel, self.market.mode, self.market.couplings is not None)
        market = "couplings" if self.market.couplings is not None else "attention"
        conflict = precision_conflict(run.utility_precision, run.dtype, None, kernel, market)
        if conflict:
            raise ValueError(conflict)

    @property
    def agent_count(self) -> int:
        return sum(population.count for population in self.populations.values())

    @property
    def population_sizes(self) -> dict[str, int]:
        """Each population's agent count, in scenario order (agents are numbered in this order)."""
        return {name: population.count for name, population in self.populations.items()}

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Scenario":
        """Read and validate a scenario file; problems raise :class:`ScenarioError`."""
        path = Path(path)
        if path.is_dir():
            raise ScenarioError(f"{path}: is a folder, not a scenario file")
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise ScenarioError(f"{path}: cannot read: {error.strerror or error}") from None
        except UnicodeDecodeError as error:
            raise ScenarioError(f"{path}: not UTF-8 text (byte {error.start}); a scenario is a YAML text") from None
        try:
            data = yaml.safe_load(text)
        except RecursionError:
            raise ScenarioError(f"{path}: not valid YAML: nested too deeply") from None
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = getattr(error, "problem", None) or "malformed YAML"
            raise ScenarioError(f"{path}: not valid YAML{where}: {problem}") from None
        if not isinstance(data, dict):
            raise ScenarioError(f"{path}: a scenario is a mapping of keys, got {type(data).__name__}")
        scenario = cls.from_dict(data, source=str(path))
        try:
            return scenario.resolve_paths(path.parent)
        except ScenarioError as error:
            raise ScenarioError(f"{path}: {error}") from None

    @classmethod
    def from_dict(cls, data: dict, source: str = "scenario") -> "Scenario":
        """Validate a mapping; problems raise :class:`ScenarioError` naming ``source`` (if not empty)."""
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            prefix = f"{source}: " if source else ""
            raise ScenarioError(f"{prefix}{describe_validation_error(error, cls)}") from None

    def resolve_paths(self, base: Path) -> "Scenario":
        """Make file names relative to the scenario's folder absolute, and check they exist."""
        data = self.model_dump()
        found = []
        market = data["market"]
        if market.get("network") and market["network"].get("edge_list"):
            found.append((("market", "network", "edge_list"), market["network"]))
        if market.get("couplings") and market["couplings"].get("file"):
            found.append((("market", "couplings", "file"), market["couplings"]))
        for name, population in data["populations"].items():
            if population["correction"].get("weights"):
                found.append((("populations", name, "correction", "weights"), population["correction"]))
        for key_path, holder in found:
            key = key_path[-1]
            candidate = Path(holder[key])
            if not candidate.is_absolute():
                candidate = (base / candidate).resolve()
            if not candidate.exists():
                raise ScenarioError(f"{'.'.join(key_path)}: file {holder[key]!r} does not exist")
            holder[key] = str(candidate)
        return type(self).model_validate(data)

    def to_yaml(self) -> str:
        """The resolved scenario, every default filled in, as YAML (reads back to an equal scenario)."""
        return yaml.safe_dump(_plain(self.model_dump()), sort_keys=False)

    def with_run_settings(self, **settings: Any) -> "Scenario":
        """A copy with the ``run`` settings given (None leaves one as the scenario has it)."""
        given = {f"run.{key}": value for key, value in settings.items() if value is not None}
        return self.with_overrides(given) if given else self

    def with_overrides(self, overrides: dict[str, Any]) -> "Scenario":
        """A copy with dotted key paths set, e.g. {"populations.ai.temperature": 0.05}."""
        data = self.model_dump()
        for key_path, value in overrides.items():
            holder = data
            parts = key_path.split(".")
            for part in parts[:-1]:
                if not isinstance(holder, dict) or part not in holder:
                    raise ScenarioError(f"{key_path}: no such key {part!r}{suggest(part, holder)}")
                holder = holder[part]
                if holder is None:
                    raise ScenarioError(f"{key_path}: {part} is not set in this scenario")
            if not isinstance(holder, dict) or parts[-1] not in holder:
                raise ScenarioError(f"{key_path}: no such key {parts[-1]!r}{suggest(parts[-1], holder)}")
            holder[parts[-1]] = value
        return type(self).from_dict(data, source="")


# the devices on which run.kernel: auto takes the Triton kernel in expected mode, where triton imports: on an H200 it
# was faster than the fused kernel at every shape timed (N = 4096 to 65536, B = 64 x 256) and its compiled programs
# passed their CUDA tests (docs/performance.md, "On a GPU: NVIDIA H200, third session"); sampled mode stays fused
# until the Triton draw's CUDA test has run
AUTO_TRITON_DEVICES = ("cuda",)
# the oldest CUDA cards auto hands to Triton (Ampere): the kernel was built and timed on Hopper (H100, H200); on
# older cards Triton's support thins out, and the fused kernel runs anywhere torch does
AUTO_TRITON_CAPABILITY = (8, 0)


def _triton_serves(device_type: str) -> bool:
    """Whether triton imports and, where this machine has a CUDA card, it is at least AUTO_TRITON_CAPABILITY.

    Without a card here (a memory estimate for another machine), the card is not checked.
    """
    from econspin.triton_blocks import triton_missing  # it builds on the economy, which reads this module

    if triton_missing():
        return False
    if device_type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_capability() >= AUTO_TRITON_CAPABILITY
    return True


def resolved_kernel(kernel: str, mode: str, couplings: bool, device_type: str | None = None) -> str:
    """run.kernel as the economy keeps it: reference, fused, flex (expected mode only) or triton.

    Sampled mode on flex runs the fused kernel (its own sampled step). ``auto`` is the fused
    kernel, or in expected mode on a device of :data:`AUTO_TRITON_DEVICES` with triton
    installed (on a CUDA card of compute capability 8.0 or more), the Triton kernel;
    ``device_type`` None (a scenario read before it is built) takes the fused kernel.
    """
    if kernel == "reference" or couplings:
        return "reference"
    if kernel == "triton" or (kernel == "flex" and mode == "expected"):
        return kernel
    if kernel == "auto" and mode == "expected" and device_type in AUTO_TRITON_DEVICES and _triton_serves(device_type):
        return "triton"
    return "fused"


def check_network(network: Network, sizes: dict[str, int]) -> None:
    """The network's sampler and parameters, where econspin reads them itself (key paths in full)."""
    if network.sampler == "torch" and network.generator not in TORCH_GENERATORS:
        drawn = ", ".join(sorted(TORCH_GENERATORS))
        raise ValueError(f"market.network.sampler: torch draws only {drawn}; use auto or networkx")
    if network.edge_list is not None:  # Network itself refuses every other key with an edge list
        directed = network.params.get("directed", False)
        if not isinstance(directed, bool):
            raise ValueError(f"market.network.params.directed: should be true or false (got {directed!r})")
    elif network.generator in TORCH_GENERATORS:
        check_parameters(network.generator, network.params, sizes)


def _plain(value: Any) -> Any:
    """Lists for tuples, so that safe_dump can write it (floats, inf included, stay floats)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value
