"""The device checks of the sync-free rollout, in one command, for a session with a GPU.

    python -m experiments.gpu_check [--out DIR] [--dry-run]

Each step runs in a subprocess under its own time limit (8 minutes at most: 180 + 120 + 180 s), and
writes what it measured under ``--out`` (default experiments/results/gpu_check):

1. ``tests``: tests/test_device_rollout.py with
   ECONSPIN_TEST_DEVICE=cuda: no host synchronisation inside a chunk (on a GPU the recorder
   also sees copies of device tensors to the host), chunked rollouts equal to round-by-round
   ones bit for bit, a forced replay of Wood's sampler the same bits; and the flex kernel's
   compiled passes against the fused kernel (tests/test_flex.py, its CUDA test).
2. ``bench``: ``econspin bench --quick --device cuda --json bench_cuda.json``.
3. ``rollout``: the time of a round at B = 64, N = 256 (d = 32, the benchmark economy, both
   modes) played round by round with Wood's loop, in sync-free chunks of 32 rounds eagerly,
   and in sync-free chunks under ``run.compile: reduce-overhead`` (CUDA graphs), against
   torch's scaled_dot_product_attention forward on the same shapes; ``rollout_cuda.json``.

Without a CUDA device, or with ``--dry-run``, it prints the plan and exits 0 (the test suite
runs it so, tests/test_device_rollout.py, so that it does not rot).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# seconds each step may take; the rollout compiles reduce-overhead twice (both modes)
STEPS = {"tests": 180, "bench": 120, "rollout": 180}
ROLLOUT_SHAPE = (64, 256)  # B, N: the GPU target of issue 9 (<= 5x SDPA forward)
ROLLOUT_ROUNDS = 32


def step_commands(out: Path) -> dict[str, list[str]]:
    """Each step as the command line it runs."""
    python = sys.executable
    # the rollout's tests on the device, and the flex kernel's compiled passes against the fused kernel
    tests = ["tests/test_device_rollout.py", "tests/test_flex.py::test_the_passes_on_a_gpu_equal_the_fused_kernel"]
    return {
        "tests": [python, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", *tests],
        "bench": [
            python,
            "-m",
            "econspin",
            "bench",
            "--quick",
            "--device",
            "cuda",
            "--json",
            str(out / "bench_cuda.json"),
        ],
        "rollout": [python, "-m", "experiments.gpu_check", "--rollout-only", "--out", str(out)],
    }


def plan(out: Path) -> list[str]:
    """The steps, one line each: name, time limit, command."""
    return [f"{name} (<= {STEPS[name]} s): {' '.join(command)}" for name, command in step_commands(out).items()]


def run_steps(out: Path) -> int:
    """Run every step; the number that failed (each one's output goes to <step>.log)."""
    failed = 0
    environment = {**os.environ, "ECONSPIN_TEST_DEVICE": "cuda", "PYTHONPATH": str(ROOT)}
    for name, command in step_commands(out).items():
        started = time.perf_counter()
        try:
            result = subprocess.run(
                command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=STEPS[name]
            )
            status, output = result.returncode, result.stdout + result.stderr
        except subprocess.TimeoutExpired as error:
            status, output = "timed out", f"{error.stdout or ''}{error.stderr or ''}"
        (out / f"{name}.log").write_text(output if isinstance(output, str) else output.decode())
        failed += status != 0
        tail = output.strip().splitlines()[-1:] if isinstance(output, str) and output.strip() else [""]
        print(f"{name}: exit {status} in {time.perf_counter() - started:.0f} s; {tail[0]}")
    return failed


WAYS = {  # name: (chunk_rounds, sync_free, run.compile); chunk_rounds None: ROLLOUT_ROUNDS
    "round by round, Wood's loop": (1, False, "off"),
    "sync-free chunks, eager": (None, True, "off"),
    "sync-free chunks, reduce-overhead": (None, True, "reduce-overhead"),
}


def rollout_timing(
    device: torch.device, shape=ROLLOUT_SHAPE, rounds: int = ROLLOUT_ROUNDS, ways=tuple(WAYS), repeats: int = 5
) -> list[dict]:
    """Milliseconds a round at ``shape`` (B, N), per mode and way of playing, with the SDPA floor.

    Every way plays the same rounds, so each row also says whether its final state has the
    bits of the first way's (the eager ways must; a compiled one agrees to rounding).
    """
    from econspin.bench import DIMENSION, bench_scenario, timed
    from econspin.simulate import Rollout

    batch, agents = shape
    rows = []
    for mode in ("expected", "sampled"):
        generator = torch.Generator(device=device).manual_seed(0)
        q, k, v = (torch.randn(batch, 1, agents, DIMENSION, generator=generator, device=device) for _ in range(3))
        functions = {"sdpa forward": lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)}
        rollouts, errors = {}, {}
        for name in ways:
            chunk_rounds, sync_free, compile_mode = WAYS[name]
            try:
                rollout = Rollout.create([bench_scenario(agents, mode=mode)] * batch, list(range(batch)), str(device))
                rollout.economy = dataclasses.replace(rollout.economy, compile=compile_mode)
                rollout.chunk_rounds, rollout.sync_free = chunk_rounds or rounds, sync_free
                rollout.advance(rounds)  # warm-up: compilation, graph capture
                functions[name] = lambda r=rollout: r.advance(rounds)
                rollouts[name] = rollout
            except Exception as error:  # reported, not fatal: the other ways are still timed
                errors[name] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        try:
            times = timed(functions, repeats=repeats, device=device)
        except Exception as error:
            errors["timing"] = f"{type(error).__name__}: {error}"
            times = {}
        floor = times.get("sdpa forward")
        first = next(iter(rollouts.values()), None)
        for name, seconds in times.items():
            per_round = seconds if name == "sdpa forward" else seconds / rounds
            row = {"mode": mode, "way": name, "ms": per_round * 1e3, "ratio to sdpa": per_round / floor}
            if name in rollouts:
                row["same bits as the first way"] = bool(torch.equal(rollouts[name].state.states, first.state.states))
                row["replayed chunks"] = rollouts[name].replayed_chunks
            rows.append(row)
        rows += [{"mode": mode, "way": name, "error": text} for name, text in errors.items()]
    return rows


def main(arguments: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "gpu_check")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--rollout-only", action="store_true", help=argparse.SUPPRESS)  # step 3's own process
    options = parser.parse_args(arguments)
    if options.rollout_only:
        rows = rollout_timing(torch.device("cuda"))
        (options.out / "rollout_cuda.json").write_text(
            json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, indent=1)
        )
        for row in rows:
            print(row)
        return 0
    print("\n".join(plan(options.out)))
    if options.dry_run or not torch.cuda.is_available():
        print("dry run: nothing run" if options.dry_run else "no CUDA device here: nothing run")
        return 0
    options.out.mkdir(parents=True, exist_ok=True)
    return 1 if run_steps(options.out) else 0


if __name__ == "__main__":
    sys.exit(main())
