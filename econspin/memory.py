"""Memory: what a run will hold, estimated from its scenario before anything is allocated.

One model of a round's working memory (:class:`MemoryModel`) sizes the blocks of buyer rows,
the sweep's batches and the checks made before a run starts. :func:`estimate_memory` adds up
everything a run will hold, part by part, from the scenario's sizes alone (N, d, d_k, d_v,
heads, the batch, the network's edges, the rounds recorded, a sweep's points):

- ``round``: one round's working memory, at the block size the run will use (the per-agent
  tensors and, in the dense kernels, blocks of buyer rows x N: the fused kernel's two
  cache-sized blocks, the reference kernel's blocks as tall as ``run.memory_budget_mb``
  allows, the FlexAttention kernel's whole N x N scores per head (its eager form), none in
  the Triton kernel (tiles in registers); in the sparse kernel, chunks of edges; with
  couplings, the per-agent tensors only);
- ``initial state``: the round-0 draw, made in float64 on the host;
- ``projections``: W_Q, W_K, W_V, W_O of every element, and the products a round forms of them;
- ``trade mask``: a dense network's N x N mask (and the kernel's additive bias, where kept);
- ``trade network``: the networkx graph and the sparse kernel's compressed rows, by edges;
- ``couplings``: fixed N x N couplings, with the float64 copy they are read through;
- ``correction``: the ffn correction's weights, (d + 2) x hidden and hidden x d per population
  and element, and the round's hidden layer, before and after its gelu, in blocks of agents of
  at most ``corrections.HIDDEN_LAYER_BLOCK`` entries (batch x N x hidden where smaller);
- ``metrics``, ``wealth``: the tables a run records; ``points``: a sweep's point scenarios.

:func:`check_memory` refuses, in one line naming the estimate and the budget
(:class:`MemoryBudgetError`), a run that cannot fit ``run.memory_budget_mb`` even in its
smallest blocks, a dense mask over that budget, or one that needs more than this machine has
available now (``MemAvailable``, the GPU's free memory for what lives there). The estimate
leaves out the fixed cost of Python and torch (a few hundred MiB) and counts what grows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from econspin.corrections import HIDDEN_LAYER_BLOCK
from econspin.scenario import Scenario, ScenarioError, resolved_kernel

BYTES_PER_PAIR = 48  # working memory per (batch element, head, buyer, seller) entry of one block
SWEEP_BLOCK_ROWS = 64  # the sweep planner batches no more elements than leave room for blocks this tall
BYTES_PER_GRAPH_EDGE = 320  # networkx adjacency (about 190 measured), its edge list (64) and the tensors built from it
BYTES_PER_MASK_PAIR = 12  # a dense mask, who may buy from whom, their complements (14 measured, float32 bias included)
# econspin.flex run eagerly (on a CPU) holds whole (B, H, N, N) scores, masks and weights: measured
# 26-28 bytes per pair and head at its peak in float64 and float32 (N = 2048); an upper bound on CUDA
FLEX_BYTES_PER_PAIR = 32
BYTES_PER_TRADE_EDGE = 16  # the sparse kernel's buyer and seller index of one directed edge
BYTES_PER_RECORDED_ROUND = 512  # a round's metrics tensor as a Python object, beside its numbers
BYTES_PER_TABLE_CELL = 24  # a float64 cell, held as recorded, as a table and as the table's copy on writing
BYTES_PER_WEALTH_ROW = 100  # replica, agent, population, money, and the Python lists they are built from
BYTES_PER_POINT = 16 * 2**10  # a validated sweep point's scenario (about 12 KiB measured)

# what sets each part: named in the refusal, so that the user knows which keys to change
PART_KEYS = {
    "round": "populations, market.d, market.heads, run.replicas, run.memory_budget_mb or run.chunk",
    "initial state": "populations, market.d, run.replicas",
    "projections": "market.d, market.d_k, market.d_v, market.heads",
    "trade mask": "populations, market.network.layout",
    "trade network": "market.network",
    "couplings": "populations, market.couplings",
    "correction": "populations, run.replicas",  # after the ffn width of each population that has one (part_keys)
    "metrics": "run.steps, run.replicas",
    "wealth": "populations, run.replicas",
    "points": "--grid, --replicas",
}


class MemoryBudgetError(ScenarioError):
    """A run that cannot fit its memory budget or this machine; the message is one line.

    Attributes:
        need: the estimate, in bytes.
        budget: what it was compared with, in bytes.
    """

    def __init__(self, message: str, need: float, budget: float):
        super().__init__(message)
        self.need = need
        self.budget = budget


def format_bytes(count: float) -> str:
    """A byte count for people: 3 significant digits and a binary unit (KiB, MiB, ...)."""
    for unit, power in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if count >= 2**power:
            return f"{count / 2**power:.3g} {unit}"
    return f"{count:.0f} B"


@dataclass(frozen=True)
class MemoryModel:
    """The one model of a round's working memory, in bytes, for the dense kernels.

    It serves the up-front check, the block size (:func:`rows_per_block`) and the sweep's
    batch planner. A batch element whose buyers are processed in blocks of ``rows`` rows is
    charged twice its block's working set (a block may use only half the budget: headroom for
    temporaries the model leaves out), plus its per-agent tensors (states, fields, the
    projected queries, keys and values, what each buyer receives).
    """

    agents: int
    dimension: int
    heads: int
    itemsize: int
    budget: float
    key_dimension: int | None = None  # default: dimension
    value_dimension: int | None = None  # default: dimension

    @classmethod
    def of_scenario(cls, scenario: Scenario, dtype: torch.dtype) -> "MemoryModel":
        market = scenario.market
        budget = scenario.run.memory_budget_mb * 2**20
        return cls(
            scenario.agent_count, market.d, market.heads, dtype.itemsize, budget,
            market.key_dimension, market.value_dimension,
        )  # fmt: skip

    @classmethod
    def of_economy(cls, economy) -> "MemoryModel":
        """The model of an :class:`econspin.economy.Economy`."""
        return cls(
            economy.agent_count, economy.dimension, economy.heads, economy.dtype.itemsize, economy.memory_budget,
            economy.query.shape[-1], economy.value.shape[-1],
        )  # fmt: skip

    def agent_bytes(self) -> float:
        """Per-agent tensors of one batch element."""
        key_dimension = self.key_dimension or self.dimension
        value_dimension = self.value_dimension or self.dimension
        per_agent = 10 * self.dimension + 4 * self.heads * (key_dimension + value_dimension)
        return self.agents * per_agent * self.itemsize

    def element_bytes(self, rows: int) -> float:
        """One batch element with blocks of ``rows`` buyer rows."""
        return 2 * self.heads * self.agents * rows * BYTES_PER_PAIR + self.agent_bytes()

    def rows_per_block(self, batch: int) -> int:
        """The most buyer rows per block for which ``batch`` elements fit (at least 1, at most N)."""
        per_row = 2 * self.heads * self.agents * BYTES_PER_PAIR
        rows = (self.budget / batch - self.agent_bytes()) // per_row
        return int(max(1, min(self.agents, rows)))

    def elements_per_batch(self, rows: int) -> int:
        """The most batch elements that fit with blocks of ``rows`` rows (at least 1)."""
        return max(1, int(self.budget // self.element_bytes(rows)))


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a run will hold, by part; ``device`` parts live where the round runs, ``host`` parts in RAM.

    ``smallest_round`` is the round's working memory in its smallest blocks, compared with
    ``run.memory_budget_mb``; ``kernel`` says which kernel the estimate assumed.
    """

    device: dict[str, float] = field(default_factory=dict)
    host: dict[str, float] = field(default_factory=dict)
    smallest_round: float = 0.0
    kernel: str = "dense"

    @property
    def total(self) -> float:
        return sum(self.device.values()) + sum(self.host.values())

    def parts(self) -> dict[str, float]:
        """Every part, largest first (a part held on both sides counted once, summed)."""
        merged: dict[str, float] = {}
        for name, count in [*self.device.items(), *self.host.items()]:
            merged[name] = merged.get(name, 0.0) + count
        return dict(sorted(merged.items(), key=lambda item: -item[1]))

    def describe(self, largest: int = 3) -> str:
        """'about 1.2 GiB (round 1 GiB, projections 150 MiB, ...)'."""
        shown = [f"{name} {format_bytes(count)}" for name, count in list(self.parts().items())[:largest] if count > 0]
        return f"about {format_bytes(self.total)}" + (f" ({', '.join(shown)})" if shown else "")


