"""The uniform round over a sparse network's edges against the sparse kernel, in one run.

    python -m experiments.uniform_network_cost --agents 20000 --p 0.001 --repeats 7

scenarios/boltzmann_wealth.yaml (uniform choice, sampled mode) on a ``fast_gnp_random_graph``
with the sparse layout: ``run.kernel: auto`` takes econspin.uniform (O(E) over the edges),
``run.kernel: reference`` the sparse kernel (econspin.sparse). Both play one round from the
same state (the money after it must be equal: the same sellers, draw for draw); then their
rounds are timed in interleaved repeats, CPU time, one thread, and the medians printed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from econspin import Scenario
from econspin.round import step
from econspin.simulate import Rollout
from econspin.uniform import uses_uniform


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=20000)
    parser.add_argument("--p", type=float, default=0.001, help="edge probability of the random graph")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    network = {"generator": "fast_gnp_random_graph", "params": {"p": args.p}, "layout": "sparse"}
    base = Scenario.from_yaml("scenarios/boltzmann_wealth.yaml").with_overrides(
        {"populations.agents.count": args.agents, "run.device": "cpu", "market.network": network}
    )
    runs = {
        "uniform": Rollout.create([base], [0], "cpu", "float32"),
        "sparse": Rollout.create([base.with_overrides({"run.kernel": "reference"})], [0], "cpu", "float32"),
    }
    assert uses_uniform(runs["uniform"].state, runs["uniform"].economy)
    assert not uses_uniform(runs["sparse"].state, runs["sparse"].economy)
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.no_grad():
        after = {name: step(run.state, run.economy) for name, run in runs.items()}
        for _ in range(args.repeats):
            for name, run in runs.items():
                started = time.process_time()
                step(run.state, run.economy)
                times[name].append(time.process_time() - started)
    result = {
        "edges": runs["uniform"].economy.trade_edges.sellers.numel(),
        "same_money": bool(torch.equal(after["uniform"].money, after["sparse"].money)),
        **{f"{name}_ms": statistics.median(values) * 1e3 for name, values in times.items()},
    }
    result["ratio"] = result["sparse_ms"] / result["uniform_ms"]
    print(result)
    return result


if __name__ == "__main__":
    main()
