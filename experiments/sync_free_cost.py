"""CPU cost of the sync-free rollout: sampled rounds with Wood's loop against a fixed budget of attempts.

    python -m experiments.sync_free_cost [--repeats 7]

For each case, a rollout is advanced ``ROUNDS`` rounds with ``sync_free`` off (Wood's exact
loop, the CPU default) and on (``REJECTION_ATTEMPTS`` attempts for every agent, no host read
in a chunk), interleaved, and the median time of a round is printed with their ratio. Also
prints Wood's worst acceptance per attempt seen over d and kappa, and the resulting bound on
the probability that a chunk is replayed (docs/performance.md, "The sync-free rollout").
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from econspin import Scenario
from econspin.randomness import round_draws
from econspin.response import RejectionBudget
from econspin.simulate import CHUNK_ROUNDS, REJECTION_ATTEMPTS, Rollout
from econspin.wood import _wood_component

ROUNDS = 4
CASES = ((128, 64, 16), (1, 1024, 16), (16, 256, 32))  # (B, N, d)


def sampled_rollout(batch: int, agents: int, dimension: int, sync_free: bool, mode: str = "sampled") -> Rollout:
    scenario = Scenario.from_dict(
        {
            "populations": {"agents": {"count": agents, "temperature": 1.0}},
            "market": {"d": dimension, "mode": mode, "response": "vmf"},
            "run": {"device": "cpu", "seed": 0},
        }
    )
    rollout = Rollout.create([scenario] * batch, list(range(batch)), "cpu", "float32")
    rollout.sync_free = sync_free
    return rollout


def interleaved(rollouts: dict, repeats: int) -> dict:
    """Median seconds a round of each rollout, after one warm-up round each, repeats interleaved."""
    for rollout in rollouts.values():
        rollout.advance(1)
    times = {name: [] for name in rollouts}
    for _ in range(repeats):
        for name, rollout in rollouts.items():
            times[name].append(round_seconds(rollout))
    return {name: statistics.median(values) for name, values in times.items()}


def round_seconds(rollout: Rollout) -> float:
    started = time.perf_counter()
    rollout.advance(ROUNDS)
    return (time.perf_counter() - started) / ROUNDS


def worst_acceptance(agents: int = 100_000) -> tuple[float, int, float]:
    """Wood's lowest acceptance per attempt over a grid of d and kappa: (rate, d, kappa)."""
    worst = (1.0, 0, 0.0)
    keys = torch.tensor([12345], dtype=torch.int64)
    for dimension in (2, 3, 4, 8, 16, 32, 64, 256):
        for kappa in (1e-3, 0.1, 1.0, 10.0, 100.0, 1e3, 1e5):
            budget = RejectionBudget.on(torch.device("cpu"), 1)
            kappas = torch.full((1, agents), kappa, dtype=torch.float64)
            _wood_component(kappas, dimension, round_draws(keys, 0, agents), budget=budget)
            worst = min(worst, (1.0 - budget.unresolved.item() / agents, dimension, kappa))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    arguments = parser.parse_args()
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, budget {REJECTION_ATTEMPTS} attempts")
    for batch, agents, dimension in CASES:
        rollouts = {flag: sampled_rollout(batch, agents, dimension, flag) for flag in (False, True)}
        times = interleaved(rollouts, arguments.repeats)
        loop, budgeted = times[False], times[True]
        print(
            f"B={batch:4d} N={agents:5d} d={dimension:3d}: loop {loop * 1e3:8.2f} ms, "
            f"budget {budgeted * 1e3:8.2f} ms, ratio {budgeted / loop:.2f}"
        )
    # chunks alone (the CPU default: Wood's loop): metrics stacked and copied once per chunk
    chunked = {size: sampled_rollout(16, 256, 32, False, "expected") for size in (1, ROUNDS)}
    for size, rollout in chunked.items():
        rollout.chunk_rounds = size
    times = interleaved(chunked, arguments.repeats)
    print(
        f"expected B=16 N=256 d=32: chunks of 1 {times[1] * 1e3:.2f} ms, of {ROUNDS} {times[ROUNDS] * 1e3:.2f} ms, "
        f"ratio {times[ROUNDS] / times[1]:.3f}"
    )
    rate, dimension, kappa = worst_acceptance()
    print(f"worst acceptance per attempt {rate:.4f} (d = {dimension}, kappa = {kappa:g})")
    for batch, agents in ((64, 256), (1, 16384), (1, 10**6)):
        draws = CHUNK_ROUNDS * batch * agents
        print(
            f"B={batch}, N={agents}, {CHUNK_ROUNDS} rounds a chunk: P(replay) <= "
            f"{draws * (1.0 - rate) ** REJECTION_ATTEMPTS:.2e}"
        )


if __name__ == "__main__":
    main()
