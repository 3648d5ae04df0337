"""How close the FlexAttention kernel (econspin.flex) lies to the fused one as the temperature falls.

    python -m experiments.flex_low_temperature

For 64 agents at one temperature T (two populations, two heads, visibility 2, five agents
without money: premiums of gamma ln 1e-12, so |z| reaches 55 / T), float64 and float32, it
prints the largest error of every MarketOutcome field against the fused kernel, relative to
the field's scale (the measure of tests/fused_cases.assert_outcomes_close), for the flex
kernel and, beside it, for the reference kernel: the spread the rounding of the utilities
themselves gives at that temperature. docs/performance.md reports a run of it.
"""

from __future__ import annotations

import dataclasses

import torch

from econspin.flex import flex_trade
from econspin.fused import fused_trade
from econspin.market import MarketOutcome, trade
from econspin.scenario import Scenario
from econspin.simulate import Rollout

TEMPERATURES = (5e-2, 1e-2, 1e-3, 1e-6, 1e-10, 1e-20)


def largest_error(want: MarketOutcome, got: MarketOutcome) -> tuple[str, float]:
    """(field, error) of the field farthest from ``want``, relative to |want| + its scale + 1."""
    errors = {}
    for field in dataclasses.fields(MarketOutcome):
        wanted, gotten = getattr(want, field.name).double(), getattr(got, field.name).double()
        finite = torch.isfinite(wanted)
        scale = wanted[finite].abs().max() if finite.any() else 0.0
        error = (wanted[finite] - gotten[finite]).abs() / (wanted[finite].abs() + scale + 1.0)
        errors[field.name] = float(error.max()) if error.numel() else 0.0
    return max(errors.items(), key=lambda item: item[1])


def economy_at(temperature: float, dtype: str):
    populations = {
        "human": {"count": 40, "temperature": temperature, "spend": 0.3, "money": {"distribution": "pareto"}},
        "ai": {"count": 24, "temperature": temperature, "spend": 0.9, "money": {"distribution": "exponential"}},
    }
    scenario = Scenario.from_dict(
        {"populations": populations, "market": {"d": 4, "heads": 2, "visibility": 2.0}, "run": {"device": "cpu"}}
    )
    rollout = Rollout.create([scenario], [0], "cpu", dtype)
    state = rollout.state.replace(money=rollout.state.money.index_fill(1, torch.arange(5), 0.0))
    return state, rollout.economy


def main() -> None:
    print("dtype    T        flex - fused (field)           reference - fused (field)")
    with torch.no_grad():
        for dtype in ("float64", "float32"):
            for temperature in TEMPERATURES:
                state, economy = economy_at(temperature, dtype)
                fused = fused_trade(state, economy)
                flex = largest_error(fused, flex_trade(state, dataclasses.replace(economy, kernel="flex")))
                reference = largest_error(fused, trade(state, economy))
                print(
                    f"{dtype}  {temperature:<8.0e} {flex[1]:9.2e} ({flex[0]:<16}) {reference[1]:9.2e} ({reference[0]})"
                )


if __name__ == "__main__":
    main()