def expected_trade_edges(scenario: Scenario) -> float | None:
    """Directed edges the scenario's network will have (expected, for a random one), or None if unknown."""
    from econspin.network import expected_directed_edges  # network builds on the scenario, as this module does

    network = scenario.market.network
    return None if network is None else expected_directed_edges(network, scenario.agent_count)


def estimate_memory(
    scenario: Scenario,
    batch: int,
    dtype: torch.dtype,
    rounds: int = 0,
    edges: float | None = None,
    wealth: bool = False,
    points: int = 0,
    table_rows: int | None = None,
    machine: torch.device | str = "cpu",
) -> MemoryEstimate:
    """What ``batch`` elements of ``scenario`` hold, part by part, run on ``machine``; see the module docstring.

    ``rounds`` recorded (their rows make the metrics table, or ``table_rows`` rows where the
    table gathers more batches: a sweep's), and ``wealth`` for the final money table;
    ``edges``: the network's directed edges where known (default: expected from its spec);
    ``points``: a sweep's point scenarios, held beside the batch that runs.
    """
    market, run = scenario.market, scenario.run
    agents, d, heads = scenario.agent_count, market.d, market.heads
    itemsize = dtype.itemsize
    model = MemoryModel.of_scenario(scenario, dtype)
    device: dict[str, float] = {}
    host: dict[str, float] = {}
    populations = len(scenario.populations)

    network = market.network
    if network is not None and edges is None:
        edges = expected_trade_edges(scenario)
    sparse = network is not None and _sparse_layout(network.layout, edges, agents, model.budget)
    kernel = "couplings" if market.couplings is not None else ("sparse" if sparse else "dense")
    if kernel == "dense":
        smallest = batch * model.element_bytes(1)
        dense_kernel = resolved_kernel(run.kernel, market.mode, couplings=False, device_type=torch.device(machine).type)
        if dense_kernel == "flex":  # FlexAttention's eager form: whole score tensors
            device["round"] = batch * model.agent_bytes() + FLEX_BYTES_PER_PAIR * batch * heads * agents * agents
        elif dense_kernel == "triton":  # tiles in registers: the per-agent tensors and the (d + 2) value columns
            device["round"] = batch * (model.agent_bytes() + heads * agents * (2 * d + 4) * itemsize)
        elif dense_kernel == "fused":  # the fused kernels (either mode): two blocks, reused
            from econspin.fused import round_block_shape  # fused builds on the economy, which reads this

            groups, rows = round_block_shape(batch * heads, agents, run.chunk, machine, model.budget, itemsize)
            device["round"] = batch * model.agent_bytes() + 2 * (2 * groups * rows * agents * itemsize)
            if run.utility_precision == "bfloat16":  # two bf16 blocks beside them (econspin.precision)
                device["round"] += 2 * groups * rows * agents * 2
        else:  # the reference kernel: blocks as tall as the budget allows
            rows = run.chunk if run.chunk is not None else model.rows_per_block(batch)
            device["round"] = batch * model.element_bytes(max(1, min(rows, agents)))
    else:
        smallest = batch * model.agent_bytes()
        device["round"] = smallest
        if kernel == "sparse" and edges is not None:
            per_edge = batch * heads * (d + market.key_dimension) * 4  # as the sparse kernel sizes its chunks
            device["round"] += min(model.budget / 2, 2 * edges * per_edge)
    host["initial state"] = batch * agents * d * 4 * 8  # states and fields in float64, drawn and stacked

    entries = populations * heads * d * (2 * market.key_dimension + market.value_dimension)
    entries += heads * market.value_dimension * d  # W_O
    host["projections"] = batch * entries * itemsize + entries * 8  # per element, one drawn in float64 at a time
    device["projections"] = 2 * batch * entries * itemsize  # the economy's, and the products a round forms of them

    if network is not None:
        if sparse:
            device["trade network"] = (edges or 0) * BYTES_PER_TRADE_EDGE
        else:
            bias = agents * agents * itemsize if agents * agents * itemsize <= model.budget / 4 else 0
            device["trade mask"] = BYTES_PER_MASK_PAIR * agents * agents + bias
        host["trade network"] = host.get("trade network", 0.0) + (edges or 0) * BYTES_PER_GRAPH_EDGE
    if market.couplings is not None:
        matrices = 1  # replicas share one matrix (a batch of points with different couplings holds one each)
        host["couplings"] = agents * agents * (8 + matrices * itemsize)  # read in float64, then stacked
        device["couplings"] = 2 * matrices * agents * agents * itemsize  # J and the round's J^2

    widths = [population.correction.hidden for population in scenario.populations.values()
              if population.correction.form == "ffn"]  # fmt: skip
    if widths:
        weights = sum((d + 2) * width + width + width * d + d for width in widths)  # w1, b1, w2, b2
        host["correction"] = batch * weights * itemsize + weights * 8  # per element, one drawn in float64 at a time
        # the economy's stacked weights; a round's hidden layer (populations one at a time, each over all N agents),
        # before and after its gelu, in blocks of agents no larger than HIDDEN_LAYER_BLOCK entries (corrections),
        # twice for what the allocator holds beside them; its input features and its shift
        width = max(widths)
        layer = min(batch * agents * width, max(HIDDEN_LAYER_BLOCK, batch * width))
        device["correction"] = batch * weights * itemsize + (2 * 2 * layer + batch * agents * (2 * d + 2)) * itemsize

    from econspin.metrics import metric_names  # metrics reads the economy, which reads this module

    columns = len(metric_names(scenario.populations)) + 2
    table_rows = rounds * batch if table_rows is None else table_rows
    host["metrics"] = rounds * BYTES_PER_RECORDED_ROUND + table_rows * columns * BYTES_PER_TABLE_CELL
    if wealth:
        host["wealth"] = batch * agents * BYTES_PER_WEALTH_ROW
    if points:
        host["points"] = points * BYTES_PER_POINT
    return MemoryEstimate(
        {name: value for name, value in device.items() if value},
        {name: value for name, value in host.items() if value},
        smallest,
        kernel,
    )


