"""Spin responses and their samplers."""

import math

import numpy as np
import pytest
import torch
from scipy import special

from econspin.response import bessel_ratio, make_response, sample_von_mises_fisher


@pytest.mark.parametrize("dimension", [2, 3, 8, 64, 512])
def test_bessel_ratio_matches_scipy(dimension):
    kappa = np.logspace(-4, 6, 120)
    order = dimension / 2 - 1
    with np.errstate(invalid="ignore", divide="ignore"):
        exact = special.ive(order + 1, kappa) / special.ive(order, kappa)
    ours = bessel_ratio(torch.tensor(kappa), dimension).numpy()  # scipy under- or overflows at some k
    ok = np.isfinite(exact) & (exact > 0)
    assert np.max(np.abs(ours[ok] - exact[ok]) / exact[ok]) < 1e-8


def test_bessel_ratio_limits_and_ising():
    kappa = torch.tensor([0.0, math.inf], dtype=torch.float64)
    assert torch.equal(bessel_ratio(kappa, 7), torch.tensor([0.0, 1.0], dtype=torch.float64))
    x = torch.linspace(-3, 3, 11, dtype=torch.float64)
    assert torch.allclose(bessel_ratio(x, 1), torch.tanh(x))


def test_bessel_ratio_gradcheck():
    kappa = torch.tensor([0.05, 0.7, 3.0, 40.0], dtype=torch.float64, requires_grad=True)
    for dimension in (2, 5, 32):
        assert torch.autograd.gradcheck(lambda k: bessel_ratio(k, dimension), (kappa,))


@pytest.mark.parametrize("name", ["large_d", "vmf"])
def test_response_slope_is_derivative_of_magnitude(name):
    response = make_response(name, 6, math.sqrt(6))
    norm = torch.linspace(0.01, 5, 50, dtype=torch.float64, requires_grad=True)
    temperature = torch.full_like(norm, 0.7)
    (gradient,) = torch.autograd.grad(response.magnitude(norm, temperature).sum(), norm)
    assert torch.allclose(gradient, response.slope(norm.detach(), temperature), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", ["sphere", "large_d", "vmf"])
def test_responses_reach_the_sphere_when_cold_and_zero_when_hot(name):
    response = make_response(name, 8, 2.0)
    theta = torch.randn(5, 8, dtype=torch.float64)
    cold = response.mean(theta, torch.zeros(5, dtype=torch.float64))
    assert torch.allclose(cold, 2.0 * theta / theta.norm(dim=-1, keepdim=True))
    if name != "sphere":
        hot = response.mean(theta, torch.full((5,), math.inf, dtype=torch.float64))
        assert torch.all(hot == 0)


def test_large_d_tends_to_vmf_like_one_over_d():
    errors = {}
    for dimension in (16, 32, 64, 128, 256, 512):
        radius = math.sqrt(dimension)
        field = torch.logspace(-2, 1.5, 200, dtype=torch.float64) * radius  # |theta| / R from 0.01 to 30
        temperature = torch.ones_like(field)
        exact = make_response("vmf", dimension, radius).magnitude(field, temperature)
        approximate = make_response("large_d", dimension, radius).magnitude(field, temperature)
        errors[dimension] = float(((approximate - exact).abs() / radius).max())
    values = list(errors.values())
    assert all(later < earlier for earlier, later in zip(values, values[1:]))
    # 1/d: doubling d halves the error (within 15%)
    for earlier, later in zip(values, values[1:]):
        assert 1.7 < earlier / later < 2.3
    assert errors[512] < 1e-3


def test_vmf_sampler_mean_is_the_vmf_response():
    dimension, radius, count = 5, math.sqrt(5), 20_000
    generator = torch.Generator().manual_seed(4)
    theta = torch.tensor([0.9, -0.3, 0.2, 0.0, 0.4], dtype=torch.float64)
    temperature = torch.tensor(0.8, dtype=torch.float64)
    spins = sample_von_mises_fisher(
        theta.expand(1, count, -1), temperature.expand(1, count), radius, [generator]
    )[0]
    assert torch.allclose(spins.norm(dim=-1), torch.full((count,), radius, dtype=torch.float64))
    expected = make_response("vmf", dimension, radius).mean(theta, temperature)
    standard_error = spins.std(dim=0) / math.sqrt(count)
    assert torch.all((spins.mean(0) - expected).abs() < 5 * standard_error)


def test_glauber_rule_for_scalar_spins():
    generator = torch.Generator().manual_seed(8)
    count = 50_000
    theta = torch.tensor([[[0.3]]], dtype=torch.float64).expand(1, count, 1)
    temperature = torch.full((1, count), 0.5, dtype=torch.float64)
    spins = sample_von_mises_fisher(theta, temperature, 1.0, [generator])
    assert set(spins.unique().tolist()) == {-1.0, 1.0}
    probability_up = 1 / (1 + math.exp(-2 * 0.3 / 0.5))
    observed = float((spins == 1).double().mean())
    assert abs(observed - probability_up) < 5 * math.sqrt(probability_up * (1 - probability_up) / count)
