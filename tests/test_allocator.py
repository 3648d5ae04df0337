"""Keeping freed memory: glibc takes the setting, the results do not change, the CLI owns the choice."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import econspin
from econspin import allocator
from econspin.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]

# a sampled ensemble (the spin draw, the inversion: the rounds whose temporaries the setting keeps),
# rounds of two sizes so that freed blocks are served again to tensors of other shapes
PLAY = """
import json, sys, torch
from econspin import Scenario, keep_freed_memory
from econspin.round import step
from econspin.simulate import Rollout
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
states = []
for agents, batch in ((64, 32), (96, 8)):
    scenario = Scenario.from_dict({
        "populations": {"human": {"count": agents - 16, "temperature": 1.0}, "ai": {"count": 16, "temperature": 0.2}},
        "market": {"d": 16, "mode": "sampled", "response": "vmf"}, "run": {"device": "cpu"}})
    rollout = Rollout.create([scenario] * batch, list(range(batch)), "cpu", "float32")
    state = rollout.state
    with torch.no_grad():
        for _ in range(4):
            state = step(state, rollout.economy)
    states.append(state.states.numpy().tobytes().hex())
    states.append(state.money.double().numpy().tobytes().hex())
print(json.dumps({"kept": kept, "states": states}))
"""


def play(*settings: str) -> list[dict]:
    """The output of PLAY in one fresh process per setting (the setting cannot be undone), run side by side."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    processes = [subprocess.Popen([sys.executable, "-c", PLAY, setting], stdout=subprocess.PIPE, text=True,
                                  env=environment, cwd=ROOT) for setting in settings]
    outputs = [process.communicate()[0] for process in processes]
    assert all(process.returncode == 0 for process in processes)
    return [json.loads(output.splitlines()[-1]) for output in outputs]


@pytest.mark.skipif(allocator.glibc() is None, reason="the C library is not glibc")
def test_glibc_takes_the_setting_and_the_rounds_give_the_same_bits():
    kept, plain = play("keep", "plain")
    assert kept["kept"] is True
    assert kept["states"] == plain["states"]


def test_without_glibc_nothing_changes_and_it_says_so(monkeypatch):
    monkeypatch.setattr(allocator, "glibc", lambda: None)
    assert econspin.keep_freed_memory() is False


def test_the_engine_never_sets_it(monkeypatch):
    asked = []
    monkeypatch.setattr(allocator, "glibc", lambda: asked.append(True))
    scenario = econspin.Scenario.from_dict({
        "populations": {"human": {"count": 12, "temperature": 1.0}, "ai": {"count": 4, "temperature": 0.1}},
        "market": {"d": 4, "mode": "sampled"}, "run": {"steps": 3, "replicas": 2, "device": "cpu"}})
    econspin.simulate(scenario)
    assert asked == []


def test_asking_is_recorded_for_the_processes_this_one_starts(monkeypatch):
    """Asked even where glibc is not there to take it: a worker on another machine may have it."""
    monkeypatch.setattr(allocator, "_asked", False)
    monkeypatch.setattr(allocator, "glibc", lambda: None)
    assert allocator.keeps_freed_memory() is False
    assert econspin.keep_freed_memory() is False
    assert allocator.keeps_freed_memory() is True


@pytest.fixture
def calls(monkeypatch):
    """The CLI's calls to keep_freed_memory, recorded where it would reach glibc (it is not reached)."""
    made = []
    monkeypatch.setattr(allocator, "_asked", False)
    monkeypatch.setattr(allocator, "glibc", lambda: made.append(True))
    return made


@pytest.fixture
def scenario_file(tmp_path):
    path = tmp_path / "scenario.yaml"
    path.write_text("populations:\n  human: {count: 12}\n  ai: {count: 4}\nmarket: {d: 4}\n")
    return path


@pytest.mark.parametrize(
    "options, environment, expected",
    [([], {}, 1), (["--no-keep-memory"], {}, 0), (["--keep-memory"], {}, 1),
     ([], {"ECONSPIN_KEEP_MEMORY": "0"}, 0), ([], {"ECONSPIN_KEEP_MEMORY": "off"}, 0),
     ([], {"ECONSPIN_KEEP_MEMORY": "1"}, 1), (["--keep-memory"], {"ECONSPIN_KEEP_MEMORY": "0"}, 0)],
)
def test_the_command_line_keeps_memory_unless_told_not_to(calls, scenario_file, monkeypatch, options, environment,
                                                         expected):
    monkeypatch.delenv("ECONSPIN_KEEP_MEMORY", raising=False)
    result = runner.invoke(app, [*options, "check", str(scenario_file)], env=environment)
    assert result.exit_code == 0, result.output
    assert len(calls) == expected
    assert allocator.keeps_freed_memory() is bool(expected)  # what its Ray workers and bench probes are asked


def test_a_bad_environment_value_is_one_line_and_status_2(calls, scenario_file):
    result = runner.invoke(app, ["check", str(scenario_file)], env={"ECONSPIN_KEEP_MEMORY": "maybe"})
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "ECONSPIN_KEEP_MEMORY" in lines[0] and "Traceback" not in result.output
    assert calls == [] and allocator.keeps_freed_memory() is False
