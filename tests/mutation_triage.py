"""Mutation triage: every mutant of one module against a few chosen test files, stopping at the first failure.

    python tests/mutation_triage.py MODULE TEST_FILE ... [--children 2] [--timeout 300] [--only GLOB]
    python tests/mutation_triage.py fused_sampled tests/test_fused_sampled.py tests/test_fused.py

``make mutation`` runs each mutant against every test that reaches its function, which for the
fused kernels' modules is hundreds of tests: a survivor costs minutes, and a full run hours
(docs/testing.md). Triage asks a cheaper question first: which mutants do the module's own
test files kill? It makes mutmut's mutants (under mutants/, as mutmut does) if they are not
there, imports torch, pytest and the test files once in a clean parent process, and forks one
child per mutant, which switches its mutant on (``MUTANT_UNDER_TEST``) and runs
``pytest -x`` on the test files. A mutant that passes them is a lead, not mutmut's verdict: run
it against the whole suite (``mutmut run NAME``) or read it (``mutmut show NAME``).

Results go to ``mutants/triage-MODULE.jsonl``, one line a mutant (name, exit code or
"timeout", seconds); a second run skips the mutants already there, so an interrupted triage
resumes. At the end the survivors are listed by name. A second stage runs the survivors of the
first against more test files, into a results file of its own:

    python tests/mutation_triage.py fused_sampled tests/test_oracle.py ... --survivors-of '' --stage wider
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib
import json
import os
import shutil
import signal
import sys
import time
from collections import Counter
from pathlib import Path

from mutation_score import STATUS  # (beside this file: tests/ is the script's first path)

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = ROOT / "mutants"


def make_mutants() -> None:
    """The mutants of every module in pyproject.toml's ``only_mutate``, as ``mutmut run`` first makes them."""
    from mutmut import __main__ as mutmut

    os.chdir(ROOT)
    mutmut.set_mutant_under_test("mutant_generation")
    MUTANTS.mkdir(exist_ok=True)
    mutmut.copy_src_dir()
    mutmut.copy_also_copy_files()
    mutmut.setup_source_paths()
    mutmut.store_lines_covered_by_tests()
    mutmut.create_mutants(os.cpu_count() or 2)
    mutmut.set_mutant_under_test(None)
    os.environ.pop("MUTANT_UNDER_TEST", None)


def results_file(module: str, stage: str) -> Path:
    return MUTANTS / (f"triage-{module}.jsonl" if not stage else f"triage-{module}-{stage}.jsonl")


def mutant_names(module: str, only: str | None, survivors_of: str | None) -> list[str]:
    """The module's mutant names matching ``only``; with ``survivors_of``, those that survived that stage."""
    meta = MUTANTS / "econspin" / f"{module}.py.meta"
    names = list(json.loads(meta.read_text())["exit_code_by_key"])
    if survivors_of is not None:
        kept = set(survivors(read_results(results_file(module, survivors_of))))
        names = [name for name in names if name in kept]
    if only is None:
        return names
    patterns = only.split(",")  # in the order given: the functions that matter most first
    return list(dict.fromkeys(name for pattern in patterns for name in names if fnmatch.fnmatch(name, pattern)))


def run_child(name: str, tests: list[str]) -> None:
    """In a forked child: the mutant switched on, pytest -x on the test files, exit with pytest's code."""
    os.environ["MUTANT_UNDER_TEST"] = name
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)
    os.dup2(quiet, 2)
    code = 1
    try:
        import pytest

        # no traceback: the output goes nowhere, and formatting one reads the mutated module's source
        # (every mutant of the module), 10-30 s a failure in test_sparse.py
        code = int(pytest.main(["-x", "-q", "--tb=no", "-p", "no:cacheprovider", *tests]))
    finally:
        os._exit(code)


def fork_child(name: str, tests: list[str]) -> int:
    pid = os.fork()
    if pid == 0:
        run_child(name, tests)
    return pid


def outcome(pid: int, start: float, timeout: float) -> int | str | None:
    """The child's exit code; "timeout" (the child killed) once ``timeout`` seconds have passed; None while it runs."""
    finished, status = os.waitpid(pid, os.WNOHANG)
    if finished:
        return os.waitstatus_to_exitcode(status)
    if time.time() - start <= timeout:
        return None
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "timeout"


