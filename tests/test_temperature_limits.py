"""econspin.temperature_limits: the fused kernels' inverse temperatures, traced whole under run.compile."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from econspin.temperature_limits import binary_exponents, inverse_temperatures_and_ties, precision_limits


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
