"""The typed scenario: what a YAML file may say, validated before anything is allocated.

A scenario is a tree of pydantic models; unknown keys are refused, every default is filled
in, and the same object drives Python, the command line and sweeps. ``Scenario.from_yaml``
reads a file with ``yaml.safe_load`` and turns any problem into a :class:`ScenarioError`
whose message is one line naming the file and the key path.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from econspin.random_graphs import TORCH_GENERATORS, check_parameters
from econspin.response import RESPONSES
from econspin.scenario_messages import describe_validation_error, suggest


class ScenarioError(ValueError):
    """A scenario that cannot be run; the message is one line for the user."""


class ScenarioWarning(UserWarning):
    """A scenario that runs, but likely not as meant (an agent left out, an event never reached); one line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
# what torch.Generator.manual_seed takes (the projection and ffn seeds go there as they are)
Seed = Annotated[int, Field(ge=-(2**63), lt=2**64)]


class _Variant(_Strict):
    """A model whose field ``CHOICE`` picks a variant, and each variant reads only some options.

    ``READS`` maps every variant to the options it reads, with their defaults. An option the
    chosen variant does not read stays None, and giving it is refused with its key path, so
    that no option is accepted and then silently ignored. Options read by every variant are
    ordinary fields. ``CHOICE`` and whatever ``options_read`` looks at come first in the
    class, since an option's check sees only the fields declared before it.
    """

    CHOICE: ClassVar[str]
    READS: ClassVar[dict[str, dict[str, Any]]]

    @classmethod
    def options_read(cls, data: dict) -> dict[str, Any]:
        """The options the variant described by ``data`` reads, with their defaults."""
        choice = data.get(cls.CHOICE, cls.model_fields[cls.CHOICE].default)
        return cls.READS.get(choice, {}) if isinstance(choice, str) else {}

    @classmethod
    def variant_name(cls, data: dict) -> str:
        return f"{cls.CHOICE} {data[cls.CHOICE]}"

    @model_validator(mode="before")
    @classmethod
    def _defaults_of_the_variant(cls, data):
        if isinstance(data, dict):
            unset = {key: value for key, value in cls.options_read(data).items() if data.get(key) is None}
            data = {**data, **unset}
        return data

    @field_validator("*")
    @classmethod
    def _refuse_unread_options(cls, value, info: ValidationInfo):
        optional = set().union(*cls.READS.values())
        if value is None or info.field_name not in optional or cls.CHOICE not in info.data:
            return value
        if info.field_name not in cls.options_read(info.data):
            readers = [choice for choice, options in cls.READS.items() if info.field_name in options]
            only = "" if info.data[cls.CHOICE] in readers else f" (only {cls.CHOICE} {' or '.join(readers)} does)"
            raise ValueError(f"{cls.variant_name(info.data)} does not use it{only}; remove it")
        return value


class MoneyDistribution(_Variant):
    """Initial money per agent, scaled so that its mean is ``mean``."""

    CHOICE = "distribution"
    READS = {"equal": {}, "exponential": {}, "lognormal": {"sigma": 1.0}, "pareto": {"alpha": 2.0}}

    distribution: Literal["equal", "exponential", "lognormal", "pareto"] = "equal"
    mean: PositiveFloat = 1.0
    sigma: PositiveFloat | None = None  # lognormal: standard deviation of log w (default 1)
    alpha: Annotated[float, Field(gt=1)] | None = None  # pareto tail exponent, > 1: finite mean (default 2)


class VectorDistribution(_Variant):
    """Initial states x or fields h: i.i.d. normal components, or every component ``value``."""

    CHOICE = "distribution"
    READS = {"normal": {"scale": 1.0}, "constant": {"value": 0.0}}

    distribution: Literal["normal", "constant"] = "normal"
    scale: NonNegativeFloat | None = None  # normal: standard deviation (default 1)
    value: float | None = None  # constant (default 0)


class TemperatureSchedule(_Strict):
    """Piecewise-constant temperature: ``[[round, T], ...]``, each T holding from its round on."""

    schedule: list[tuple[Annotated[int, Field(ge=0)], NonNegativeFloat]]

    @field_validator("schedule")
    @classmethod
    def _starts_at_zero(cls, points):
        if not points:
            raise ValueError("a schedule needs at least one [round, temperature] pair")
        rounds = [point[0] for point in points]
        if rounds != sorted(rounds) or len(set(rounds)) != len(rounds):
            raise ValueError("schedule rounds must increase")
        if rounds[0] != 0:
            raise ValueError("a schedule must start at round 0")
        return points

    def at(self, round_index: int) -> float:
        """The temperature in force at ``round_index``."""
        value = self.schedule[0][1]
        for start, temperature in self.schedule:
            if start <= round_index:
                value = temperature
        return value


