"""Spin responses and their samplers."""

import math
import re

import numpy as np
import pytest
import torch
from helpers import needs_compiler
from scipy import special, stats
from torch._inductor.utils import run_and_get_code

from econspin import wood
from econspin.randomness import round_draws
from econspin.response import (
    _direction_by_agents,
    _direction_by_components,
    _norm_and_unit,
    bessel_ratio,
    make_response,
    sample_von_mises_fisher,
)


@pytest.mark.parametrize("dimension", [2, 3, 8, 64, 512])
def test_bessel_ratio_matches_scipy(dimension):
    kappa = np.logspace(-4, 6, 120)
    order = dimension / 2 - 1
    with np.errstate(invalid="ignore", divide="ignore"):
        exact = special.ive(order + 1, kappa) / special.ive(order, kappa)
    ours = bessel_ratio(torch.tensor(kappa), dimension).numpy()  # scipy under- or overflows at some k
    ok = np.isfinite(exact) & (exact > 0)
    assert np.max(np.abs(ours[ok] - exact[ok]) / exact[ok]) < 1e-8


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bessel_ratio_terms_at_once_are_the_step_by_step_recurrence_bit_for_bit(dtype, monkeypatch):
    """The recurrence's terms in one outer product, in pieces of steps, or step by step: the same bits.

    k over 8 decades with 0, inf and 1e-30, one and two axes, odd and even d; float32 within
    1.5e-6 of scipy as the docstring says.
    """
    from econspin import response

    generator = torch.Generator().manual_seed(8)
    kappa = 10.0 ** (torch.rand(2, 500, generator=generator, dtype=torch.float64) * 8 - 3)
    kappa[0, :3] = torch.tensor([0.0, math.inf, 1e-30], dtype=torch.float64)
    kappa = kappa.to(dtype)
    for dimension in (2, 3, 7, 32, 1024):
        monkeypatch.setattr(response, "BESSEL_TERMS_AT_ONCE", 1 << 30)
        at_once = bessel_ratio(kappa, dimension)
        monkeypatch.setattr(response, "BESSEL_TERMS_AT_ONCE", 5 * kappa.numel())  # pieces of 5 steps, the last short
        in_pieces = bessel_ratio(kappa, dimension)
        monkeypatch.setattr(response, "BESSEL_TERMS_AT_ONCE", 0)
        step_by_step = bessel_ratio(kappa, dimension)
        assert torch.equal(at_once, step_by_step) and torch.equal(in_pieces, step_by_step), dimension
        assert torch.equal(bessel_ratio(kappa[1], dimension), step_by_step[1])
        order, values = dimension / 2 - 1, kappa[1].double().numpy()
        exact = special.ive(order + 1, values) / special.ive(order, values)
        ok = np.isfinite(exact) & (exact > 0)
        error = np.abs(at_once[1].double().numpy()[ok] - exact[ok]) / exact[ok]
        assert error.max() < (1.5e-6 if dtype == torch.float32 else 1e-8), dimension


@needs_compiler
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_compiled_bessel_ratio_keeps_no_buffer_of_the_recurrences_terms(dtype):
    """Compiled (run.compile traces the vMF mean), the recurrence is one loop over the agents.

    The eager form makes the K terms by outer products and steps in place on views of them;
    traced, each step was a write of the whole (K, ...) product back, and the compiled expected
    round at B = 128, N = 64, d = 32 ran at twice its time. The values: the eager ones within two
    float32 ulps (1e-15 in float64), with k = 0, inf and 1e-30 among them.
    """
    generator = torch.Generator().manual_seed(8)
    kappa = 10.0 ** (torch.rand(2, 500, generator=generator, dtype=torch.float64) * 8 - 3)
    kappa[0, :3] = torch.tensor([0.0, math.inf, 1e-30], dtype=torch.float64)
    kappa = kappa.to(dtype)
    torch._dynamo.reset()
    with torch.no_grad():
        got, code = run_and_get_code(torch.compile(bessel_ratio, dynamic=False), kappa, 32)
    buffers = set(re.findall(r"empty_strided_cpu\(\(([^)]*)\)", "\n".join(code)))
    assert buffers == {"2, 500"}, buffers  # the result's alone, none of (K, 2, 500)
    tolerance = 2 * torch.finfo(dtype).eps if dtype == torch.float32 else 1e-15
    torch.testing.assert_close(got, bessel_ratio(kappa, 32), rtol=tolerance, atol=0)


