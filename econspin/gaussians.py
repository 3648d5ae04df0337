"""Box-Muller Gaussians from hashed 64-bit words, in float64 or float32.

:meth:`econspin.randomness.Draws.normal` hashes one word per pair of Gaussians; here a word
becomes its pair. Its two 32-bit halves h give the uniforms (h + 1/2) 2^-32 of the radius,
sqrt(-2 ln u), and of the angle, 2 pi (h + 1/2) 2^-32 (as in cuRAND), which halves the
hashing: the radius stops at 6.7, a tail of probability 1.2e-10, which matters nowhere the
engine uses Gaussians (directions).

The precision is the caller's: float64, or float32 where the state is float32 (the direction
of a sampled spin, :func:`econspin.response.sample_von_mises_fisher`). Both take the same words,
so a draw still depends only on (seed, round, agent, stream, index). In float32, h is rounded
to 24 bits, so the uniform of the radius is the float64 one to float32 rounding: the tail is
float64's (the smallest uniform, 2^-33, is exact), and near u = 1, where float32's spacing is
2^-24, the radius is coarse. The top 128 halves (h >= 2^32 - 128) round to u = 1, a radius 0:
a pair (0, 0), of probability 3.0e-8, which at d = 2 would leave no direction at all. They
are kept at the float32 below 1 instead, where the 255 halves below them round: the radius
sqrt(-2 ln(1 - 2^-24)) = 3.5e-4, the smallest float32 gives, where float64 gives 1.5e-5 to
4.2e-4. With u's two roundings (2^-24 each, relative), the radius's error is 2^-23 / r, the
angle's (1e-6 radians at most) 1e-6 r: the float32 Gaussians are float64's within
2^-23 / r + 1e-6 r, r the pair's float64 radius, and within 3.4e-4 everywhere
(tests/test_randomness.py).

Eagerly the angle is rounded to the precision and given to torch's cos and sin. Compiled,
:func:`cos_sin_of_turns` reduces the angle exactly on its integer and evaluates polynomials,
faster than the Sleef calls Inductor emits (docs/performance_log.md, "The sampled round at d = 32"
and "The spin's direction in float32").
"""

from __future__ import annotations

import math

import torch

_LOW_32 = (1 << 32) - 1
_EIGHTH = 1 << 29  # an eighth of a turn, in units of 2^-32 turns
_TURN_UNIT = 2.0 * math.pi * 2.0**-32  # one unit of 2^-32 turns, in radians

# Taylor coefficients of sin(x) / x and cos(x) in x^2. On |x| <= pi / 4, float64: the first
# omitted terms, x^18 / 18! and x^20 / 20!, are below 2^-60 (float64 rounds at 2^-53); float32:
# x^10 / 11! (2.2e-9) and x^10 / 10! (2.5e-8), below half an ulp of cos(pi / 4) (3.0e-8), and
# the offset's roundings (1.1e-7) dominate either way; one term fewer is 3.7e-7 and 3.6e-6 off
_SINE_SERIES = tuple((-1) ** k / math.factorial(2 * k + 1) for k in range(9))
_COSINE_SERIES = tuple((-1) ** k / math.factorial(2 * k) for k in range(10))
_BELOW_ONE = {torch.float32: 1.0 - 2.0**-24}  # the largest float32 below 1
_TERMS = {torch.float64: (9, 10), torch.float32: (5, 5)}  # (sine, cosine) terms kept in each precision


def box_muller(words: torch.Tensor, count: int, dtype: torch.dtype = torch.float64, axis: int = 0) -> torch.Tensor:
    """(count, ...) standard Gaussians in ``dtype`` from (ceil(count / 2), ...) int64 ``words``, one pair a word.

    Gaussian k < pairs is the cosine of word k's pair, pairs + k its sine. Eagerly ``words``
    is written into (the caller's fresh hashes). ``axis`` -1: the index last instead, words
    (..., pairs) and Gaussians (..., count), the same numbers (each agent's contiguous, for the
    eager spin draw, econspin.response).
    """
    if axis not in (0, -1):
        raise ValueError(f"axis must be 0 or -1, not {axis}")
    if axis == -1 and torch.compiler.is_compiling():  # the compiled draw takes axis 0; here the same numbers
        return box_muller(words.movedim(-1, 0), count, dtype).movedim(0, -1)
    pairs = words.shape[axis]
    high = ((words >> 32) & _LOW_32).to(dtype).add_(0.5).mul_(2.0**-32)
    if dtype != torch.float64:  # the top 128 halves round to 1: kept below it, a radius of 3.5e-4, not 0
        high = high.clamp_(max=_BELOW_ONE[dtype])
    radius = high.log_().mul_(-2.0).sqrt_()
    if torch.compiler.is_compiling():  # the halves written by out= into one buffer compiled to masked loops
        cosine, sine = cos_sin_of_turns(words & _LOW_32, dtype)  # torch's cos and sin to rounding, faster compiled
        # each half times the radius before stacking (the same products): Inductor then stores the
        # Gaussians themselves, not the cosines, the sines and the radii for every reader to multiply
        return torch.stack([cosine * radius, sine * radius]).flatten(0, 1)[:count]
    angle = words.bitwise_and_(_LOW_32).to(dtype).add_(0.5).mul_(_TURN_UNIT)
    if axis == -1:
        # each half taken contiguously and joined by cat (a copy of rows): written by out= into the
        # halves of each agent's row, cos and sin ran strided, without their vectorised loops
        return torch.cat([torch.cos(angle).mul_(radius), torch.sin(angle).mul_(radius)[..., : count - pairs]], dim=-1)
    normals = torch.empty((2 * pairs, *words.shape[1:]), dtype=dtype, device=words.device)
    torch.cos(angle, out=normals[:pairs])
    torch.sin(angle, out=normals[pairs:])
    normals.view(2, *radius.shape).mul_(radius)  # both halves times the pair's radius
    return normals[:count]


