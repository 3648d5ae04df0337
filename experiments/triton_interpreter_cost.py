"""What the Triton kernel's programs cost on a CPU, under Triton's interpreter, beside the fused market step.

    PYTHONPATH=.:/path/to/triton python -m experiments.triton_interpreter_cost [--sizes 64,256]

The benchmark economy (econspin.bench.bench_scenario, d = 32, B = 1, float32), one thread, CPU
time, median of three after a warm-up call each. Why tests/test_triton.py keeps its economies
small: the interpreter runs one program instance at a time in Python. docs/performance.md
("The Triton kernel") reports a run of it.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

from econspin.bench import bench_scenario
from econspin.fused import fused_trade
from econspin.simulate import Rollout
from econspin.triton_blocks import triton_trade


def cpu_milliseconds(function, repeats: int = 3) -> float:
    """Median CPU time of ``function()`` in ms, after one call to warm up."""
    function()
    times = []
    for _ in range(repeats):
        started = time.process_time()
        function()
        times.append(time.process_time() - started)
    return statistics.median(times) * 1e3


def main(arguments: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,256", help="comma-separated agent counts")
    options = parser.parse_args(arguments)
    torch.set_num_threads(1)
    for agents in map(int, options.sizes.split(",")):
        run = Rollout.create([bench_scenario(agents)], [0], "cpu", "float32")
        triton = dataclasses.replace(run.economy, kernel="triton")
        fused_ms = cpu_milliseconds(lambda: fused_trade(run.state, run.economy))
        triton_ms = cpu_milliseconds(lambda: triton_trade(run.state, triton))
        print(f"N = {agents}: fused market step {fused_ms:.3g} ms, triton (interpreted) {triton_ms:.4g} ms CPU time")


if __name__ == "__main__":
    main()
