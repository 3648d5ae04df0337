"""The ffn correction fitted to sampled ensembles: ``econspin fit-correction`` (issue 12, part 1).

A tiny economy (24 agents, d = 4, large_d, 64 replicas, 5 rounds): the command end to end,
its weights file read back by a scenario, the fitted correction closer than ``none`` and than
its own random start to an ensemble it never saw, and bad arguments refused with one line.
"""

from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from econspin import Scenario, fitting, simulate
from econspin.cli import app
from econspin.fingerprint import scenario_digest
from econspin.fitting import fitting_scenario, sample_ensemble, shared_start
from econspin.metrics import gini, herfindahl_hirschman_index
from econspin.round import step
from econspin.simulate import Rollout

runner = CliRunner()

TINY = """
name: tiny
populations:
  human: {count: 18, temperature: 1.0, spend: 0.2}
  ai: {count: 6, temperature: 0.3, spend: 0.2}
market: {d: 4, response: large_d}
run: {steps: 8, replicas: 2, seed: 3, device: cpu}
"""
ARGUMENTS = ["--replicas", "64", "--steps", "5", "--epochs", "80", "--quiet"]


def write(tmp_path: Path, text: str, name: str = "scenario.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """The command run once: the folder, the scenario file and the weights file."""
    folder = tmp_path_factory.mktemp("fit")
    scenario = write(folder, TINY)
    out = folder / "weights.pt"
    result = runner.invoke(app, ["fit-correction", str(scenario), "--out", str(out), *ARGUMENTS])
    assert result.exit_code == 0, result.output
    return folder, scenario, out


def test_the_weights_file_holds_each_population_the_scenario_hash_and_the_losses(fitted):
    _, scenario, out = fitted
    contents = torch.load(out, weights_only=True)
    assert set(contents["populations"]) == {"human", "ai"}
    for weights in contents["populations"].values():  # the invariant form's: 8 invariants in, 2 gates out
        shapes = {key: tuple(value.shape) for key, value in weights.items()}
        assert shapes == {"w1": (8, 16), "b1": (16,), "w2": (16, 2), "b2": (2,)}
    assert contents["features"] == "invariant"
    assert contents["scenario"] == scenario_digest(fitting_scenario(Scenario.from_yaml(scenario)))
    assert contents["scenarios"] == {"train": contents["scenario"]}
    assert len(contents["losses"]) == 80
    assert contents["losses"][-1] < 0.5 * contents["losses"][0]  # the fit went somewhere
    assert contents["settings"]["replicas"] == 64 and contents["settings"]["steps"] == 5


def test_the_fitted_correction_beats_none_and_its_random_start_on_replicas_and_a_disorder_it_never_saw(fitted):
    """Scored against the mean of 64 other replicas (same disorder, independent noise) and at seed 4.

    Measured (invariant features): held-out replicas: fitted 0.404, none 0.614, tap 0.558,
    untrained 0.621, Monte Carlo part 0.226; seed 4 (other disorder): fitted 0.354, none 0.608,
    tap 0.409. (The state features did worse than none at another seed: docs/validation.md 10.)
    """
    found = torch.load(fitted[2], weights_only=True)["errors"]
    errors, other = found["held_out_replicas"], found["held out: seed 4"]
    assert errors["ffn"] < 0.75 * errors["none"]
    assert errors["ffn"] < 0.75 * errors["ffn_untrained"]
    assert errors["ffn"] > errors["monte_carlo"] * 0.5  # an error can't be far under the noise of its target
    assert other["ffn"] < 0.75 * other["none"] and other["ffn"] < other["tap"]


def test_a_scenario_reads_the_fitted_file_and_runs_with_it(fitted):
    folder, _, out = fitted
    text = TINY.replace("spend: 0.2}", f"spend: 0.2, correction: {{form: ffn, features: invariant, weights: {out}}}}}")
    scenario = Scenario.from_yaml(write(folder, text, "with_ffn.yaml"))
    result = simulate(scenario, steps=3, replicas=1, dtype="float64")
    contents = torch.load(out, weights_only=True)["populations"]
    for index, name in enumerate(result.economy.population_names):
        assert torch.equal(result.economy.corrections[index].w1[0], contents[name]["w1"])
    assert torch.isfinite(result.state.states).all()
    money = result.state.money.sum()
    assert float(money) == pytest.approx(scenario.agent_count, rel=1e-12)  # equal money of mean 1, conserved


@pytest.fixture(scope="module")
def state_fitted(tmp_path_factory):
    """A file of the state features (x_i, V_i, kappa_i), whose w1 and w2 depend on market.d."""
    folder = tmp_path_factory.mktemp("fit-state")
    out = folder / "state.pt"
    arguments = ["--replicas", "8", "--steps", "2", "--epochs", "2", "--features", "state", "--quiet"]
    result = runner.invoke(app, ["fit-correction", str(write(folder, TINY)), "--out", str(out), *arguments])
    assert result.exit_code == 0, result.output
    assert torch.load(out, weights_only=True)["populations"]["ai"]["w1"].shape == (6, 16)
    return out


def _refusal(tmp_path, text):
    path = write(tmp_path, text)
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "correction.weights" in lines[0], result.output
    assert not (tmp_path / "run").exists()
    return lines[0]


def test_a_weights_file_for_another_dimension_population_or_feature_set_is_refused_with_one_line(
    fitted, state_fitted, tmp_path
):
    def naming(out, features):
        return TINY.replace("spend: 0.2}", f"spend: 0.2, correction: {{form: ffn, features: {features}, "
                                           f"weights: {out}}}}}")

    with_state = naming(state_fitted, "state")
    assert "needs w1 of shape (8, 16)" in _refusal(tmp_path, with_state.replace("d: 4", "d: 6"))
    assert "not bots" in _refusal(tmp_path, with_state.replace("ai:", "bots:"))
    line = _refusal(tmp_path, naming(state_fitted, "invariant"))
    assert str(state_fitted) in line and "on the state features" in line and "features: invariant" in line
    assert "on the invariant features" in _refusal(tmp_path, naming(fitted[2], "state"))


def test_invariant_weights_do_not_depend_on_the_dimension(fitted, tmp_path):
    """8 invariants in, 2 gates out: a file fitted at d = 4 runs an economy at d = 6."""
    text = TINY.replace("spend: 0.2}", f"spend: 0.2, correction: {{form: ffn, features: invariant, "
                                       f"weights: {fitted[2]}}}}}").replace("d: 4", "d: 6")
    result = simulate(Scenario.from_yaml(write(tmp_path, text)), steps=3, replicas=1, dtype="float64")
    assert torch.isfinite(result.state.states).all()


def test_the_ensemble_shares_its_start_and_differs_only_in_noise():
    """Every replica starts from replica 0's x(0) on the sphere; after a round they differ."""
    scenario = Scenario.from_dict(yaml.safe_load(TINY))
    ensemble = sample_ensemble(scenario, 8, 1)
    rollout = Rollout.create([fitting_scenario(scenario)], [0], "cpu", "float64")
    start = shared_start(rollout.state, rollout.economy.radius)
    assert torch.equal(ensemble.start.states[0], start.states[0])
    assert torch.allclose(ensemble.mean_states[0], start.states[0], rtol=0, atol=1e-14)  # a mean of equal rows
    assert torch.allclose(start.states[0].norm(dim=-1), torch.full((24,), 2.0, dtype=torch.float64))
    other = sample_ensemble(scenario, 8, 1, first_replica=8)
    assert torch.equal(other.start.states, ensemble.start.states)
    assert not torch.equal(other.mean_states[1], ensemble.mean_states[1])


def test_the_fit_scores_by_states_alone_and_the_run_adds_the_observables_of_those_states(monkeypatch):
    """``errors`` (the fit's scoring) computes no hhi or gini; ``mean_field_run`` gives the same m(t) and both.

    Each observable of ``mean_field_run`` is that of the mean field's state after the round,
    as ``metrics`` computes it for a state stepped here.
    """
    scenario = Scenario.from_dict(yaml.safe_load(TINY))
    ensemble = sample_ensemble(scenario, 4, 3)
    calls = []

    def counted(function):
        return lambda *arguments: calls.append(function.__name__) or function(*arguments)

    monkeypatch.setattr(fitting, "herfindahl_hirschman_index", counted(fitting.herfindahl_hirschman_index))
    monkeypatch.setattr(fitting, "gini", counted(fitting.gini))
    found = fitting.errors(ensemble, {})
    assert set(found) == {"none", "tap", "monte_carlo"} and calls == []
    economy = fitting.compiled(ensemble, "tap")
    trajectory = fitting.mean_field_trajectory(ensemble, economy)
    assert calls == [] and trajectory.shape == (3, 24, 4)
    states, observables = fitting.mean_field_run(ensemble, economy)
    assert torch.equal(states, trajectory)
    assert sorted(calls) == ["gini"] * 3 + ["herfindahl_hirschman_index"] * 3
    state = ensemble.start
    for t in range(3):
        state = step(state, economy)
        assert torch.equal(observables["hhi"][t], herfindahl_hirschman_index(state, economy)[0])
        assert torch.equal(observables["gini"][t], gini(state, economy)[0])


@pytest.mark.parametrize(
    "arguments, words",
    [
        (["--replicas", "1"], "--replicas"),
        (["--steps", "0"], "--steps"),
        (["--epochs", "0"], "--epochs"),
        (["--device", "tpu"], "device"),
        (["--set", "market.dd=3"], "market.dd"),
    ],
)
def test_bad_arguments_give_one_line_and_status_2_and_write_nothing(tmp_path, arguments, words):
    scenario = write(tmp_path, TINY)
    out = tmp_path / "weights.pt"
    result = runner.invoke(app, ["fit-correction", str(scenario), "--out", str(out), *arguments])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], result.output
    assert not out.exists()


def test_out_a_folder_and_a_scenario_with_events_are_refused(tmp_path):
    scenario = write(tmp_path, TINY)
    result = runner.invoke(app, ["fit-correction", str(scenario), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "is a folder, not a file" in result.output
    with_events = write(tmp_path, TINY + "events:\n  - {at: 2, population: ai, temperature: 0.5}\n", "events.yaml")
    result = runner.invoke(app, ["fit-correction", str(with_events), "--out", str(tmp_path / "w.pt")])
    assert result.exit_code == 2 and "events" in result.output and len(result.output.strip().splitlines()) == 1
