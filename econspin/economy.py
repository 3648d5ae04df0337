"""The economy: a scenario compiled into the tensors one round reads.

An :class:`Economy` holds what does not change from round to round (who belongs to which
population, projections, budgets, masks, couplings, the response and the corrections), with
a leading batch axis B wherever batch elements (replicas, sweep points) may differ. It is
built from one scenario per batch element; the scenarios must agree on every shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from econspin.corrections import (
    CORRECTIONS,
    FeedForwardCorrection,
    SelfImpactCorrection,
    feed_forward_weights,
)
from econspin.network import (
    TradeEdges,
    build_graph,
    network_seed,
    trade_edges_from_graph,
    trade_mask_from_graph,
    uses_sparse_layout,
)
from econspin.randomness import STREAM_DISORDER, derive_seed, make_generator
from econspin.response import SpinResponse, make_response
from econspin.scenario import Scenario, ScenarioError


@dataclass(frozen=True)
class Economy:
    """Round-invariant parameters of B economies of N agents with d-dimensional states.

    Attributes:
        population: (N,) long, index of agent i's population in ``population_names``.
        population_names: the populations, in scenario order.
        buyer: (N,) bool, agent i's population buys.
        seller: (N,) bool, agent i's population sells.
        spend: (B, N), share sigma of money spent per round (``share`` rule) or the unit.
        eta: (B, N), adaptation rate of agent i.
        query, key: (B, P, H, d, d_k) projections per population and head.
        value: (B, P, H, d, d_v).
        output: (B, H, d_v, d), W_O per head.
        visibility: (B,), gamma of the premium gamma * log(w_j / mean w).
        field_direction: (B, P, d), unit vector along which an event shifts a population's h.
        trade_mask: (N, N) bool or None; True where i may buy from j (a dense trade network).
        trade_edges: the trade network as compressed rows (a sparse one), or None.
        couplings: (B, N, N) or (1, N, N) fixed couplings J, or None for the attention market.
        spend_rule: ``share`` (s_i = sigma w_i) or ``unit`` (s_i = unit where w_i >= unit).
        mode: ``expected`` (mean field) or ``sampled`` (agent level).
        response: the spin response f.
        corrections: one self-impact correction per population.
        chunk: buyer rows per block, or None to size blocks from ``memory_budget`` (bytes).
        kernel: ``fused`` (econspin.fused) or ``reference`` (econspin.market.trade), resolved from run.kernel.
    """

    population: torch.Tensor
    population_names: tuple[str, ...]
    buyer: torch.Tensor
    seller: torch.Tensor
    spend: torch.Tensor
    eta: torch.Tensor
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    output: torch.Tensor
    visibility: torch.Tensor
    field_direction: torch.Tensor
    trade_mask: torch.Tensor | None
    trade_edges: TradeEdges | None
    couplings: torch.Tensor | None
    spend_rule: str
    unit: float
    mode: str
    response: SpinResponse
    corrections: tuple[SelfImpactCorrection, ...]
    chunk: int | None
    memory_budget: float
    kernel: str = "reference"

    @property
    def batch_size(self) -> int:
        return self.spend.shape[0]

    @property
    def agent_count(self) -> int:
        return self.population.shape[0]

    @property
    def dimension(self) -> int:
        return self.response.dimension

    @property
    def radius(self) -> float:
        return self.response.radius

    @property
    def heads(self) -> int:
        return self.query.shape[2]

    @property
    def device(self) -> torch.device:
        return self.spend.device

    @property
    def dtype(self) -> torch.dtype:
        return self.spend.dtype

    def population_mask(self, index: int) -> torch.Tensor:
        """(N,) bool: agents of population ``index``."""
        return self.population == index


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA where present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ScenarioError("run.device: cuda was asked for but no CUDA device is available")
    return torch.device(name)


def shape_signature(scenario: Scenario) -> tuple:
    """What must agree between scenarios batched together (the trade mask is one for the batch)."""
    market = scenario.market
    network = market.network
    return (
        tuple(
            (name, p.count, p.buys, p.sells, p.correction.form, p.correction.hidden)
            for name, p in scenario.populations.items()
        ),
        market.d,
        market.heads,
        market.key_dimension,
        market.value_dimension,
        market.mode,
        market.response,
        market.spin_radius,
        market.spend_rule,
        market.unit,
        network.model_dump_json() if network else None,
        network_seed(network, scenario.run.seed) if network else None,  # a random graph differs by run seed
        market.couplings is not None,
        scenario.run.kernel,
    )


def build_economy(
    scenarios: list[Scenario],
    replicas: list[int],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    disorder_per_replica: bool = False,
) -> Economy:
    """Compile one scenario per batch element (element b is replica ``replicas[b]``).

    Quenched disorder (projections, W_O, field directions, ffn weights) is drawn from the
    scenario's seed, shared by replicas unless ``disorder_per_replica``.
    """
    device = torch.device(device)
    first = scenarios[0]
    signature = shape_signature(first)
    for scenario in scenarios[1:]:
        if shape_signature(scenario) != signature:
            raise ScenarioError("batched scenarios differ in shape (counts, d, heads, mode, network, ...)")
    market = first.market
    if market.couplings is None:
        estimate_memory(first, len(scenarios), dtype)  # before anything is allocated
    names = tuple(first.populations)
    counts = [first.populations[name].count for name in names]
    population = torch.repeat_interleave(torch.arange(len(names)), torch.tensor(counts))
    agent_count = int(population.shape[0])

    per_element = [
        _element_parameters(scenario, names, replica if disorder_per_replica else None, dtype)
        for scenario, replica in zip(scenarios, replicas)
    ]

    def stacked(key):
        return torch.stack([parameters[key] for parameters in per_element]).to(device)

    buys = torch.tensor([first.populations[name].buys for name in names])
    sells = torch.tensor([first.populations[name].sells for name in names])
    trade_mask = trade_edges = None
    if market.network is not None:
        graph = build_graph(market.network, agent_count, first.run.seed)
        if uses_sparse_layout(market.network, graph, agent_count, first.run.memory_budget_mb * 2**20):
            trade_edges = trade_edges_from_graph(graph, agent_count, sells[population]).to(device)
        else:
            trade_mask = trade_mask_from_graph(graph, agent_count).to(device)
    couplings = None
    if market.couplings is not None:
        specs = [s.market.couplings for s in scenarios]
        if all(spec == specs[0] for spec in specs):  # one matrix serves the whole batch
            specs = specs[:1]
        couplings = torch.stack([_coupling_matrix(spec, agent_count, dtype) for spec in specs]).to(device)

    corrections = []
    for index, name in enumerate(names):
        spec = first.populations[name].correction
        if spec.form == "ffn":
            weights = {
                key: torch.stack([p["ffn"][index][key] for p in per_element]).to(device)
                for key in ("w1", "b1", "w2", "b2")
            }
            corrections.append(FeedForwardCorrection(**weights))
        else:
            corrections.append(CORRECTIONS[spec.form]())

    return Economy(
        population=population.to(device),
        population_names=names,
        buyer=buys[population].to(device),
        seller=sells[population].to(device),
        spend=stacked("spend"),
        eta=stacked("eta"),
        query=stacked("query"),
        key=stacked("key"),
        value=stacked("value"),
        output=stacked("output"),
        visibility=torch.tensor([s.market.visibility for s in scenarios], dtype=dtype, device=device),
        field_direction=stacked("field_direction"),
        trade_mask=trade_mask,
        trade_edges=trade_edges,
        couplings=couplings,
        spend_rule=market.spend_rule,
        unit=float(market.unit),
        mode=market.mode,
        response=make_response(market.response, market.d, market.spin_radius),
        corrections=tuple(corrections),
        chunk=first.run.chunk,
        memory_budget=first.run.memory_budget_mb * 2**20,
        kernel="fused"
        if first.run.kernel != "reference" and market.mode == "expected" and couplings is None
        else "reference",
    )


def _element_parameters(scenario: Scenario, names, replica: int | None, dtype) -> dict:
    """Per-element tensors, drawn from the element's own disorder stream."""
    market = scenario.market
    d, heads, d_k, d_v = market.d, market.heads, market.key_dimension, market.value_dimension
    keys = (STREAM_DISORDER,) if replica is None else (STREAM_DISORDER, replica)
    generator = make_generator(derive_seed(scenario.run.seed, *keys))
    spend, eta, queries, keys_, values, directions, ffn = [], [], [], [], [], [], []
    for index, name in enumerate(names):
        population = scenario.populations[name]
        budget = population.spend if market.spend_rule == "share" else market.unit
        spend.append(torch.full((population.count,), float(budget), dtype=torch.float64))
        eta.append(torch.full((population.count,), float(population.eta), dtype=torch.float64))
        own = generator
        if population.projections.seed is not None:
            own = make_generator(population.projections.seed)
        projections = population.projections
        if projections.tied and d_v != d_k:
            raise ScenarioError(f"populations.{name}.projections.tied: needs market.d_v == market.d_k")
        key = _projection(projections, heads, d, d_k, own)
        if projections.tied:
            query, value = key, key
        else:
            query = _projection(projections, heads, d, d_k, own)
            value = _projection(projections, heads, d, d_v, own)
        queries.append(query)
        keys_.append(key)
        values.append(value)
        direction = torch.randn(d, generator=generator, dtype=torch.float64)
        directions.append(direction / direction.norm())
        ffn.append(_ffn_weights(population.correction, d, generator, dtype, name))
    if market.output == "identity":
        output = torch.eye(d, dtype=torch.float64).expand(heads, d, d) / heads
    else:
        output = torch.randn(heads, d_v, d, generator=generator, dtype=torch.float64) / math.sqrt(heads * d_v)
    return {
        "spend": torch.cat(spend).to(dtype),
        "eta": torch.cat(eta).to(dtype),
        "query": torch.stack(queries).to(dtype),
        "key": torch.stack(keys_).to(dtype),
        "value": torch.stack(values).to(dtype),
        "output": output.to(dtype),
        "field_direction": torch.stack(directions).to(dtype),
        "ffn": ffn,
    }


