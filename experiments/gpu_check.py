"""The device checks of issue 9, in one command, for a session with a GPU.

    python -m experiments.gpu_check [--out DIR] [--archive FILE] [--budget SECONDS] [--steps a,b] [--dry-run]

Each step runs in a subprocess under its own time limit, in the order below (most needed
first), and writes what it measured under ``--out`` (default experiments/results/gpu_check);
after each step the whole folder is packed into ``--archive`` (a device call brings back a
few files only), so a call stopped at its limit still returns every finished step. A step
starts only if the ``--budget`` left covers half its limit, and its limit is cut to what is
left.

1. ``tests``: the engine on the GPU against the CPU (tests/test_cuda.py: one market step
   over hypothesis economies, both modes, the oracle; ten rounds of each scenario kind);
   tests/test_device_rollout.py with ECONSPIN_TEST_DEVICE=cuda (no host synchronisation
   inside a chunk, where the recorder also sees copies of device tensors to the host;
   chunked rollouts equal to round-by-round ones bit for bit; a forced replay of Wood's
   sampler the same bits); the flex kernel's compiled passes against the fused kernel. Not the
   tests of gpu_check and gpu_profile themselves: they run those scripts on the CPU, and CI has them.
2. ``traced_tests``: the CUDA test of tests/test_traced_blocks.py, which compiles the blocks traced
   into a whole round (econspin.traced_blocks) in each mode and holds it to the eager blocks and
   round: a step of its own, since those compilations alone outlast the ``tests`` step's other work.
3. ``blocks``: the fused round at N = 16384 and 65536, B = 1, with buyer rows per block from 32
   (the CPU's cache-sized default at N = 65536) to 8192, against SDPA (``blocks_cuda.json``):
   on a GPU each block costs a dozen kernel launches, so the best block is not the CPU's.
4. ``bench``: the fused round against SDPA at N = 1024 to 65536, B = 1, with the bf16
   utilities beside it (``bench_cuda.json``).
5. ``batched``: N = 256 and 1024 at B = 1, 16, 64, both modes, the reference kernel
   beside the fused one (their next states compared) (``batched_cuda.json``).
6. ``rollout``: the time of a round at B = 64, N = 256 (d = 32, the benchmark economy, both
   modes) played round by round with Wood's loop, in sync-free chunks of 32 rounds eagerly (on the
   fused kernel, and on the Triton kernel in expected mode), in sync-free chunks under
   ``run.compile: reduce-overhead`` (CUDA graphs), and so again with
   the blocks as operators inside the graph on CUDA too (compiled.OPERATOR_DEVICES, gpu_measures.WAYS),
   with the blocks traced into the graph (econspin.traced_blocks.TRACED_DEVICES: Inductor's kernels),
   so again (sampled mode) with the values the CPU's compiled round stores stored on CUDA too
   (econspin.compiled.STORED_DEVICES), and (expected mode) on the Triton kernel, whose programs the
   graph holds, at full precision and on bf16 products, against torch's scaled_dot_product_attention forward on the same
   shapes; ``rollout_cuda.json``.
7. ``large_rollout``: the same at B = 1, N = 16384 (gpu_measures.LARGE_ROLLOUT_WAYS): the fused and
   Triton kernels in eager chunks and under CUDA graphs (the fused blocks between the graphs and as
   one operator inside them), where the host's dispatch, most of an eager round at that size, is
   gone (``large_rollout_cuda.json``).
8. ``flex``: the FlexAttention kernel beside the fused one and SDPA at N = 16384 and 65536,
   its first call (the compilation of its five passes) timed apart, each row printed as it
   is measured (``flex_cuda.json``).
9. ``tf32``: the fused round with TF32 utilities at N = 16384 and 65536 (``tf32_cuda.json``).
10. ``flex_batched``: the FlexAttention kernel at B = 64, N = 256 (``flex_batched_cuda.json``).
11. ``triton_tests``: the Triton kernel's compiled programs against the fused kernel
   (tests/test_triton_compiled.py's CUDA tests: hypothesis economies, and a few hundred agents in
   several tile sizes, with and without a network), and rounds under ``run.compile`` (default
   and reduce-overhead: the registered operator traced) against the eager ones.
12. ``triton``: the Triton kernel (``run.kernel: triton``) beside the fused one and SDPA at
   N = 4096, 16384 and 65536 (B = 1) and B = 64, N = 256: its first round (compilation) timed
   apart, the round on each kernel, its next round against the fused one's, then the market
   step alone per tile size (gpu_measures.TRITON_TILES) against the fused market step, each with
   its largest difference from the fused outcome (``triton_cuda.json``).
13. ``million``: one round of N = 10^6 fully connected agents on the fused and the Triton
   kernel, its time and peak memory against econspin.memory's estimate
   (experiments/gpu_million.py; ``million_cuda.json``).
14. ``compiled``: the round under ``run.compile: default`` against SDPA at N = 4096 to 65536,
   B = 1 (``compiled_cuda.json``): what compiling the rest of the round gains at large N, the
   blocks running eagerly between its graphs on CUDA (econspin.fused.expected_blocks).
15. ``profile``: where a round's device time goes (experiments/gpu_profile.py): the kernels of
   the fused and Triton rounds by device time at B = 1, N = 16384 and B = 64, N = 256, eager
   and compiled (``profile_cuda.json``).
16. ``profile_graphs``: the same for the expected round under reduce-overhead (CUDA graphs) at
   B = 64, N = 256, the rollout step's fastest way, with the blocks between the graphs, as one
   operator inside and traced into the graph (econspin.traced_blocks) (``profile_graphs_cuda.json``):
   kernels launched alone against graphs.
17. ``profile_graphs_sampled``: the same in sampled mode, the blocks between the graphs and as one
   operator inside them (``profile_graphs_sampled_cuda.json``): its best rollout way was 48x SDPA.
18. ``block_pass``: the fused round, both modes, with its blocks' eager passes and with them compiled
   into one kernel (econspin.block_pass), as compiled by default and with the sellers' axis static
   (block_pass.STATIC_SELLERS), at N = 4096-65536 and B = 64, N = 256, in the default blocks and
   in blocks of 2048 rows, against SDPA (experiments/gpu_block_pass.py; ``block_pass_cuda.json``).
19. ``block_pass_order``: the ``block_pass`` step's default blocks in a process that compiles the pass first
   at N = 65536, then 16384 and 4096 (``block_pass_order_cuda.json``): whether the shape the pass
   first compiles for decides its speed at the others (docs/performance.md, the second H200 session).
20. ``profile_block_pass``: the profile (experiments/gpu_profile.py) of the fused round at N = 16384
   and 65536 with the eager passes and the compiled one (``profile_block_pass_cuda.json``).
21. ``triton_precision``: the ``triton`` step with the Triton kernel's products on the tensor
   cores (``run.utility_precision`` bfloat16, then tf32) at N = 16384 and 65536 and B = 64,
   N = 256, beside the full-precision fused round (the differences are the reduced precision's
   error) and SDPA forward in float32 and at that precision, with pairs per second against issue
   9's 4e11, and the market step per tile size (``triton_precision_cuda.json``).
22. ``triton_sampled``: the ``triton`` step in sampled mode (the Triton draw, econspin.triton_draws)
   at N = 16384 and 65536 and B = 64, N = 256, against the fused sampled round (the same sellers)
   and SDPA forward, and the market step per tile size (``triton_sampled_cuda.json``). Each round's
   row counts the agents whose draw differs from the fused kernel's, and, as the rounding baseline,
   those where the fused kernel on the GPU differs from itself on the CPU (gpu_measures.cpu_round).

Without a CUDA device, or with ``--dry-run``, it prints the plan and exits 0 (the test suite
runs it so, tests/test_device_rollout.py, so that it does not rot).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch

from experiments.gpu_measures import MEASURES

ROOT = Path(__file__).resolve().parents[1]
# seconds each step may take, in the order run; the rollout compiles reduce-overhead twice (both
# modes), flex compiles five passes per shape, triton two programs per dtype, network kind and tile size
STEPS = {
    "tests": 200,
    # a whole round compiled on CUDA per mode: its first compilation took over 170 s on an H200 (two processes)
    "traced_tests": 300,
    "blocks": 60,
    "bench": 80,
    "batched": 60,
    "rollout": 280,  # since the stored values' way (sampled mode): one more reduce-overhead compilation
    "large_rollout": 180,  # four reduce-overhead compilations at N = 16384 (expected mode; two ways sampled)
    "flex": 120,
    "tf32": 50,
    "flex_batched": 60,
    "triton_tests": 300,  # since branch triton-sampled: sampled mode compiled too (two more run.compile rounds)
    "triton": 150,
    "million": 150,
    "compiled": 120,
    "profile": 120,
    "profile_graphs": 100,  # four runs: the blocks between graphs, one operator inside, traced (twice: either operator)
    "profile_graphs_sampled": 100,  # the sampled rollout's best way on the H200 was 48x SDPA: where its time goes
    "block_pass": 240,  # three ways since the sellers' axis static is one
    # the same passes compiled first at the largest shape: in the second H200 session the compiled pass at N = 65536
    # took 0.92 of the eager round after compiling first at N = 4096, 0.45 after N = 16384 and 32768
    "block_pass_order": 120,
    "profile_block_pass": 60,
    "triton_precision": 200,
    "triton_sampled": 120,
}
BUDGET = 470  # seconds for all steps: one device call, leaving time in a session's lease to rerun one
LARGE = "16384,65536"  # the GPU sizes of issue 9's targets (<= 2.5x SDPA, 4e11 pairs/s)


def step_commands(out: Path) -> dict[str, list[str]]:
    """Each step as the command line it runs."""
    python = sys.executable
    tests = [
        "tests/test_cuda.py",
        "tests/test_device_rollout.py",
        "tests/test_flex.py::test_the_passes_on_a_gpu_equal_the_fused_kernel",
        # the uint64 hash compiled for CUDA: if it passes, randomness.UNSIGNED_HASH_DEVICES may name CUDA
        "tests/test_randomness.py::test_the_traced_hashes_compiled_for_a_gpu_give_the_cpus_words_and_gaussians",
    ]

    # four processes: the tests check values, not times, and most of their time is compiling Triton kernels
    tests_command = [python, "-m", "pytest", "-q", "-n", "4", "-p", "no:cacheprovider"]
    # the tests of these scripts run their steps on the CPU (CI holds them): on the GPU's machine they spend
    # device time, and in the second H200 session one failed there in triton 3.6's interpreter with numpy 2.5
    on_the_gpu_only = ["-k", "not gpu_check and not gpu_profile"]

    def bench(json_name: str, *options: str) -> list[str]:
        return [python, "-m", "econspin", "bench", "--device", "cuda", "--baselines", "none", *options,
                "--json", str(out / json_name)]  # fmt: skip

    return {
        "tests": [*tests_command, *on_the_gpu_only, *tests],
        "traced_tests": [  # its CUDA test alone: the file's CPU tests compile C++ rounds, minutes on a cold cache
            *tests_command,
            "tests/test_traced_blocks.py::test_the_traced_blocks_on_a_gpu_give_the_blocks_results_and_the_eager_round",
        ],
        "blocks": [python, "-m", "experiments.gpu_check", "--measure", "blocks", "--out", str(out)],
        "bench": bench("bench_cuda.json", "--sizes", f"1024,4096,{LARGE}", "--batches", "1", "--kernels", "fused",
                       "--utilities", "bfloat16", "--repeats", "5"),  # fmt: skip
        "batched": bench("batched_cuda.json", "--sizes", "256,1024", "--batches", "1,16,64",
                         "--modes", "expected,sampled", "--repeats", "5"),  # fmt: skip
        "rollout": [python, "-m", "experiments.gpu_check", "--measure", "rollout", "--out", str(out)],
        "large_rollout": [python, "-m", "experiments.gpu_check", "--measure", "large_rollout", "--out", str(out)],
        "flex": [python, "-m", "experiments.gpu_check", "--measure", "flex", "--out", str(out)],
        "tf32": bench("tf32_cuda.json", "--sizes", LARGE, "--batches", "1", "--kernels", "fused", "--utilities", "tf32",
                      "--repeats", "5"),  # fmt: skip
        "flex_batched": bench(
            "flex_batched_cuda.json", "--sizes", "256", "--batches", "64", "--kernels", "fused,flex", "--repeats", "5"
        ),  # fmt: skip
        "triton_tests": [*tests_command, "tests/test_triton_compiled.py"],
        "triton": [python, "-m", "experiments.gpu_check", "--measure", "triton", "--out", str(out)],
        "triton_precision": [python, "-m", "experiments.gpu_check", "--measure", "triton_precision", "--out", str(out)],
        "triton_sampled": [python, "-m", "experiments.gpu_check", "--measure", "triton_sampled", "--out", str(out)],
        "million": [python, "-m", "experiments.gpu_million", "--kernels", "fused,triton",
                    "--json", str(out / "million_cuda.json")],  # fmt: skip
        "compiled": bench("compiled_cuda.json", "--sizes", f"4096,{LARGE}", "--batches", "1", "--kernels", "fused",
                          "--compile", "default", "--repeats", "5"),  # fmt: skip
        "profile": [python, "-m", "experiments.gpu_profile", "--shapes", "1x16384,64x256", "--kernels", "fused,triton",
                    "--compile", "off,default", "--json", str(out / "profile_cuda.json")],  # fmt: skip
        "profile_graphs": [python, "-m", "experiments.gpu_profile", "--shapes", "64x256", "--kernels", "fused",
                           "--compile", "reduce-overhead", "--operator-devices", "cpu,cpu+cuda",
                           "--traced-devices", "cpu,cpu+cuda",
                           "--json", str(out / "profile_graphs_cuda.json")],  # fmt: skip
        "profile_graphs_sampled": [python, "-m", "experiments.gpu_profile", "--shapes", "64x256", "--kernels", "fused",
                                   "--mode", "sampled", "--compile", "reduce-overhead",
                                   "--operator-devices", "cpu,cpu+cuda",
                                   "--json", str(out / "profile_graphs_sampled_cuda.json")],  # fmt: skip
        "block_pass": [python, "-m", "experiments.gpu_block_pass", "--device", "cuda",
                       "--shapes", "1x4096,1x16384,1x65536,64x256", "--rows", "default,2048",
                       "--modes", "expected,sampled", "--json", str(out / "block_pass_cuda.json")],  # fmt: skip
        "block_pass_order": [python, "-m", "experiments.gpu_block_pass", "--device", "cuda",
                             "--shapes", "1x65536,1x16384,1x4096", "--rows", "default", "--modes", "expected,sampled",
                             "--json", str(out / "block_pass_order_cuda.json")],  # fmt: skip
        "profile_block_pass": [python, "-m", "experiments.gpu_profile", "--shapes", "1x16384,1x65536", "--kernels",
                               "fused", "--block-pass", "off,on", "--json", str(out / "profile_block_pass_cuda.json")],
    }


def plan(out: Path, steps=tuple(STEPS)) -> list[str]:
    """The steps, one line each: name, time limit, command."""
    commands = step_commands(out)
    return [f"{name} (<= {STEPS[name]} s): {' '.join(commands[name])}" for name in steps]


def pack(out: Path, archive: Path | None) -> None:
    """Everything under ``out`` into the tar file ``archive`` (rewritten whole, so always complete)."""
    if archive is None:
        return
    partial = archive.with_name(archive.name + ".partial")
    with tarfile.open(partial, "w:gz") as tar:
        tar.add(out, arcname=out.name)
    partial.replace(archive)


def run_steps(out: Path, steps=tuple(STEPS), budget: float = BUDGET, archive: Path | None = None) -> int:
    """Run the steps in order within ``budget`` seconds; the number that failed or did not run.

    Each one's output goes to <step>.log. A step runs only if at least half its limit is left.
    """
    failed, started_all = 0, time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    environment = {**os.environ, "ECONSPIN_TEST_DEVICE": "cuda", "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}
    commands = step_commands(out)
    for name in steps:
        left = budget - (time.perf_counter() - started_all)
        if left < STEPS[name] / 2:
            print(f"{name}: not run, {left:.0f} s of the budget left")
            failed += 1
            continue
        limit, started = min(STEPS[name], left), time.perf_counter()
        log = out / f"{name}.log"
        with log.open("w") as output:  # written as the step prints: a step stopped at its limit keeps its lines
            try:
                status = subprocess.run(
                    commands[name], cwd=ROOT, env=environment, stdout=output, stderr=subprocess.STDOUT, timeout=limit
                ).returncode
            except subprocess.TimeoutExpired:
                status = f"timed out at {limit:.0f} s"
        output = log.read_text()
        failed += status != 0
        tail = output.strip().splitlines()[-1:] or [""]
        print(f"{name}: exit {status} in {time.perf_counter() - started:.0f} s; {tail[0]}", flush=True)
        pack(out, archive)
    return failed


def main(arguments: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "gpu_check")
    parser.add_argument("--archive", type=Path, help="after each step, pack --out into this .tar.gz")
    parser.add_argument("--budget", type=float, default=BUDGET, help="seconds for all steps")
    parser.add_argument("--steps", default=",".join(STEPS), help="comma-separated steps to run, in this order")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    # the blocks and rollout steps' own processes
    parser.add_argument("--measure", choices=tuple(MEASURES), help=argparse.SUPPRESS)
    options = parser.parse_args(arguments)
    if options.measure:
        rows = MEASURES[options.measure](torch.device("cuda"))
        (options.out / f"{options.measure}_cuda.json").write_text(
            json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, indent=1)
        )
        for row in rows:
            print(row)
        return 0
    steps = tuple(options.steps.split(","))
    unknown = set(steps) - set(STEPS)
    if unknown:
        print(f"--steps: unknown {', '.join(sorted(unknown))}; choose from {', '.join(STEPS)}")
        return 2
    print("\n".join(plan(options.out, steps)))
    if options.dry_run or not torch.cuda.is_available():
        print("dry run: nothing run" if options.dry_run else "no CUDA device here: nothing run")
        return 0
    options.out.mkdir(parents=True, exist_ok=True)
    return 1 if run_steps(options.out, steps, options.budget, options.archive) else 0


if __name__ == "__main__":
    sys.exit(main())
