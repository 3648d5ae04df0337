"""The ffn correction shipped with the package (econspin/data/ffn_human_vs_ai.pt, docs/validation.md 10).

scenarios/human_vs_ai_ffn.yaml names it in both populations; it runs, and on a small economy
it was not fitted to (other agent counts, other disorder seed) its mean field is closer to
the sampled ensemble mean than the naive one.
"""

from pathlib import Path

import pytest
import torch

from econspin import Scenario, simulate
from econspin.fitting import HUMAN_VS_AI_WEIGHTS, errors, sample_ensemble
from econspin.simulate import Rollout

SCENARIO = Path(__file__).parent.parent / "scenarios" / "human_vs_ai_ffn.yaml"
# 32 agents (fitted: 64), disorder seed 50 (fitted: 0 and 1), T_ai = 0.3 (one of those fitted)
HELD_OUT = {"populations.human.count": 24, "populations.ai.count": 8, "populations.ai.temperature": 0.3}


def test_the_shipped_file_is_what_the_documented_command_wrote():
    contents = torch.load(HUMAN_VS_AI_WEIGHTS, weights_only=True)
    assert contents["features"] == "invariant" and set(contents["populations"]) == {"human", "ai"}
    settings = contents["settings"]
    assert settings["seeds"] == [0, 1] and settings["grid"] == ["populations.ai.temperature=0.1,0.3,1.0"]
    assert len(contents["scenarios"]) == 6 and len(set(contents["scenarios"].values())) == 6


def test_human_vs_ai_runs_with_the_shipped_correction():
    scenario = Scenario.from_yaml(SCENARIO)
    for name in ("human", "ai"):
        correction = scenario.populations[name].correction
        assert correction.form == "ffn" and correction.features == "invariant"
        assert Path(correction.weights).resolve() == HUMAN_VS_AI_WEIGHTS.resolve()
    small = scenario.with_overrides({"populations.human.count": 40, "populations.ai.count": 10})
    result = simulate(small, steps=5, replicas=2, dtype="float64", device="cpu")
    shipped = torch.load(HUMAN_VS_AI_WEIGHTS, weights_only=True)["populations"]
    for index, name in enumerate(result.economy.population_names):
        assert torch.equal(result.economy.corrections[index].w1[0], shipped[name]["w1"])
    assert torch.isfinite(result.state.states).all()
    assert float(result.state.money.sum()) == pytest.approx(2 * 50, rel=1e-12)  # equal money of mean 1, conserved


def test_the_shipped_correction_beats_none_on_an_economy_it_was_not_fitted_to():
    """64 replicas, 10 rounds. Measured: ffn 0.523, none 1.251, tap 0.746, Monte Carlo part 0.476."""
    scenario = Scenario.from_yaml(SCENARIO).with_overrides(HELD_OUT).with_run_settings(seed=50, device="cpu")
    ensemble = sample_ensemble(scenario, 64, 10)
    shipped = torch.load(HUMAN_VS_AI_WEIGHTS, weights_only=True)["populations"]
    found = errors(ensemble, {"ffn": shipped}, "invariant")
    assert found["ffn"] < 0.6 * found["none"], found
    assert found["ffn"] < found["tap"], found


def test_a_build_reads_each_weights_file_once_whatever_the_batch_and_the_populations(monkeypatch, tmp_path):
    """Both populations name the shipped file, 4 batch elements: one read; a second file: one more.

    Every element still holds the file's weights, each population its own.
    """
    reads = []
    load = torch.load
    monkeypatch.setattr(
        torch, "load", lambda path, *arguments, **options: reads.append(str(path)) or load(path, *arguments, **options)
    )
    small = Scenario.from_yaml(SCENARIO).with_overrides(HELD_OUT).with_run_settings(device="cpu")
    shipped = load(HUMAN_VS_AI_WEIGHTS, weights_only=True)["populations"]
    economy = Rollout.create([small] * 4, [0, 1, 2, 3], "cpu", "float64").economy
    assert len(reads) == 1
    for index, name in enumerate(economy.population_names):
        for element in range(4):
            assert torch.equal(economy.corrections[index].w1[element], shipped[name]["w1"])
    copy = tmp_path / "copy.pt"
    copy.write_bytes(HUMAN_VS_AI_WEIGHTS.read_bytes())
    other = small.with_overrides({"populations.ai.correction.weights": str(copy)})
    reads.clear()
    Rollout.create([small, other, small, other], [0, 1, 2, 3], "cpu", "float64")  # a sweep's batch of two points
    assert sorted(reads) == sorted([str(Path(small.populations["human"].correction.weights)), str(copy)])
