"""Mesa's own Boltzmann wealth model (the introductory tutorial's MoneyModel), written the Mesa way.

N agents start with one unit of money each; every step every agent, one at a time in a fresh
random order (``shuffle_do``), gives one unit to another agent chosen uniformly at random if
it holds one; a ``DataCollector`` records the tutorial's Gini reporter. The tutorial draws
the recipient from all agents (itself included: a self-gift changes nothing); here it is drawn
from the other N - 1, as the engine's trade never pays oneself. The agents are kept in a tuple
for the draw, because ``AgentSet.__getitem__`` builds a list (O(N)) in Mesa 3.3.

The engine plays the same economy as ``scenarios/boltzmann_wealth.yaml`` with a synchronous
round (everyone pays out of the money held at the start of the round); the comparison of the
two laws is experiments/boltzmann_wealth.py, and the speed of the two is ``econspin bench``
(:mod:`econspin.bench_baselines`).
"""

from __future__ import annotations

import mesa
import numpy as np


def compute_gini(model: mesa.Model) -> float:
    """The tutorial's Gini reporter: 1 + 1/N - 2 B, B = sum_i x_(i) (N - i) / (N sum x)."""
    x = sorted(agent.wealth for agent in model.agents)
    n = model.num_agents
    b = sum(xi * (n - i) for i, xi in enumerate(x)) / (n * sum(x))
    return 1 + (1 / n) - 2 * b


class MoneyAgent(mesa.Agent):
    """The tutorial's agent: one unit of money at the start."""

    def __init__(self, model: mesa.Model):
        super().__init__(model)
        self.wealth = 1

    def random_other(self) -> "MoneyAgent":
        """A uniformly random agent other than self (the engine excludes self-trade)."""
        others = self.model.agent_tuple
        other = self.random.choice(others)
        while other is self:
            other = self.random.choice(others)
        return other

    def step(self) -> None:
        """The tutorial's move: act at once on the current wealth."""
        if self.wealth > 0:
            other = self.random_other()
            other.wealth += 1
            self.wealth -= 1


class MoneyModel(mesa.Model):
    """The tutorial's model: N agents, a Gini model reporter, random activation."""

    def __init__(self, n: int = 1000, seed: int | None = None):
        super().__init__(seed=seed)
        self.num_agents = n
        MoneyAgent.create_agents(model=self, n=n)
        self.agent_tuple = tuple(self.agents)  # O(1) random access for the recipient draw
        self.datacollector = mesa.DataCollector(model_reporters={"Gini": compute_gini})
        self.datacollector.collect(self)

    def step(self) -> None:
        """Every agent moves, one at a time in a fresh random order; then the Gini is recorded."""
        self.agents.shuffle_do("step")
        self.datacollector.collect(self)

    def wealth(self) -> np.ndarray:
        """Each agent's money, in creation order."""
        return np.array([agent.wealth for agent in self.agent_tuple], dtype=np.int64)
