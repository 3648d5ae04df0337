"""The state of B economies between rounds: a frozen dataclass of batched tensors.

Besides what evolves (states, money, temperatures, fields) it keeps the record of the last
round's trade (revenue, spending, the entropy and surplus of each buyer's choice), which is
what the metrics read, and one random key per batch element: the draws of a round are a
function of (key, round, agent, ...) (see :mod:`econspin.randomness`), so the state is a
pure value and ``step(state)`` a pure function of it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

from econspin.couplings import coupling_fields
from econspin.economy import Economy
from econspin.randomness import STREAM_FIELDS, STREAM_INITIAL, Draws, derive_seed, dynamics_keys, round_draws
from econspin.scenario import (
    MoneyDistribution,
    Scenario,
    TemperatureDistribution,
    TemperatureSchedule,
    VectorDistribution,
)


@dataclass(frozen=True)
class State:
    """B economies of N agents after ``round`` rounds.

    Attributes:
        states: (B, N, d) agent states x_i (magnetisations in expected mode, spins in sampled).
        fields: (B, N, d) external fields h_i (fundamentals; events may shift them).
        money: (B, N) float64 wealth w_i >= 0.
        temperature: (B, N) decision noise T_i >= 0 (inf allowed: uniform choice).
        revenue: (B, N) float64, R_j of the last round.
        spending: (B, N) float64, s_i of the last round.
        entropy: (B, N) normalised entropy of buyer i's choice row (mean over markets).
        surplus: (B, N) inclusive value T_i log sum_j exp(u_ij / T_i) (mean over markets).
        round: rounds completed.
        random_keys: (B,) int64, the key of each element's draws, from (run seed, replica).
    """

    states: torch.Tensor
    fields: torch.Tensor
    money: torch.Tensor
    temperature: torch.Tensor
    revenue: torch.Tensor
    spending: torch.Tensor
    entropy: torch.Tensor
    surplus: torch.Tensor
    round: int
    random_keys: torch.Tensor

    def replace(self, **changes) -> "State":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def draws(self) -> Draws:
        """The random numbers of the round that follows this state: keys of (element, round, agent)."""
        return round_draws(self.random_keys, self.round, self.states.shape[1])

    def to(self, device) -> "State":
        """The same state on another device (its draws do not change: they are integer hashes)."""
        moved = {
            field.name: getattr(self, field.name).to(device)
            for field in dataclasses.fields(self)
            if isinstance(getattr(self, field.name), torch.Tensor)
        }
        return self.replace(**moved)


def initial_state(economy: Economy, scenarios: list[Scenario], replicas: list[int]) -> State:
    """Round-0 state of each batch element from its scenario and replica index.

    Elements whose draws come from the same inputs (:func:`_draw_inputs`: a sweep's points of one
    seed and replica, which differ in their temperatures) draw once and share the numbers.
    """
    device, dtype = economy.device, economy.dtype
    states, fields, money, temperature = [], [], [], []
    names = economy.population_names
    drawn: dict[tuple, tuple] = {}
    for scenario, replica in zip(scenarios, replicas):
        inputs = _draw_inputs(scenario, names, replica)
        if inputs not in drawn:
            drawn[inputs] = _element_draws(scenario, names, replica)
        x, h, w, t = drawn[inputs]
        states.append(x)
        fields.append(h)
        money.append(w)
        # a temperature that draws nothing is the element's own, whatever draws it shares
        populations = [scenario.populations[name] for name in names]
        own = [
            values if _draws_temperatures(p) else _temperatures(p.temperature, p.count, None)
            for p, values in zip(populations, t)
        ]
        temperature.append(np.concatenate(own))
    zeros = torch.zeros(len(scenarios), economy.agent_count, device=device)
    return State(
        states=torch.tensor(np.stack(states), dtype=dtype, device=device),
        fields=torch.tensor(np.stack(fields), dtype=dtype, device=device),
        money=torch.tensor(np.stack(money), dtype=torch.float64, device=device),
        temperature=torch.tensor(np.stack(temperature), dtype=dtype, device=device),
        revenue=zeros.double(),
        spending=zeros.double(),
        entropy=zeros.to(dtype),
        surplus=zeros.to(dtype),
        round=0,
        random_keys=dynamics_keys([scenario.run.seed for scenario in scenarios], replicas, device),
    )


def _draws_temperatures(population) -> bool:
    return isinstance(population.temperature, TemperatureDistribution)


def _draw_inputs(scenario: Scenario, names, replica: int) -> tuple:
    """What :func:`_element_draws` reads: the seed, the replica, the couplings and each population's specs.

    A population's temperature only where it is drawn (a distribution): else it consumes no draw.
    """
    specs = [
        (
            p.count,
            p.state.model_dump_json(),
            p.field.model_dump_json(),
            p.money.model_dump_json(),
            p.temperature.model_dump_json() if _draws_temperatures(p) else None,
        )
        for p in (scenario.populations[name] for name in names)
    ]
    couplings = scenario.market.couplings
    stored = couplings.model_dump_json() if couplings is not None else None
    return (scenario.run.seed, replica, scenario.market.d, stored, tuple(specs))


def _element_draws(scenario: Scenario, names, replica: int) -> tuple:
    """(x, h, w, the temperatures per population) of one element, from its initial and field streams."""
    seed = scenario.run.seed
    draw = np.random.default_rng(derive_seed(seed, STREAM_INITIAL, replica))
    quenched = np.random.default_rng(derive_seed(seed, STREAM_FIELDS))
    d = scenario.market.d
    x, h, w, t = [], [], [], []
    for name in names:
        population = scenario.populations[name]
        x.append(_vectors(population.state, population.count, d, draw))
        h.append(_vectors(population.field, population.count, d, quenched))
        w.append(_money(population.money, population.count, draw))
        t.append(_temperatures(population.temperature, population.count, draw))
    h = np.concatenate(h)
    stored = coupling_fields(scenario)
    if stored is not None:
        h = np.repeat(stored[:, None], d, axis=1)
    return np.concatenate(x), h, np.concatenate(w), t


def _vectors(spec: VectorDistribution, count: int, d: int, draw: np.random.Generator) -> np.ndarray:
    if spec.distribution == "constant":
        return np.full((count, d), spec.value)
    return draw.normal(0.0, spec.scale, size=(count, d)) if spec.scale > 0 else np.zeros((count, d))


def _money(spec: MoneyDistribution, count: int, draw: np.random.Generator) -> np.ndarray:
    mean = spec.mean
    if spec.distribution == "equal":
        return np.full(count, mean)
    if spec.distribution == "exponential":
        return draw.exponential(mean, size=count)
    if spec.distribution == "lognormal":
        return np.exp(math.log(mean) - spec.sigma**2 / 2 + spec.sigma * draw.standard_normal(count))
    minimum = mean * (spec.alpha - 1.0) / spec.alpha  # classical Pareto with this mean
    return minimum * (1.0 - draw.random(count)) ** (-1.0 / spec.alpha)


def _temperatures(spec, count: int, draw: np.random.Generator) -> np.ndarray:
    if isinstance(spec, TemperatureSchedule):
        return np.full(count, spec.at(0))
    if isinstance(spec, TemperatureDistribution):
        if spec.distribution == "uniform":
            return draw.uniform(spec.low, spec.high, size=count)
        if spec.distribution == "lognormal":
            if spec.mean == 0:
                return np.zeros(count)
            return np.exp(math.log(spec.mean) - spec.sigma**2 / 2 + spec.sigma * draw.standard_normal(count))
        if spec.sigma**2 == 0:  # a variation too small for a float: the limit, every agent at the mean
            return np.full(count, spec.mean)
        shape = 1.0 / spec.sigma**2  # gamma with coefficient of variation sigma
        return draw.gamma(shape, spec.mean / shape, size=count)
    return np.full(count, float(spec))
