"""Response functions: how an observable after n rounds moves with an input of the scenario.

The susceptibility of an observable O (a metric of :mod:`econspin.metrics`: order, hhi, gini,
attention_entropy, wealth_share_<population>, ...) with respect to an input p is

    chi = d O(state after n rounds) / d p,

the derivative of the whole map scenario -> rollout -> observable, taken by reverse-mode
autograd through the expected-mode (mean-field) rollout in float64. It is the limit of the
central difference [O(p + h) - O(p - h)] / 2h of two runs of the scenario with the key set to
p +- h, which the tests check it against. The inputs:

- ``populations.<name>.temperature``: T of every agent of the population (a single number:
  a schedule or a per-agent distribution has no one value to move). Refused at T = 0, where
  choice is an argmax and the spin response has a kink, and at T = inf, where the derivative
  vanishes (like T^-2) and the formulas meet inf / inf.
- ``populations.<name>.spend`` (the budget share sigma; under ``spend_rule: unit`` the budget
  is market.unit and the key is not read, so it is refused) and ``populations.<name>.eta``.
- ``market.visibility``: gamma of the premium gamma log(w_j / mean w).
- ``field``: the external field's strength along its direction. Every agent's field is
  shifted, h_i -> h_i + epsilon e_p(i), by epsilon along the unit direction e_p of its
  population (the direction an event's ``field_shift`` uses), and chi = dO/d epsilon at
  epsilon = 0. ``field.<name>`` shifts that population's agents only. The same shift made
  by events at round 0 gives the finite differences.

How the input enters: the rollout is built as :func:`econspin.simulate.simulate` builds it,
then the number the input sets (a column of ``Economy.spend`` or ``eta``, ``visibility``,
the population's rows of ``State.temperature``, or the field shift) is replaced by a leaf
tensor that requires gradients, with the same value; nothing in the engine changes. A round
whose inputs require gradients takes the reference market kernel (:mod:`econspin.market`):
the fused kernel writes into reused buffers, which autograd cannot follow
(:func:`econspin.fused.uses_fused` makes the choice). The derivative is taken by the discrete
adjoint method (:func:`_differentiate`): the trajectory is run forward without a graph, then
each round is replayed backwards with autograd, one at a time, so memory holds the states of
the n rounds and one round's graph, not n graphs, for about three times the forward work.

Where the rollout is piecewise smooth (the unit budget's threshold w_i >= unit, ties in the
sort of gini or the top four of cr4), autograd returns the derivative of the piece the point
lies on, which is what central differences give unless a threshold lies within +-h. A
derivative that does not exist comes back as NaN: that of an observable that is not finite
(surplus, T log sum exp(u / T), with an agent at T = inf), or one through the ``large_d``
response of an agent at T = 0 whose field is exactly zero.

Sampled scenarios are differentiated through their expected mode: the susceptibility is that
of the mean field, which is what a sweep compares with the sampled crossover.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from econspin.economy import Economy, MemoryModel, shape_signature
from econspin.metrics import metric_functions, metric_names
from econspin.round import step
from econspin.scenario import Scenario, ScenarioError
from econspin.scenario_messages import suggest
from econspin.simulate import Rollout, apply_plan
from econspin.state import State

POPULATION_INPUTS = ("temperature", "spend", "eta")


@dataclass(frozen=True)
class Input:
    """An input a susceptibility is taken with respect to.

    Attributes:
        name: as written, e.g. ``populations.ai.temperature``, ``market.visibility``, ``field``.
        kind: temperature, spend, eta, visibility or field.
        population: the population it belongs to (field: None for every population).
    """

    name: str
    kind: str
    population: str | None = None


def input_names(scenario: Scenario) -> list[str]:
    """Every input of this scenario that a susceptibility can be taken with respect to."""
    names = [f"populations.{name}.{kind}" for name in scenario.populations for kind in POPULATION_INPUTS]
    return [*names, "market.visibility", "field", *(f"field.{name}" for name in scenario.populations)]


def parse_input(name: str, scenario: Scenario) -> Input:
    """The input a name denotes; an unknown one raises ScenarioError listing those allowed."""
    parts = name.split(".")
    if len(parts) == 3 and parts[0] == "populations" and parts[1] in scenario.populations:
        if parts[2] in POPULATION_INPUTS:
            return Input(name, parts[2], parts[1])
    elif name == "market.visibility":
        return Input(name, "visibility")
    elif name == "field":
        return Input(name, "field")
    elif len(parts) == 2 and parts[0] == "field" and parts[1] in scenario.populations:
        return Input(name, "field", parts[1])
    allowed = input_names(scenario)
    raise ScenarioError(f"{name!r} is not an input{suggest(name, allowed)}; inputs: {', '.join(allowed)}")


def check_observable(name: str, scenario: Scenario) -> None:
    """Refuse a name that is not a metric of this scenario."""
    allowed = metric_names(scenario.populations)
    if name not in allowed:
        raise ScenarioError(f"{name!r} is not an observable{suggest(name, allowed)}; observables: {', '.join(allowed)}")


def input_value(scenario: Scenario, wrt: Input) -> float:
    """The value the scenario gives the input (a field shift is 0); refused where not differentiable."""
    if wrt.kind == "field":
        return 0.0
    if wrt.kind == "visibility":
        return float(scenario.market.visibility)
    population = scenario.populations[wrt.population]
    if wrt.kind == "spend" and scenario.market.spend_rule == "unit":
        raise ScenarioError(f"{wrt.name}: not read under market.spend_rule unit (the budget is market.unit)")
    value = getattr(population, wrt.kind)
    if wrt.kind == "temperature":
        if not isinstance(value, (int, float)):
            raise ScenarioError(f"{wrt.name}: a schedule or a distribution has no single value to differentiate by")
        if value == 0:
            raise ScenarioError(f"{wrt.name} = 0: choice is an argmax there, not differentiable in T")
        if math.isinf(value):
            raise ScenarioError(f"{wrt.name} = inf: the derivative vanishes there (like T^-2); use a finite T")
    return float(value)


def insert_input(economy: Economy, state: State, wrt: Input, leaf: torch.Tensor) -> tuple[Economy, State]:
    """The economy and state with the input's numbers read from ``leaf`` (B,), values unchanged."""
    if wrt.kind == "visibility":
        return dataclasses.replace(economy, visibility=leaf), state
    if wrt.population is None:
        members = torch.ones_like(economy.population, dtype=torch.bool)
    else:
        members = economy.population_mask(economy.population_names.index(wrt.population))
    if wrt.kind == "field":
        shift = leaf[:, None, None] * members[None, :, None] * economy.field_direction[:, economy.population]
        return economy, state.replace(fields=state.fields + shift)
    if wrt.kind == "temperature":
        return economy, state.replace(temperature=torch.where(members, leaf[:, None], state.temperature))
    column = torch.where(members, leaf[:, None], getattr(economy, wrt.kind))
    return dataclasses.replace(economy, **{wrt.kind: column}), state