def cos_sin_of_turns(
    low: torch.Tensor, dtype: torch.dtype = torch.float64, bits: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos a, sin a) in ``dtype`` (float64 or float32) for a = 2 pi (low + 1/2) 2^-bits, ``low`` int64 in [0, 2^bits).

    The angles of :func:`box_muller`, as the compiled round takes them: torch's cos and sin
    of the rounded angle compile to Sleef's, with which the float64 Gaussians of B = 128,
    N = 64, d = 32 took 0.97 ms compiled, against 0.75 ms with these (docs/performance_log.md, "The
    sampled round at d = 32"). Here the reduction is exact on the integer: the eighth of the
    turn (low's top 3 bits) picks an axis q pi / 2 and the offset from it, |x| <= pi / 4, an
    integer plus 1/2 times 2 pi 2^-32; cos x and sin x are then polynomials (the Taylor series
    to below the precision's rounding: degrees 17 and 18 in float64, 9 and 8 in float32), and
    the axis swaps and signs them.

    float64: the offset has one rounding; within 1e-15 of torch's cos and sin of the same angle
    (which carries the rounding of a 2 pi-sized argument) and 2 ulps of the exact values.
    float32: the offset counted back from the next axis is taken on the integer (the 29 bits
    complemented), then converted and scaled (three roundings): within 2 ulps of 1 (1.2e-7) of
    the exact values (1.1e-7 measured over 2 million; tests/test_randomness.py).

    ``bits`` = 52 (float64 only): the angle of a uniform's 52-bit integer (``to_unit``), the
    compiled cosine of Wood's proposals (econspin.wood); the offset, below 2^49, is still an
    exact integer plus 1/2, and the scale 2 pi 2^-bits differs from 2 pi 2^-32 by a power of two.
    """
    if dtype not in _TERMS:
        raise ValueError(f"cos_sin_of_turns computes in float64 or float32, not {dtype}")
    if dtype != torch.float64 and bits != 32:
        raise ValueError(f"cos_sin_of_turns takes {bits}-bit angles in float64 only")
    eighth_bits = bits - 3
    if dtype != torch.float64:  # the 32 bits as int32 (wrapped, the same bits): 16 lanes a vector where int64 has 8
        low = low.to(torch.int32)  # eighths 4..7 then read -4..-1: the same parity, and the same axis modulo 4
    eighth = low >> eighth_bits
    towards_next = (eighth & 1) == 1  # odd eighths measure their offset back from the next axis
    if dtype == torch.float64:
        # exact: an integer and a half below 2^49; the unit of 2^-bits turns, _TURN_UNIT times a power of two
        offset = (low & ((1 << eighth_bits) - 1)).to(torch.float64) + 0.5
        x = torch.where(towards_next, (1 << eighth_bits) - offset, offset) * (_TURN_UNIT * 2.0 ** (32 - bits))
    else:  # 2^29 - (k + 1/2) = (2^29 - 1 - k) + 1/2: the complement of the offset's 29 bits, then one rounding
        x = ((torch.where(towards_next, ~low, low) & (_EIGHTH - 1)).to(dtype) + 0.5) * _TURN_UNIT
    square = x * x
    sine_terms, cosine_terms = _TERMS[dtype]
    sine, cosine = _SINE_SERIES[sine_terms - 1], _COSINE_SERIES[cosine_terms - 1]
    for coefficient in reversed(_SINE_SERIES[: sine_terms - 1]):
        sine = sine * square + coefficient
    for coefficient in reversed(_COSINE_SERIES[: cosine_terms - 1]):
        cosine = cosine * square + coefficient
    sine = torch.where(towards_next, -x, x) * sine  # the offset's sign
    axis = ((eighth + 1) >> 1) & 3  # a = axis pi / 2 + offset
    cos_a = torch.where(axis == 0, cosine, torch.where(axis == 1, -sine, torch.where(axis == 2, -cosine, sine)))
    sin_a = torch.where(axis == 0, sine, torch.where(axis == 1, cosine, torch.where(axis == 2, -sine, -cosine)))
    return cos_a, sin_a