def test_bessel_ratio_limits_and_ising():
    kappa = torch.tensor([0.0, math.inf], dtype=torch.float64)
    assert torch.equal(bessel_ratio(kappa, 7), torch.tensor([0.0, 1.0], dtype=torch.float64))
    x = torch.linspace(-3, 3, 11, dtype=torch.float64)
    assert torch.allclose(bessel_ratio(x, 1), torch.tanh(x))


def test_bessel_ratio_gradcheck():
    kappa = torch.tensor([0.05, 0.7, 3.0, 40.0], dtype=torch.float64, requires_grad=True)
    for dimension in (2, 5, 32):
        assert torch.autograd.gradcheck(lambda k: bessel_ratio(k, dimension), (kappa,))


@pytest.mark.parametrize("name", ["sphere", "linear", "large_d", "vmf"])
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


def test_glauber_rule_for_scalar_spins():
    count = 50_000
    fields = [0.3, -0.7, 0.0, 2.0]
    draws = round_draws(torch.tensor([8, 9, 10, 11]), 0, count)
    theta = torch.tensor(fields, dtype=torch.float64)[:, None, None].expand(-1, count, 1)
    temperature = torch.full((4, count), 0.5, dtype=torch.float64)
    spins = sample_von_mises_fisher(theta, temperature, 1.0, draws)
    assert set(spins.unique().tolist()) == {-1.0, 1.0}
    for element, field in enumerate(fields):
        probability_up = 1 / (1 + math.exp(-2 * field / 0.5))
        observed = float((spins[element] == 1).double().mean())
        assert abs(observed - probability_up) < 5 * math.sqrt(probability_up * (1 - probability_up) / count)
    # the limits: T = 0 follows the field, T = inf is a fair coin
    cold = sample_von_mises_fisher(theta, torch.zeros_like(temperature), 1.0, draws)
    assert torch.all(cold[[0, 3]] == 1) and torch.all(cold[1] == -1)
    hot = sample_von_mises_fisher(theta, torch.full_like(temperature, math.inf), 1.0, draws)
    assert abs(float((hot == 1).double().mean()) - 0.5) < 5 * math.sqrt(0.25 / hot.numel())


def _vmf_sample(dimension, kappa, count, key=0, radius=1.0, dtype=torch.float64):
    """Count spins of field kappa along a fixed random direction (T = 1, R = radius), in float64 (from ``dtype``)."""
    direction = torch.randn(dimension, generator=torch.Generator().manual_seed(dimension), dtype=torch.float64)
    direction = direction / direction.norm()
    theta = (kappa / radius * direction).expand(1, count, -1).to(dtype)
    draws = round_draws(torch.tensor([key]), 0, count)
    spins = sample_von_mises_fisher(theta, torch.ones(1, count, dtype=dtype), radius, draws)[0]
    return spins.double() / radius, direction


VMF_CASES = [(2, 0.3), (2, 5.0), (3, 1.0), (3, 40.0), (5, 2.0), (16, 0.5), (16, 8.0), (16, 300.0), (64, 20.0)]


