"""Time one round of the engine against the floor of the same size, in one run.

The floor is bare softmax attention over the same N x N utilities: two matrix products and
a softmax, what any round must at least do. The ratio round / floor is what to compare
across machines; the absolute times depend on the machine and its load.

    python -m experiments.benchmark_round --agents 1024 --dimension 32
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from econspin import Scenario
from econspin.round import step
from econspin.simulate import Rollout


def timed(function, repeats: int) -> list[float]:
    """Wall times of ``repeats`` calls (after two warm-up calls)."""
    function()
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=1024)
    parser.add_argument("--dimension", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    n, d, b = arguments.agents, arguments.dimension, arguments.batch
    print(f"N = {n}, d = {d}, B = {b}, device = {arguments.device}, threads = {arguments.threads}")
    for mode in ("expected", "sampled"):
        scenario = Scenario.from_dict({
            "populations": {"human": {"count": n - n // 5, "temperature": 1.0},
                            "ai": {"count": n // 5, "temperature": 0.1}},
            "market": {"d": d, "mode": mode},
            "run": {"device": arguments.device},
        })
        rollout = Rollout.create([scenario] * b, list(range(b)), arguments.device, "float32")
        state, economy = rollout.state, rollout.economy
        x = state.states
        weight = torch.randn(d, d, device=x.device) / math.sqrt(d)

        def floor():
            q = x @ weight
            alpha = torch.softmax(q @ x.transpose(1, 2) / math.sqrt(d), dim=-1)
            return alpha @ x

        with torch.no_grad():
            round_times = timed(lambda: step(state, economy), arguments.repeats)
            floor_times = timed(floor, arguments.repeats)
        one_round, bare = statistics.median(round_times), statistics.median(floor_times)
        print(f"{mode:9s} round {one_round * 1e3:8.2f} ms   floor {bare * 1e3:7.2f} ms   ratio {one_round / bare:5.1f}")


if __name__ == "__main__":
    main()
