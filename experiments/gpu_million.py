"""One round of 10^6 fully connected agents on a GPU: its time and peak memory against the estimate.

Issue 9's memory target: N = 10^6 fully connected agents play a round on one 80 GB GPU, in
memory O(B N (d + block)). This script builds the benchmark economy (``econspin.bench``'s:
d = 32, one head, expected mode, float32) at ``--agents`` on ``--device``, plays one round on
each kernel asked for and prints, per kernel, one JSON row: the round's seconds, the pair
interactions per second, the device's peak memory during the round (CUDA) and what
``econspin.memory.estimate_memory`` says the round holds on that device. experiments/gpu_check.py
runs it as its ``million`` step.

    python -m experiments.gpu_million --agents 1000000 --device cuda --kernels fused,triton
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

TARGET_MEMORY_MB = 80 * 1024  # the memory target's card: N = 10^6 on one 80 GB GPU


def million_scenario(agents: int = 10**6, memory_budget_mb: int = TARGET_MEMORY_MB):
    """econspin.bench's benchmark scenario at ``agents``, with ``run.memory_budget_mb`` set."""
    from econspin.bench import bench_scenario

    return bench_scenario(agents).with_overrides({"run.memory_budget_mb": memory_budget_mb})


def million_round(
    device: torch.device, agents: int = 10**6, kernels=("fused",), memory_budget_mb: int = TARGET_MEMORY_MB
) -> list[dict]:
    """One row per kernel: one round's time, peak memory and the memory estimate at ``agents``.

    ``memory_budget_mb`` is the scenario's ``run.memory_budget_mb``: its default, 1024, refuses
    N = 10^6 (the per-agent tensors alone take 2.24 GiB), so the script asks for the target's card.
    """
    from econspin.memory import estimate_memory
    from econspin.round import step
    from econspin.simulate import Rollout

    scenario = million_scenario(agents, memory_budget_mb)
    rollout = Rollout.create([scenario], [0], str(device), "float32")
    rows = []
    for kernel in kernels:
        economy = dataclasses.replace(rollout.economy, kernel=kernel)
        estimate = estimate_memory(scenario.with_overrides({"run.kernel": kernel}), 1, torch.float32, machine=device)
        row = {"agents": agents, "kernel": kernel, "estimated round bytes": sum(estimate.device.values())}
        try:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                held = torch.cuda.memory_allocated(device)
            started = time.perf_counter()
            with torch.no_grad():
                new = step(rollout.state, economy)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                row["peak bytes above held"] = torch.cuda.max_memory_allocated(device) - held
            seconds = time.perf_counter() - started
            row.update({"round s": seconds, "pairs per s": agents * agents / seconds})
            money = new.money.double()
            row["money drift"] = float((money.sum() - rollout.state.money.double().sum()).abs() / money.sum())
        except Exception as error:  # reported, not fatal: the other kernels are still run
            row["error"] = f"{type(error).__name__}: {error}"[-2000:]
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main(arguments: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=10**6)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--kernels", default="fused", help="comma-separated run.kernel values")
    parser.add_argument("--json", type=Path, help="write the rows here too")
    parser.add_argument("--memory-budget-mb", type=int, default=TARGET_MEMORY_MB, help="run.memory_budget_mb")
    options = parser.parse_args(arguments)
    kernels = tuple(options.kernels.split(","))
    rows = million_round(torch.device(options.device), options.agents, kernels, options.memory_budget_mb)
    if options.json:
        options.json.write_text(json.dumps(rows, indent=1))
    return 1 if any("error" in row for row in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