@pytest.mark.parametrize("dimension,kappa", VMF_CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_vmf_sample_moments_are_exact(dimension, kappa, dtype):
    """E[u] = A n and E[u u^T] = (A / k) I + (1 - d A / k) n n^T on the unit sphere, A = A_d(k).

    In float32 too, whose direction is drawn in float32 (|u| = 1 to float32 rounding; at d = 2
    the direction is the sign of one Gaussian's projection, which float32's rounding of theta_hat
    can shift for agents whose Gaussians are nearly along the field: a few in a thousand by 1e-5).
    """
    count = 20_000
    unit, direction = _vmf_sample(dimension, kappa, count, key=dimension, dtype=dtype)
    slack = 1e-12 if dtype == torch.float64 else 1e-6
    lengths = unit.norm(dim=-1)
    if dtype == torch.float64 or dimension > 2:
        assert torch.allclose(lengths, torch.ones(count, dtype=torch.float64), atol=slack)
    else:
        assert float((lengths - 1).abs().quantile(0.99)) < 1e-5 and float((lengths - 1).abs().max()) < 1e-2
    mean = make_response("vmf", dimension, 1.0).mean(kappa * direction, torch.tensor(1.0, dtype=torch.float64))
    assert torch.all((unit.mean(0) - mean).abs() <= 5 * unit.std(0) / math.sqrt(count) + slack)
    ratio = float(bessel_ratio(torch.tensor(kappa, dtype=torch.float64), dimension))
    second = (ratio / kappa) * torch.eye(dimension, dtype=torch.float64)
    second = second + (1 - dimension * ratio / kappa) * torch.outer(direction, direction)
    outer = unit.T @ unit / count
    spread = ((unit**2).T @ unit**2 / count - outer**2).clamp(min=0).sqrt()  # sd of u_i u_j
    error = (outer - second).abs()
    assert torch.all(error <= 5 * spread / math.sqrt(count) + slack), float((error / spread).max())


@pytest.mark.parametrize("dimension,kappa", [(2, 1.5), (3, 4.0), (16, 0.5), (16, 30.0), (200, 150.0)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_vmf_component_along_the_field_has_the_exact_law(dimension, kappa, dtype):
    """The angle phi = arccos(u . n) has density ∝ exp(k cos phi) sin^(d-2) phi: a KS test."""
    unit, direction = _vmf_sample(dimension, kappa, 20_000, key=7, dtype=dtype)
    angles = torch.arccos((unit @ direction).clamp(-1, 1)).numpy()
    grid = np.linspace(0, math.pi, 200_001)
    log_density = kappa * np.cos(grid) + (dimension - 2) * np.log(np.clip(np.sin(grid), 1e-300, None))
    density = np.exp(log_density - log_density.max())
    cumulative = np.concatenate([[0], np.cumsum((density[1:] + density[:-1]) / 2)])
    cumulative /= cumulative[-1]
    assert stats.kstest(angles, lambda x: np.interp(x, grid, cumulative)).pvalue > 1e-3


def test_vmf_limits_no_field_is_uniform_and_zero_temperature_is_the_direction():
    count, dimension = 20_000, 6
    draws = round_draws(torch.tensor([3]), 0, count)
    zero = torch.zeros(1, count, dimension, dtype=torch.float64)
    spins = sample_von_mises_fisher(zero, torch.ones(1, count, dtype=torch.float64), 2.0, draws)[0] / 2.0
    assert torch.all(spins.mean(0).abs() < 5 / math.sqrt(dimension * count))
    outer = (spins[:, :, None] * spins[:, None, :]).mean(0)
    assert torch.allclose(outer, torch.eye(dimension, dtype=torch.float64) / dimension, atol=5 / math.sqrt(count) / 2)
    theta = torch.randn(1, count, dimension, dtype=torch.float64)
    cold = sample_von_mises_fisher(theta, torch.zeros(1, count, dtype=torch.float64), 2.0, draws)
    assert torch.allclose(cold, 2.0 * theta / theta.norm(dim=-1, keepdim=True), atol=1e-14)
    hot = sample_von_mises_fisher(theta, torch.full((1, count), math.inf, dtype=torch.float64), 2.0, draws)[0] / 2
    assert torch.all(hot.mean(0).abs() < 5 / math.sqrt(dimension * count))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_vmf_at_temperatures_just_above_zero_is_the_direction_to_sqrt_d_over_kappa(dtype):
    """T from 1e-8 down to 1e-300 (kappa up to 1e300): the spin is R theta_hat, sideways by ~ sqrt(d / kappa).

    Around kappa ~ 1e16 Wood's acceptance test once accepted nothing, and such a draw never
    ended; with a budget too, every agent is resolved within it.
    """
    count, dimension, radius = 600, 5, 2.0
    theta = torch.randn(1, count, dimension, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    theta = (theta / theta.norm(dim=-1, keepdim=True)).to(dtype)  # |theta| = 1: kappa = R / T
    temperature = torch.logspace(-8, -300, count, dtype=torch.float64)[None]
    kappa = radius / temperature
    draws = round_draws(torch.tensor([9]), 3, count)
    budget = wood.RejectionBudget.on(torch.device("cpu"), 24)
    for spins in (sample_von_mises_fisher(theta, temperature.to(dtype), radius, draws),
                  sample_von_mises_fisher(theta, temperature.to(dtype), radius, draws, budget)):
        unit = spins.double() / radius
        sideways = (unit - theta.double()).norm(dim=-1)
        slack = 1e-12 if dtype == torch.float64 else 1e-6
        assert bool((sideways <= 10 * torch.sqrt(dimension / kappa) + slack).all())
    assert int(budget.unresolved) == 0


def test_a_budget_given_to_the_draw_reaches_woods_step_and_counts_whom_it_leaves():
    """sample_von_mises_fisher(..., budget): one attempt each leaves the rejected agents unresolved, counted.

    As many as Wood's step counts with the same budget at the same kappa, and the spins of the
    agents it resolved are the unbudgeted draw's.
    """
    count, dimension, radius = 2000, 3, 1.5
    theta = torch.randn(1, count, dimension, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    theta = theta / theta.norm(dim=-1, keepdim=True)  # kappa = R |theta| / T = 1.5
    temperature = torch.ones(1, count, dtype=torch.float64)
    draws = round_draws(torch.tensor([6]), 2, count)
    budget, alone = (wood.RejectionBudget.on(torch.device("cpu"), 1) for _ in range(2))
    budgeted = sample_von_mises_fisher(theta, temperature, radius, draws, budget)
    wood._wood_component(torch.full((1, count), radius, dtype=torch.float64), dimension, draws, budget=alone)
    assert 0 < int(budget.unresolved) == int(alone.unresolved) < count
    unbudgeted = sample_von_mises_fisher(theta, temperature, radius, draws)
    resolved = (budgeted == unbudgeted).all(-1)
    assert int((~resolved).sum()) == int(budget.unresolved)


@pytest.mark.parametrize("dimension", [1, 4])
def test_spins_are_drawn_in_the_states_precision(dimension):
    """float64, float32 and bfloat16 fields give spins of their own dtype (bfloat16: drawn in float64, cast once)."""
    theta = torch.randn(2, 50, dimension, generator=torch.Generator().manual_seed(dimension))
    draws = round_draws(torch.tensor([1, 2]), 0, 50)
    wide = sample_von_mises_fisher(theta.double(), torch.ones(2, 50, dtype=torch.float64), 1.5, draws)
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        spins = sample_von_mises_fisher(theta.to(dtype), torch.ones(2, 50, dtype=dtype), 1.5, draws)
        assert spins.dtype == dtype
        tolerance = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 3e-2}[dtype]
        radii = spins.norm(dim=-1).double()
        assert torch.allclose(radii, torch.full((2, 50), 1.5, dtype=torch.float64), rtol=tolerance)
        if dtype != torch.bfloat16:  # a bfloat16 field is another field: its kappa moves Wood's draws
            assert torch.allclose(spins.double(), wide, atol=tolerance * 1.5)


@pytest.mark.parametrize("dimension", [2, 3, 16])
def test_wood_result_does_not_depend_on_attempts_drawn_at_once(dimension):
    """The first accepted attempt of each agent's sequence, whether 1, 4 or 16 are tried at once."""
    kappa = torch.logspace(-2, 4, 3000, dtype=torch.float64).reshape(3, 1000)
    kappa[0, :5] = math.inf
    draws = round_draws(torch.tensor([1, 2, 3]), 4, 1000)
    one = wood._wood_component(kappa, dimension, draws, attempts=1)  # mostly the loop over leftovers
    assert torch.equal(one, wood._wood_component(kappa, dimension, draws, attempts=4))
    assert torch.equal(one, wood._wood_component(kappa, dimension, draws, attempts=16))
    assert torch.equal(one, wood._wood_component(kappa, dimension, draws))  # the default for many agents
    assert torch.all(one[0, :5] == 1)
    few = kappa[:, :100]  # 300 agents: the default for few (wood.WOOD_FIRST_ATTEMPTS_FEW), the same draws
    assert few.numel() <= wood.WOOD_FEW_AGENTS < kappa.numel()
    assert torch.equal(wood._wood_component(few, dimension, draws[:, :100]), one[:, :100])


@pytest.mark.parametrize("dimension", [1, 2, 7, 16, 33])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_spins_of_an_element_do_not_depend_on_the_batch(dimension, dtype):
    """An element sampled alone gets the bits it gets inside a batch, and a subset of agents likewise."""
    generator = torch.Generator().manual_seed(dimension)
    theta = torch.randn(3, 50, dimension, generator=generator, dtype=dtype)
    temperature = torch.rand(3, 50, generator=generator, dtype=dtype) + 0.1
    temperature[0, :3] = 0.0
    draws = round_draws(torch.tensor([11, 12, 13]), 2, 50)
    together = sample_von_mises_fisher(theta, temperature, 1.5, draws)
    for element in range(3):
        rows = slice(element, element + 1)
        alone = sample_von_mises_fisher(theta[rows], temperature[rows], 1.5, draws[rows])
        assert torch.equal(alone[0], together[element])
    part = sample_von_mises_fisher(theta[:, 10:20], temperature[:, 10:20], 1.5, draws[:, 10:20])
    assert torch.equal(part, together[:, 10:20])


@pytest.mark.parametrize("dimension", [2, 5, 16, 33])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_spins_drawn_in_place_are_the_differentiable_draws_bit_for_bit(dimension, dtype):
    """Without a gradient the direction is built in place; with one, out of place: the same spins.

    And the differentiable draw carries the field's gradient (d = 5 onward: an odd leading
    axis folds its last slice into the sum).
    """
    generator = torch.Generator().manual_seed(dimension)
    theta = torch.randn(2, 40, dimension, generator=generator, dtype=dtype)
    theta[0, :4] = 0.0  # no field: all of the spin orthogonal
    temperature = (torch.rand(2, 40, generator=generator, dtype=dtype) + 0.05).index_fill(1, torch.tensor([5]), 0.0)
    draws = round_draws(torch.tensor([3, 4]), 7, 40)
    with torch.no_grad():
        in_place = sample_von_mises_fisher(theta, temperature, 1.5, draws)
    field = theta.clone().requires_grad_(True)
    differentiable = sample_von_mises_fisher(field, temperature, 1.5, draws)
    assert differentiable.requires_grad and not in_place.requires_grad
    assert torch.equal(differentiable.detach(), in_place)
    assert torch.allclose(in_place.norm(dim=-1), torch.full((2, 40), 1.5, dtype=dtype), rtol=1e-5)
    (differentiable * torch.randn(differentiable.shape, generator=generator, dtype=dtype)).sum().backward()
    assert field.grad is not None and torch.isfinite(field.grad).all() and field.grad.abs().sum() > 0


@pytest.mark.parametrize("dimension", [2, 5, 16, 33])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_direction_drawn_agent_by_agent_is_the_compiled_layouts_to_rounding(dimension, dtype):
    """The eager direction, each agent's components contiguous, is the (d, ...) form's (the compiled one) to rounding.

    The same Gaussians and coefficients; only the sums over d add in another order. With no
    field (theta_hat 0: all of the spin orthogonal) and w = -1, 0, 1 among the agents.
    """
    generator = torch.Generator().manual_seed(dimension)
    theta = torch.randn(3, 30, dimension, generator=generator, dtype=dtype)
    theta[0, :4] = 0.0
    along = torch.rand(3, 30, generator=generator, dtype=torch.float64) * 2.0 - 1.0
    along[1, :3] = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    along[0, :4] = 0.0
    draws = round_draws(torch.tensor([5, 6, 7]), 3, 30)
    norm, unit = _norm_and_unit(theta, False, dtype)
    by_agents = _direction_by_agents(theta, unit, along, 1.5, draws)
    by_components = _direction_by_components(theta, unit.movedim(-1, 0).contiguous(), along, 1.5, draws)
    assert by_agents.shape == theta.shape and by_agents.is_contiguous() and by_agents.dtype == dtype
    assert torch.allclose(by_agents, by_components, rtol=0.0, atol=(1e-14 if dtype == torch.float64 else 2e-6) * 1.5)
    assert torch.allclose(by_agents.norm(dim=-1), torch.full((3, 30), 1.5, dtype=dtype), rtol=1e-5)
    cos = (by_agents * unit).sum(-1) / 1.5  # the component along theta_hat is w, where there is a field
    assert torch.allclose(cos[norm > 0], along[norm > 0].to(dtype), atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_the_eager_draws_unit_field_is_laid_out_contiguously(dtype):
    """theta_hat is a tensor of its own, theta's shape, contiguous, in the draw's working precision.

    The eager draw's products read it in theta's layout, each agent's components contiguous
    (docs/performance.md, "The direction drawn agent by agent"); compiled, it is laid out (d, ...).
    With a gradient too, and the quotients are theta / |theta| either way.
    """
    theta = torch.randn(3, 7, 5, generator=torch.Generator().manual_seed(2)).to(dtype)
    theta[0, 0] = 0.0
    working = torch.float32 if dtype == torch.float32 else torch.float64
    for requires_grad in (False, True):
        field = theta.clone().requires_grad_(requires_grad)
        norm, unit = _norm_and_unit(field, False, working)
        assert unit.shape == (3, 7, 5) and unit.dtype == working and unit.is_contiguous()
        assert torch.equal(norm.detach(), torch.linalg.vector_norm(theta, dim=-1))
        expected = (theta / torch.where(norm.detach() > 0, norm.detach(), 1.0)[..., None]).to(working)
        assert torch.equal(unit.detach(), expected)
        assert unit.requires_grad == requires_grad


@pytest.mark.parametrize("dimension", [2, 3, 16, 32])
def test_float32_spins_are_the_float64_spins_to_rounding(dimension):
    """A float32 state's spin, its direction drawn in float32, against the float64 draw of the same field.

    kappa from 1e-2 to 1e6 (1 - w ~ 1 / kappa: w and sqrt(1 - w^2) are float64, cast once),
    no field, T = 0 and T = inf. The float32 Gaussians are float64's within 2^-23 / r + 1e-6 r
    (test_randomness); the direction moves by that over |g_perp|, the spin by float32's
    rounding of theta_hat and of the sum: within 1e-5 R at d >= 3 (2.9e-6 measured). At d = 2 the direction is
    one Gaussian's projection, and |g_perp| is small for some agents (P(|g_perp| < x |g|) ~ x):
    there 1 in 1000 agents may differ by more.
    """
    count, radius = 4000, 1.5
    generator = torch.Generator().manual_seed(dimension)
    theta = torch.randn(2, count, dimension, dtype=torch.float64, generator=generator)
    theta = (theta * torch.logspace(-2, 6, count, dtype=torch.float64)[:, None] / theta.norm(dim=-1, keepdim=True))
    theta = theta.float()
    theta[0, :10] = 0.0
    temperature = torch.ones(2, count)
    temperature[1, :10], temperature[1, 10:20] = 0.0, math.inf
    draws = round_draws(torch.tensor([5, 6]), 3, count)
    narrow = sample_von_mises_fisher(theta, temperature, radius, draws)
    wide = sample_von_mises_fisher(theta.double(), temperature.double(), radius, draws)
    assert narrow.dtype == torch.float32 and torch.isfinite(narrow).all()
    difference = (narrow.double() - wide).norm(dim=-1) / radius
    if dimension > 2:
        assert float(difference.max()) < 1e-5
    else:
        assert float(difference.quantile(0.999)) < 2e-5
    assert torch.equal(narrow[1, :10], radius * (theta[1, :10] / theta[1, :10].norm(dim=-1, keepdim=True)))  # T = 0


def test_a_direction_with_no_gaussian_left_is_finite():
    """All Gaussians zero (so g_perp = 0): the spin is R w theta_hat, as in float64, not 0 times inf."""

    class NoGaussians(type(round_draws(torch.tensor([1]), 0, 1))):
        def normal(self, stream, count, dtype=torch.float64, axis=0):
            return super().normal(stream, count, dtype, axis).zero_()

    count, dimension = 100, 4
    for dtype in (torch.float64, torch.float32):
        theta = torch.randn(1, count, dimension, generator=torch.Generator().manual_seed(0)).to(dtype)
        draws = NoGaussians(round_draws(torch.tensor([1]), 0, count).keys)
        spins = sample_von_mises_fisher(theta, torch.full((1, count), 0.5, dtype=dtype), 2.0, draws)
        assert torch.isfinite(spins).all()
        along = (spins * theta).sum(-1) / theta.norm(dim=-1)
        assert torch.allclose(spins, along[..., None] * theta / theta.norm(dim=-1, keepdim=True), atol=1e-6)


def test_vmf_in_three_dimensions_is_the_langevin_function():
    """In d = 3 (a classical Heisenberg spin) A_3(k) = coth(k) - 1/k, at round values of k too."""
    kappa = torch.tensor([0.25, 0.5, 1.0, 2.0, 3.0, 10.0], dtype=torch.float64)
    langevin = 1 / torch.tanh(kappa) - 1 / kappa
    assert torch.allclose(bessel_ratio(kappa, 3), langevin, rtol=1e-12, atol=0)


def test_large_d_slope_is_a_step_when_cold():
    """At T = 0 the large-d magnitude jumps from 0 to R at |theta| = 0.

    Its slope there is infinite, the limit of c / (2T) as T -> 0, and zero at any |theta| > 0.
    """
    response = make_response("large_d", 4, 2.0)
    norm = torch.tensor([0.0, 0.0, 0.0, 0.5], dtype=torch.float64)
    temperature = torch.tensor([1e-3, 1e-6, 0.0, 0.0], dtype=torch.float64)
    slope = response.slope(norm, temperature)
    assert slope[:2].tolist() == pytest.approx([response.gain / 2e-3, response.gain / 2e-6])
    assert slope[2] == math.inf and slope[3] == 0


@pytest.mark.parametrize("dimension,kappa", [(5, 0.5), (5, 10.0), (16, 4.0)])
def test_vmf_sampler_component_has_the_exact_first_two_moments(dimension, kappa):
    """The component w = s . theta_hat / R has E[w] = A_d(k) and E[w^2] = 1 - (d - 1) A_d(k) / k.

    (Var w = dA_d/dk.) Both moments of 50 000 draws within 5 standard errors: a sampler
    drawing from a slightly wrong law of w fails.
    """
    count = 50_000
    theta = torch.zeros(1, count, dimension, dtype=torch.float64)
    theta[..., 0] = kappa  # R = 1, T = 1: concentration k = |theta|
    spins = sample_von_mises_fisher(theta, torch.ones(1, count, dtype=torch.float64), 1.0,
                                    round_draws(torch.tensor([11]), 0, count))[0]
    w = spins[:, 0]
    mean_length = float(bessel_ratio(torch.tensor(kappa, dtype=torch.float64), dimension))
    for moment, exact in ((w, mean_length), (w**2, 1 - (dimension - 1) * mean_length / kappa)):
        standard_error = float(moment.std()) / math.sqrt(count)
        assert abs(float(moment.mean()) - exact) < 5 * standard_error


@pytest.mark.slow
def test_vmf_sampler_moments_in_64_dimensions():
    """The same check at d = 64, k = 20 with 400 000 draws.

    docs/testing.md: a mutant that loosens Wood's envelope shifts E[w] by about 10 standard
    errors here, and by less than 3 at d <= 32 with 100 000 draws.
    """
    count, dimension, kappa = 400_000, 64, 20.0
    w = wood._wood_component(torch.full((count,), kappa, dtype=torch.float64), dimension,
                        round_draws(torch.tensor([1]), 0, count)[0])
    mean_length = float(bessel_ratio(torch.tensor(kappa, dtype=torch.float64), dimension))
    for moment, exact in ((w, mean_length), (w**2, 1 - (dimension - 1) * mean_length / kappa)):
        assert abs(float(moment.mean()) - exact) < 5 * float(moment.std()) / math.sqrt(count)


def test_glauber_rule_without_a_field_is_a_fair_coin_even_when_cold():
    """For d = 1 and theta = 0, P(s = +R) = 1 / (1 + exp(0)) = 1/2 at every T > 0.

    So also in the limit T -> 0, and at T = inf.
    """
    count = 40_000
    theta = torch.zeros(1, count, 1, dtype=torch.float64)
    for temperature in (0.0, 0.5, math.inf):
        spins = sample_von_mises_fisher(theta, torch.full((1, count), temperature, dtype=torch.float64), 2.0,
                                        round_draws(torch.tensor([5]), 0, count))
        assert set(spins.unique().tolist()) == {-2.0, 2.0}
        assert abs(float((spins > 0).double().mean()) - 0.5) < 5 * math.sqrt(0.25 / count)


def test_vmf_sampler_without_a_field_is_uniform_on_the_sphere():
    """With theta = 0 (or T = inf) every direction is equally likely, and |s| = R."""
    count, dimension, radius = 20_000, 3, 1.5
    theta = torch.zeros(1, count, dimension, dtype=torch.float64)
    temperature = torch.tensor([[0.8] * (count // 2) + [math.inf] * (count // 2)], dtype=torch.float64)
    spins = sample_von_mises_fisher(theta, temperature, radius, round_draws(torch.tensor([9]), 0, count))[0]
    assert torch.allclose(spins.norm(dim=-1), torch.full((count,), radius, dtype=torch.float64))
    # uniform on the sphere: mean 0, E[s s^T] = R^2 / d I
    assert (spins.mean(0).abs() < 5 * radius / math.sqrt(dimension * count)).all()
    second = spins.T @ spins / count
    assert torch.allclose(second, torch.eye(dimension, dtype=torch.float64) * radius**2 / dimension, atol=0.05)


def test_unknown_response_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown response 'cubic'; choose one of .*'large_d'.*'vmf'"):
        make_response("cubic", 4, 2.0)