def expected_mode(scenario: Scenario) -> Scenario:
    """The scenario's mean field: the rollout that is differentiated."""
    return scenario if scenario.market.mode == "expected" else scenario.with_overrides({"market.mode": "expected"})


def element_susceptibilities(
    scenarios: list[Scenario],
    replicas: list[int],
    observable: str,
    wrt: str,
    steps: int,
    device: str = "auto",
    on_round: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The derivative d observable / d input after ``steps`` rounds of each batch element.

    Elements are batched as a sweep batches them (by shape, as many as one round's graph
    allows within ``run.memory_budget_mb``); each element's derivative is its own. Returns
    the susceptibilities and the observable's values, one per element, as float64 arrays.
    """
    if steps < 1:
        raise ScenarioError(f"steps: the observable is taken after at least one round (got {steps})")
    scenarios = [expected_mode(scenario) for scenario in scenarios]
    for scenario in scenarios:
        check_observable(observable, scenario)
        input_value(scenario, parse_input(wrt, scenario))
    chi, values = np.full(len(scenarios), np.nan), np.full(len(scenarios), np.nan)
    for batch in _batches(scenarios):
        members = [scenarios[index] for index in batch]
        batch_chi, batch_values = _differentiate(
            members, [replicas[index] for index in batch], observable, wrt, steps, device, on_round
        )
        chi[batch], values[batch] = batch_chi, batch_values
    # an observable that is not finite (surplus with an agent at T = inf) has no derivative
    return np.where(np.isfinite(values), chi, np.nan), values


def _batches(scenarios: list[Scenario]) -> list[list[int]]:
    """Element indices grouped by shape, cut so that one round's graph fits the memory budget."""
    groups: dict[tuple, list[int]] = {}
    for index, scenario in enumerate(scenarios):
        groups.setdefault(shape_signature(scenario), []).append(index)
    batches = []
    for members in groups.values():
        first = scenarios[members[0]]
        # autograd keeps every block of a round: the round is charged as one block of all N rows
        size = MemoryModel.of_scenario(first, torch.float64).elements_per_batch(first.agent_count)
        batches.extend(members[start : start + size] for start in range(0, len(members), size))
    return batches


# what a round reads from the state before it (revenue, spending, entropy and surplus it only writes)
CARRIED = ("states", "money", "fields", "temperature")


def _prepared(scenarios, replicas, wrt, device):
    """The float64 rollout with the input inserted as a leaf: (leaf, economy, round-0 state, one round)."""
    rollout = Rollout.create(scenarios, replicas, device, "float64")
    wrt_input = parse_input(wrt, scenarios[0])
    values = [input_value(scenario, wrt_input) for scenario in scenarios]
    leaf = torch.tensor(values, dtype=torch.float64, device=rollout.economy.device, requires_grad=True)
    economy, state = insert_input(rollout.economy, rollout.state, wrt_input, leaf)

    def one_round(state: State) -> State:
        return step(apply_plan(state, economy, scenarios), economy)

    return leaf, economy, state, one_round


def _differentiate(scenarios, replicas, observable, wrt, steps, device, on_round):
    """The discrete adjoint method: the trajectory forward without a graph, then back one round at a time.

    With x_t the carried state and O = O(x_n), the adjoint lambda_t = dO/dx_t obeys
    lambda_t = lambda_{t+1} dx_{t+1}/dx_t, and dO/dp = sum_t lambda_{t+1} dx_{t+1}/dp (the input p
    enters round 1 through x_0 and every round through the economy). Each product is one
    vector-Jacobian product of one round, replayed from the stored x_t with autograd, so that
    memory holds the trajectory and one round's graph. The forward pass takes the fused
    kernel, the replay the reference kernel: the Jacobians are the reference round's, along a
    trajectory equal to it up to rounding.
    """
    leaf, economy, start, one_round = _prepared(scenarios, replicas, wrt, device)
    with torch.no_grad():
        trajectory = [start.replace(**{name: getattr(start, name).detach() for name in CARRIED})]
        for _ in range(steps - 1):
            trajectory.append(one_round(trajectory[-1]))
    gradient = torch.zeros_like(leaf)
    adjoint: dict[str, torch.Tensor | None] = {}
    with torch.enable_grad():
        for index in range(steps - 1, -1, -1):
            stored = trajectory[index]
            before = {} if index == 0 else {name: getattr(stored, name).detach().requires_grad_() for name in CARRIED}
            after = one_round(start if index == 0 else stored.replace(**before))
            if index == steps - 1:
                measured = metric_functions(economy)[observable](after, economy)
                outputs, cotangents = [measured.sum()], None
                measured = measured.detach()  # not the round's graph: only its value is kept
            else:
                used = [name for name in CARRIED if adjoint[name] is not None and getattr(after, name).requires_grad]
                outputs, cotangents = [getattr(after, name) for name in used], [adjoint[name] for name in used]
            if outputs and outputs[0].requires_grad:
                # the economy's leaf-built tensors are shared by every round: their graph must outlive
                # this product (each round's own graph goes when ``after`` is rebound)
                parts = torch.autograd.grad(
                    outputs, [leaf, *before.values()], cotangents, retain_graph=True, allow_unused=True
                )
            else:  # nothing this round returns depends on the input or the state before it
                parts = (None,) * (1 + len(before))
            gradient = gradient if parts[0] is None else gradient + parts[0]
            adjoint = dict(zip(before, parts[1:]))
            if not any(value is not None for value in adjoint.values()) and index > 0:
                break  # the observable no longer depends on earlier rounds (e.g. a temperature event)
            if on_round is not None:
                on_round(index)
    return gradient.cpu().numpy(), measured.double().cpu().numpy()


def whole_graph_susceptibilities(scenarios, replicas, observable, wrt, steps, device="cpu") -> np.ndarray:
    """The same derivatives by one autograd graph over all rounds: the readable reference.

    Memory grows with the rounds (every round's graph is kept); the tests hold
    :func:`element_susceptibilities` (the adjoint, round by round) equal to it.
    """
    scenarios = [expected_mode(scenario) for scenario in scenarios]
    leaf, economy, state, one_round = _prepared(scenarios, replicas, wrt, device)
    with torch.enable_grad():
        for _ in range(steps):
            state = one_round(state)
        measured = metric_functions(economy)[observable](state, economy)
        (gradient,) = torch.autograd.grad(measured.sum(), leaf, allow_unused=True)
    return np.zeros(len(scenarios)) if gradient is None else gradient.cpu().numpy()


@dataclass(frozen=True)
class Susceptibility:
    """A susceptibility over replicas.

    Attributes:
        observable: the metric differentiated.
        wrt: the input.
        steps: rounds played.
        mean: the mean over replicas of d observable / d input.
        standard_error: the standard error of that mean (sample sd / sqrt(replicas); NaN for one).
        per_replica: (replicas,) each replica's susceptibility.
        observable_values: (replicas,) each replica's observable after ``steps`` rounds.
        seeds: the run seed of each replica.
    """

    observable: str
    wrt: str
    steps: int
    mean: float
    standard_error: float
    per_replica: np.ndarray
    observable_values: np.ndarray
    seeds: tuple[int, ...]


def susceptibility(
    scenario: Scenario,
    observable: str,
    wrt: str,
    steps: int | None = None,
    replicas: int | None = None,
    seed: int | None = None,
    device: str | None = None,
) -> Susceptibility:
    """The susceptibility d observable(after ``steps`` rounds) / d ``wrt``, mean over replicas' disorder.

    Replica r is the scenario run with seed ``seed + r``: its own quenched disorder
    (projections, W_O, fields) and initial state. Arguments left as None take the
    scenario's ``run`` section. See the module docstring for the inputs and for the points
    where the derivative does not exist; a bad observable or input raises ScenarioError.

    Example:
        >>> chi = susceptibility(scenario, "order", "populations.ai.temperature", steps=20, replicas=4)
        >>> chi.mean, chi.standard_error
    """
    scenario = scenario.with_run_settings(steps=steps, replicas=replicas, seed=seed, device=device)
    run = scenario.run
    seeds = tuple(run.seed + replica for replica in range(run.replicas))
    scenarios = [scenario.with_run_settings(seed=value) for value in seeds]
    chi, values = element_susceptibilities(scenarios, [0] * len(seeds), observable, wrt, run.steps, run.device)
    error = float(chi.std(ddof=1) / math.sqrt(len(chi))) if len(chi) > 1 else math.nan
    return Susceptibility(observable, wrt, run.steps, float(chi.mean()), error, chi, values, seeds)


def column_name(observable: str, wrt: str) -> str:
    """The sweep table's column of d observable / d wrt."""
    return f"susceptibility:{observable}:{wrt}"


def is_susceptibility_column(column: str) -> bool:
    return column.startswith("susceptibility:")


def parse_susceptibility_option(text: str, scenario: Scenario) -> tuple[str, str]:
    """``OBSERVABLE:INPUT`` of the sweep's --susceptibility, checked against the scenario."""
    observable, separator, wrt = text.partition(":")
    where = f"--susceptibility {text!r}"
    if not separator or not observable or not wrt:
        raise ScenarioError(f"{where}: write OBSERVABLE:INPUT, e.g. hhi:populations.ai.temperature")
    try:
        check_observable(observable, scenario)
        parse_input(wrt, scenario)
    except ScenarioError as error:
        raise ScenarioError(f"{where}: {error}") from None
    return observable, wrt


def check_sweep_points(option: tuple[str, str], points: list[tuple[dict, Scenario]]) -> None:
    """Refuse, before anything runs, a point where the derivative is not defined, naming it."""
    observable, wrt = option
    for overrides, scenario in points:
        try:
            input_value(scenario, parse_input(wrt, scenario))
        except ScenarioError as error:
            at = ", ".join(f"{key}={value}" for key, value in overrides.items())
            raise ScenarioError(f"--susceptibility {observable}:{wrt}: at {at}: {error}") from None


def sweep_rounds(points: list[tuple[dict, Scenario]], replicas: int, steps: int) -> int:
    """Rounds :func:`sweep_susceptibility` replays backwards (its progress): ``steps`` a batch it forms."""
    scenarios = [expected_mode(scenario) for _, scenario in points for _ in range(replicas)]
    return steps * len(_batches(scenarios))


def sweep_susceptibility(
    table: pd.DataFrame,
    points: list[tuple[dict, Scenario]],
    option: tuple[str, str],
    steps: int,
    device: str,
    on_round: Callable[[int], None] | None = None,
) -> pd.DataFrame:
    """The sweep table with the column d observable / d input of every (point, replica).

    The value sits on each element's last round (``step == steps``), NaN on the other rounds,
    so that the sweep's late-round averages read it as the final value. It is computed in
    float64 whatever the sweep's own precision.
    """
    observable, wrt = option
    elements = table.loc[table["step"] == steps, ["point", "replica"]].drop_duplicates()
    scenarios = [points[point][1] for point in elements["point"]]
    chi, _ = element_susceptibilities(scenarios, list(elements["replica"]), observable, wrt, steps, device, on_round)
    column = pd.Series(np.nan, index=table.index)
    last = table.index[table["step"] == steps]
    by_element = dict(zip(zip(elements["point"], elements["replica"]), chi))
    column[last] = [by_element[key] for key in zip(table.loc[last, "point"], table.loc[last, "replica"])]
    return table.assign(**{column_name(observable, wrt): column})


__all__ = ["susceptibility", "Susceptibility", "element_susceptibilities", "input_names"]