def _projection(spec, heads: int, rows: int, columns: int, generator) -> torch.Tensor:
    """One projection per head: N(0, scale^2 / d) entries, or scale * I."""
    if spec.init == "identity":
        return spec.scale * torch.eye(rows, columns, dtype=torch.float64).expand(heads, rows, columns)
    return torch.randn(heads, rows, columns, generator=generator, dtype=torch.float64) * spec.scale / math.sqrt(rows)


def _ffn_weights(spec, d, generator, dtype, name):
    if spec.form != "ffn":
        return None
    if spec.weights is not None:
        where = f"populations.{name}.correction.weights: {spec.weights}"
        try:
            loaded = torch.load(spec.weights, map_location="cpu", weights_only=True)
        except OSError as error:
            raise ScenarioError(f"{where}: cannot read: {error.strerror or error}") from None
        except Exception as error:  # pickle, zip or torch errors: not a file torch.save wrote
            raise ScenarioError(f"{where}: not a torch weights file ({type(error).__name__})") from None
        if not isinstance(loaded, dict):
            raise ScenarioError(f"{where}: holds a {type(loaded).__name__}, not a dict of w1, b1, w2, b2")
        expected = {"w1": (d + 2, spec.hidden), "b1": (spec.hidden,), "w2": (spec.hidden, d), "b2": (d,)}
        for key, shape in expected.items():
            if not isinstance(loaded.get(key), torch.Tensor) or tuple(loaded[key].shape) != shape:
                raise ScenarioError(
                    f"populations.{name}.correction.weights: {spec.weights} needs {key} of shape {shape}"
                )
        return {key: loaded[key].to(dtype) for key in expected}
    own = generator if spec.seed is None else make_generator(spec.seed)
    return feed_forward_weights(d, spec.hidden, spec.scale, own, dtype)


