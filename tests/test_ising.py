"""The kinetic Ising model as the engine's d = 1 fixed-coupling special case."""

import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq

from econspin import Scenario
from econspin.round import step
from econspin.simulate import Rollout

SIZE, BETA = 14, 1.3


@pytest.fixture
def couplings_file(tmp_path):
    generator = np.random.default_rng(3)
    couplings = generator.normal(0.2, 0.6, size=(SIZE, SIZE)) / math.sqrt(SIZE)  # asymmetric
    fields = generator.normal(0.1, 0.4, size=SIZE)
    path = tmp_path / "ising.npz"
    np.savez(path, J=couplings, H=fields)
    return path, couplings, fields


def _ising(path, correction="none", mode="expected", replicas=1):
    scenario = Scenario.from_dict(
        {
            "populations": {"spins": {"count": SIZE, "temperature": 1 / BETA, "eta": 1.0,
                                      "correction": {"form": correction},
                                      "state": {"distribution": "constant", "value": 1.0}}},
            "market": {"d": 1, "response": "vmf", "mode": mode,
                       "couplings": {"file": str(path), "coupling_key": "J", "field_key": "H"}},
        }
    )
    return Rollout.create([scenario] * replicas, list(range(replicas)), "cpu", "float64")


def _magnetisations(seed):
    return torch.from_numpy(np.random.default_rng(seed).uniform(-0.9, 0.9, size=SIZE))


def test_naive_mean_field_is_tanh_of_the_field(couplings_file):
    path, couplings, fields = couplings_file
    run = _ising(path)
    m = _magnetisations(1)
    new = step(run.state.replace(states=m[None, :, None]), run.economy).states[0, :, 0]
    expected = np.tanh(BETA * (fields + couplings @ m.numpy()))
    assert np.allclose(new.numpy(), expected, atol=1e-13)


def test_tap_is_the_roudi_hertz_closed_form(couplings_file):
    path, couplings, fields = couplings_file
    run = _ising(path, correction="tap")
    m = _magnetisations(2)
    new = step(run.state.replace(states=m[None, :, None]), run.economy).states[0, :, 0].numpy()
    mm = m.numpy()
    local = BETA * (fields + couplings @ mm)
    onsager = BETA**2 * (couplings**2) @ (1 - mm**2)
    expected = np.array([brentq(lambda x, i=i: x - np.tanh(local[i] - x * onsager[i]), -1, 1, xtol=1e-15)
                         for i in range(SIZE)])
    assert np.allclose(new, expected, atol=1e-10)
    naive = np.tanh(local)
    assert np.abs(new - naive).max() > 1e-3  # the correction is not negligible here


def test_glauber_parallel_update_in_sampled_mode(couplings_file):
    path, couplings, fields = couplings_file
    replicas = 3000
    run = _ising(path, mode="sampled", replicas=replicas)
    spins = torch.from_numpy(np.where(np.random.default_rng(4).random(SIZE) < 0.5, -1.0, 1.0))
    state = run.state.replace(states=spins.expand(replicas, SIZE)[..., None].clone())
    new = step(state, run.economy).states[..., 0]
    assert set(new.unique().tolist()) <= {-1.0, 1.0}
    probability_up = 1 / (1 + np.exp(-2 * BETA * (fields + couplings @ spins.numpy())))
    observed = (new == 1).double().mean(0).numpy()
    standard_error = np.sqrt(probability_up * (1 - probability_up) / replicas)
    assert np.all(np.abs(observed - probability_up) < 5 * standard_error + 1e-12)
