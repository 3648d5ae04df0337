"""econspin.temperature_limits: the fused kernels' inverse temperatures, traced whole under run.compile."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from econspin.market import row_sizes
from econspin.temperature_limits import binary_exponents, inverse_temperatures_and_ties, precision_limits, row_scales


def frexp_exponents(values: torch.Tensor) -> torch.Tensor:
    return torch.frexp(values.double())[1].double()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.one_of(st.floats(min_value=0.0, allow_infinity=True), st.just(math.nan)), min_size=1, max_size=64),
    st.sampled_from([torch.float32, torch.float64]),
)
def test_binary_exponents_are_frexps(values, dtype):
    """Of row scales (>= 0, or NaN): frexp's exponent e, x in [2^(e-1), 2^e), bit for bit; 0 for 0, inf, NaN."""
    tensor = torch.tensor(values, dtype=torch.float64).to(dtype)
    assert torch.equal(binary_exponents(tensor), frexp_exponents(tensor))


def test_binary_exponents_at_every_power_of_two_and_its_neighbours():
    """Where log2 may round across an integer: each power of two, the float just below it and just above it."""
    for dtype, lowest, highest in ((torch.float32, -149, 128), (torch.float64, -1074, 1024)):
        powers = torch.exp2(torch.arange(lowest, highest, dtype=torch.float64)).to(dtype)
        below = torch.nextafter(powers, torch.zeros_like(powers))
        above = torch.nextafter(powers, torch.full_like(powers, math.inf))
        values = torch.cat([powers, below, above, torch.tensor([torch.finfo(dtype).max], dtype=dtype)])
        exponents = binary_exponents(values)
        assert torch.equal(exponents, frexp_exponents(values)), dtype
        # the contract the clamp relies on: 2^(e-1) <= x < 2^e
        positive = values > 0
        assert bool((torch.exp2(exponents[positive] - 1) <= values[positive].double()).all())
        assert bool((values[positive].double() < torch.exp2(exponents[positive])).all())


def test_inverse_temperatures_are_powers_of_two_at_the_limits():
    """T = 0 gives 2^(E - e), T = inf 2^(-p - 6 - e), with 2^e just above the row's scale."""
    for dtype in (torch.float32, torch.float64):
        top, mantissa, _ = precision_limits(dtype)
        scale = torch.tensor([0.3, 3.0, 1000.0], dtype=dtype)
        exponent = torch.tensor([-1.0, 2.0, 10.0], dtype=torch.float64)
        for temperature, want in ((0.0, torch.exp2(top - exponent)), (math.inf, torch.exp2(-mantissa - 6 - exponent))):
            temperatures = torch.full_like(scale, temperature)
            beta, ties = inverse_temperatures_and_ties(temperatures, scale, torch.ones_like(scale))
            assert torch.equal(beta, want.to(dtype)), (dtype, temperature)
            assert torch.equal(ties, beta if temperature == 0 else torch.zeros_like(beta))


def test_binary_exponents_survive_a_log2_off_by_one_unit(monkeypatch):
    """A log2 rounded one unit down or up (exact here at powers of two, not everywhere): the same exponents."""
    values = torch.exp2(torch.arange(-60, 60, dtype=torch.float64))
    values = torch.cat([values, torch.nextafter(values, torch.zeros_like(values)), values * 1.5])
    want = frexp_exponents(values)
    exact = torch.log2
    for towards in (-math.inf, math.inf):
        rounded = lambda x, towards=towards: torch.nextafter(exact(x), torch.full_like(x, towards))  # noqa: E731
        monkeypatch.setattr(torch, "log2", rounded)
        assert torch.equal(binary_exponents(values), want), towards


def test_precision_limits_are_the_constants_the_module_states():
    """E = 100 (float32) or 996 (float64), p the mantissa bits, the mask 20 binary orders above E."""
    assert precision_limits(torch.float32) == (100, 24, 120)
    assert precision_limits(torch.float64) == (996, 53, 1016)


def test_the_limits_stay_finite_and_normal_at_every_row_scale():
    """The clamp of the row's exponent: T = 0 never overflows, T = inf never leaves the normal floats.

    At the tiniest scales a T = 0 row's beta is the largest finite power of two, 2^(E + 27); at
    the largest a T = inf row's is the smallest normal float, 2^(-p - 6 - e) with e at its cap.
    Between them both are the powers of two of the module's formula, and beta times the scale
    stays below the largest float.
    """
    for dtype in (torch.float32, torch.float64):
        info = torch.finfo(dtype)
        top, mantissa, _ = precision_limits(dtype)
        largest_power = math.ldexp(1.0, math.frexp(info.max)[1] - 1)  # 2^127 or 2^1023
        tiny = torch.tensor([info.tiny, 2.0**-40, 1e-30, 2.0**-29], dtype=dtype)
        cap = -int(math.log2(info.tiny)) - mantissa - 6  # the largest e: 96 or 963
        huge = torch.tensor([info.max, 2.0 ** (cap + 4), 2.0**cap], dtype=dtype)
        cold, _ = inverse_temperatures_and_ties(torch.zeros_like(tiny), tiny, torch.zeros_like(tiny))
        assert torch.equal(cold, torch.full_like(cold, largest_power)), dtype
        hot, _ = inverse_temperatures_and_ties(torch.full_like(huge, math.inf), huge, torch.zeros_like(huge))
        assert torch.equal(hot, torch.full_like(hot, info.tiny)), dtype
        scales = torch.cat([tiny, huge, torch.tensor([0.5, 1.0, 7.0], dtype=dtype)])
        for temperature in (0.0, 0.37, math.inf):
            beta, _ = inverse_temperatures_and_ties(torch.full_like(scales, temperature), scales, scales)
            assert bool(torch.isfinite(beta).all() and (beta >= info.tiny).all()), (dtype, temperature)
        beta, _ = inverse_temperatures_and_ties(torch.zeros_like(scales), scales, scales)
        ordinary = scales < 2.0**cap  # e below its cap
        assert bool(torch.isfinite(beta.double() * scales.double())[ordinary].all()), dtype
        assert bool((beta.double() * scales.double() < 2.0**top)[ordinary].all()), dtype


@settings(max_examples=100, deadline=None)
@given(
    st.integers(0, 2**31),
    st.floats(0.01, 100.0),
    st.floats(0.0, 1e6),
    st.sampled_from([torch.float32, torch.float64]),
)
def test_row_scales_bound_every_utility_and_query(seed, key_size, bias_size, dtype):
    """|u_ij| = |q_i . k_j + b_j| and |q_i| below row_scales_i: keys shorter and longer than 1, large biases."""
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(2, 5, 4, generator=generator, dtype=torch.float64)
    key = torch.randn(2, 7, 4, generator=generator, dtype=torch.float64) * key_size
    bias = torch.randn(2, 7, generator=generator, dtype=torch.float64) * bias_size
    query, key, bias = query.to(dtype), key.to(dtype), bias.to(dtype)
    scale = row_scales(row_sizes(query, key, bias)).double()
    utilities = (query.double() @ key.double().transpose(1, 2) + bias.double()[:, None, :]).abs()
    slack = 1 + 8 * torch.finfo(dtype).eps  # the sizes are rounded in the working precision
    assert bool((utilities.amax(-1) <= scale * slack).all())
    assert bool((torch.linalg.vector_norm(query.double(), dim=-1) <= scale * slack).all())
