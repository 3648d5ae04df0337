"""How far run.utility_precision: bfloat16 moves an economy from its float64 run, after 1 and 50 rounds.

    python -m experiments.reduced_precision_error --rounds 1 50

For each economy (scenarios/human_vs_ai.yaml as written, 4 replicas; the benchmark economy
of econspin bench at N = 1024, 4 replicas, d = 32: 80% at T = 1, 20% at T = 0.1) it runs the
same initial state three ways on the CPU: float64 (the reference), float32, and float32 with
bf16 utilities, and reports against float64, after each number of rounds:

- states: max |x - x64| / max |x64| over every agent and component;
- money shares: max |w_i / sum w - (w_i / sum w)_64| / max (w_i / sum w)_64;
- hhi, gini, attention entropy: the largest relative difference of the metric over replicas;
- population shares: the same for each population's share of all money (wealth_share_*);
- money drift: |sum w / sum w_0 - 1| (conservation), per precision;
- float64 replica spread: for the aggregates, (max - min) over the replicas / max |value| in
  the float64 run, the scale the seeds alone give them.

Writes experiments/results/bench/reduced_precision_error.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from econspin import Scenario
from econspin.bench import bench_scenario
from econspin.metrics import METRICS, metric_functions
from econspin.round import step
from econspin.simulate import Rollout

RUNS = {"float64": ("float64", "full"), "float32": ("float32", "full"), "bfloat16": ("float32", "bfloat16")}
REPLICAS = 4


def economies() -> dict[str, Scenario]:
    demo = Scenario.from_yaml(Path(__file__).resolve().parent.parent / "scenarios" / "human_vs_ai.yaml")
    return {"human_vs_ai": demo, "bench N=1024": bench_scenario(1024)}


def with_precision(scenario: Scenario, dtype: str, precision: str) -> Scenario:
    data = scenario.model_dump()
    data["run"].update(device="cpu", dtype=dtype, utility_precision=precision, replicas=REPLICAS)
    return Scenario.from_dict(data)


def relative(want: torch.Tensor, got: torch.Tensor) -> float:
    return float((got.double() - want.double()).abs().max() / want.double().abs().max().clamp(min=1e-300))


def observables(state, economy) -> dict[str, torch.Tensor]:
    money = state.money.double()
    found = {"states": state.states, "money shares": money / money.sum(1, keepdim=True)}
    found.update({name: METRICS[name](state, economy) for name in ("hhi", "gini", "attention_entropy")})
    shares = [function(state, economy) for name, function in metric_functions(economy).items() if "share" in name]
    found["population shares"] = torch.stack(shares, dim=1)
    return found


def measure(scenario: Scenario, rounds: list[int]) -> dict:
    runs = {}
    for name, (dtype, precision) in RUNS.items():
        specified = with_precision(scenario, dtype, precision)
        runs[name] = Rollout.create([specified] * REPLICAS, list(range(REPLICAS)), "cpu", dtype)
    start = runs["float64"].state.money.sum(1)
    states = {name: run.state for name, run in runs.items()}
    result, done = {}, 0
    with torch.no_grad():
        for target in sorted(rounds):
            for name, run in runs.items():
                for _ in range(target - done):
                    states[name] = step(states[name], run.economy)
            done = target
            want = observables(states["float64"], runs["float64"].economy)
            row = {}
            for name in ("float32", "bfloat16"):
                got = observables(states[name], runs[name].economy)
                row[name] = {key: relative(want[key], got[key]) for key in want}
                row[name]["money drift"] = float((states[name].money.sum(1) / start - 1).abs().max())
            # the natural scale of an aggregate: how much it differs between replicas (seeds) in float64
            row["float64 replica spread"] = {
                key: float((value.amax(0) - value.amin(0)).abs().max() / value.abs().max().clamp(min=1e-300))
                for key, value in want.items()
                if key not in ("states", "money shares")
            }
            result[target] = row
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, nargs="+", default=[1, 50])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("experiments/results/bench/reduced_precision_error.json"))
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    results = {name: measure(scenario, arguments.rounds) for name, scenario in economies().items()}
    for name, by_round in results.items():
        for rounds, row in by_round.items():
            for precision, errors in row.items():
                shown = ", ".join(f"{key} {value:.1e}" for key, value in errors.items())
                print(f"{name}, {rounds} rounds, {precision}: {shown}")
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps({"torch": torch.__version__, "results": results}, indent=2))
    print(f"wrote {arguments.out}")


if __name__ == "__main__":
    main()
