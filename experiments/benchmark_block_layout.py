"""Batch-heads per block for many small economies: a round at each layout, interleaved, in one run.

econspin.fused.block_shape puts whole economies together in one block up to BLOCK_ENTRIES
entries (2^20: at N = 128, 64 economies a block; at N = 64, 256). This script plays the same
round with BLOCK_ENTRIES set to 2^20, 2^19, ..., 2^16 (fewer batch-heads per block) in turn,
repeat after repeat (1 thread, CPU time, median), both modes, and checks that every layout
gives the same money as the first to float32 rounding.

    OMP_WAIT_POLICY=PASSIVE python -m experiments.benchmark_block_layout --agents 128 --batch 64 --dimension 32
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from econspin import fused
from econspin.round import step
from experiments.benchmark_ensemble import ensemble

LAYOUTS = (2**20, 2**19, 2**18, 2**17, 2**16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=128)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--dimension", type=int, default=32)
    parser.add_argument("--response", default="large_d")
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--keep-memory", action="store_true", help="call econspin.keep_freed_memory() first")
    arguments = parser.parse_args()
    if arguments.keep_memory:
        from econspin import keep_freed_memory

        print(f"keep_freed_memory: {keep_freed_memory()}")
    torch.set_num_threads(1)
    n, b = arguments.agents, arguments.batch
    cases = {mode: ensemble(b, mode, n, arguments.dimension, "cpu", arguments.response, "auto")
             for mode in ("expected", "sampled")}
    samples = {(mode, entries): [] for mode in cases for entries in LAYOUTS}
    first = {}
    default = fused.BLOCK_ENTRIES
    try:
        with torch.no_grad():
            for _ in range(arguments.repeats):
                for entries in LAYOUTS:
                    fused.BLOCK_ENTRIES = entries
                    for mode, (state, economy) in cases.items():
                        started = time.process_time()
                        money = step(state, economy).money
                        samples[mode, entries].append(time.process_time() - started)
                        expected = first.setdefault(mode, money)
                        assert torch.allclose(money, expected, rtol=1e-5, atol=1e-6), (mode, entries)
    finally:
        fused.BLOCK_ENTRIES = default
    print(f"N = {n}, B = {b}, d = {arguments.dimension}, {arguments.response}, 1 thread, CPU time, "
          f"median of {arguments.repeats}")
    for mode in cases:
        base = statistics.median(samples[mode, LAYOUTS[0]])
        cells = []
        for entries in LAYOUTS:
            fused.BLOCK_ENTRIES = entries
            per_block = fused.block_shape(b, n)[0]
            median = statistics.median(samples[mode, entries])
            cells.append(f"{per_block} per block {median * 1e3:.2f} ms ({base / median:.2f}x)")
        fused.BLOCK_ENTRIES = default
        print(f"{mode:9s} " + "   ".join(cells))


if __name__ == "__main__":
    main()