def _coupling_matrix(spec, agent_count: int, dtype) -> torch.Tensor:
    if spec.curie_weiss is not None:
        matrix = torch.full((agent_count, agent_count), spec.curie_weiss / agent_count, dtype=torch.float64)
        matrix.fill_diagonal_(0.0)
        return matrix.to(dtype)
    with np.load(spec.file) as data:
        if spec.coupling_key not in data:
            raise ScenarioError(f"market.couplings.coupling_key: {spec.file} has no array {spec.coupling_key!r}")
        matrix = np.asarray(data[spec.coupling_key], dtype=np.float64)
    if matrix.shape != (agent_count, agent_count):
        raise ScenarioError(
            f"market.couplings.file: {spec.coupling_key} has shape {matrix.shape}, "
            f"the populations hold {agent_count} agents"
        )
    return torch.from_numpy(matrix).to(dtype)


def coupling_fields(scenario: Scenario) -> np.ndarray | None:
    """Fields h stored beside the couplings (``field_key``), one per agent, or None."""
    spec = scenario.market.couplings
    if spec is None or spec.file is None or spec.field_key is None:
        return None
    with np.load(spec.file) as data:
        if spec.field_key not in data:
            raise ScenarioError(f"market.couplings.field_key: {spec.file} has no array {spec.field_key!r}")
        return np.asarray(data[spec.field_key], dtype=np.float64).reshape(-1)


