"""What keeping freed memory (econspin.keep_freed_memory) gains in time and costs in memory.

The setting is process-wide and cannot be undone, so each measurement is a fresh process,
with and without it in turn (off, on, off, on, ...), and the medians are taken over the
processes. Every process builds its cases, plays two warm-up rounds, then times the rounds
(1 thread by default, CPU time of the process; the cases of one process interleaved, repeat
after repeat) and reports its resident memory: after building and warming up ("held"), the
peak while timing (VmHWM after a reset through /proc/self/clear_refs) and at the end.

Cases: ``ensemble16`` (B = 128 and B = 1 economies of N = 64, d = 16, vmf, both modes),
``ensemble32`` (the same at d = 32, large_d), ``single1024`` (one economy of N = 1024,
expected mode), ``sweep`` (the 64-point temperature sweep of ``econspin bench`` at N = 128,
batched and point by point, 5 rounds), ``sparse`` (scenarios/sparse_network.yaml: 10^5 agents
on 2 x 10^6 edges, one element, expected mode), ``ffn`` (two elements of 2000 agents with an
ffn correction of width 2048, the case of tests/test_memory.py).

    OMP_WAIT_POLICY=PASSIVE python -m experiments.benchmark_allocator --processes 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

CASES = ("ensemble16", "ensemble32", "single1024", "sweep", "sparse", "ffn")


def resident_mib(field: str) -> float:
    """VmRSS or VmHWM of this process, MiB (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def interleaved_cpu_ms(functions: dict, repeats: int) -> tuple[dict, dict]:
    """Median CPU milliseconds and mean minor page faults of each function, called in turn, repeat after repeat.

    A minor fault is a page the process touches for the first time since it came from the
    system: what a freed-and-returned temporary costs again in the next round.
    """
    samples = {name: [] for name in functions}
    faults = {name: 0 for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            faulted = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            started = time.process_time()
            function()
            samples[name].append((time.process_time() - started) * 1e3)
            faults[name] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faulted
    return ({name: statistics.median(values) for name, values in samples.items()},
            {name: count / repeats for name, count in faults.items()})


def case_functions(case: str) -> dict:
    """Name -> a function doing one timed unit of the case (built and warmed up here)."""
    import torch

    from econspin.round import step
    from experiments.benchmark_ensemble import ensemble, warmed_up

    if case.startswith("ensemble"):
        dimension, response = (16, "vmf") if case == "ensemble16" else (32, "large_d")
        functions = {}
        for batch in (1, 128):
            for mode in ("expected", "sampled"):
                state, economy = ensemble(batch, mode, 64, dimension, "cpu", response, "auto")
                functions[f"B{batch} {mode}"] = lambda state=state, economy=economy: step(state, economy)
        return functions
    if case == "single1024":
        state, economy = ensemble(1, "expected", 1024, 32, "cpu", "large_d", "auto")
        return {"B1 expected": lambda: step(state, economy)}
    if case in ("sparse", "ffn"):
        scenarios = scenarios_of(case)
        state, economy = warmed_up(scenarios, "cpu")
        return {f"B{len(scenarios)} expected": lambda: step(state, economy)}
    from econspin.bench_baselines import SWEEP_AGENTS, SWEEP_GRID, bench_scenario
    from econspin.sweep import parse_grid, run_sweep, sweep_points

    points = sweep_points(bench_scenario(SWEEP_AGENTS), [parse_grid(SWEEP_GRID)])
    functions = {
        "batched": lambda: run_sweep(points, 1, 5, "cpu", "float32"),
        "one by one": lambda: [run_sweep([point], 1, 5, "cpu", "float32") for point in points],
    }
    with torch.no_grad():
        for function in functions.values():
            function()  # warm-up
    return functions


def scenarios_of(case: str) -> list:
    """The batch of scenarios of the ``sparse`` and ``ffn`` cases."""
    from pathlib import Path

    from econspin import Scenario

    if case == "sparse":
        return [Scenario.from_yaml(Path(__file__).resolve().parents[1] / "scenarios" / "sparse_network.yaml")]
    correction = {"form": "ffn", "hidden": 2048}
    return [Scenario.from_dict({"populations": {"a": {"count": 2000, "correction": correction}}})] * 2


def child(case: str, keep: bool, repeats: int, threads: int) -> dict:
    import torch

    from econspin.allocator import keep_freed_memory

    kept = keep_freed_memory() if keep else False
    torch.set_num_threads(threads)
    with torch.no_grad():
        functions = case_functions(case)
        held = resident_mib("VmRSS")
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # the peak restarts from the current resident set
        times, faults = interleaved_cpu_ms(functions, repeats)
    return {"case": case, "keep": keep, "kept": kept, "ms": times, "faults": faults, "held_mib": held,
            "peak_mib": resident_mib("VmHWM"), "after_mib": resident_mib("VmRSS")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--processes", type=int, default=3, help="processes per case and setting")
    parser.add_argument("--repeats", type=int, default=15, help="timed repeats per process")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--keep", type=int, default=0, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        print(json.dumps(child(arguments.child, bool(arguments.keep), arguments.repeats, arguments.threads)))
        return
    results = {}
    for _ in range(arguments.processes):
        for case in arguments.cases.split(","):
            for keep in (0, 1):
                command = [sys.executable, "-m", "experiments.benchmark_allocator", "--child", case,
                           "--keep", str(keep), "--repeats", str(arguments.repeats),
                           "--threads", str(arguments.threads)]
                output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
                results.setdefault((case, keep), []).append(json.loads(output.splitlines()[-1]))
    for (case, keep), runs in results.items():
        times = {name: statistics.median(run["ms"][name] for run in runs) for name in runs[0]["ms"]}
        memory = {key: statistics.median(run[key] for run in runs) for key in ("held_mib", "peak_mib", "after_mib")}
        print(f"{case:11s} keep {'on ' if keep else 'off'} (took: {runs[0]['kept']})  "
              + "  ".join(f"{name} {value:8.2f} ms" for name, value in times.items())
              + "  faults/call " + " ".join(f"{statistics.median(run['faults'][name] for run in runs):.0f}"
                                             for name in times)
              + f"   resident MiB held {memory['held_mib']:.0f} peak {memory['peak_mib']:.0f} "
              f"after {memory['after_mib']:.0f}")
        if case.startswith("ensemble"):
            print(f"{'':11s}          sampled / expected at B = 128: "
                  f"{times['B128 sampled'] / times['B128 expected']:.2f}   B = 128 / B = 1: expected "
                  f"{times['B128 expected'] / times['B1 expected']:.2f}, sampled "
                  f"{times['B128 sampled'] / times['B1 sampled']:.2f}")
        if case == "sweep":
            print(f"{'':11s}          one by one / batched: {times['one by one'] / times['batched']:.2f}")
    for case in arguments.cases.split(","):
        off = results[case, 0]
        on = results[case, 1]
        for name in off[0]["ms"]:
            ratio = statistics.median(r["ms"][name] for r in off) / statistics.median(r["ms"][name] for r in on)
            print(f"{case:11s} {name:12s} off / on: {ratio:.2f}")


if __name__ == "__main__":
    main()
