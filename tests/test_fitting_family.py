"""One fit over a family of economies: ``econspin fit-correction --seeds ... --grid ...``.

Every point of the grid at every seed is one sampled ensemble, all fitted at once; the file
records the hash of each and the errors on each, on other replicas of the first and on every
point at the seed after the last one fitted. Bad seeds, grids and feature sets: one line.
"""

import pytest
import torch
from test_fitting import runner, write

from econspin import Scenario
from econspin.cli import app
from econspin.cli_fit import parse_seeds
from econspin.fingerprint import scenario_digest
from econspin.fitting import fitting_scenario
from econspin.scenario import ScenarioError

# smaller than test_fitting's: 16 agents, d = 3
TINY = """
name: tiny
populations:
  human: {count: 12, temperature: 1.0, spend: 0.2}
  ai: {count: 4, temperature: 0.3, spend: 0.2}
market: {d: 3, response: large_d}
run: {steps: 8, replicas: 2, seed: 3, device: cpu}
"""


def test_a_family_of_seeds_and_temperatures_is_fitted_at_once_and_recorded(tmp_path):
    out = tmp_path / "family.pt"
    arguments = ["--replicas", "16", "--steps", "4", "--epochs", "30", "--window", "3", "--seeds", "5-6",
                 "--grid", "populations.ai.temperature=0.3,1.0", "--quiet"]
    result = runner.invoke(app, ["fit-correction", str(write(tmp_path, TINY)), "--out", str(out), *arguments])
    assert result.exit_code == 0, result.output
    contents = torch.load(out, weights_only=True)
    labels = [f"populations.ai.temperature={t}, seed {s}" for t in (0.3, 1.0) for s in (5, 6)]
    assert list(contents["scenarios"]) == labels
    base = Scenario.from_yaml(write(tmp_path, TINY))
    for label in labels:
        temperature, seed = float(label.split("=")[1].split(",")[0]), int(label.split()[-1])
        scenario = base.with_overrides({"populations.ai.temperature": temperature}).with_run_settings(seed=seed)
        assert contents["scenarios"][label] == scenario_digest(fitting_scenario(scenario))
    assert len(set(contents["scenarios"].values())) == 4
    held_out = [f"held out: populations.ai.temperature={t}, seed 7" for t in (0.3, 1.0)]
    assert list(contents["errors"]) == [*labels, "held_out_replicas", *held_out]
    assert contents["settings"]["seeds"] == [5, 6] and contents["settings"]["other_seed"] == 7
    assert contents["losses"][-1] < contents["losses"][0]
    for errors in contents["errors"].values():  # the ensembles differ: none's error is each one's own
        assert set(errors) == {"none", "tap", "ffn_untrained", "ffn", "monte_carlo"}
    assert len({round(errors["none"], 9) for errors in contents["errors"].values()}) == 7


def test_seeds_are_a_range_or_a_list():
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("4,1,9") == [4, 1, 9]
    assert parse_seeds("7") == [7]
    for bad in ("3-1", "a", "1,1", "-2", ""):
        with pytest.raises(ScenarioError, match="--seeds"):
            parse_seeds(bad)


@pytest.mark.parametrize(
    "arguments, words",
    [
        (["--seeds", "2-x"], "--seeds"),
        (["--seeds", "0-1", "--seed", "4"], "--seed and --seeds"),
        (["--grid", "populations.ai.temperature"], "--grid"),
        (["--grid", "populations.ai.temprature=0.1,0.2"], "temprature"),
        (["--features", "vector"], "--features"),
        (["--grid", "run.seed=0,1"], "--seeds"),
        (["--learning-rate", "0"], "--learning-rate"),
    ],
)
def test_bad_family_options_give_one_line_and_status_2_and_write_nothing(tmp_path, arguments, words):
    out = tmp_path / "weights.pt"
    result = runner.invoke(app, ["fit-correction", str(write(tmp_path, TINY)), "--out", str(out), *arguments])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], result.output
    assert not out.exists()
