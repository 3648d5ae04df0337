"""An econspin economy as a Mesa model: Mesa's agents, data collector and batch_run over the engine.

The engine advances every agent at once, as one batched tensor round; this module is a rim
around it. ``model.agents`` holds one :class:`EconSpinAgent` per econspin agent, whose
``wealth``, ``state``, ``temperature``, ``revenue`` and ``spending`` read the engine's tensors
(batch element 0) when asked, so nothing is copied per round. ``model.step()`` plays one
engine round (schedules and events included) and collects the engine's metrics as model
reporters and each agent's wealth as an agent reporter.

Keyword arguments change the scenario, so that ``mesa.batch_run`` can vary them:

- a dotted key path, as ``--set`` takes it: ``**{"populations.ai.temperature": 0.05}``;
- ``<population>_<setting>`` for a population's temperature, spend, eta or count
  (``ai_temperature=0.05``);
- a market setting by name: ``visibility``, ``mode``, ``response``, ``d``, ``heads``,
  ``spend_rule``.

Seeding follows Mesa: ``seed=s`` seeds Mesa's ``random`` and ``rng`` and is the engine's
run seed (so ``EconSpinModel(scenario, seed=s)`` reproduces ``simulate(scenario, seed=s)``);
``rng=...`` seeds Mesa's generator, from which the engine's seed is drawn; with neither, the
model is seeded afresh, as every Mesa model is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mesa
from mesa.discrete_space import FixedAgent
from mesa.discrete_space import Network as NetworkSpace

from econspin.metrics import measure, metric_functions
from econspin.network import build_graph
from econspin.scenario import Scenario, ScenarioError
from econspin.simulate import Rollout

POPULATION_SETTINGS = ("temperature", "spend", "eta", "count")
MARKET_SETTINGS = ("visibility", "mode", "response", "d", "heads", "spend_rule")


def scenario_with_settings(scenario: Scenario | str | Path | dict, settings: dict[str, Any]) -> Scenario:
    """A scenario (an object, a YAML path or a mapping) with keyword settings applied."""
    if isinstance(scenario, (str, Path)):
        scenario = Scenario.from_yaml(scenario)
    elif isinstance(scenario, dict):
        scenario = Scenario.from_dict(scenario)
    overrides = {}
    for name, value in settings.items():
        overrides[_key_path(scenario, name)] = value
    return scenario.with_overrides(overrides) if overrides else scenario


def _key_path(scenario: Scenario, name: str) -> str:
    if "." in name:
        return name
    if name in MARKET_SETTINGS:
        return f"market.{name}"
    for population in scenario.populations:
        for setting in POPULATION_SETTINGS:
            if name == f"{population}_{setting}":
                return f"populations.{population}.{setting}"
    known = [f"{p}_{s}" for p in scenario.populations for s in POPULATION_SETTINGS] + list(MARKET_SETTINGS)
    raise ScenarioError(f"EconSpinModel: unknown setting {name!r}; use a dotted key path or one of {known}")


class EconSpinAgent(FixedAgent):
    """One econspin agent; its attributes read the engine's tensors (batch element 0).

    Attributes:
        index: the agent's position in the engine's tensors.
        population: the name of its population.
    """

    def __init__(self, model: "EconSpinModel", index: int, population: str):
        super().__init__(model)
        self.index = index
        self.population = population

    @property
    def _state(self):
        return self.model.rollout.state

    @property
    def wealth(self) -> float:
        """Money w_i."""
        return float(self._state.money[0, self.index])

    @property
    def state(self):
        """x_i, a (d,) view into the engine's state tensor."""
        return self._state.states[0, self.index]

    @property
    def temperature(self) -> float:
        """Decision noise T_i."""
        return float(self._state.temperature[0, self.index])

    @property
    def revenue(self) -> float:
        """R_i of the last round."""
        return float(self._state.revenue[0, self.index])

    @property
    def spending(self) -> float:
        """s_i of the last round."""
        return float(self._state.spending[0, self.index])


class EconSpinModel(mesa.Model):
    """A scenario run by the econspin engine, as a Mesa model (see the module docstring).

    Attributes:
        scenario: the scenario as run (settings applied, the engine's seed in run.seed).
        rollout: the engine's :class:`~econspin.simulate.Rollout` (one batch element).
        datacollector: model reporters for every metric, agent reporters for wealth.
        grid: a Mesa network space over the trade network, when the scenario has one.
    """

    def __init__(
        self,
        scenario: Scenario | str | Path | dict,
        *,
        seed: int | str | None = None,
        rng=None,
        device: str = "cpu",
        dtype: str | None = None,
        **kwargs: Any,  # the scenario settings; named kwargs because SolaraViz checks parameters by that name
    ):
        if isinstance(seed, str):  # a seed typed into a dashboard arrives as text
            try:
                seed = int(seed)
            except ValueError:
                raise ScenarioError(f"EconSpinModel: seed {seed!r} is not an integer") from None
        super().__init__(seed=seed, rng=rng)
        engine_seed = seed if seed is not None else int(self.rng.integers(2**62))
        scenario = scenario_with_settings(scenario, kwargs)
        self.scenario = scenario.with_run_settings(seed=engine_seed, replicas=1, device=device, dtype=dtype)
        run = self.scenario.run
        self.rollout = Rollout.create([self.scenario], [0], run.device, run.dtype)
        economy = self.rollout.economy
        names = economy.population_names
        populations = economy.population.tolist()
        self._agents_by_index = [EconSpinAgent(self, index, names[p]) for index, p in enumerate(populations)]
        self.grid = None
        if self.scenario.market.network is not None:
            graph = build_graph(self.scenario.market.network, self.scenario.population_sizes, run.seed)
            self.grid = NetworkSpace(graph, random=self.random)
            for agent in self._agents_by_index:
                agent.cell = self.grid[agent.index]
        self._latest = measure(self.rollout.state, economy)[0]
        self.datacollector = mesa.DataCollector(
            model_reporters={name: _reporter(name) for name in metric_functions(economy)},
            agent_reporters={"wealth": "wealth", "population": "population"},
        )
        self.datacollector.collect(self)

    @classmethod
    def from_yaml(cls, path: str | Path, **keywords: Any) -> "EconSpinModel":
        """The model of a scenario file (keywords as for the constructor)."""
        return cls(Scenario.from_yaml(path), **keywords)

    def step(self) -> None:
        """One engine round, then collect."""
        self.rollout.advance(1)
        self._latest = self.rollout.rows[-1][0]
        self.datacollector.collect(self)

    @property
    def metrics(self) -> dict[str, float]:
        """The engine's metrics after the last round (or of the initial state)."""
        return dict(zip(metric_functions(self.rollout.economy), self._latest.tolist()))

    def agent_at(self, index: int) -> EconSpinAgent:
        """The Mesa agent of the engine's agent ``index``."""
        return self._agents_by_index[index]


def _reporter(name: str):
    def report(model: EconSpinModel) -> float:
        return model.metrics[name]

    report.__name__ = name
    return report
