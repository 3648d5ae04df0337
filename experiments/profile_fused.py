"""Where the fused round's time goes: each pass over a block, timed alone on the same shapes.

    OMP_WAIT_POLICY=PASSIVE python -m experiments.profile_fused --agents 1024 4096 --threads 1

For the benchmark economy (econspin.bench) it times, as the minimum over repeats (the least
disturbed run on a shared machine; ``--clock cpu`` counts the process's CPU time instead of
wall time, which with one thread is blind to the time other work takes the core): the whole
fused market step, the whole round, torch's SDPA forward on the same shapes, and every
operation the block loop of econspin.fused makes, on
random tensors of the block's shapes, summed over the blocks of one round. What the parts do
not account for is the per-round work on (B, H, N, d) tensors and the per-call overhead
("the rest"). Writes experiments/results/bench/profile_fused.json.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from econspin.bench import bench_scenario, device_name
from econspin.fused import EXP2_FLOOR, block_shape, fused_trade
from econspin.round import step
from econspin.simulate import Rollout

CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCK["wall"]


def least(function, repeats: int) -> float:
    """Minimum time (ms, on ``clock``) of ``repeats`` calls after one warm-up call."""
    function()
    best = math.inf
    for _ in range(repeats):
        started = clock()
        function()
        best = min(best, clock() - started)
    return best * 1e3


def parts(agents: int, batch: int, dimension: int, repeats: int) -> dict[str, float]:
    """Each block operation of the fused loop, timed alone and multiplied by the number of blocks."""
    groups, rows = block_shape(batch, agents)
    blocks = math.ceil(batch / groups) * math.ceil(agents / rows)
    shape = (groups, rows, agents)
    left, right = torch.randn(groups, rows, dimension + 2), torch.randn(groups, dimension + 2, agents)
    scores, weights = torch.empty(shape), torch.empty(shape)
    torch.bmm(left, right, out=scores)
    row_max = scores.amax(-1, keepdim=True)
    delivered, moment_rows, share = (
        torch.randn(groups, agents, dimension),
        torch.randn(groups, 2, agents),
        torch.randn(groups, rows, 1),
    )
    floor = EXP2_FLOOR[torch.float32]
    timings = {
        "utilities product (rows, d_k + 2) @ (d_k + 2, N)": lambda: torch.bmm(left, right, out=scores),
        "row max": lambda: scores.amax(-1, keepdim=True),
        "shift and clamp": lambda: scores.sub_(row_max).clamp_(min=floor),
        "exp2 and threshold": lambda: torch.nn.functional.threshold_(
            torch.exp2(scores, out=weights), 2.0 ** (floor + 1), 0.0
        ),
        "row sums": lambda: weights.sum(-1),
        "row norms (impact)": lambda: torch.linalg.vector_norm(weights, dim=-1),
        "sum e z (entropy)": lambda: torch.mul(scores, weights).sum(-1),
        "received product (rows, N) @ (N, d)": lambda: torch.bmm(weights, delivered),
        "moments product (2, N) @ (N, rows)": lambda: torch.bmm(moment_rows, weights.transpose(1, 2)),
        "revenue product (N, rows) @ (rows, 1)": lambda: torch.bmm(weights.transpose(1, 2), share),
    }
    return {name: least(function, repeats) * blocks for name, function in timings.items()}


def profile(agents: int, batch: int, repeats: int) -> dict:
    rollout = Rollout.create([bench_scenario(agents)] * batch, list(range(batch)), "cpu", "float32")
    state, economy = rollout.state, rollout.economy
    dimension = economy.dimension
    q, k, v = (torch.randn(batch, 1, agents, dimension) for _ in range(3))
    with torch.no_grad():
        row = {
            "agents": agents,
            "batch": batch,
            "sdpa_ms": least(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), repeats),
            "market_ms": least(lambda: fused_trade(state, economy), repeats),
            "round_ms": least(lambda: step(state, economy), repeats),
            "parts_ms": parts(agents, batch, dimension, repeats),
        }
    row["rest_ms"] = row["market_ms"] - sum(row["parts_ms"].values())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--batch", type=int, nargs="+", default=[1])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument(
        "--clock", choices=sorted(CLOCK), default="wall", help="cpu: process time, blind to time spent descheduled"
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench" / "profile_fused.json")
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    global clock
    clock = CLOCK[arguments.clock]
    rows = []
    for agents in arguments.agents:
        for batch in arguments.batch:
            row = profile(agents, batch, arguments.repeats)
            rows.append(row)
            print(
                f"N = {agents}, B = {batch}: SDPA {row['sdpa_ms']:.3f} ms, market {row['market_ms']:.3f} ms, "
                f"round {row['round_ms']:.3f} ms"
            )
            for name, milliseconds in row["parts_ms"].items():
                print(f"  {name:52s} {milliseconds:8.3f} ms  {milliseconds / row['sdpa_ms']:5.2f} x SDPA")
            print(f"  {'the rest (per-round (B, H, N, d) work, overhead)':52s} {row['rest_ms']:8.3f} ms")
    result = {
        "device": device_name(torch.device("cpu")),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "repeats": arguments.repeats,
        "rows": rows,
    }
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {arguments.out}")


if __name__ == "__main__":
    main()
