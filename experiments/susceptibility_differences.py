"""Autograd susceptibilities against central differences: the relative errors, input by observable.

The economy of tests/test_susceptibility.py (7 human agents at T = 1, 5 AI agents at T = 0.2,
d = 4, two heads, visibility 0.3, seed 2), 3 rounds, float64. The central difference
[O(p + h) - O(p - h)] / 2h, h = 1e-5, comes from two runs of the scenario with the key moved
(the field: with events at round 0 shifting every population's h along its direction), on
the default (fused) kernel; the autograd value from :func:`econspin.susceptibility`.

Run: ``python -m experiments.susceptibility_differences`` (seconds); writes
``experiments/results/susceptibility_differences/differences.csv`` and prints the table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

from econspin import Scenario, simulate
from econspin.susceptibilities import input_value, parse_input, susceptibility

INPUTS = ["populations.ai.temperature", "populations.human.spend", "populations.ai.eta", "market.visibility", "field"]
OBSERVABLES = ["order", "hhi", "gini", "attention_entropy", "wealth_share_ai"]
STEP = 1e-5


def economy() -> Scenario:
    return Scenario.from_dict({
        "populations": {
            "human": {"count": 7, "temperature": 1.0, "spend": 0.2, "eta": 0.6},
            "ai": {"count": 5, "temperature": 0.2, "spend": 0.3, "eta": 0.8},
        },
        "market": {"d": 4, "heads": 2, "visibility": 0.3},
        "run": {"device": "cpu", "seed": 2},
    })


def moved(base: Scenario, wrt: str, shift: float) -> Scenario:
    if wrt == "field":
        events = [{"at": 0, "population": name, "field_shift": shift} for name in base.populations]
        return base.with_overrides({"events": events})
    return base.with_overrides({wrt: input_value(base, parse_input(wrt, base)) + shift})


def central_difference(base: Scenario, observable: str, wrt: str, steps: int) -> float:
    def final(shift: float) -> float:
        metrics = simulate(moved(base, wrt, shift), steps=steps, replicas=1, dtype="float64").metrics
        return float(metrics[observable].iloc[-1])

    return (final(STEP) - final(-STEP)) / (2 * STEP)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", type=Path, default=Path("experiments/results/susceptibility_differences"))
    parser.add_argument("--steps", type=int, default=3)
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    base, rows = economy(), []
    for wrt in INPUTS:
        for observable in OBSERVABLES:
            autograd = susceptibility(base, observable, wrt, steps=arguments.steps, replicas=1).mean
            difference = central_difference(base, observable, wrt, arguments.steps)
            rows.append({"input": wrt, "observable": observable, "autograd": autograd, "central_difference": difference,
                         "relative_error": abs(autograd - difference) / abs(difference)})
    table = pd.DataFrame(rows)
    arguments.out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(arguments.out_dir / "differences.csv", index=False)
    print(table.to_string(index=False))
    print(f"largest relative error {table.relative_error.max():.2g}, median {table.relative_error.median():.2g}")


if __name__ == "__main__":
    main()
