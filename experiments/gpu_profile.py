"""Where one round's device time goes: its kernels by device time, per kernel choice and shape.

    python -m experiments.gpu_profile [--device cuda] [--shapes 1x16384,64x256] [--kernels fused,triton]
                                      [--mode expected] [--compile off,default] [--operator-devices cpu,cpu+cuda]
                                      [--traced-devices cpu,cpu+cuda] [--block-pass off,on]
                                      [--rounds 3] [--top 12] [--json FILE]

For each shape (B x N, the benchmark economy of ``econspin bench``, float32) and each
``run.kernel`` and each ``run.compile`` of ``--compile``: three rounds warm up (compilation, CUDA graphs'
recording under reduce-overhead), ``--rounds`` rounds run under torch.profiler,
and the table lists the device kernels by their time per round, with how often each runs a
round. On a CPU the "kernels" are torch's operators by self CPU time. Beside them, per round:
the number of kernels run, how many the host launched one by one and how many CUDA graphs it
launched (a round under reduce-overhead replays its graphs: kernels run, few launched), and
from where (the profiler's enclosing CPU events of each launch, :func:`launch_sources`), the
device's busy time (the sum of kernel times) and the wall time of the same rounds unprofiled;
for a compiled round, Dynamo's graph breaks during the warm-up (their reasons, counted) and the
graphs it compiled.
``--operator-devices`` sets ``econspin.compiled.OPERATOR_DEVICES`` for a compiled round: with
``cpu+cuda`` the blocks are one operator inside the compiled graph on CUDA too (gpu_check's
rollout step, its fourth way), else on CUDA they run between the graphs. ``--traced-devices``
sets ``econspin.traced_blocks.TRACED_DEVICES``: with ``cpu+cuda`` a compiled round of one block
(B = 64, N = 256 on CUDA) traces its blocks into the graph, Inductor's kernels for them (the
rollout step's "blocks traced" way). ``--block-pass on``
lists the device in ``econspin.block_pass.COMPILED_DEVICES``: the blocks' elementwise passes
compiled into one kernel (gpu_check's ``block_pass`` step times it). Wall time well above
the busy time is time the device waits for the host (launches, Python), the bound of the small
shapes (docs/performance.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from econspin import block_pass
from econspin.bench import bench_scenario
from econspin.round import step
from econspin.simulate import Rollout
from experiments.gpu_measures import synchronised, with_setting, with_switches

KERNEL_LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")  # runtime, driver
WARM_UP = 3  # rounds before the measured ones: compilation, and reduce-overhead's recording of its graphs


def launch_sources(events, rounds: int, depth: int = 3) -> dict[str, dict[str, float]]:
    """Where the host's launches come from, per round: {"kernels": {...}, "graphs": {...}}.

    For each kernel launched alone and each CUDA graph launched, the names of the profiler's CPU
    events that enclose the launch, innermost first, ``depth`` of them joined by " < " (the
    operator or compiled function that launched it), counted and divided by ``rounds``. A round
    under reduce-overhead that launches several graphs, or kernels beside them, shows here what
    stays outside one graph. Summed over their sources: the kernels the host launched one by one
    and the CUDA graphs it launched, a round.
    """
    sources = {"kernels": defaultdict(float), "graphs": defaultdict(float)}
    for event in events:
        if event.device_type != DeviceType.CPU:
            continue
        kind = "kernels" if event.name in KERNEL_LAUNCHES else "graphs" if event.name == "cudaGraphLaunch" else None
        if kind is None:
            continue
        names, parent = [], event.cpu_parent
        while parent is not None and len(names) < depth:
            names.append(parent.name[:80])
            parent = parent.cpu_parent
        sources[kind][" < ".join(names) or "(no enclosing event)"] += 1 / rounds
    return {kind: dict(sorted(counts.items(), key=lambda item: -item[1])) for kind, counts in sources.items()}


def kernel_times(profiler, device: torch.device) -> dict[str, list[float]]:
    """{kernel name: [count, total microseconds]} from a finished profiler: device kernels, or CPU self times."""
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    if device.type == "cuda":
        for event in profiler.events():
            if event.device_type == DeviceType.CUDA:
                totals[event.name][0] += 1
                totals[event.name][1] += event.time_range.elapsed_us()
    else:
        for event in profiler.key_averages():
            totals[event.key] = [event.count, event.self_cpu_time_total]
    return dict(totals)


def profile_round(
    batch: int, agents: int, kernel: str, mode: str, device: torch.device, rounds: int, top: int, compile_mode: str,
    operator_devices: tuple[str, ...] = ("cpu",), compiled_pass: bool = False,
    traced_devices: tuple[str, ...] = ("cpu",),
) -> dict:
    """The profile of ``rounds`` rounds at (batch, agents) on ``kernel``: the top kernels and the totals, per round."""
    profiled = with_switches(
        {"OPERATOR_DEVICES": operator_devices, "TRACED_DEVICES": traced_devices},
        lambda: _profile_round(batch, agents, kernel, mode, device, rounds, top, compile_mode),
    )
    pass_devices = (device.type,) if compiled_pass else ()
    row = with_setting(block_pass, "COMPILED_DEVICES", pass_devices, profiled)()
    settings = {"operator devices": "+".join(operator_devices), "traced devices": "+".join(traced_devices)}
    return row | settings | {"compiled block pass": compiled_pass}


def _profile_round(batch, agents, kernel, mode, device, rounds, top, compile_mode) -> dict:
    rollout = Rollout.create([bench_scenario(agents, mode=mode)] * batch, list(range(batch)), str(device), "float32")
    state, economy = rollout.state, dataclasses.replace(rollout.economy, kernel=kernel, compile=compile_mode)
    counters = torch._dynamo.utils.counters
    counters.clear()
    with torch.no_grad():
        for _ in range(WARM_UP):
            synchronised(lambda: step(state, economy), device)
        # why Dynamo split the round (the reason, as it words it, and how often): on CUDA the traced round launched
        # four graphs from nested compiled regions in the third H200 session, on the CPU its graph was one
        breaks = {reason[:200]: count for reason, count in counters["graph_break"].items()}
        frames = counters["stats"]["unique_graphs"]
        started = time.perf_counter()
        for _ in range(rounds):
            synchronised(lambda: step(state, economy), device)
        wall = (time.perf_counter() - started) / rounds
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as profiler:
            for _ in range(rounds):
                synchronised(lambda: step(state, economy), device)
    totals = kernel_times(profiler, device)
    ranked = sorted(totals.items(), key=lambda item: -item[1][1])
    busy = sum(microseconds for _, microseconds in totals.values()) if device.type == "cuda" else None
    sources = launch_sources(profiler.events(), rounds)
    return {
        "batch": batch,
        "agents": agents,
        "kernel": kernel,
        "mode": mode,
        "compile": compile_mode,
        "wall ms per round": wall * 1e3,
        "kernels per round": sum(count for count, _ in totals.values()) / rounds if device.type == "cuda" else None,
        "device busy ms per round": busy / rounds / 1e3 if busy is not None else None,
        "kernel launches per round": sum(sources["kernels"].values()),
        "graph launches per round": sum(sources["graphs"].values()),
        "kernels launched alone from": sources["kernels"],
        "graphs launched from": sources["graphs"],
        "graph breaks": breaks,
        "graphs compiled": frames,
        "top": [
            {"name": name[:120], "per round": count / rounds, "ms per round": microseconds / rounds / 1e3}
            for name, (count, microseconds) in ranked[:top]
        ],
    }


def shapes_option(text: str) -> list[tuple[int, int]]:
    """'1x16384,64x256' -> [(1, 16384), (64, 256)]."""
    return [tuple(int(part) for part in shape.split("x")) for shape in text.split(",")]


def main(arguments: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shapes", type=shapes_option, default=shapes_option("1x16384,64x256"), help="B x N, ...")
    parser.add_argument("--kernels", default="fused,triton", help="run.kernel values, comma-separated")
    parser.add_argument("--mode", default="expected", choices=("expected", "sampled"))
    parser.add_argument("--compile", default="off", help="run.compile values, comma-separated")
    parser.add_argument("--operator-devices", default="cpu",
                        help="compiled.OPERATOR_DEVICES settings, comma-separated; devices joined by +")  # fmt: skip
    parser.add_argument("--traced-devices", default="cpu",
                        help="traced_blocks.TRACED_DEVICES settings, comma-separated; devices joined by +")  # fmt: skip
    parser.add_argument("--block-pass", default="off", help="off, on or off,on: the blocks' passes compiled")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--json", type=Path)
    options = parser.parse_args(arguments)
    device = torch.device(options.device)
    rows = []
    runs = [(shape, kernel, compile_mode, devices, traced, passes) for shape in options.shapes
            for kernel in options.kernels.split(",") for compile_mode in options.compile.split(",")
            for devices in options.operator_devices.split(",") for traced in options.traced_devices.split(",")
            for passes in options.block_pass.split(",")]  # fmt: skip
    for (batch, agents), kernel, compile_mode, devices, traced, passes in runs:
        operator_devices, traced_devices = tuple(devices.split("+")), tuple(traced.split("+"))
        row = profile_round(batch, agents, kernel, options.mode, device, options.rounds, options.top, compile_mode,
                            operator_devices, passes == "on", traced_devices)  # fmt: skip
        rows.append(row)
        line = f"{kernel}, B = {batch}, N = {agents}, {options.mode}, compile {compile_mode}, operators on {devices}, "
        line += f"blocks traced on {traced}, "
        line += f"compiled block pass {passes}: wall {row['wall ms per round']:.3f} ms a round"
        if device.type == "cuda":
            line += f", {row['kernels per round']:.0f} kernels ({row['kernel launches per round']:.0f} launched alone,"
            line += f" {row['graph launches per round']:.0f} graphs), busy {row['device busy ms per round']:.3f} ms"
        print(line)
        for entry in row["top"]:
            print(f"  {entry['ms per round']:9.3f} ms  x{entry['per round']:6.1f}  {entry['name']}")
        for kind in ("kernels launched alone from", "graphs launched from", "graph breaks"):
            for source, count in row[kind].items():
                print(f"  {kind}: x{count:5.1f}  {source}")
        if compile_mode != "off":
            print(f"  graphs compiled: {row['graphs compiled']}")
    if options.json:
        result = {"device": options.device, "torch": torch.__version__, "rows": rows}
        options.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
