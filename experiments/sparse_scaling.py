"""Sparse trade networks at scale: graph build and round time against the number of edges E.

    python -m experiments.sparse_scaling --agents 100000,1000000 --threads 2 --networkx 100000

For each N, scenarios/million_agents.yaml scaled to N agents (80 % humans, 20 % AI, mean
out-degree 20: p = 20 / (N - 1), E about 20 N), in a child process of its own so that its peak
memory (getrusage maxrss) is its own: the graph drawn by torch (median of --repeats draws),
its compressed rows, the whole economy and state (Rollout.create, graph included), then one
warm-up round and the median of --repeats rounds (wall, and process CPU time). With
--networkx N, networkx's fast_gnp_random_graph at that N is timed in the same process,
interleaved with the torch draw.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import networkx as nx
import torch

from econspin import Scenario
from econspin.network import Links, draw_links, trade_edges_from_links
from econspin.round import step
from econspin.simulate import Rollout

SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "million_agents.yaml"


def scaled(agents: int) -> Scenario:
    humans = agents * 4 // 5
    return Scenario.from_yaml(SCENARIO).with_overrides(
        {"populations.human.count": humans, "populations.ai.count": agents - humans,
         "market.network.params.p": 20 / (agents - 1)}
    )


def wall_and_cpu(function) -> tuple[float, float]:
    """Wall seconds, and this process's CPU seconds (all threads: blind to waiting for a core)."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def medians(name: str, timings: list[tuple[float, float]]) -> dict:
    """The median wall and CPU seconds of repeated timings."""
    return {f"{name}_s": statistics.median(wall for wall, _ in timings),
            f"{name}_cpu_s": statistics.median(cpu for _, cpu in timings)}


def compressed_rows(links: Links) -> tuple[float, float]:
    """Wall and CPU seconds to turn drawn pairs into the sparse kernel's compressed rows."""
    everyone = torch.ones(links.agent_count, dtype=torch.bool)
    return wall_and_cpu(lambda: trade_edges_from_links(links, everyone))


def measure(agents: int, repeats: int, with_networkx: bool) -> dict:
    """One size, in this process."""
    scenario = scaled(agents)
    network, sizes, seed = scenario.market.network, scenario.population_sizes, scenario.run.seed
    draws, networkx_draws = [], []
    for _ in range(repeats):  # interleaved, so that a busy moment of the machine falls on both
        draws.append(wall_and_cpu(lambda: draw_links(network, sizes, seed)))
        if with_networkx:
            networkx_draws.append(wall_and_cpu(lambda: nx.fast_gnp_random_graph(agents, 20 / (agents - 1), 11, True)))
    rows = compressed_rows(draw_links(network, sizes, seed))  # its links freed before the economy's are drawn
    wall, cpu = time.perf_counter(), time.process_time()
    rollout = Rollout.create([scenario], [0], "cpu", "float32")
    built = [(time.perf_counter() - wall, time.process_time() - cpu)]
    state, economy = rollout.state, rollout.economy
    edges = int(economy.trade_edges.buyers.numel())
    with torch.no_grad():
        state = step(state, economy)  # warm-up
        rounds = [wall_and_cpu(lambda: step(state, economy)) for _ in range(repeats)]
    result = {
        "agents": agents,
        "edges": edges,
        **medians("graph_draw", draws),
        **medians("compressed_rows", [rows]),
        **medians("economy_and_state", built),
        **medians("round", rounds),
        "money_over_agents": float(state.money.double().sum()) / agents,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    result["round_ns_per_edge"] = result["round_s"] / edges * 1e9
    result["round_cpu_ns_per_edge"] = result["round_cpu_s"] / edges * 1e9
    if with_networkx:
        result.update(medians("networkx_draw", networkx_draws))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", default="100000,1000000", help="comma-separated N")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--networkx", default="", help="comma-separated N at which to time networkx too")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child process: one size, JSON out
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    with_networkx = {int(text) for text in arguments.networkx.split(",") if text}
    if arguments.one is not None:
        print(json.dumps(measure(arguments.one, arguments.repeats, arguments.one in with_networkx)))
        return
    print(f"torch {torch.__version__}, {arguments.threads} threads, float32, d = 16, one head, expected mode")
    for agents in (int(text) for text in arguments.agents.split(",")):
        child = [sys.executable, "-m", "experiments.sparse_scaling", "--one", str(agents), "--threads",
                 str(arguments.threads), "--repeats", str(arguments.repeats), "--networkx", arguments.networkx]
        result = json.loads(subprocess.run(child, check=True, capture_output=True, text=True).stdout)
        print(json.dumps(result))


if __name__ == "__main__":
    main()