class TemperatureDistribution(_Variant):
    """Temperature drawn once per agent (heterogeneous decision noise)."""

    CHOICE = "distribution"
    READS = {
        "lognormal": {"mean": 1.0, "sigma": 0.5},
        "gamma": {"mean": 1.0, "sigma": 0.5},
        "uniform": {"low": 0.0, "high": 1.0},
    }

    distribution: Literal["lognormal", "uniform", "gamma"]
    mean: NonNegativeFloat | None = None  # lognormal, gamma (default 1)
    sigma: PositiveFloat | None = None  # lognormal: std of log T; gamma: coefficient of variation (default 0.5)
    low: NonNegativeFloat | None = None  # uniform (default 0)
    high: NonNegativeFloat | None = None  # uniform (default 1)

    @model_validator(mode="after")
    def _low_below_high(self):
        if self.distribution == "uniform" and self.low > self.high:
            raise ValueError(f"distribution uniform needs low <= high (got low {self.low}, high {self.high})")
        return self


def _temperature_kind(value: Any) -> str:
    """Which form of temperature a value is, so that errors come from that form only."""
    if isinstance(value, TemperatureSchedule) or (isinstance(value, dict) and "schedule" in value):
        return "TemperatureSchedule"
    return "TemperatureDistribution" if isinstance(value, (dict, TemperatureDistribution)) else "float"


Temperature = Annotated[
    Union[
        Annotated[NonNegativeFloat, Tag("float")],
        Annotated[TemperatureSchedule, Tag("TemperatureSchedule")],
        Annotated[TemperatureDistribution, Tag("TemperatureDistribution")],
    ],
    Discriminator(_temperature_kind),
]


class Projections(_Variant):
    """W_Q, W_K, W_V of a population, per head: entries N(0, scale^2 / d)."""

    CHOICE = "init"
    READS = {"random": {"seed": None}, "identity": {}}

    init: Literal["random", "identity"] = "random"  # identity: W = scale * I (needs d_k = d_v = d)
    scale: NonNegativeFloat = 1.0
    tied: bool = False  # W_Q = W_K and values = keys: the symmetric (Hopfield) limit
    seed: Seed | None = None  # random: default drawn from the run's seed


class Correction(_Variant):
    """The self-impact (Onsager) correction: none, tap (closed form) or ffn (an MLP)."""

    CHOICE = "form"
    READS = {
        "none": {},
        "tap": {},
        "ffn": {"weights": None, "hidden": 16, "scale": 0.0, "seed": None, "features": "state"},
    }

    form: Literal["none", "tap", "ffn"] = "none"
    weights: str | None = None  # ffn: a .pt file with w1, b1, w2, b2 (then scale and seed are unused)
    hidden: Annotated[int, Field(gt=0)] | None = None  # ffn width (default 16)
    scale: NonNegativeFloat | None = None  # ffn random-init scale (default 0: starts as no correction)
    seed: Seed | None = None  # ffn random init; default drawn from the run's seed
    # ffn inputs: state (x_i, V_i, kappa_i) or invariant (rotation invariants gating theta_i and x_i)
    features: Literal["state", "invariant"] | None = None

    @classmethod
    def options_read(cls, data: dict) -> dict[str, Any]:
        if data.get("form") == "ffn" and data.get("weights") is not None:
            return {"weights": None, "hidden": 16, "features": "state"}  # the weights come from the file
        return super().options_read(data)

    @classmethod
    def variant_name(cls, data: dict) -> str:
        return "form ffn with weights from a file" if data.get("weights") is not None else super().variant_name(data)


class Population(_Strict):
    """One kind of agent (e.g. human, ai)."""

    count: Annotated[int, Field(gt=0, lt=2**63)]  # a torch int64 holds it; memory refuses far fewer
    temperature: Temperature = 1.0
    spend: Annotated[float, Field(gt=0, le=1)] = 0.1
    eta: Annotated[float, Field(ge=0, le=1)] = 1.0
    buys: bool = True
    sells: bool = True
    state: VectorDistribution = VectorDistribution()
    field: VectorDistribution = VectorDistribution(scale=0.5)
    money: MoneyDistribution = MoneyDistribution()
    projections: Projections = Projections()
    correction: Correction = Correction()


class Network(_Strict):
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


class Couplings(_Strict):
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


class Market(_Strict):
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


class Run(_Strict):
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
    # FlexAttention passes (econspin.flex: compiled on CUDA, eager and slow on a CPU; sampled mode fused)
    kernel: Literal["auto", "reference", "fused", "flex"] = "auto"
    # the round through torch.compile (econspin.compiled): off (eager, the default), default, or
    # reduce-overhead (CUDA graphs on a GPU; default on the CPU)
    compile: Literal["off", "default", "reduce-overhead"] = "off"


class Event(_Strict):
    """At round ``at``, change a population: its temperature, and/or shift its field h."""

    at: Annotated[int, Field(ge=0)]
    population: str
    temperature: NonNegativeFloat | None = None
    field_shift: float | None = None  # added to h along the population's own unit direction


class Scenario(_Strict):
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
        if self.run.kernel in ("fused", "flex") and self.market.couplings is not None:
            raise ValueError(
                f"run.kernel: {self.run.kernel} covers the attention market, not fixed couplings; use auto"
            )
        return self

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