def wait_for(pid: int, timeout: float) -> int | str:
    """The child's exit code, or "timeout" after ``timeout`` seconds."""
    start = time.time()
    while (code := outcome(pid, start, timeout)) is None:
        time.sleep(0.05)
    return code


def read_results(results: Path) -> list[dict]:
    """The lines of a results file (name, code, seconds); none where it does not exist yet."""
    return [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []


def triage(
    module: str, tests: list[str], children: int, timeout: float, only: str | None, stage: str, survivors_of: str | None
) -> Path:
    if not (MUTANTS / "econspin" / f"{module}.py.meta").exists():
        print(f"making the mutants under {MUTANTS} ...", flush=True)
        make_mutants()
    # the tests as they are now (mutmut copied them when it made the mutants): a new test kills at once
    shutil.copytree(ROOT / "tests", MUTANTS / "tests", dirs_exist_ok=True)
    results = results_file(module, stage)
    done = {line["name"] for line in read_results(results)}
    waiting = [name for name in mutant_names(module, only, survivors_of) if name not in done]
    print(f"{module}: {len(waiting)} mutants to run ({len(done)} already in {results.name})", flush=True)

    # everything the children share is imported here, once, before any fork: the mutated package
    # from mutants/, torch and the test files (their module names as pytest's rootdir-less import gives them)
    os.chdir(MUTANTS)
    sys.path[:0] = [str(MUTANTS), str(MUTANTS / "tests")]
    import pytest  # noqa: F401
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("HYPOTHESIS_PROFILE", "mutation")  # conftest's: a failing example is not shrunk
    for name in ["conftest", *(Path(test).stem for test in tests)]:
        importlib.import_module(name)

    # the test files pass with no mutant, and fail when every mutated function raises (mutmut's
    # "fail"): else every mutant would count as killed, or none could be
    if waiting:
        for name, passes in (("", True), ("fail", False)):
            code = wait_for(fork_child(name, tests), timeout)
            if (code == 0) != passes:
                verdict = "fail" if passes else "pass"
                sys.exit(f"the test files {verdict} with MUTANT_UNDER_TEST={name!r} (exit {code}): no triage")

    running: dict[int, tuple[str, float]] = {}
    with results.open("a") as out:
        while waiting or running:
            while waiting and len(running) < children:
                name = waiting.pop(0)
                running[fork_child(name, tests)] = (name, time.time())
            time.sleep(0.05)
            for pid, (name, start) in list(running.items()):
                code = outcome(pid, start, timeout)
                if code is None:
                    continue
                del running[pid]
                out.write(json.dumps({"name": name, "code": code, "seconds": round(time.time() - start, 1)}) + "\n")
                out.flush()
    return results


def survivors(lines: list[dict]) -> list[str]:
    """The mutants of a results file's lines that passed its test files."""
    return [line["name"] for line in lines if line["code"] == 0]


def summary(results: Path) -> list[str]:
    """Counts by outcome (pytest's exit codes, named as mutation_score names mutmut's), and the survivors' names."""
    lines = read_results(results)
    named = {**STATUS, "timeout": "timeout"}  # (a child this script killed for its time)
    counts = Counter(named.get(line["code"], f"exit {line['code']}") for line in lines)
    print(", ".join(f"{count} {key}" for key, count in sorted(counts.items())))
    return survivors(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("module", help="a module of econspin/ in only_mutate, without .py (fused_sampled)")
    parser.add_argument("tests", nargs="+", help="the test files each mutant runs, fastest killers first")
    parser.add_argument("--children", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before a mutant counts as a timeout")
    parser.add_argument(
        "--only", help="globs of mutant names, comma-separated, run in that order (econspin.fused.x_fused_trade__*)"
    )
    parser.add_argument("--stage", default="", help="a label for this run's results file (triage-MODULE-STAGE.jsonl)")
    parser.add_argument("--survivors-of", help="run only the survivors of this stage ('' for the first)")
    arguments = parser.parse_args()
    tests = [str(Path(test)) for test in arguments.tests]
    results = triage(
        arguments.module, tests, arguments.children, arguments.timeout, arguments.only, arguments.stage,
        arguments.survivors_of,
    )
    survivors = summary(results)
    if survivors:
        print("passed the test files (mutmut show NAME for each diff):")
        print("\n".join(survivors))


if __name__ == "__main__":
    main()
