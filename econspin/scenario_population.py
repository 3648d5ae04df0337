"""One population of a scenario: its agents' temperatures, initial draws, projections and correction.

The distributions each agent's money, state, field and temperature are drawn from, the
projections W_Q, W_K, W_V and the self-impact correction, validated as :mod:`econspin.scenario`
validates the rest (:mod:`econspin.scenario_base`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from econspin.scenario_base import NonNegativeFloat, PositiveFloat, Seed, StrictModel, VariantModel


class MoneyDistribution(VariantModel):
    """Initial money per agent, scaled so that its mean is ``mean``."""

    CHOICE = "distribution"
    READS = {"equal": {}, "exponential": {}, "lognormal": {"sigma": 1.0}, "pareto": {"alpha": 2.0}}

    distribution: Literal["equal", "exponential", "lognormal", "pareto"] = "equal"
    mean: PositiveFloat = 1.0
    sigma: PositiveFloat | None = None  # lognormal: standard deviation of log w (default 1)
    alpha: Annotated[float, Field(gt=1)] | None = None  # pareto tail exponent, > 1: finite mean (default 2)


class VectorDistribution(VariantModel):
    """Initial states x or fields h: i.i.d. normal components, or every component ``value``."""

    CHOICE = "distribution"
    READS = {"normal": {"scale": 1.0}, "constant": {"value": 0.0}}

    distribution: Literal["normal", "constant"] = "normal"
    scale: NonNegativeFloat | None = None  # normal: standard deviation (default 1)
    value: float | None = None  # constant (default 0)


class TemperatureSchedule(StrictModel):
    """Piecewise-constant temperature: ``[[round, T], ...]``, each T holding from its round on."""

    schedule: list[tuple[Annotated[int, Field(ge=0)], NonNegativeFloat]]

    @field_validator("schedule")
    @classmethod
    def _starts_at_zero(cls, points):
        if not points:
            raise ValueError("a schedule needs at least one [round, temperature] pair")
        rounds = [point[0] for point in points]
        if rounds != sorted(rounds) or len(set(rounds)) != len(rounds):
            raise ValueError("schedule rounds must increase")
        if rounds[0] != 0:
            raise ValueError("a schedule must start at round 0")
        return points

    def at(self, round_index: int) -> float:
        """The temperature in force at ``round_index``."""
        value = self.schedule[0][1]
        for start, temperature in self.schedule:
            if start <= round_index:
                value = temperature
        return value


class TemperatureDistribution(VariantModel):
    """Temperature drawn once per agent (heterogeneous decision noise)."""

    CHOICE = "distribution"
    READS = {
        "lognormal": {"mean": 1.0, "sigma": 0.5},
        "gamma": {"mean": 1.0, "sigma": 0.5},
        "uniform": {"low": 0.0, "high": 1.0},
    }

    distribution: Literal["lognormal", "uniform", "gamma"]
    mean: NonNegativeFloat | None = None  # lognormal, gamma (default 1)
    sigma: PositiveFloat | None = None  # lognormal: std of log T; gamma: coefficient of variation (default 0.5)
    low: NonNegativeFloat | None = None  # uniform (default 0)
    high: NonNegativeFloat | None = None  # uniform (default 1)

    @model_validator(mode="after")
    def _low_below_high(self):
        if self.distribution == "uniform" and self.low > self.high:
            raise ValueError(f"distribution uniform needs low <= high (got low {self.low}, high {self.high})")
        return self


def _temperature_kind(value: Any) -> str:
    """Which form of temperature a value is, so that errors come from that form only."""
    if isinstance(value, TemperatureSchedule) or (isinstance(value, dict) and "schedule" in value):
        return "TemperatureSchedule"
    return "TemperatureDistribution" if isinstance(value, (dict, TemperatureDistribution)) else "float"


Temperature = Annotated[
    Union[
        Annotated[NonNegativeFloat, Tag("float")],
        Annotated[TemperatureSchedule, Tag("TemperatureSchedule")],
        Annotated[TemperatureDistribution, Tag("TemperatureDistribution")],
    ],
    Discriminator(_temperature_kind),
]


class Projections(VariantModel):
    """W_Q, W_K, W_V of a population, per head: entries N(0, scale^2 / d)."""

    CHOICE = "init"
    READS = {"random": {"seed": None}, "identity": {}}

    init: Literal["random", "identity"] = "random"  # identity: W = scale * I (needs d_k = d_v = d)
    scale: NonNegativeFloat = 1.0
    tied: bool = False  # W_Q = W_K and values = keys: the symmetric (Hopfield) limit
    seed: Seed | None = None  # random: default drawn from the run's seed


class Correction(VariantModel):
    """The self-impact (Onsager) correction: none, tap (closed form) or ffn (an MLP)."""

    CHOICE = "form"
    READS = {
        "none": {},
        "tap": {},
        "ffn": {"weights": None, "hidden": 16, "scale": 0.0, "seed": None, "features": "state"},
    }

    form: Literal["none", "tap", "ffn"] = "none"
    weights: str | None = None  # ffn: a .pt file with w1, b1, w2, b2 (then scale and seed are unused)
    hidden: Annotated[int, Field(gt=0)] | None = None  # ffn width (default 16)
    scale: NonNegativeFloat | None = None  # ffn random-init scale (default 0: starts as no correction)
    seed: Seed | None = None  # ffn random init; default drawn from the run's seed
    # ffn inputs: state (x_i, V_i, kappa_i) or invariant (rotation invariants gating theta_i and x_i)
    features: Literal["state", "invariant"] | None = None

    @classmethod
    def options_read(cls, data: dict) -> dict[str, Any]:
        if data.get("form") == "ffn" and data.get("weights") is not None:
            return {"weights": None, "hidden": 16, "features": "state"}  # the weights come from the file
        return super().options_read(data)

    @classmethod
    def variant_name(cls, data: dict) -> str:
        return "form ffn with weights from a file" if data.get("weights") is not None else super().variant_name(data)


class Population(StrictModel):
    """One kind of agent (e.g. human, ai)."""

    count: Annotated[int, Field(gt=0, lt=2**63)]  # a torch int64 holds it; memory refuses far fewer
    temperature: Temperature = 1.0
    spend: Annotated[float, Field(gt=0, le=1)] = 0.1
    eta: Annotated[float, Field(ge=0, le=1)] = 1.0
    buys: bool = True
    sells: bool = True
    state: VectorDistribution = VectorDistribution()
    field: VectorDistribution = VectorDistribution(scale=0.5)
    money: MoneyDistribution = MoneyDistribution()
    projections: Projections = Projections()
    correction: Correction = Correction()
