"""Fuzzing the command line with mutated shipped scenarios (issue 11, "Make it systematic").

Each example takes a scenario from scenarios/, mutates it (wrong types, out-of-range and huge
numbers, unknown and misspelt keys, broken temperature schedules and distributions, events,
networks, corrections; malformed YAML, bytes that are no text, empty files) and runs
``econspin check`` and ``econspin run --steps 1`` on it. Every outcome must be success, or
exit status 2 with exactly one line on stderr and nothing left behind; never a traceback, and
never a hang (each command has a time limit). A refusal by ``check`` is a refusal by ``run``,
word for word.

Commands run in-process (typer's CliRunner) for speed, and a few through a real subprocess.
Each runs under an address-space limit a few GiB above what the process holds, so that a size
the memory estimate misses fails to allocate instead of filling this shared machine.
scenarios/sparse_network.yaml (100 000 agents: one round takes most of a minute on two busy
cores) is mutated for ``check`` only. The default run tries a fixed set of examples (fast and
the same every time); the slow run (``-m slow``) draws hundreds of new ones.

Every bug the fuzzing found is kept below as an explicit case (FOUND).
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from econspin.cli import app

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = {path.stem: path for path in sorted((ROOT / "scenarios").glob("*.yaml"))}
CHECK_ONLY = {"sparse_network"}
RUN_FILES = {"scenario.yaml", "metrics.parquet", "wealth.parquet", "manifest.json", "checkpoint.pt",
             "concentration.png", "wealth.png"}
CHECK_SECONDS, RUN_SECONDS = 30, 180  # generous: two cores shared by many; a hang is endless
HEADROOM = 6 * 2**30  # address space allowed above what the process already holds

runner = CliRunner()

# --- what a mutation puts in

EDGE_VALUES = [0, -1, 1, 2, 0.5, -0.5, 1e-300, 1e300, -1e300, 10**9, 2**31, 2**63, 2**64, 10**30, -(10**30),
               math.inf, -math.inf, math.nan, "", "many", "1e400", "null", "[1", "yes", "~", [], [1, 2], {},
               {"x": 1}, None, True, False]
values = st.one_of(st.sampled_from(EDGE_VALUES), st.integers(-3, 3), st.floats(-3, 3),
                   st.text(alphabet="abcxyz01:-_ ", max_size=6))


def words(*choices):
    return st.one_of(st.sampled_from(choices), values)


def mappings(keys, *choices):
    """Mappings over some of ``keys`` (and one unknown), values from ``choices`` or anywhere."""
    return st.dictionaries(st.sampled_from([*keys, "extra"]), words(*choices), max_size=4)


temperatures = st.one_of(
    st.fixed_dictionaries({"schedule": st.lists(st.lists(values, max_size=3), max_size=3)}),
    mappings(["distribution", "mean", "sigma", "low", "high", "schedule"], "lognormal", "gamma", "uniform", "normal"),
    st.lists(st.lists(values, max_size=2), max_size=2),
    values,
)
networks = st.one_of(
    values,
    st.fixed_dictionaries(
        {"generator": words("watts_strogatz_graph", "erdos_renyi_graph", "barabasi_albert_graph", "cycle_graph",
                            "complete_graph", "no_such_graph")},
        optional={"params": st.one_of(values, st.dictionaries(st.sampled_from(["k", "p", "m", "n", "directed"]),
                                                              values, max_size=2)),
                  "seed": values, "layout": words("auto", "dense", "sparse"), "edge_list": words("missing.txt")},
    ),
)
NESTED = {  # key (under a population, the market or the top) -> what to put there
    "temperature": temperatures,
    "money": mappings(["distribution", "mean", "sigma", "alpha"], "equal", "exponential", "lognormal", "pareto"),
    "state": mappings(["distribution", "scale", "value"], "normal", "constant"),
    "field": mappings(["distribution", "scale", "value"], "normal", "constant"),
    "projections": mappings(["init", "scale", "tied", "seed"], "random", "identity"),
    "correction": mappings(["form", "weights", "hidden", "scale", "seed", "features"],
                           "none", "tap", "ffn", "missing.pt", "state", "invariant"),
    "network": networks,
    "couplings": mappings(["file", "curie_weiss", "coupling_key"], "missing.npz"),
}
JUNK = ["\t", ":", ": :", "- ", "[", "{", "}", "]", "&a ", "*a", "!!python/object:os.system ", "'", '"', "%YAML 9\n",
        "\n  - x\n", "\x00", "\ufeff", "?", "|", ">"]


def key_paths(data, prefix=()):
    """Every key path of a nested mapping (list items by index), inner ones included."""
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, list):
        items = enumerate(data)
    else:
        return
    for key, value in items:
        yield (*prefix, key)
        yield from key_paths(value, (*prefix, key))


def mapping_paths(data, prefix=()):
    """The paths of the mappings in a nested structure, the top one included."""
    if isinstance(data, dict):
        yield prefix
        for key, value in data.items():
            yield from mapping_paths(value, (*prefix, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from mapping_paths(value, (*prefix, index))


def _is_mapping_at(data, path) -> bool:
    for part in path:
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return isinstance(data, dict)


def holder(data, path):
    for part in path:
        data = data[part]
    return data


def misspell(word: str, draw) -> str:
    position = draw(st.integers(0, max(len(word) - 1, 0)))
    kind = draw(st.sampled_from(["drop", "double", "swap", "case"]))
    if kind == "drop" and len(word) > 1:
        return word[:position] + word[position + 1:]
    if kind == "swap" and position + 1 < len(word):
        return word[:position] + word[position + 1] + word[position] + word[position + 2:]
    if kind == "case":
        return word.upper()
    return word[:position] + word[position] * 2 + word[position:]


@st.composite
def mutated_scenarios(draw, bases):
    """(base name, file bytes, what was done): a shipped scenario with one or two mutations."""
    name = draw(st.sampled_from(bases))
    data = yaml.safe_load(SHIPPED[name].read_text())
    done = []
    for _ in range(draw(st.integers(1, 2))):
        kind = draw(st.sampled_from(["replace", "replace", "nudge", "nudge", "nested", "unknown key", "drop key",
                                     "events", "text"]))
        if kind == "replace":
            path = draw(st.sampled_from(list(key_paths(data))))
            holder(data, path[:-1])[path[-1]] = draw(values)
        elif kind == "nudge":  # a number moved within or just past its range: often still valid
            numbers = [path for path in key_paths(data) if type(holder(data, path)) in (int, float)]
            if not numbers:
                continue
            path = draw(st.sampled_from(numbers))
            value = holder(data, path) * draw(st.sampled_from([0, -1, 0.5, 2, 10])) + draw(st.sampled_from([0, 1]))
            holder(data, path[:-1])[path[-1]] = type(holder(data, path))(value)
        elif kind == "nested":
            key = draw(st.sampled_from(sorted(NESTED)))
            populations = data["populations"] if _is_mapping_at(data, ("populations",)) else {}
            owners = [("populations", name) for name in populations]
            if key in ("network", "couplings"):
                owners = [("market",)]
            owners = [owner for owner in owners if _is_mapping_at(data, owner)]
            if not owners:  # an earlier mutation took the place away
                continue
            path = (*draw(st.sampled_from(owners)), key)
            holder(data, path[:-1])[path[-1]] = draw(NESTED[key])
        elif kind == "unknown key":
            path = draw(st.sampled_from(list(mapping_paths(data))))
            mapping = holder(data, path)
            known = [key for key in mapping if isinstance(key, str)]
            key = misspell(draw(st.sampled_from(known)), draw) if known and draw(st.booleans()) else draw(
                st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10))
            mapping[key] = draw(values)
        elif kind == "drop key":
            path = draw(st.sampled_from(list(key_paths(data))))
            container = holder(data, path[:-1])
            del container[path[-1]]
        elif kind == "events":
            populations = sorted(map(str, data["populations"])) if _is_mapping_at(data, ("populations",)) else []
            data["events"] = draw(st.lists(mappings(["at", "population", "temperature", "field_shift"],
                                                    *populations, "robots", 0, 5, 10**30), max_size=3))
        else:
            break  # the text is mangled after dumping
        done.append(f"{kind} {path if kind != 'events' else ''}".strip())
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True).encode()
    if kind == "text":
        how = draw(st.sampled_from(["truncate", "insert", "replace", "bytes"]))
        where = draw(st.integers(0, len(text)))
        if how == "truncate":
            text = text[:where]
        elif how == "insert":
            text = text[:where] + draw(st.sampled_from(JUNK)).encode() + text[where:]
        elif how == "bytes":
            text = text[:where] + draw(st.binary(min_size=1, max_size=4)) + text[where:]
        else:
            text = draw(st.sampled_from([b"", b"   \n", b"# only a comment\n", b"---\n---\n", b"[]", b"42", b"~"]))
        done.append(f"text {how} at {where}")
    return name, text, done


# --- running a command as a user would, with limits


class Hang(Exception):
    pass


@contextlib.contextmanager
def limits(seconds: int):
    """A time limit (SIGALRM) and an address-space limit HEADROOM above what the process holds."""
    def timed_out(_signal, _frame):
        raise Hang(f"no answer within {seconds} s")

    previous_handler = signal.signal(signal.SIGALRM, timed_out)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    held = _address_space()
    wanted = held + HEADROOM
    if hard == resource.RLIM_INFINITY or wanted < hard:
        resource.setrlimit(resource.RLIMIT_AS, (wanted, hard))
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        signal.signal(signal.SIGALRM, previous_handler)


def _address_space() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def invoke(arguments: list[str], seconds: int):
    with limits(seconds):
        return runner.invoke(app, arguments)


def in_process(arguments: list[str], seconds: int) -> tuple[int, str, object]:
    """Exit status, stderr and what was raised, of a command run in this process."""
    result = invoke(arguments, seconds)
    return result.exit_code, result.stderr, result.exception


def check_outcome(command: str, exit_code: int, stderr: str, exception, folder: Path, out: Path, describe: str):
    """Success, or status 2 with one line and nothing left: the contract for every input."""
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr, f"{describe}\n{stderr}"
    assert exit_code in (0, 2), f"{describe}: {command} exited {exit_code}: {exception!r}\n{stderr}"
    if exit_code == 2:
        assert len(lines) == 1 and lines[0].startswith("error: "), f"{describe}: {command} said\n{stderr}"
        assert sorted(path.name for path in folder.iterdir()) == ["scenario.yaml"], f"{describe}: left behind"
    elif command == "run":
        assert set(path.name for path in out.iterdir()) == RUN_FILES, f"{describe}: {sorted(out.iterdir())}"
    return lines


def check_and_run(name: str, text: bytes, describe: str, command=in_process) -> None:
    """``check``, then (unless the base is check-only) ``run --steps 1``, each held to the contract."""
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        path, out = folder / "scenario.yaml", folder / "out"
        path.write_bytes(text)
        checked, stderr, raised = command(["check", str(path)], CHECK_SECONDS)
        refusal = check_outcome("check", checked, stderr, raised, folder, out, describe)
        if name in CHECK_ONLY:
            event(f"check {checked} (check only)")
            return
        ran, stderr, raised = command(["run", str(path), "--steps", "1", "--out", str(out), "--quiet"], RUN_SECONDS)
        lines = check_outcome("run", ran, stderr, raised, folder, out, describe)
        event(f"check {checked}, run {ran}")
        if checked == 2:
            # run --steps 1 plays one step: check refuses the file's own run.steps where that alone is too much
            # (the metrics of 10^9 steps), so what run must match is check of the same one-step run
            again, stderr, raised = command(["check", str(path), "--set", "run.steps=1"], CHECK_SECONDS)
            if again == 2:
                refusal = check_outcome("check", again, stderr, raised, folder, out, describe)
            assert ran == again and (ran == 0 or lines == refusal), f"{describe}: check said {refusal}, run {lines}"


def describe(name, text, done):
    return f"{name} after {done}: {text[:2000]!r}"


FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                     HealthCheck.filter_too_much])


@settings(FUZZ, max_examples=20, derandomize=True)
@given(mutated_scenarios(sorted(SHIPPED)))
def test_mutated_scenarios_succeed_or_are_refused_in_one_line(example):
    name, text, done = example
    check_and_run(name, text, describe(name, text, done))


@pytest.mark.slow
@settings(FUZZ, max_examples=400)
@given(mutated_scenarios(sorted(SHIPPED)))
def test_many_mutated_scenarios_succeed_or_are_refused_in_one_line(example):
    name, text, done = example
    check_and_run(name, text, describe(name, text, done))


# --- the same through a real process: its own stderr, interpreter exit and warnings included


def in_a_process(arguments: list[str], seconds: int) -> tuple[int, str, object]:
    """Exit status and stderr of ``python -m econspin.cli`` in a process of its own (with its limits)."""
    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (_address_space() + HEADROOM + 4 * 2**30, resource.RLIM_INFINITY))

    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        finished = subprocess.run([sys.executable, "-m", "econspin.cli", *arguments], capture_output=True, text=True,
                                  timeout=seconds + 30, env=environment, preexec_fn=limit_memory)
    except subprocess.TimeoutExpired:
        raise Hang(f"{arguments[0]}: no answer within {seconds + 30} s") from None
    return finished.returncode, finished.stderr, None


@settings(FUZZ, max_examples=1, derandomize=True)
@given(mutated_scenarios(sorted(set(SHIPPED) - CHECK_ONLY)))
def test_mutated_scenarios_through_a_real_process(example):
    name, text, done = example
    check_and_run(name, text, describe(name, text, done), command=in_a_process)


@pytest.mark.slow
@settings(FUZZ, max_examples=25)
@given(mutated_scenarios(sorted(set(SHIPPED) - CHECK_ONLY)))
def test_more_mutated_scenarios_through_a_real_process(example):
    name, text, done = example
    check_and_run(name, text, describe(name, text, done), command=in_a_process)


# --- what the fuzzing found, each kept as it was found


def baseline_with(path: tuple, value) -> bytes:
    data = yaml.safe_load(SHIPPED["baseline"].read_text())
    holder(data, path[:-1])[path[-1]] = value
    return yaml.safe_dump(data).encode()


FOUND = {  # input -> the words of its one-line refusal (None: it runs)
    "bytes that are no UTF-8": (b"name: \xff\xfe\n", "not UTF-8 text (byte 6)"),
    "lists nested 5000 deep": (b"populations: " + b"[" * 5000 + b"]" * 5000, "nested too deeply"),
    "mappings nested 3000 deep": (b"a: " + b"{b: " * 3000 + b"1" + b"}" * 3000, "nested too deeply"),
    "a count no int64 holds": (baseline_with(("populations", "agents", "count"), 10**30),
                               "populations.agents.count: Input should be less than 9223372036854775808"),
    "a projection seed torch cannot take": (baseline_with(("populations", "agents", "projections"), {"seed": 10**30}),
                                            "populations.agents.projections.seed: Input should be less than"),
    "an ffn seed torch cannot take": (baseline_with(("populations", "agents", "correction"),
                                                    {"form": "ffn", "seed": -(2**64)}),
                                      "populations.agents.correction.seed: Input should be greater than or equal"),
    "key dimension beyond any memory": (baseline_with(("market", "d_k"), 10**9), "over run.memory_budget_mb"),
    "ffn width beyond any memory": (baseline_with(("populations", "agents", "correction"),
                                                  {"form": "ffn", "hidden": 10**9}),
                                    "the largest part, correction, is set by "
                                    "populations.agents.correction.hidden, populations, run.replicas"),
    "a gamma temperature with no variation a float can hold": (
        baseline_with(("populations", "agents", "temperature"), {"distribution": "gamma", "sigma": 1e-300}), None),
}


@pytest.mark.parametrize("case", sorted(FOUND))
def test_what_the_fuzzing_found(case):
    text, words = FOUND[case]
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        path, out = folder / "scenario.yaml", folder / "out"
        path.write_bytes(text)
        ran = invoke(["run", str(path), "--steps", "1", "--replicas", "1", "--out", str(out), "--quiet"], RUN_SECONDS)
        lines = check_outcome("run", ran.exit_code, ran.stderr, ran.exception, folder, out, case)
        if words is None:
            assert ran.exit_code == 0
        else:
            assert ran.exit_code == 2 and words in lines[0], lines
