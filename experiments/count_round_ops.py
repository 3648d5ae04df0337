"""Count the aten operations of one round of the benchmark economy (docs/performance.md, "The round's fixed cost").

Every operation eager torch dispatches costs the host a few microseconds whatever its size,
and on a GPU each one that computes is a kernel launch: where the work is small (small N,
batches of small economies) that count, not the arithmetic, sets the round's time. This
counts them with a dispatch mode (what reaches aten, once each: a ``linalg_vector_norm`` is
one, not the kernels it calls), after a first round (caches built), in three groups:

- views (``view``, ``slice``, ``expand``, ... : no data touched, no kernel);
- host-only (``empty``, ``scalar_tensor``: an allocation, a Python number wrapped);
- the rest: operations that read or write data, a kernel each on a GPU.

    python -m experiments.count_round_ops --agents 256 1024 --batches 1 64 [--gpu-blocks] [--by-line]

``--gpu-blocks`` sizes the blocks as on CUDA (econspin.fused.block_entries for a CUDA device,
2^25 entries at the default memory budget) while running on the CPU: the count of a round on
a GPU, where a batch of small economies is one or two blocks instead of the CPU's 4-64.
"""

from __future__ import annotations

import argparse
import collections
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from econspin import fused
from econspin.bench import bench_scenario
from econspin.round import step
from econspin.simulate import Rollout

VIEWS = {
    "view", "_unsafe_view", "unsqueeze", "squeeze", "slice", "select", "expand", "permute",
    "transpose", "t", "alias", "diagonal", "as_strided", "unbind", "split",
}  # fmt: skip
HOST_ONLY = {"empty", "scalar_tensor"}


class OperationCount(TorchDispatchMode):
    """Counts every aten operation dispatched inside it, by name and by the econspin line that called it."""

    def __init__(self):
        super().__init__()
        self.by_name: collections.Counter = collections.Counter()
        self.by_line: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.by_name[name] += 1
        frame = sys._getframe(1)
        while frame is not None and "econspin" not in frame.f_code.co_filename:
            frame = frame.f_back
        if frame is not None:
            where = f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno} {frame.f_code.co_name}"
            self.by_line[where] += 1
        return func(*args, **(kwargs or {}))

    def groups(self) -> dict[str, int]:
        views = sum(count for name, count in self.by_name.items() if name in VIEWS)
        host = sum(count for name, count in self.by_name.items() if name in HOST_ONLY)
        total = sum(self.by_name.values())
        return {"total": total, "views": views, "host_only": host, "compute": total - views - host}


def count_round(agents: int, batch: int, mode: str = "expected") -> OperationCount:
    """The operations of one round (the second) of ``batch`` benchmark economies of ``agents`` agents."""
    rollout = Rollout.create([bench_scenario(agents, mode=mode)] * batch, list(range(batch)), "cpu", "float32")
    with torch.no_grad():
        step(rollout.state, rollout.economy)
        with OperationCount() as counted:
            step(rollout.state, rollout.economy)
    return counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--mode", default="expected", choices=["expected", "sampled"])
    parser.add_argument("--gpu-blocks", action="store_true", help="size the blocks as on CUDA (module doc)")
    parser.add_argument("--by-line", action="store_true", help="also list the operations per line of econspin")
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    if arguments.gpu_blocks:
        on_cpu = fused.block_entries
        fused.block_entries = lambda device, memory_budget, itemsize: on_cpu("cuda", memory_budget, itemsize)
    print("| N | B | aten operations | views | host-only | compute (a kernel each on a GPU) |")
    print("|---|---|---|---|---|---|")
    for agents in arguments.agents:
        for batch in arguments.batches:
            counted = count_round(agents, batch, arguments.mode)
            groups = counted.groups()
            counts = " | ".join(str(groups[name]) for name in ("total", "views", "host_only", "compute"))
            print(f"| {agents} | {batch} | {counts} |")
            if arguments.by_line:
                for where, count in sorted(counted.by_line.items()):
                    print(f"    {count:5d}  {where}")


if __name__ == "__main__":
    main()
