"""What is checked before a run starts, beyond what the scenario says on its own.

The scenario's validation (:mod:`econspin.scenario`) refuses what cannot make sense. Here,
before anything is allocated, come the checks that need more than the scenario: the device
(``cuda`` on a machine without one), the memory the run will hold against its budget and
this machine (:mod:`econspin.memory`), the files it names (``check`` reads them), and what
would run but likely not as meant, said as a :class:`~econspin.scenario.ScenarioWarning`:

- an event, or a step of a temperature schedule, at a round the run does not reach;
- ``market.unit`` set under the share rule, or a population's ``spend`` under the unit rule
  (each is read by the other rule only; a value other than the default is warned of, so that
  a sweep over ``market.spend_rule`` keeps working).

An edge-list file that leaves agents out is warned of when it is read
(:func:`econspin.network.draw_links`).
"""

from __future__ import annotations

import math
import warnings

import torch

from econspin.couplings import coupling_fields, coupling_matrix
from econspin.economy import DTYPES, resolve_device, shape_signature
from econspin.memory import MemoryEstimate, check_memory
from econspin.network import check_generator, draw_links
from econspin.scenario import Market, Population, Scenario, ScenarioError, ScenarioWarning, TemperatureSchedule

MAX_POINTS_UNCONFIRMED = 10_000  # a sweep with more grid points starts only when confirmed (--yes)
DEFAULT_UNIT = Market.model_fields["unit"].default
DEFAULT_SPEND = Population.model_fields["spend"].default


def scenario_warnings(scenario: Scenario) -> list[str]:
    """One line for each option that a run of this scenario would accept and not act on."""
    lines = []
    steps = scenario.run.steps
    reached = f"a run of run.steps = {steps} plays rounds 0..{steps - 1}"
    for index, event in enumerate(scenario.events):
        if event.at >= steps:
            lines.append(f"events.{index}.at: round {event.at} is never reached ({reached}); the event does nothing")
    for name, population in scenario.populations.items():
        plan = population.temperature
        if isinstance(plan, TemperatureSchedule):
            late = [start for start, _ in plan.schedule if start >= steps]
            if late:
                lines.append(f"populations.{name}.temperature.schedule: round {late[0]} is never reached ({reached})")
    market = scenario.market
    if market.spend_rule == "share" and market.unit != DEFAULT_UNIT:
        lines.append(f"market.unit: {market.unit:g} is not read under spend_rule share (only the unit rule reads it)")
    if market.spend_rule == "unit":
        for name, population in scenario.populations.items():
            if population.spend != DEFAULT_SPEND:
                lines.append(
                    f"populations.{name}.spend: {population.spend:g} is not read under spend_rule unit "
                    f"(each buyer spends market.unit = {market.unit:g} per round)"
                )
    return lines


def warn_of(lines: list[str]) -> None:
    """Each line as a :class:`ScenarioWarning` (the command line prints each as one line)."""
    for line in lines:
        warnings.warn(ScenarioWarning(line), stacklevel=4)  # the caller of simulate()


def check_files(scenario: Scenario) -> None:
    """Read the files a scenario names (an edge list, couplings), refusing one that cannot be used.

    What ``econspin check`` adds to validation, so that a corrupt file is found before a run;
    an edge list that leaves agents out is warned of. A generated network is not drawn here.
    """
    network = scenario.market.network
    if network is not None:
        check_generator(network)
        if network.edge_list is not None:
            draw_links(network, scenario.population_sizes, scenario.run.seed)
    couplings = scenario.market.couplings
    if couplings is not None and couplings.file is not None:
        coupling_matrix(couplings, scenario.agent_count, torch.float64)
        coupling_fields(scenario)


def preflight_run(scenario: Scenario, batch: int, rounds: int, wealth: bool = False) -> MemoryEstimate:
    """Before ``batch`` elements of a scenario play ``rounds`` rounds: the device, warnings, memory.

    Raises :class:`ScenarioError` (``cuda`` without a GPU) or
    :class:`~econspin.memory.MemoryBudgetError`; returns the estimate.
    """
    device = resolve_device(scenario.run.device)
    if scenario.market.network is not None:
        check_generator(scenario.market.network)
    warn_of(scenario_warnings(scenario))
    dtype = DTYPES[scenario.run.dtype]
    return check_memory(scenario, batch, dtype, device, rounds=rounds, wealth=wealth)


def confirm_grid(base: Scenario, value_counts: list[int], confirmed: bool) -> int:
    """The number of grid points, refused before any point is made if there are too many.

    Over MAX_POINTS_UNCONFIRMED points a sweep needs ``confirmed`` (``--yes``); then the
    points' scenarios and the sweep's whole table, held with one element of ``base``, must
    fit this machine (:class:`~econspin.memory.MemoryBudgetError`).
    """
    points = math.prod(value_counts)
    replicas, steps = base.run.replicas, base.run.steps
    if points > MAX_POINTS_UNCONFIRMED and not confirmed:
        product = " x ".join(str(count) for count in value_counts)
        raise ScenarioError(
            f"--grid: {product} = {points} points x {replicas} replicas; over {MAX_POINTS_UNCONFIRMED} points "
            "a sweep starts only with --yes"
        )
    check_memory(
        base, 1, DTYPES[base.run.dtype], resolve_device(base.run.device), rounds=steps,
        table_rows=points * replicas * steps, points=points,
        what=f"{points} points x {replicas} replicas of {base.agent_count} agents",
    )  # fmt: skip
    return points


def preflight_sweep(points: list[tuple[dict, Scenario]], replicas: int, steps: int, device: str, dtype: str):
    """Before a sweep: the device, each point's warnings (once each), and the memory of its largest batches.

    Each batch of one shape is checked as it will run, with the whole sweep's table and its
    point scenarios held beside it. Returns the largest estimate.
    """
    from econspin.sweep import plan_batches  # sweep runs rollouts, whose module calls this one

    resolved = resolve_device(device)
    seen: dict[str, None] = {}
    for _, scenario in points:
        seen.update(dict.fromkeys(scenario_warnings(scenario)))
    warn_of(list(seen))
    rows = len(points) * replicas * steps
    largest, checked = None, set()
    for batch in plan_batches(points, replicas, dtype):
        first = points[batch[0][0]][1]
        shape = (shape_signature(first), len(batch))
        if shape in checked:
            continue
        checked.add(shape)
        estimate = check_memory(
            first, len(batch), DTYPES[dtype], resolved, rounds=steps, table_rows=rows, points=len(points),
            what=f"{len(points)} points x {replicas} replicas ({len(batch)} batch elements of {first.agent_count} "
            "agents at a time)",
        )  # fmt: skip
        if largest is None or estimate.total > largest.total:
            largest = estimate
    return largest
