"""Time one round of an ensemble of small economies, expected against sampled mode, in one run.

Issue 9's ensemble targets: the sampled round at most 1.3x the expected round, and B = 128
economies of N = 64 agents at most 4x one such economy per round. This script times one
round (median of interleaved repeats after warm-up) for B in {1, --batch} and both modes, and
prints the ratios sampled / expected and B / 1, by wall clock and by the CPU time of this process (the
latter is less disturbed by other work on a shared machine; with one thread it is the work
done). Times depend on the machine and its load; the ratios, measured in one run, are what
to compare. Each case plays ``--block`` rounds a turn and its first is not counted: what is
timed is a round in steady state, as a run of that economy alone plays it.

    python -m experiments.benchmark_ensemble --agents 64 --dimension 16 --batch 128 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from econspin import Scenario, keep_freed_memory
from econspin.round import step
from econspin.simulate import Rollout
from experiments.gpu_measures import with_switches

BLOCK = 6  # rounds of one case in a turn; the first of them is not counted


def ensemble(batch: int, mode: str, agents: int, dimension: int, device: str, response: str, kernel: str,
             compile_mode: str = "off"):
    """(state after two warm-up rounds, economy) of ``batch`` copies of the benchmark economy.

    With ``compile_mode`` (run.compile) the first warm-up round compiles the round.
    """
    scenario = Scenario.from_dict({
        "populations": {"human": {"count": agents - agents // 4, "temperature": 1.0},
                        "ai": {"count": agents // 4, "temperature": 0.2}},
        "market": {"d": dimension, "mode": mode, "response": response},
        "run": {"device": device, "kernel": kernel, "compile": compile_mode},
    })
    return warmed_up([scenario] * batch, device)


def warmed_up(scenarios: list[Scenario], device: str):
    """(state after two warm-up rounds, economy) of ``scenarios`` batched, in float32 on ``device``."""
    rollout = Rollout.create(scenarios, list(range(len(scenarios))), device, "float32")
    state, economy = rollout.state, rollout.economy
    with torch.no_grad():
        for _ in range(2):
            state = step(state, economy)
    return state, economy


def interleaved_times(cases: dict, repeats: int, block: int = BLOCK) -> dict:
    """Median (wall, CPU) seconds of one round of each case, the cases timed in turn, repeat after repeat.

    Each turn plays ``block`` rounds of one case and keeps the times of all but the first: the
    first round after another case's pays for caches that case filled (at B = 1 the round's
    code and data, evicted by a B = 128 round: the compiled B = 1 round measured 0.55-1.0 ms
    right after other cases, 0.33-0.44 ms in steady state; docs/performance.md). ``block`` 1
    times every round right after another case, as this script did before.
    """
    samples = {name: ([], []) for name in cases}
    with torch.no_grad():
        for _ in range(repeats):
            for name, (state, economy) in cases.items():
                for round_index in range(block):
                    started, started_cpu = time.perf_counter(), time.process_time()
                    step(state, economy)
                    if state.states.is_cuda:
                        torch.cuda.synchronize()
                    wall, cpu = time.perf_counter() - started, time.process_time() - started_cpu
                    if round_index > 0 or block == 1:
                        samples[name][0].append(wall)
                        samples[name][1].append(cpu)
    return {name: (statistics.median(wall), statistics.median(cpu)) for name, (wall, cpu) in samples.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=64)
    parser.add_argument("--dimension", type=int, default=16)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--block", type=int, default=BLOCK,
                        help="rounds of one case a turn, the first not counted (1: every round after another case)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--response", default="vmf")
    parser.add_argument("--kernel", default="auto", help="run.kernel: auto (fused) or reference")
    parser.add_argument("--compile", default="off", help="run.compile: also time the compiled round (default, ...)")
    parser.add_argument("--keep-memory", action="store_true",
                        help="call econspin.keep_freed_memory() first (as the econspin command does)")
    parser.add_argument("--operator-blocks", action="store_true",
                        help="compiled rounds call the blocks' operator even where one block holds the round "
                             "(econspin.traced_blocks.TRACED_DEVICES emptied): the way before the blocks were traced")
    arguments = parser.parse_args(argv)
    if arguments.keep_memory:
        print(f"keep_freed_memory: {keep_freed_memory()}")
    if arguments.operator_blocks:
        print("the blocks' operator in every compiled round (econspin.traced_blocks.TRACED_DEVICES = ())")
    switches = {"TRACED_DEVICES": ()} if arguments.operator_blocks else {}
    with_switches(switches, lambda: timed(arguments))()  # as it was, after


def timed(arguments: argparse.Namespace) -> None:
    """Build, time and print the cases of ``arguments`` (main's)."""
    torch.set_num_threads(arguments.threads)
    n, d, b = arguments.agents, arguments.dimension, arguments.batch
    print(f"N = {n}, d = {d}, response = {arguments.response}, kernel = {arguments.kernel}, "
          f"device = {arguments.device}, threads = {arguments.threads}, torch {torch.__version__}")
    settings = ("off",) if arguments.compile == "off" else ("off", arguments.compile)
    compile_seconds = {}
    cases = {}
    for setting in settings:
        for batch in (1, b):
            for mode in ("expected", "sampled"):
                started = time.process_time()
                cases[batch, mode, setting] = ensemble(
                    batch, mode, n, d, arguments.device, arguments.response, arguments.kernel, setting
                )
                compile_seconds[batch, mode, setting] = time.process_time() - started
    times = interleaved_times(cases, arguments.repeats, arguments.block)
    for (batch, mode, setting), (wall, cpu) in times.items():
        built = f"   (built and warmed up in {compile_seconds[batch, mode, setting]:.1f} s cpu)"
        print(f"B = {batch:4d}  {mode:9s} round, compile {setting:8s} wall {wall * 1e3:9.2f} ms   "
              f"cpu {cpu * 1e3:9.2f} ms{built if setting != 'off' else ''}")
    for setting in settings:
        for column, name in ((0, "wall"), (1, "cpu")):
            ratios = [f"B = {batch}: "
                      f"{times[batch, 'sampled', setting][column] / times[batch, 'expected', setting][column]:5.2f}"
                      for batch in (1, b)]
            scaling = [f"{mode}: {times[b, mode, setting][column] / times[1, mode, setting][column]:6.2f}"
                       for mode in ("expected", "sampled")]
            print(f"compile {setting:8s} {name:4s}  sampled / expected  {'   '.join(ratios)}     "
                  f"B = {b} / B = 1  {'   '.join(scaling)}")


if __name__ == "__main__":
    main()