BYTES_PER_PAIR = 48  # working memory per (batch element, head, buyer, seller) entry of one block
SWEEP_BLOCK_ROWS = 64  # the sweep planner batches no more elements than leave room for blocks this tall


@dataclass(frozen=True)
class MemoryModel:
    """The one estimate of a round's working memory, in bytes.

    It serves the up-front check (:func:`estimate_memory`), the block size
    (:func:`rows_per_block`) and the sweep's batch planner. A batch element whose buyers are
    processed in blocks of ``rows`` rows is charged twice its block's working set (a block
    may use only half the budget: headroom for temporaries the estimate leaves out), plus
    its per-agent tensors (states, fields, projections, what each buyer receives).
    """

    agents: int
    dimension: int
    heads: int
    itemsize: int
    budget: float

    @classmethod
    def of_scenario(cls, scenario: Scenario, dtype: torch.dtype) -> "MemoryModel":
        market = scenario.market
        budget = scenario.run.memory_budget_mb * 2**20
        return cls(scenario.agent_count, market.d, market.heads, dtype.itemsize, budget)

    @classmethod
    def of_economy(cls, economy: Economy) -> "MemoryModel":
        return cls(economy.agent_count, economy.dimension, economy.heads, economy.dtype.itemsize, economy.memory_budget)

    def agent_bytes(self) -> float:
        """Per-agent tensors of one batch element."""
        return self.agents * (10 * self.dimension + 8 * self.heads * self.dimension) * self.itemsize

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


def estimate_memory(scenario: Scenario, batch: int, dtype) -> None:
    """Refuse, before allocating, an economy whose smallest block cannot fit the budget."""
    agents = scenario.agent_count
    need = batch * MemoryModel.of_scenario(scenario, dtype).element_bytes(1)
    budget = scenario.run.memory_budget_mb * 2**20
    if need > budget:
        raise ScenarioError(
            f"populations: {agents} agents x {batch} batch elements need about "
            f"{need / 2**20:.0f} MiB even in one-row blocks, over "
            f"run.memory_budget_mb = {scenario.run.memory_budget_mb:g}"
        )
    network = scenario.market.network
    if network is not None and network.layout == "dense" and agents * agents > budget:
        raise ScenarioError(
            f"market.network: a dense {agents} x {agents} trade mask needs {agents * agents / 2**20:.0f} MiB, "
            f"over run.memory_budget_mb = {scenario.run.memory_budget_mb:g} (layout: sparse keeps only the edges)"
        )


def rows_per_block(economy: Economy) -> int:
    """Buyer rows per block: the scenario's chunk, or as many as the memory budget allows."""
    if economy.chunk is not None:
        return max(1, min(economy.chunk, economy.agent_count))
    return MemoryModel.of_economy(economy).rows_per_block(economy.batch_size)