def _sparse_layout(layout: str, edges: float | None, agents: int, budget: float) -> bool:
    """The layout network.uses_sparse_layout will choose, from the expected edges (unknown: by size)."""
    from econspin.network import SPARSE_DENSITY

    if layout != "auto":
        return layout == "sparse"
    if agents * agents > budget:
        return True
    return edges is not None and edges < SPARSE_DENSITY * agents**2


def check_memory(
    scenario: Scenario,
    batch: int,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
    rounds: int = 0,
    edges: float | None = None,
    wealth: bool = False,
    points: int = 0,
    table_rows: int | None = None,
    what: str | None = None,
) -> MemoryEstimate:
    """The estimate, or :class:`MemoryBudgetError` if it cannot fit the budget or the machine.

    ``what`` describes the batch in the message (default: 'N agents x B batch elements').
    """
    estimate = estimate_memory(scenario, batch, dtype, rounds, edges, wealth, points, table_rows, device)
    agents = scenario.agent_count
    what = what or f"{agents} agents x {batch} batch element{'s' if batch != 1 else ''}"
    budget_mb = scenario.run.memory_budget_mb
    budget = budget_mb * 2**20
    if estimate.smallest_round > budget:
        smallest = "even in one-row blocks" if estimate.kernel == "dense" else "for the per-agent tensors alone"
        raise MemoryBudgetError(
            f"populations: {what} need about {format_bytes(estimate.smallest_round)} {smallest}, over "
            f"run.memory_budget_mb = {budget_mb:g} ({format_bytes(budget)})",
            estimate.smallest_round,
            budget,
        )
    network = scenario.market.network
    if network is not None and network.layout == "dense" and agents * agents > budget:
        raise MemoryBudgetError(
            f"market.network: a dense {agents} x {agents} trade mask would need about {format_bytes(agents * agents)}, "
            f"over run.memory_budget_mb = {budget_mb:g} (layout: sparse keeps only the edges)",
            agents * agents,
            budget,
        )
    _check_machine(estimate, torch.device(device), what, part_keys(scenario))
    return estimate


