"""The per-agent reference model, written the plain Mesa way on the independent oracle.

Each round every agent, one at a time, looks at what the others offer (their queries, keys
and goods, computed from the old state), computes its own utilities over the sellers it may
buy from, makes its logit choice and spends its budget; then every agent updates its state
and money (synchronous update: all read the old state, then all write the new). The rules
are those of :mod:`econspin.reference`, whose functions it calls, so the engine can be held
to it agent by agent: in expected mode to rounding, in sampled mode in distribution. It is
also the per-agent baseline the engine's speed is measured against.

The quenched disorder (projections, W_O, fields, initial states) is the engine's for the
same scenario and seed, so the two start from the same economy; the sampled mode draws from
Mesa's own generator (``model.rng``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mesa
import numpy as np
import torch

from econspin.economy import build_economy, resolve_device
from econspin.mesa.model import scenario_with_settings
from econspin.reference import (
    ReferenceState,
    agent_update,
    buyer_choice,
    draw_sellers,
    from_engine,
    offers,
)
from econspin.scenario import Scenario
from econspin.state import initial_state


class ReferenceAgent(mesa.Agent):
    """An agent that chooses and updates itself with numpy.

    Attributes:
        index: position in the economy (the engine's agent index).
        population: its population's name.
        state: x_i (d,); field: h_i (d,); wealth: w_i; temperature: T_i.
        revenue, spending: of the last round.
    """

    def __init__(self, model: "ReferenceModel", index: int, population: str, start: ReferenceState):
        super().__init__(model)
        self.index = index
        self.population = population
        self.state = start.states[index].copy()
        self.field = start.fields[index].copy()
        self.wealth = float(start.money[index])
        self.temperature = float(start.temperature[index])
        self.revenue = 0.0
        self.spending = 0.0

    def choose(self) -> None:
        """Logit choice over the sellers this agent may buy from; pay them (read the old state)."""
        model = self.model
        self._choice = buyer_choice(model.economy, model.snapshot, model.offers, self.index)
        self.spending = self._choice.spending
        self._received = np.zeros_like(self.state)
        if not self._choice.alpha.any():
            return
        heads = len(self._choice.alpha)
        if model.sampled:
            picks, self._received = draw_sellers(self._choice, model.offers, model.rng)
            np.add.at(model.revenue, picks, self.spending / heads)
        else:
            self._received = self._choice.received
            model.revenue[self._choice.sellers] += self.spending / heads * self._choice.alpha.sum(0)

    def update(self) -> None:
        """The new state from the field this agent felt, and its money after trade (write the new)."""
        rng = self.model.rng if self.model.sampled else None
        model = self.model
        self.state = agent_update(model.economy, model.snapshot, self.index, self._received, self._choice, rng)
        self.revenue = float(model.revenue[self.index])
        self.wealth = self.wealth - self.spending + self.revenue


class ReferenceModel(mesa.Model):
    """A scenario played agent by agent; keyword settings as for EconSpinModel.

    ``seed`` is both Mesa's seed (the sampled draws) and the scenario's run seed (the economy
    the engine would build); ``rng`` seeds Mesa's generator only.
    """

    def __init__(self, scenario: Scenario | str | Path | dict, *, seed: int | None = None, rng=None, **settings: Any):
        super().__init__(seed=seed, rng=rng)
        scenario = scenario_with_settings(scenario, settings)
        if seed is not None:
            scenario = scenario.with_run_settings(seed=int(seed))
        self.scenario = scenario
        self.sampled = scenario.market.mode == "sampled"
        # the engine compiles the quenched disorder (in float64: the reference computes in float64)
        engine_economy = build_economy([scenario], [0], resolve_device("cpu"), torch.float64)
        engine_state = initial_state(engine_economy, [scenario], [0])
        self.economy, start = from_engine(engine_economy, engine_state)
        names = engine_economy.population_names
        self._agents_by_index = [
            ReferenceAgent(self, index, names[population], start)
            for index, population in enumerate(self.economy.population)
        ]
        self.datacollector = mesa.DataCollector(
            model_reporters={"total_wealth": total_wealth, "gini": gini},
            agent_reporters={"wealth": "wealth", "population": "population"},
        )
        self.datacollector.collect(self)

    def agent_at(self, index: int) -> ReferenceAgent:
        """The agent at the economy's position ``index``."""
        return self._agents_by_index[index]

    def reference_state(self) -> ReferenceState:
        """Every agent's state, field, money and temperature, stacked in index order."""
        agents = self._agents_by_index
        return ReferenceState(
            states=np.stack([agent.state for agent in agents]),
            fields=np.stack([agent.field for agent in agents]),
            money=np.array([agent.wealth for agent in agents]),
            temperature=np.array([agent.temperature for agent in agents]),
        )

    def step(self) -> None:
        """One round (:meth:`play_round`), then the data collector's record."""
        self.play_round()
        self.datacollector.collect(self)

    def play_round(self) -> None:
        """Every agent chooses on the old state, then every agent updates (what the benchmark times)."""
        self.snapshot = self.reference_state()
        self.offers = offers(self.economy, self.snapshot)
        self.revenue = np.zeros(len(self._agents_by_index))  # what the sellers take in this round
        self.agents.do("choose")
        self.agents.do("update")


def total_wealth(model: ReferenceModel) -> float:
    """Sum of money (conserved)."""
    return float(sum(agent.wealth for agent in model.agents))


def gini(model: ReferenceModel) -> float:
    """Half the relative mean absolute difference of wealth."""
    wealth = np.array([agent.wealth for agent in model.agents])
    return float(np.abs(wealth[:, None] - wealth[None, :]).sum() / (2 * len(wealth) ** 2 * wealth.mean()))
