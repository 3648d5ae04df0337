"""The economy: a scenario compiled into the tensors one round reads.

An :class:`Economy` holds what does not change from round to round (who belongs to which
population, projections, budgets, masks, couplings, the response and the corrections), with
a leading batch axis B wherever batch elements (replicas, sweep points) may differ. It is
built from one scenario per batch element; the scenarios must agree on every shape.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from econspin.compiled import CompilerMissing, require_compiler
from econspin.corrections import (
    CORRECTIONS,
    FEED_FORWARD_FEATURES,
    SelfImpactCorrection,
    feed_forward_weights,
)
from econspin.couplings import coupling_matrix
from econspin.members import AgentSet, Members
from econspin.memory import MemoryModel, check_memory
from econspin.network import (
    TradeEdges,
    draw_links,
    network_seed,
    trade_edges_from_links,
    trade_mask_from_links,
    uses_sparse_layout,
)
from econspin.precision import precision_conflict
from econspin.randomness import STREAM_DISORDER, derive_seed, make_generator
from econspin.response import SpinResponse, make_response
from econspin.scenario import Scenario, ScenarioError, resolved_kernel


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
        kernel: ``fused``: the fast paths where they apply (econspin.uniform where choice ignores
            utilities, econspin.fused and econspin.fused_sampled for the attention market),
            ``flex``: the expected mode as FlexAttention passes (econspin.flex; the O(N) uniform
            step still applies), ``triton``: the expected mode's blocks as Triton programs
            (econspin.triton_blocks; likewise), or ``reference``: econspin.market.trade; resolved
            from run.kernel.
        population_counts: each population's size, its agents next to each other (empty: not known).
        uniform_choice: every utility u_ij is zero in every batch element (:func:`utilities_vanish`),
            so that choice is uniform over the allowed sellers at any temperature.
        compile: run.compile: ``off`` (eager) or the torch.compile mode the round runs in
            (:mod:`econspin.compiled`).
        utility_precision: run.utility_precision: ``full``, ``bfloat16`` or ``tf32``, the
            precision of the fused kernels' utilities product (:mod:`econspin.precision`).
        shared_projections: the batch has several elements and all have the same W_Q, W_K, W_V
            and W_O (found when built: a sweep's points drawn from one seed), so that one set of
            weights projects them all (:func:`econspin.projections.projections`).
        every_agent_buys: every population buys (``buyer`` is all True): the fused step need not
            mask what sellers-only agents would receive.
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
    population_counts: tuple[int, ...] = ()
    uniform_choice: bool = False
    compile: str = "off"
    utility_precision: str = "full"
    shared_projections: bool = False
    every_agent_buys: bool = False

    def __post_init__(self):
        # the flag states a fact about the weights: a copy given other weights (dataclasses.replace)
        # keeps it only where it still holds, and one copy of the weights then never serves all
        # (weights on the meta device, shapes without values, keep what they were given)
        weights = (self.query, self.key, self.value, self.output)
        if self.shared_projections and self.query.device.type != "meta" and not weights_shared(*weights):
            object.__setattr__(self, "shared_projections", False)

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

    @functools.cached_property
    def members(self) -> Members:
        """Who is a buyer, a seller, in each population (econspin.members): found once per economy."""
        count = len(self.population_names)
        populations = tuple(AgentSet.of_mask(self.population_mask(index)) for index in range(count))
        return Members(AgentSet.of_mask(self.buyer), AgentSet.of_mask(self.seller), populations)


DTYPES = {"float32": torch.float32, "float64": torch.float64}  # run.dtype


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
            (name, p.count, p.buys, p.sells, p.correction.form, p.correction.hidden, p.correction.features)
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
        scenario.run.compile,
        scenario.run.utility_precision,
    )


def compile_inputs(scenario: Scenario) -> tuple:
    """What :func:`build_economy` reads of a scenario that can make it refuse one (a ScenarioError).

    The shape (:func:`shape_signature`: counts, d, heads, the network and the seed it is drawn
    with), the couplings (their file and keys against the agent count), and each population's
    correction (a weights file against d and ``hidden``) and tied projections (d_k against d_v).
    Two scenarios that agree here compile alike, whatever their temperatures, budgets or
    distributions: a sweep compiles one of them to check them all (:func:`econspin.sweep.check_points`).
    A new refusal in the compiler must add what it reads here.
    """
    couplings = scenario.market.couplings
    return (
        shape_signature(scenario),
        couplings.model_dump_json() if couplings is not None else None,
        tuple(
            (population.correction.model_dump_json(), population.projections.tied)
            for population in scenario.populations.values()
        ),
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
    check_memory(first, len(scenarios), dtype, device)  # before anything is allocated
    try:
        require_compiler(first.run.compile, device)
    except CompilerMissing as error:
        raise ScenarioError(str(error)) from None
    names = tuple(first.populations)
    counts = [first.populations[name].count for name in names]
    population = torch.repeat_interleave(torch.arange(len(names)), torch.tensor(counts))
    agent_count = int(population.shape[0])
    market = first.market

    weights_files: dict[str, object] = {}  # each ffn weights file read once per build, whatever the batch
    drawn: dict[tuple, dict] = {}  # drawn once per set of inputs: 64 sweep points of one seed draw once, not 64 times
    per_element = []
    for scenario, replica in zip(scenarios, replicas):
        own = replica if disorder_per_replica else None
        inputs = _parameter_inputs(scenario, names, own)
        if inputs not in drawn:
            drawn[inputs] = _element_parameters(scenario, names, own, dtype, weights_files)
        per_element.append(drawn[inputs])

    def stacked(key):
        return torch.stack([parameters[key] for parameters in per_element]).to(device)

    buys = torch.tensor([first.populations[name].buys for name in names])
    sells = torch.tensor([first.populations[name].sells for name in names])
    trade_mask = trade_edges = None
    if market.network is not None:
        links = draw_links(market.network, first.population_sizes, first.run.seed)
        check_memory(first, len(scenarios), dtype, device, edges=links.directed_count)  # edges known now
        if uses_sparse_layout(market.network, links, first.run.memory_budget_mb * 2**20):
            trade_edges = trade_edges_from_links(links, sells[population]).to(device)
        else:
            trade_mask = trade_mask_from_links(links).to(device)
    kernel = resolved_kernel(first.run.kernel, market.mode, market.couplings is not None, device.type)
    kind = "couplings" if market.couplings is not None else "sparse" if trade_edges is not None else "attention"
    conflict = precision_conflict(first.run.utility_precision, str(dtype).removeprefix("torch."), device, kernel, kind)
    if kernel == "triton" and kind == "attention":  # a sparse network takes its own kernel, which needs no triton
        from econspin.triton_blocks import triton_missing  # it builds on the economy: imported here

        conflict = conflict or triton_missing()
    if conflict:
        raise ScenarioError(conflict)
    couplings = None
    if market.couplings is not None:
        specs = [s.market.couplings for s in scenarios]
        if all(spec == specs[0] for spec in specs):  # one matrix serves the whole batch
            specs = specs[:1]
        couplings = torch.stack([coupling_matrix(spec, agent_count, dtype) for spec in specs]).to(device)

    query, key, visibility = stacked("query"), stacked("key"), torch.tensor([s.market.visibility for s in scenarios])
    value, output = stacked("value"), stacked("output")
    corrections = []
    for index, name in enumerate(names):
        spec = first.populations[name].correction
        if spec.form == "ffn":
            weights = {
                key: torch.stack([p["ffn"][index][key] for p in per_element]).to(device)
                for key in ("w1", "b1", "w2", "b2")
            }
            corrections.append(FEED_FORWARD_FEATURES[spec.features](**weights))
        else:
            corrections.append(CORRECTIONS[spec.form]())

    return Economy(
        population=population.to(device),
        population_names=names,
        buyer=buys[population].to(device),
        seller=sells[population].to(device),
        spend=stacked("spend"),
        eta=stacked("eta"),
        query=query,
        key=key,
        value=value,
        output=output,
        visibility=visibility.to(dtype=dtype, device=device),
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
        kernel=kernel,
        population_counts=tuple(counts),
        uniform_choice=couplings is None and utilities_vanish(query, key, visibility),
        compile=first.run.compile,
        utility_precision=first.run.utility_precision,
        every_agent_buys=bool(buys.all()),
        shared_projections=len(scenarios) > 1,  # kept where the weights are the same (Economy.__post_init__)
    )


def weights_shared(*weights: torch.Tensor) -> bool:
    """Whether every batch element has the same values in each of ``weights`` (a host read: not in a round)."""
    return all(torch.equal(t, t[:1].expand_as(t)) for t in weights)


def utilities_vanish(query: torch.Tensor, key: torch.Tensor, visibility: torch.Tensor) -> bool:
    """Whether u_ij = q_i . k_j / sqrt(d_k) + gamma log(w_j / mean w) is zero for every pair and element.

    Each element needs all its queries or all its keys zero (projections of scale 0, as in
    scenarios/boltzmann_wealth.yaml) and gamma = 0. It reads the tensors: called once, when
    an economy is compiled, never during a round.
    """
    silent = ~(query.flatten(1).any(1) & key.flatten(1).any(1))
    return bool(silent.all()) and not bool(visibility.any())


def _parameter_inputs(scenario: Scenario, names, replica: int | None) -> tuple:
    """What :func:`_element_parameters` reads: elements that agree here (a sweep's points) share its tensors."""
    market, populations = scenario.market, [scenario.populations[name] for name in names]
    own = [
        (p.count, p.spend, p.eta, p.projections.model_dump_json(), p.correction.model_dump_json()) for p in populations
    ]
    sizes = (market.d, market.heads, market.key_dimension, market.value_dimension)
    return (replica, scenario.run.seed, sizes, market.spend_rule, market.unit, market.output, tuple(own))


def _element_parameters(scenario: Scenario, names, replica: int | None, dtype, weights_files: dict) -> dict:
    """Per-element tensors, drawn from the element's own disorder stream.

    ``weights_files`` holds the ffn weights files read so far in this build, by path (read-only).
    """
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
        ffn.append(_ffn_weights(population.correction, d, generator, dtype, name, weights_files))
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


def _ffn_weights(spec, d, generator, dtype, name, weights_files: dict):
    """The population's ffn weights, from its file or drawn at random.

    A file holds a dict of w1, b1, w2, b2, or (written by ``econspin fit-correction``) one
    such dict per population under ``populations`` and the feature set under ``features``
    (files without it, written before there was a choice, hold ``state`` weights). A file is
    read the first time a build asks for it and kept in ``weights_files``: every batch element
    and every population naming it reads that copy (it is never written to).
    """
    if spec.form != "ffn":
        return None
    if spec.weights is not None:
        where = f"populations.{name}.correction.weights: {spec.weights}"
        if spec.weights not in weights_files:
            weights_files[spec.weights] = _read_weights_file(spec.weights, where)
        loaded = weights_files[spec.weights]
        if isinstance(loaded, dict) and "populations" in loaded:  # one file of econspin fit-correction
            fitted = loaded["populations"]
            if not isinstance(fitted, dict) or name not in fitted:
                held = ", ".join(map(str, fitted)) if isinstance(fitted, dict) else "none"
                raise ScenarioError(f"{where}: holds weights for the populations {held}, not {name}")
            held_features = loaded.get("features", "state")
            if held_features != spec.features:
                raise ScenarioError(
                    f"{where}: holds ffn weights on the {held_features} features, the scenario's "
                    f"correction has features: {spec.features} (set features: {held_features})"
                )
            loaded = fitted[name]
        if not isinstance(loaded, dict):
            raise ScenarioError(f"{where}: holds a {type(loaded).__name__}, not a dict of w1, b1, w2, b2")
        expected = FEED_FORWARD_FEATURES[spec.features].weight_shapes(d, spec.hidden)
        for key, shape in expected.items():
            if not isinstance(loaded.get(key), torch.Tensor) or tuple(loaded[key].shape) != shape:
                held = tuple(loaded[key].shape) if isinstance(loaded.get(key), torch.Tensor) else "none"
                raise ScenarioError(
                    f"populations.{name}.correction.weights: {spec.weights} needs {key} of shape {shape} "
                    f"(market.d = {d}, hidden = {spec.hidden}, features {spec.features}); it holds {held}"
                )
        return {key: loaded[key].to(dtype) for key in expected}
    own = generator if spec.seed is None else make_generator(spec.seed)
    return feed_forward_weights(d, spec.hidden, spec.scale, own, dtype, spec.features)


def _read_weights_file(path: str, where: str):
    """What torch.save wrote to ``path``, tensors only; a ScenarioError starting with ``where`` otherwise."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as error:
        raise ScenarioError(f"{where}: cannot read: {error.strerror or error}") from None
    except Exception as error:  # pickle, zip or torch errors: not a file torch.save wrote
        raise ScenarioError(f"{where}: not a torch weights file ({type(error).__name__})") from None


def rows_per_block(economy: Economy) -> int:
    """Buyer rows per block: the scenario's chunk, or as many as the memory budget allows."""
    if economy.chunk is not None:
        return max(1, min(economy.chunk, economy.agent_count))
    return MemoryModel.of_economy(economy).rows_per_block(economy.batch_size)
