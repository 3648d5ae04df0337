"""Fast versions of validation items 3 (vector spins), 6 (Hopfield limit) and 7 (phase diagram).

The full experiments are ``python -m experiments.vector_spins``, ``experiments.hopfield`` and
``experiments.phase_diagram``; docs/validation_spins.md reports them.
"""

import math

import numpy as np
import pytest
import torch

from experiments import hopfield, phase_diagram, vector_spins


@pytest.fixture(scope="module")
def weak_coupling(tmp_path_factory):
    couplings = vector_spins.coupling_matrix(seed=0)
    path = vector_spins.write_couplings(tmp_path_factory.mktemp("spins") / "J.npz", couplings)
    return vector_spins.mean_field_vs_monte_carlo(path, couplings, replicas=400, steps=4, seed=0)


def test_tap_mean_field_within_five_standard_errors_of_monte_carlo(weak_coupling):
    tap = weak_coupling[weak_coupling["correction"] == "tap"]
    conditional = tap[tap["estimator"] == "conditional"]
    assert conditional["max_abs_z"].max() < 5.0
    # raw spins with 400 replicas: at most one of the 512 (agent, component) pairs of a step
    # beyond 5 SE (one is, at |z| = 5.2, in step 4 with this seed; 800 replicas: max |z| 3.2)
    assert (tap["frac_within_5se"] >= 1 - 1.5 / 512).all()
    assert tap["rms_z"].max() < 1.3  # consistent with pure sampling noise (rms z ~ 1)


def test_naive_mean_field_within_five_standard_errors_of_the_raw_spins(weak_coupling):
    naive = weak_coupling[(weak_coupling["correction"] == "none") & (weak_coupling["estimator"] == "raw spins")]
    assert (naive["frac_within_5se"] >= 0.99).all()


def test_conditional_estimator_resolves_the_naive_bias(weak_coupling):
    """The low-noise estimator sees the O(J^2) error of the naive mean field that tap removes."""
    conditional = weak_coupling[(weak_coupling["estimator"] == "conditional") & (weak_coupling["step"] > 1)]
    naive = conditional[conditional["correction"] == "none"]
    tap = conditional[conditional["correction"] == "tap"]
    assert naive["rms_z"].max() > 2.0
    assert (naive["rms_error"].to_numpy() > 2 * tap["rms_error"].to_numpy()).all()
    first = weak_coupling[(weak_coupling["estimator"] == "conditional") & (weak_coupling["step"] == 1)]
    assert first["rms_error"].max() < 1e-12  # step 1 is exact for any correction-free mean


def test_large_d_response_error_falls_like_one_over_d():
    table = vector_spins.large_d_response_error(dimensions=(16, 32, 64, 128), points=801)
    slope = vector_spins.log_log_slope(table["d"], table["max_abs_error"])
    assert abs(slope + 1.0) < 0.05
    ratio = table["max_abs_error"].iloc[0] / table["max_abs_error"].iloc[-1]
    assert 7.0 < ratio < 9.0  # d grows 8-fold


def test_large_d_dynamics_error_falls_like_one_over_d(tmp_path):
    table = vector_spins.large_d_dynamics_error(vector_spins.coupling_matrix(), dimensions=(16, 64, 256), steps=5,
                                                tmp_dir=tmp_path)
    assert abs(vector_spins.log_log_slope(table["d"], table["max_dynamics_error"]) + 1.0) < 0.1


def test_hopfield_engine_update_equals_the_direct_update():
    result = hopfield.check_engine_against_direct(d=16, count=8, queries=4, batch=3, steps=8)
    assert result["max_relative_difference"] < 1e-12


def test_hopfield_energy_never_increases_on_the_engine():
    traces = hopfield.energy_traces(d=32, count=32, queries=16, batch=2, steps=12, betas=(0.003, 0.03, 0.3, 3.0))
    worst = traces.groupby(["kind", "beta"])["relative_max_increase_to_here"].max()
    assert (worst < 1e-12).all(), worst
    final = traces.groupby(["kind", "beta"])["energy_mean"].last().sort_index()
    first = traces[traces["step"] == 0].set_index(["kind", "beta"])["energy_mean"].sort_index()
    assert (final.to_numpy() < first.to_numpy()).all()  # and it does descend


def test_k90_falls_with_beta_through_three_regimes():
    betas = torch.tensor([0.001, 0.01, 0.05, 0.1, 0.15, 0.2, 0.3, 1.0, 3.0], dtype=torch.float64)
    table = hopfield.regimes(d=32, count=32, queries=8, batch=1, steps=40, betas=betas)
    for kind, group in table.groupby("kind"):
        k = group["k90_mean"].to_numpy()
        assert np.all(np.diff(k) <= 1e-9), (kind, k)
        assert k[0] >= 0.8 * 32  # small beta: the fixed point averages (nearly) all patterns
        assert k[-1] == 1  # large beta: single-pattern retrieval
    clustered = table[table["kind"] == "clustered"]["k90_mean"].to_numpy()
    assert np.any((clustered >= 2) & (clustered <= 8))  # metastable: a cluster of 4 averaged


def test_tiny_phase_diagram_concentrates_at_low_temperature():
    table, _ = phase_diagram.sweep(24, [0.03, 30.0], replicas=2, steps=8, dtype="float64")
    summary = phase_diagram.summarise(table).set_index("temperature")
    cold, hot = summary.loc[0.03], summary.loc[30.0]
    assert cold["hhi_mean"] > 2 * hot["hhi_mean"]
    assert math.isclose(hot["hhi_mean"], 1 / 24, rel_tol=1e-3)
    assert cold["entropy_mean"] < hot["entropy_mean"]
