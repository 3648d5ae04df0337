"""What a trade network costs the fused round: the same economy with and without a network.

    OMP_WAIT_POLICY=PASSIVE python -m experiments.network_cost --agents 2048 --threads 1

The trade mask is dense (N x N bool), so the round's cost does not fall with the number of
edges: each block pays one masked fill and the mask's row counts on top of the all-to-all
round. Minimum CPU time over repeats (one thread: blind to waiting for the core).
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from econspin.bench import bench_scenario, timed
from econspin.round import step
from econspin.simulate import Rollout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=9)
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    n = arguments.agents
    rollout = Rollout.create([bench_scenario(n)], [0], "cpu", "float32")
    state, economy = rollout.state, rollout.economy
    generator = torch.Generator().manual_seed(0)
    functions = {"all to all": lambda: step(state, economy)}
    for density in (0.01, 0.1, 0.5):
        mask = torch.rand(n, n, generator=generator) < density
        networked = dataclasses.replace(economy, trade_mask=mask)
        functions[f"network, {density:.0%} of pairs"] = lambda e=networked: step(state, e)
    with torch.no_grad():
        times = timed(functions, arguments.repeats, torch.device("cpu"), "cpu")
    base = times["all to all"]
    for name, seconds in times.items():
        print(f"N = {n}: {name:24s} {seconds * 1e3:8.2f} ms  ({seconds / base:.2f} x all to all)")


if __name__ == "__main__":
    main()
