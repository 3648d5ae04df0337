"""Validation items 4 and 5, small: Boltzmann wealth (engine vs Mesa) and logit choice.

The full-size runs are ``python -m experiments.boltzmann_wealth`` and
``python -m experiments.logit_choice``; docs/validation_wealth.md reports them.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from econspin import Scenario  # noqa: E402
from econspin.mesa import ReferenceModel  # noqa: E402
from econspin.simulate import simulate  # noqa: E402
from experiments import boltzmann_wealth as bw  # noqa: E402
from experiments import logit_choice as lc  # noqa: E402

SCENARIO = ROOT / "scenarios" / "boltzmann_wealth.yaml"


# --------------------------------------------------------------------------- Boltzmann wealth


def test_geometric_law_has_gini_two_thirds():
    # closed form 1 / (1 + q), q = mean / (1 + mean)
    assert bw.geometric_gini(1.0) == pytest.approx(2 / 3, abs=1e-15)
    # the law itself, summed: mean 1, variance q / (1 - q)^2 = 2, Gini E|X - Y| / 2 = 2/3
    pmf = bw.geometric_pmf(1.0, 200)
    mean, variance = bw.pmf_moments(pmf)
    assert mean == pytest.approx(1.0, abs=1e-12)
    assert variance == pytest.approx(2.0, abs=1e-10)
    assert bw.pmf_gini(pmf) == pytest.approx(2 / 3, abs=1e-12)
    # and a large sample of it, through the engine's own Gini formula
    sample = np.random.default_rng(0).geometric(0.5, size=(1, 200_000)) - 1
    assert bw._gini_rows(sample.astype(float))[0] == pytest.approx(2 / 3, abs=0.005)
    # the continuous exponential law (Dragulescu & Yakovenko) has Gini 1/2: discreteness adds 1/6 at mean 1
    for mean in (1.0, 5.0, 50.0):
        assert bw.pmf_gini(bw.geometric_pmf(mean, 4000)) == pytest.approx(1 / (1 + mean / (1 + mean)), abs=1e-9)


def test_synchronous_queue_law():
    pmf, lam = bw.synchronous_queue_pmf(1.0, 64)
    assert lam == pytest.approx(2 - math.sqrt(2), abs=1e-9)
    assert pmf[0] == pytest.approx(math.sqrt(2) - 1, abs=1e-9)  # P(0) = 1 - lambda
    mean, variance = bw.pmf_moments(pmf)
    assert mean == pytest.approx(1.0, abs=1e-9)
    assert variance == pytest.approx(4 / 3, abs=1e-8)
    assert bw.pmf_gini(pmf) == pytest.approx(0.5799, abs=1e-3)
    sequential, lam_sequential = bw.sequential_mean_field_pmf(1.0, 64, positions=100)
    assert bw.pmf_moments(sequential)[0] == pytest.approx(1.0, abs=1e-8)
    assert 0.46 < sequential[0] < 0.47
    assert bw.pmf_gini(pmf) < bw.pmf_gini(sequential) < 2 / 3


def test_boltzmann_scenario_loads_and_conserves_money():
    scenario = Scenario.from_yaml(SCENARIO)
    (population,) = scenario.populations.values()
    assert population.count == 1000
    assert population.money.distribution == "equal" and population.money.mean == 1.0
    assert population.projections.scale == 0.0
    assert scenario.market.mode == "sampled"
    assert scenario.market.spend_rule == "unit" and scenario.market.unit == 1.0
    small = bw.engine_scenario(60)
    result = simulate(small, steps=30, replicas=3, device="cpu", seed=1)
    money = result.state.money
    assert torch.all(money >= 0)
    assert torch.all(money == torch.round(money))  # whole units only
    assert torch.allclose(money.sum(dim=1), torch.full((3,), 60.0, dtype=torch.float64), rtol=0, atol=0)
    assert np.all(result.metrics.total_wealth.to_numpy() == 60.0)
    assert result.metrics.gini.iloc[-1] > 0.3  # it spread out


@pytest.mark.parametrize("variant", ["mesa_sequential", "mesa_synchronous"])
def test_mesa_models_conserve_money(variant):
    run = bw.run_mesa(variant, agents=80, steps=60, replicas=2, seed=3, window_start=30)
    assert np.all(run.total_money == 80)
    assert np.all(run.final_money >= 0)
    assert run.gini.shape == (2, 61) and run.gini[:, 0].max() == 0.0
    # the DataCollector's (tutorial) Gini equals the engine's formula on the final money
    assert np.allclose(run.gini[:, -1], bw._gini_rows(run.final_money.astype(float)))


def _one_rich_agent(model):
    agents = list(model.agents)
    for agent in agents:
        agent.wealth = 0
    agents[0].wealth = 10
    model.step()
    return bw.wealth_of(model)


def test_synchronous_step_uses_start_of_step_money():
    # one agent holds everything. Synchronously it alone gives, one unit, and nobody passes it
    # on (the others held nothing at the start of the step).
    for seed in range(50):
        wealth = _one_rich_agent(ReferenceModel(bw.engine_scenario(10), rng=seed))
        assert wealth[0] == 9 and sorted(wealth[1:]) == [0] * 8 + [1]
    # Sequentially the receiver may act later in the same step and pass the unit on, which
    # sometimes brings it straight back to agent 0.
    returned = sum(int(_one_rich_agent(bw.MoneyModel(n=10, seed=seed))[0] == 10) for seed in range(300))
    assert returned > 0
    assert all(_one_rich_agent(bw.MoneyModel(n=10, seed=seed)).sum() == 10 for seed in range(20))


def _engine_vs_mesa(agents, steps, replicas, window):
    result = bw.run_all(agents, steps, replicas, seed=0, window_start=window, log=lambda *_: None)
    runs, comparison = result["runs"], result["comparison"].set_index("pair")
    summary = result["summary"].set_index("variant")
    return runs, comparison, summary


def _check_engine_vs_mesa(runs, comparison, summary):
    engine_sync = comparison.loc["engine vs mesa_synchronous"]
    assert engine_sync.ks_p > 1e-3
    assert engine_sync.chi2_p > 1e-3
    assert engine_sync.bands_overlap_fraction == 1.0  # mean +- 2 sd bands overlap at every step
    # with 5 replicas the fraction of steps whose means agree within 2 standard errors swings
    # between seeds (steps are correlated): over seeds 0-39, two independent Mesa runs gave
    # 0.775 to 1.0, a fifth of them <= 0.85, and the engine against Mesa the same range
    assert engine_sync.mean_within_2se_fraction > 0.7
    for name in ("engine", "mesa_synchronous", "mesa_sequential"):
        assert summary.loc[name, "money_conserved"]
    # both synchronous forms settle near the queue law's Gini (0.580), the sequential one higher
    assert abs(summary.loc["engine", "gini_stationary_mean"] - 0.58) < 0.02
    assert abs(summary.loc["mesa_synchronous", "gini_stationary_mean"] - 0.58) < 0.02
    assert summary.loc["mesa_sequential", "gini_stationary_mean"] > summary.loc["engine", "gini_stationary_mean"] + 0.03


def test_engine_matches_synchronous_mesa_small():
    runs, comparison, summary = _engine_vs_mesa(agents=200, steps=40, replicas=5, window=10)
    _check_engine_vs_mesa(runs, comparison, summary)


@pytest.mark.slow
def test_engine_matches_synchronous_mesa_200_steps():
    runs, comparison, summary = _engine_vs_mesa(agents=200, steps=200, replicas=5, window=50)
    _check_engine_vs_mesa(runs, comparison, summary)
    # the pooled stationary law of the engine fits the synchronous queue law, not the geometric one
    queue, _ = bw.synchronous_queue_pmf()
    assert bw.chi_square_law(runs["engine"].final_money.ravel(), queue)[1] > 1e-3


def test_experiment_command_writes_outputs(tmp_path):
    bw.main(["--out-dir", str(tmp_path), "--agents", "40", "--steps", "15", "--replicas", "2",
             "--variants", "mesa_synchronous", "mesa_sequential"])
    for name in ("summary.csv", "comparison.csv", "gini_trajectories.csv", "stationary_pmf.csv",
                 "gini_vs_step.png", "money_pmf.png"):
        assert (tmp_path / name).stat().st_size > 0


# --------------------------------------------------------------------------- logit choice


def test_sampled_choice_frequencies_match_softmax():
    table = lc.check_frequencies(draws=20_000, temperatures=(0.01, 0.3, 1.0, 10.0, 100.0))
    assert table.impossible_draws.sum() == 0  # the disallowed option is never drawn
    assert table.p.min() > 1e-4
    assert table.max_abs_deviation.max() < 0.02


def test_inclusive_value_is_expected_max_minus_euler_gamma():
    table = lc.check_inclusive_value(draws=20_000, temperatures=(1e-3, 0.1, 1.0, 10.0, 1000.0))
    assert np.allclose(table.engine_inclusive_value, table.direct_T_logsumexp, rtol=1e-12, atol=1e-12)
    assert table.z.abs().max() < 4.5
    # T -> 0: the inclusive value is the best utility
    assert table.engine_inclusive_value.iloc[0] == pytest.approx(table.max_u.iloc[0], abs=1e-6)


def test_engine_sampled_rounds_match_expected_alpha_rows():
    table, info = lc.check_engine(replicas=200, repeats=5)
    assert np.allclose(table[[c for c in table.columns if c.startswith("alpha_") and c[6:].isdigit()]].sum(axis=1), 1.0)
    assert table.impossible_draws.sum() == 0
    assert info["pooled_p"] > 1e-3
    assert table.p.min() > 1e-4
    # chi-square of the pooled buyers is consistent with its degrees of freedom
    assert stats.chi2.sf(info["pooled_chi2"], info["pooled_dof"]) == pytest.approx(info["pooled_p"])
