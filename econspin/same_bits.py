"""Elementwise functions that give an element the same bits wherever it sits in its tensor.

torch runs an elementwise operation on the CPU as vector code over each thread's share of
the elements and finishes the last ``n mod 2 x lanes`` of a share with the scalar function.
For most functions the two agree bit for bit (torch computes exp, log, cos, sqrt, ... through
the same vector code for the remainder), but for some the scalar function is the C library's:
``torch.exp2`` (Sleef's exp2 against glibc's: 1103 of 30 000 float32 results differed by an
ulp in the remainder, 532 in float64), ``torch.hypot`` (float64), ``sigmoid``, ``pow`` with a
tensor exponent, ``atan2`` and a few more. Which elements fall in a remainder depends on the
tensor's size and the thread count, so an element's result then depends on what else is in
its tensor: a batch element's round on the other elements of its batch, an agent's draw on
the other agents drawn with it (tests/test_same_bits.py). Matrix products are another matter:
MKL may sum a batch element's product in another order than the same product alone
(docs/testing.md, "A batch element's bits alone: torch's scalar remainders, and MKL's products").

:func:`exp2` runs every element through the vector code: the leading elements in one call
whose every thread's share is a whole number of :data:`VECTOR_SPAN` elements, the rest, fewer
than ``VECTOR_SPAN x (threads + 1)`` of them, copied into a tensor of whole spans. :func:`hypot` is taken
from operations that round exactly (max, min, division, multiplication, addition and square
root give the same bits in vector and scalar code).
"""

from __future__ import annotations

import torch

# Elements a thread's share is made a whole number of: a multiple of two vectors of any type
# (torch's vector loop takes two at a time: 16 float32 under AVX2, 32 under AVX-512)
VECTOR_SPAN = 64
# ATen's grain: an elementwise operation over at most this many elements runs on one thread
# (at::internal::GRAIN_SIZE); above it, on min(threads, ceil(n / grain)) shares of ceil(n / shares)
PARALLEL_GRAIN = 32768


def vector_body(count: int, threads: int) -> int:
    """The most leading elements of ``count`` whose every thread's share is whole spans (a multiple of VECTOR_SPAN).

    torch shares n elements among min(threads, ceil(n / PARALLEL_GRAIN)) threads (one where
    n <= PARALLEL_GRAIN), each taking ceil(n / shares) in turn: every share is whole spans
    exactly when n is VECTOR_SPAN times a multiple of the number of shares. Fewer than
    ``threads`` spans below ``count``'s whole spans (the shares stay the same within a span's steps).
    """
    spans = count // VECTOR_SPAN
    while spans > 0:
        body = spans * VECTOR_SPAN
        shares = 1 if threads == 1 or body <= PARALLEL_GRAIN else min(threads, -(-body // PARALLEL_GRAIN))
        if spans % shares == 0:
            return body
        spans -= 1
    return 0


def exp2(values: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``torch.exp2(values, out=out)``, every element through torch's vector code; returns ``out``.

    Both contiguous, of one shape. On the CPU, the leading :func:`vector_body` elements in one
    call and the remainder padded to whole spans (zeros, whose powers are dropped); elsewhere
    (a GPU's kernels have no scalar remainder) one call.
    """
    if values.device.type != "cpu":
        return torch.exp2(values, out=out)
    flat, flat_out = values.view(-1), out.view(-1)
    count = flat.numel()
    body = vector_body(count, torch.get_num_threads())
    if body:
        torch.exp2(flat[:body], out=flat_out[:body])
    if body < count:
        rest = count - body
        padded = flat.new_zeros(-(-rest // VECTOR_SPAN) * VECTOR_SPAN)
        padded[:rest] = flat[body:]
        flat_out[body:] = torch.exp2(padded)[:rest]
    return out


def hypot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """sqrt(x^2 + y^2) for x, y >= 0 without overflow, within 2 ulps; inf where either is, NaN where either is NaN.

    max(x, y) sqrt(1 + (min / max)^2): the same bits for an element wherever it sits, which
    torch.hypot's float64 is not. Where both are 0 the ratio is 0 / 0: the result is 0.
    """
    larger, smaller = torch.maximum(x, y), torch.minimum(x, y)
    ratio = smaller / torch.where(larger > 0, larger, 1.0)
    ratio = torch.where(torch.isinf(larger), 0.0, ratio)  # inf / inf would be NaN: the hypotenuse is inf
    return larger * torch.sqrt(1.0 + ratio * ratio)
