"""The first compiled round's build, with econspin's code-generation setup and without each part of it.

    python -m experiments.compile_time --mode sampled --batch 1 --dimension 32 --repeats 2

econspin.inductor_setup spares Inductor work it repeats for every operation it generates (its
dtype rules built once; equal bounds intersected at once). For each way (``full``: both, as the
compiled paths install them; ``no-ranges``, ``no-rules``, ``library``: neither; its two parts
that change the code written, the whole integer loads and the float transposes, stay installed
in every way, so that every way writes the same files), this script
starts a fresh process with an empty Inductor cache of its own, builds ``benchmark_ensemble``'s
economy (N = ``--agents``, float32, one thread) with ``run.compile: default``, and times its first
round, which compiles it. It then prints each way's build time, whether Inductor wrote the same
files as for the first way (the generated code's names are hashes of the code; their md5 sums are
compared too) and the compiled round's largest difference from the eager round's states. The
ways run in turn, ``--repeats`` times, so that the machine's load falls on all of them alike.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WAYS = ("full", "no-ranges", "no-rules", "library")
ROOT = Path(__file__).resolve().parent.parent  # where `python -m experiments.compile_time` finds the package


def build_once(way: str, mode: str, batch: int, agents: int, dimension: int) -> dict:
    """In this process: the economy built and its first compiled round timed, the setup as ``way`` says."""
    import torch

    from econspin import inductor_setup

    if way in ("no-ranges", "library"):
        inductor_setup.intersect_equal_ranges_at_once = lambda: False
    if way in ("no-rules", "library"):
        inductor_setup.build_dtype_rules_once = lambda: False
    torch.set_num_threads(1)
    from econspin.round import step
    from experiments.benchmark_ensemble import ensemble

    started = time.perf_counter()
    compiled = ensemble(batch, mode, agents, dimension, "cpu", "vmf", "auto", "default")
    build = time.perf_counter() - started
    eager = ensemble(batch, mode, agents, dimension, "cpu", "vmf", "auto", "off")
    with torch.no_grad():
        difference = (step(*compiled).states - step(*eager).states).abs().max().item()
    return {"build_s": build, "max_state_difference": difference}


def generated_files(cache: Path) -> dict[str, str]:
    """md5 of each C++ source and Python wrapper Inductor wrote under ``cache``, by its path there."""
    found = {}
    for path in sorted(cache.rglob("*")):
        if path.is_file() and path.suffix in (".cpp", ".py") and len(path.parent.name) == 2:
            found[str(path.relative_to(cache))] = hashlib.md5(path.read_bytes()).hexdigest()
    return found


def build_in_fresh_process(way: str, arguments: argparse.Namespace) -> dict:
    """One way's build in a process of its own, with an empty Inductor cache: its figures and generated files."""
    with tempfile.TemporaryDirectory() as cache:
        environment = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        sizes = ["--batch", str(arguments.batch), "--agents", str(arguments.agents)]
        shape = [*sizes, "--dimension", str(arguments.dimension), "--mode", arguments.mode]
        command = [sys.executable, "-m", "experiments.compile_time", "--child", way, *shape]
        finished = subprocess.run(command, env=environment, cwd=ROOT, capture_output=True, text=True, check=True)
        result = json.loads(finished.stdout.strip().splitlines()[-1])
        result["files"] = generated_files(Path(cache))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("expected", "sampled"), default="sampled")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--agents", type=int, default=64)
    parser.add_argument("--dimension", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--ways", default="full,library", help=f"comma-separated, of {', '.join(WAYS)}")
    parser.add_argument("--child", choices=WAYS, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        figures = build_once(arguments.child, arguments.mode, arguments.batch, arguments.agents, arguments.dimension)
        print(json.dumps(figures))
        return
    ways = arguments.ways.split(",")
    print(f"{arguments.mode} round, B = {arguments.batch}, N = {arguments.agents}, d = {arguments.dimension}")
    reference = None
    for repeat in range(arguments.repeats):
        for way in ways:
            result = build_in_fresh_process(way, arguments)
            reference = reference or result["files"]
            same = "same files" if result["files"] == reference else "OTHER FILES"
            print(
                f"{repeat}  {way:10s} build {result['build_s']:7.1f} s  {len(result['files'])} files, {same}"
                f"  max |compiled - eager| {result['max_state_difference']:.3g}"
            )


if __name__ == "__main__":
    main()