def part_keys(scenario: Scenario) -> dict[str, str]:
    """The keys that set each part of this scenario's estimate: PART_KEYS, the ffn widths by population name."""
    widths = [f"populations.{name}.correction.hidden" for name, population in scenario.populations.items()
              if population.correction.form == "ffn"]  # fmt: skip
    return {**PART_KEYS, "correction": ", ".join([*widths, PART_KEYS["correction"]])}


def _check_machine(estimate: MemoryEstimate, device: torch.device, what: str, keys: dict[str, str]) -> None:
    """Refuse an estimate over what this machine has available (host RAM; GPU memory for device parts)."""
    if device.type == "cuda":
        sides = [(estimate.host, "this machine", None), (estimate.device, f"the GPU ({device})", device)]
    else:  # one memory holds both
        sides = [(estimate.parts(), "this machine", None)]
    for parts, where, on in sides:
        need = sum(parts.values())
        available = available_memory(on)
        if available is None or need <= available:
            continue
        name = max(parts, key=parts.get)
        raise MemoryBudgetError(
            f"{what} need {estimate.describe()}, over the {format_bytes(available)} {where} has available; "
            f"the largest part, {name}, is set by {keys[name]}",
            need,
            available,
        )


def available_memory(device: torch.device | None = None) -> int | None:
    """Bytes that can be allocated now: free GPU memory for a CUDA device, else host RAM; None if unknown.

    Host RAM is /proc/meminfo's MemAvailable (what can be had without swapping), bounded by a
    cgroup's limit where one is set; elsewhere the free physical pages (os.sysconf).
    """
    if device is not None and device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    available = _meminfo_available()
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    limit = _cgroup_room()
    return available if limit is None else min(available, limit)


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_room() -> int | None:
    """A cgroup v2 memory limit less what the group uses, or None where there is none."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        return None
