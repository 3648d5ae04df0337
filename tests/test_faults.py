"""Kill ``econspin run`` and ``econspin sweep`` with SIGKILL at random moments (seeded).

After every kill the folder must be consistent (a complete output, or one a resume can
continue; never a half-written table), and continuing it must give the uninterrupted result
bit for bit. The default suite kills each command once; the slow set kills them 24 times
(12 each), and checks that most kills land while the command is working.
"""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from folder_checks import assert_run_folder_consistent, assert_sweep_folder_consistent
from typer.testing import CliRunner

from econspin.cli import app

runner = CliRunner()

SCENARIO = """
name: faults
populations:
  human: {count: 24, temperature: 1.0, spend: 0.2}
  ai: {count: 8, temperature: 0.1, spend: 0.2}
market: {d: 4, mode: sampled}
run: {steps: 60, replicas: 2, seed: 5, device: cpu, memory_budget_mb: 0.05}
"""
RUN_OPTIONS = ["--checkpoint-every", "3", "--quiet"]
SWEEP_OPTIONS = ["--grid", "populations.ai.temperature=0.05,2", "--grid", "market.mode=expected,sampled",
                 "--steps", "40", "--quiet"]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("faults") / "faults.yaml"
    path.write_text(SCENARIO)
    return path


@pytest.fixture(scope="module")
def uninterrupted(scenario) -> dict[str, Path]:
    """The run and the sweep, each played through once (in this process)."""
    folders = {"run": scenario.parent / "run", "sweep": scenario.parent / "sweep"}
    for command, options in (("run", RUN_OPTIONS), ("sweep", SWEEP_OPTIONS)):
        result = runner.invoke(app, [command, str(scenario), "--out", str(folders[command]), *options])
        assert result.exit_code == 0, result.output
    return folders


def kill_at_random(arguments: list[str], folder: Path, generator: random.Random, longest: float) -> float:
    """Start the command, wait until it has claimed its folder, kill it after a random delay."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread, as in the test that made the reference
    process = subprocess.Popen([sys.executable, "-m", "econspin.cli", *arguments], env=environment,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None and not (folder / "manifest.json").exists():
        time.sleep(0.005)
    delay = generator.uniform(0.0, longest)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    code = process.wait()
    # killed, or finished on its own: a command that failed (a refusal, a missing command) would
    # otherwise pass as a kill before the folder was claimed
    assert code in (0, -signal.SIGKILL), f"{arguments[0]} exited with {code} before it was killed"
    return delay


def same_files(folder: Path, reference: Path, names: list[str]) -> None:
    for name in names:
        assert pd.read_parquet(folder / name).equals(pd.read_parquet(reference / name)), name


def continue_run(folder: Path, scenario: Path, state: str):
    if state in ("absent", "started"):  # nothing to resume: what a user does is run it again
        return runner.invoke(app, ["run", str(scenario), "--out", str(folder), *RUN_OPTIONS])
    return runner.invoke(app, ["run", "--resume", str(folder), "--quiet"])


def kill_and_resume_run(tmp_path, scenario, reference, seed: int) -> str:
    """Kill a run once, check and continue its folder, compare; return the state the kill left."""
    generator = random.Random(seed)
    folder = tmp_path / "killed"
    kill_at_random(["run", str(scenario), "--out", str(folder), *RUN_OPTIONS], folder, generator, 2.5)
    state = assert_run_folder_consistent(folder)
    result = continue_run(folder, scenario, state)
    assert result.exit_code == 0, (state, result.output)
    assert assert_run_folder_consistent(folder) == "complete"
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    same_files(folder, reference, ["metrics.parquet", "wealth.parquet"])
    one = torch.load(folder / "checkpoint.pt", weights_only=True)
    other = torch.load(reference / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(one["tensors"][key], other["tensors"][key]) for key in one["tensors"])
    assert torch.equal(one["random_keys"], other["random_keys"])
    assert (folder / "scenario.yaml").read_text() == (reference / "scenario.yaml").read_text()
    return state


def kill_and_resume_sweep(tmp_path, scenario, reference, seed: int) -> str:
    """Kill a sweep once, check and continue its folder, compare; return the state the kill left."""
    generator = random.Random(seed)
    folder = tmp_path / "killed"
    kill_at_random(["sweep", str(scenario), "--out", str(folder), *SWEEP_OPTIONS], folder, generator, 2.5)
    state = assert_sweep_folder_consistent(folder)
    if state in ("absent", "started"):
        result = runner.invoke(app, ["sweep", str(scenario), "--out", str(folder), *SWEEP_OPTIONS])
    else:
        result = runner.invoke(app, ["sweep", "--resume", str(folder), "--quiet"])
    assert result.exit_code == 0, (state, result.output)
    assert assert_sweep_folder_consistent(folder) == "complete"
    assert not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]
    same_files(folder, reference, ["sweep.parquet"])
    return state


def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path, scenario, uninterrupted):
    kill_and_resume_run(tmp_path, scenario, uninterrupted["run"], seed=1)


def test_a_killed_sweep_resumes_to_the_uninterrupted_result(tmp_path, scenario, uninterrupted):
    kill_and_resume_sweep(tmp_path, scenario, uninterrupted["sweep"], seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["run", "sweep"])
def test_commands_killed_at_twelve_random_moments_each_resume_bit_for_bit(tmp_path, scenario, uninterrupted, command):
    kill_and_resume = kill_and_resume_run if command == "run" else kill_and_resume_sweep
    states = [kill_and_resume(tmp_path / str(seed), scenario, uninterrupted[command], seed) for seed in range(12)]
    print(command, "folder states the kills left:", {state: states.count(state) for state in sorted(set(states))})
    # the kills must land while the command works, or the test would check nothing
    assert states.count("incomplete") >= 4, states
