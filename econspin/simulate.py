"""The rollout: build the economy, repeat the round, record the metrics table.

``simulate`` is the one-call entry point. ``Rollout`` is the same thing in pieces, for
callers that checkpoint, resume or batch sweep points (the command line).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import torch

from econspin.economy import DTYPES, Economy, build_economy, resolve_device
from econspin.metrics import measure, measure_played, metric_functions
from econspin.preflight import preflight_run
from econspin.response import RejectionBudget
from econspin.round import step
from econspin.scenario import Scenario, ScenarioError, TemperatureSchedule
from econspin.state import State, initial_state


@dataclass
class SimulationResult:
    """What a run returns.

    Attributes:
        metrics: one row per batch element per round, step 0 (the initial state) first: step,
            replica, then the observables.
        state: the final :class:`~econspin.state.State`.
        economy: the compiled :class:`~econspin.economy.Economy`.
        scenario: the scenario as run (overrides applied).
        wall_time: seconds spent in rounds.
        previous: the state the last round was played from (None if no round was played);
            :func:`econspin.flows.trade_network` recomputes that round's flows from it.
    """

    metrics: pd.DataFrame
    state: State
    economy: Economy
    scenario: Scenario
    wall_time: float
    previous: State | None = None


CHUNK_ROUNDS = 32  # rounds between copies of the metrics to the host (docs/performance.md, "The sync-free rollout")
REJECTION_ATTEMPTS = 24  # Wood's attempts per agent in a sync-free round: a replay is rarer than 1 in 10^4 chunks


def uses_sync_free_draws(economy: Economy) -> bool:
    """Whether sampled rounds draw with a fixed budget of attempts rather than Wood's loop.

    Where the host waits on a device (CUDA) or the round is captured as a graph
    (``run.compile: reduce-overhead``). On the CPU the loop is cheaper: it makes 2 attempts
    an agent (8 more for the few without one accepted) rather than the budget's 24
    (1.2-2.4x the sampled round in two runs, docs/performance.md).
    """
    return economy.device.type == "cuda" or economy.compile == "reduce-overhead"


def read_host_facts(economy: Economy) -> None:
    """Read once, before any round, what rounds would otherwise read back from the device each time.

    Who buys, sells and belongs to each population (the metrics select them) and the sparse
    network's row offsets (its kernel plans its chunks on the host); both are cached on
    their objects.
    """
    economy.members  # noqa: B018 (a cached property: reading it is the point)
    if economy.trade_edges is not None:
        economy.trade_edges.host_offsets  # noqa: B018


@dataclass
class Rollout:
    """B batch elements (scenario point, replica) advanced together, round by round.

    ``previous`` is the state the last round was played from (schedules and events applied),
    kept so that the round's money flows can be recomputed (:mod:`econspin.flows`); None
    before the first round.

    ``rows`` holds each recorded round's (B, M) metrics on the host. :meth:`advance` plays
    ``chunk_rounds`` rounds at a time without reading anything back from the device; with
    ``sync_free`` (by default on CUDA and under ``run.compile: reduce-overhead``, see
    :func:`uses_sync_free_draws`) sampled rounds draw their spins with a budget of
    ``rejection_attempts`` attempts. The results are the same bits whatever these settings.
    """

    scenarios: list[Scenario]
    replicas: list[int]
    economy: Economy
    state: State
    rows: list[torch.Tensor] = field(default_factory=list)
    previous: State | None = None
    chunk_rounds: int = CHUNK_ROUNDS
    sync_free: bool | None = None
    rejection_attempts: int = REJECTION_ATTEMPTS
    replayed_chunks: int = 0

    def __post_init__(self):
        if self.chunk_rounds < 1:
            raise ValueError(f"chunk_rounds must be at least 1, not {self.chunk_rounds}")
        if self.sync_free is None:
            self.sync_free = uses_sync_free_draws(self.economy)
        read_host_facts(self.economy)

    @classmethod
    def create(
        cls,
        scenarios: list[Scenario],
        replicas: list[int],
        device: str = "auto",
        dtype: str = "float32",
        disorder_per_replica: bool = False,
    ) -> "Rollout":
        """Compile the economy and its round-0 state."""
        economy = build_economy(scenarios, replicas, resolve_device(device), DTYPES[dtype], disorder_per_replica)
        return cls(scenarios, replicas, economy, initial_state(economy, scenarios, replicas))

    def advance(self, rounds: int, on_round: Callable[[int], None] | None = None) -> None:
        """Play ``rounds`` rounds, applying schedules and events, recording metrics.

        A rollout first advanced from round 0 records the initial state first (step 0), as it
        stands then: a caller may have replaced the state after :meth:`create`.

        Rounds are played in chunks of ``chunk_rounds``: within a chunk nothing is read back
        from the device (the metrics stay device tensors, and sampled rounds draw with a
        :class:`~econspin.wood.RejectionBudget` where ``sync_free`` says so), and each
        chunk's metrics are copied to the host at once at its end. ``on_round`` is called with
        the round number after each round is played, as it is queued: on a GPU the device may
        still be computing it.
        """
        with torch.no_grad():
            pending = []
            if self.state.round == 0 and not self.rows:
                pending.append(measure(self.state, self.economy))
            played = 0
            while played < rounds or pending:
                count = min(self.chunk_rounds, rounds - played)
                pending += self._play_chunk(count, on_round)
                self.rows.extend(torch.stack(pending).cpu().unbind(0))  # the chunk's one copy to the host
                pending = []
                played += count

    def _play_chunk(self, rounds: int, on_round: Callable[[int], None] | None) -> list[torch.Tensor]:
        """``rounds`` rounds with no host synchronisation but, at the end, one read of the budget.

        Where a draw ran out of attempts (``budget.unresolved`` > 0, rare: see
        docs/performance.md, "The sync-free rollout"), the chunk is played again from its
        start with Wood's exact loop; every draw is counter-based, so the replay gives every
        agent the number the loop would have given it in the first place.
        """
        start, start_previous = self.state, self.previous
        budget = None
        if self.sync_free and self.economy.mode == "sampled":
            budget = RejectionBudget.on(self.economy.device, self.rejection_attempts)
        rows = self._play(rounds, budget, on_round)
        if budget is not None and bool(budget.unresolved):
            self.state, self.previous = start, start_previous
            self.replayed_chunks += 1
            rows = self._play(rounds, None, None)  # on_round has already seen these rounds
        return rows

    def _play(self, rounds: int, budget: RejectionBudget | None, on_round) -> list[torch.Tensor]:
        rows = []
        # apply_plan reads every element's scenario in Python (0.15 ms a round at B = 64): only where there is a plan
        planned = has_plan(self.scenarios)
        for _ in range(rounds):
            self.previous = apply_plan(self.state, self.economy, self.scenarios) if planned else self.state
            self.state = step(self.previous, self.economy, budget)
            rows.append(measure_played(self.state, self.economy))
            if on_round is not None:
                on_round(self.state.round)
        return rows

    def metrics(self) -> pd.DataFrame:
        """The rounds recorded by this rollout as a long table (one row per element per round).

        Steps are numbered by round: step 0 is the initial state (trade metrics NaN), and a
        rollout resumed at round r records from step r + 1.
        """
        names = list(metric_functions(self.economy))
        if not self.rows:
            return pd.DataFrame(columns=["step", "replica", *names])
        values = torch.stack(self.rows).cpu().numpy()  # (rounds, B, M)
        rounds, batch, _ = values.shape
        first_step = self.state.round - rounds + 1
        table = pd.DataFrame(values.reshape(rounds * batch, -1), columns=names)
        table.insert(0, "replica", np.tile(np.asarray(self.replicas), rounds))
        table.insert(0, "step", np.repeat(np.arange(first_step, first_step + rounds), batch))
        return table


def has_plan(scenarios: list[Scenario]) -> bool:
    """Whether any element has a temperature schedule or an event: else :func:`apply_plan` changes nothing."""
    return any(
        scenario.events
        or any(isinstance(population.temperature, TemperatureSchedule) for population in scenario.populations.values())
        for scenario in scenarios
    )


def apply_plan(state: State, economy: Economy, scenarios: list[Scenario]) -> State:
    """Temperatures from schedules and events that take effect before round ``state.round``."""
    now = state.round
    temperature, fields = state.temperature, state.fields
    changed_temperature = changed_fields = False
    for element, scenario in enumerate(scenarios):
        for index, name in enumerate(economy.population_names):
            plan = scenario.populations[name].temperature
            if isinstance(plan, TemperatureSchedule) and now > 0 and any(start == now for start, _ in plan.schedule):
                temperature = _set_rows(
                    temperature, changed_temperature, element, economy.population_mask(index), plan.at(now)
                )
                changed_temperature = True
        for event in scenario.events:
            if event.at != now:
                continue
            index = economy.population_names.index(event.population)
            mask = economy.population_mask(index)
            if event.temperature is not None:
                temperature = _set_rows(temperature, changed_temperature, element, mask, event.temperature)
                changed_temperature = True
            if event.field_shift is not None:
                if not changed_fields:
                    fields = fields.clone()
                    changed_fields = True
                shifted = fields[element] + event.field_shift * economy.field_direction[element, index]
                fields[element] = torch.where(mask[:, None], shifted, fields[element])
    if not (changed_temperature or changed_fields):
        return state
    return state.replace(temperature=temperature, fields=fields)


def _set_rows(tensor, already_copied, element, mask, value):
    # torch.where rather than tensor[element, mask] = value: assignment through a bool mask
    # sizes itself from the mask's values, which on a GPU makes the host wait (the same bits)
    tensor = tensor if already_copied else tensor.clone()
    tensor[element] = torch.where(mask, value, tensor[element])
    return tensor


def simulate(
    scenario: Scenario,
    steps: int | None = None,
    seed: int | None = None,
    replicas: int | None = None,
    device: str | None = None,
    dtype: str | None = None,
    chunk: int | None = None,
) -> SimulationResult:
    """Run a scenario: ``replicas`` independent copies for ``steps`` rounds.

    Arguments left as None take the scenario's ``run`` section. ``device="auto"`` uses CUDA
    where present. Returns the metrics table and the final state.

    Before anything is allocated, a run that cannot fit ``run.memory_budget_mb`` or this
    machine raises :class:`~econspin.memory.MemoryBudgetError` (a ScenarioError) with the
    estimate and the budget, and options the run would not act on are warned of
    (:class:`~econspin.scenario.ScenarioWarning`); see :mod:`econspin.preflight`.
    """
    scenario = scenario.with_run_settings(
        steps=steps, seed=seed, replicas=replicas, device=device, dtype=dtype, chunk=chunk
    )
    run = scenario.run
    preflight_run(scenario, run.replicas, run.steps)
    replica_indices = list(range(run.replicas))
    rollout = Rollout.create([scenario] * run.replicas, replica_indices, run.device, run.dtype)
    started = time.perf_counter()
    rollout.advance(run.steps)
    wall_time = time.perf_counter() - started
    return SimulationResult(rollout.metrics(), rollout.state, rollout.economy, scenario, wall_time, rollout.previous)


__all__ = ["simulate", "SimulationResult", "Rollout", "ScenarioError"]
