"""Validation against known results: kinetic Ising forward problem and Curie-Weiss (docs/validation_ising.md).

Fast versions of ``python -m experiments.kinetic_ising`` and ``python -m experiments.curie_weiss``;
the full runs are marked slow.
"""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from econspin.round import step
from econspin.simulate import Rollout
from experiments import curie_weiss as cw
from experiments import kinetic_ising as ki

ROOT = Path(__file__).resolve().parents[1]


# --- kinetic Ising (Aguilera, Moosavi & Shimazaki 2021) ------------------------------------------

def test_shipped_network_is_the_papers():
    fields, couplings = ki.load_parameters()
    assert fields.shape == (512,) and couplings.shape == (512, 512)
    assert np.abs(fields).max() <= 0.5  # H_i ~ U(-H0, H0), H0 = 0.5
    assert abs(couplings.mean() * 512 - 1.0) < 0.05  # J0 = 1
    assert abs(couplings.std() * math.sqrt(512) - 0.1) < 0.01  # Js = 0.1


def test_cli_writes_nmf_trajectory(tmp_path):
    out = tmp_path / "m.npy"
    subprocess.run([sys.executable, "-m", "experiments.kinetic_ising", "--beta-rel", "1.0", "--method", "nmf",
                    "--out", str(out)], cwd=ROOT, check=True)
    m = np.load(out)
    assert m.shape == (128, 512) and m.dtype == np.float64
    fields, couplings = ki.load_parameters()
    beta = ki.BETA_C
    assert np.allclose(m[0], np.tanh(beta * (fields + couplings.sum(1))), atol=1e-12)  # m(1) from m(0) = 1
    assert np.allclose(m[5], np.tanh(beta * (fields + couplings @ m[4])), atol=1e-12)


def test_monte_carlo_estimator_is_the_engines_conditional_expectation():
    """tanh(beta (H + J s)) from sampled spins equals the engine's expected step from those spins."""
    beta, size = ki.BETA_C, 512
    sampled = Rollout.create([ki.ising_scenario(beta, size, mode="sampled")] * 3, [0, 1, 2], "cpu", "float64")
    state = step(step(sampled.state, sampled.economy), sampled.economy)  # s(2), three repetitions
    expected = Rollout.create([ki.ising_scenario(beta, size)] * 3, [0, 1, 2], "cpu", "float64")
    engine = step(expected.state.replace(states=state.states), expected.economy).states[..., 0]
    fields, couplings = ki.load_parameters()
    ours = np.tanh(beta * (fields + state.states[..., 0].numpy() @ couplings.T))
    assert np.allclose(engine.numpy(), ours, atol=1e-12)
    m, _ = ki.monte_carlo(beta, repetitions=3, steps=3)
    assert np.allclose(m[2], ours.mean(0), atol=1e-12)  # row t-1 = m(t) from s(t-1)


def test_monte_carlo_is_deterministic_and_independent_of_chunking():
    first, noise = ki.monte_carlo(ki.BETA_C, repetitions=5, steps=4, chunk=5)
    second, _ = ki.monte_carlo(ki.BETA_C, repetitions=5, steps=4, chunk=2)
    assert np.allclose(first, second, rtol=0, atol=1e-13)  # same spins; sums differ only in rounding
    assert noise[0].max() < 1e-15 and noise[1:].min() > 1e-8  # m(1) is deterministic from s(0) = 1


@pytest.mark.parametrize("beta_rel", [1.0, 1.2])
def test_tap_is_closer_to_monte_carlo_than_naive_mean_field(beta_rel):
    beta, steps = beta_rel * ki.BETA_C, 20
    m_mc, noise = ki.monte_carlo(beta, repetitions=64, steps=steps)
    eps_nmf = ki.squared_error(ki.mean_field(beta, "nmf", steps), m_mc)
    eps_tap = ki.squared_error(ki.mean_field(beta, "tap", steps), m_mc)
    floor = noise.mean()  # expected MC contribution to both errors
    assert eps_tap < eps_nmf
    assert eps_tap - floor < 0.5 * (eps_nmf - floor)


@pytest.mark.slow
def test_sweep_tap_beats_nmf_at_every_beta(tmp_path):
    rows = ki.sweep(tmp_path, betas=(0.8, 1.0, 1.2), repetitions=200)
    for row in rows:
        assert row["eps_tap"] < row["eps_nmf"]
    assert (tmp_path / "eps_m.csv").exists() and (tmp_path / "kinetic_ising.png").exists()


# --- Curie-Weiss / Brock-Durlauf ----------------------------------------------------------------

POINTS = [(0.6, 0.0), (0.8, 0.0), (0.9, 0.0), (0.7, 0.1), (1.3, 0.2), (0.85, -0.05)]


def test_mean_field_fixed_point_is_the_curie_weiss_root():
    m, change, _ = cw.mean_field_fixed_points(POINTS, size=50)
    assert change.max() < 1e-12
    for (temperature, field), value in zip(POINTS, m):
        assert abs(value - cw.stationary_magnetisation(temperature, 1.0, field)) < 1e-6


def test_no_magnetisation_above_the_critical_temperature():
    temperatures = [1.1, 1.3, 2.0]
    m, change, _ = cw.mean_field_fixed_points([(t, 0.0) for t in temperatures], size=50)
    assert np.abs(m).max() < 1e-6
    below, _, _ = cw.mean_field_fixed_points([(0.9, 0.0)], size=50)
    assert below[0] > 0.5  # T < T_c = J: a nonzero root


def test_engine_curie_weiss_matrix_has_zero_diagonal():
    """Engine convention: J_ij = J / N, J_ii = 0, so its mean field solves m = tanh(beta J (N-1)/N m)."""
    size, temperature = 20, 0.8
    m, _, _ = cw.mean_field_fixed_points([(temperature, 0.0)], size=size, compensate=False)
    assert abs(m[0] - max(cw.roots((size - 1) / size / temperature, 0.0))) < 1e-9


def test_spinodal_values():
    assert abs(cw.spinodal(1.5) - 0.2075) < 5e-5
    assert abs(cw.spinodal(2.0) - 0.5328) < 5e-5
    for beta_j in (1.2, 1.5, 2.0, 3.0):
        edge = cw.spinodal(beta_j)
        assert len(cw.roots(beta_j, edge - 1e-3)) == 3
        assert len(cw.roots(beta_j, edge + 1e-3)) == 1
        assert len(cw.roots(beta_j, -edge - 1e-3)) == 1


def test_engine_is_bistable_exactly_inside_the_spinodal():
    up, down, counts = cw.equilibria_map([2.0], [0.3, 0.5, 0.6], max_steps=3000)
    assert counts.tolist() == [[3, 3, 1]]
    assert (np.abs(up - down) > 1e-3).tolist() == [[True, True, False]]
    up, down, counts = cw.equilibria_map([0.8], [0.0])
    assert counts[0, 0] == 1 and abs(up[0, 0] - down[0, 0]) < 1e-9


def test_glauber_monte_carlo_follows_the_root():
    m, error, _, _ = cw.monte_carlo(0.7, 0.0, size=300, repetitions=4, steps=60, burn_in=20)
    assert abs(m - cw.stationary_magnetisation(0.7)) < 0.02
    m, error, _, _ = cw.monte_carlo(1.5, 0.0, size=300, repetitions=4, steps=60, burn_in=20)
    assert abs(m) < 0.1


@pytest.mark.slow
def test_curie_weiss_experiment(tmp_path):
    summary = cw.run(tmp_path, repetitions=2, size=300)
    assert summary["max_abs_mf_minus_theory"] < 1e-6
    assert summary["map_agreement"] > 0.98
