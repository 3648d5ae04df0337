"""The fused kernels' inverse temperatures: T = 0 and T = inf as finite powers of two.

econspin.fused's module doc states the equations: for buyer i at temperature T_i,

    beta_i = clamp(log2(e) / T_i, 2^(-p - 6 - e_i), 2^(E - e_i)),   2^e_i > the row's scale,

with E = 100 (float32) or 996 (float64) and p the mantissa bits, so that T = 0 is the upper
limit (the argmax, ties within the reference kernel's width split equally) and T = inf the
lower one (uniform), with no branch per row. The FlexAttention kernel (econspin.flex) uses the
same clamp, in natural units.
"""

from __future__ import annotations

import math

import torch


def precision_limits(dtype: torch.dtype) -> tuple[int, int, int]:
    """(E, p, BIG exponent): scale exponent of the T = 0 rows, mantissa bits, mask exponent."""
    info = torch.finfo(dtype)
    # max < 2^max_exponent, from frexp: math.log2 of float64's max rounds to 1024.0, and int(...) + 1
    # made E 997, so that a T = 0 row of a scale below 2^-27 got beta = 2^(997 + 27), infinite
    max_exponent = math.frexp(info.max)[1]  # 128 or 1024
    mantissa = round(-math.log2(info.eps)) + 1  # 24 or 53
    return max_exponent - 28, mantissa, max_exponent - 8


def inverse_temperatures(temperature: torch.Tensor, row_scale: torch.Tensor) -> torch.Tensor:
    """beta_i = clamp(log2(e) / T_i, 2^(-p-6-e_i), 2^(E-e_i)) with 2^e_i > row_scale_i (module doc).

    ``temperature`` broadcasts against ``row_scale`` (bounds on |U_il|); the result has the
    dtype of ``row_scale``. T = 0 gives the upper limit, T = inf the lower one.
    """
    return inverse_temperatures_and_ties(temperature, row_scale, torch.zeros_like(row_scale))[0]


def binary_exponents(values: torch.Tensor) -> torch.Tensor:
    """The exponent e of ``torch.frexp`` (values in [2^(e-1), 2^e); 0 for 0, inf and NaN), as float64.

    From log2 and exact powers of two instead of frexp, so that torch.compile traces it: Inductor's
    C++ for frexp's int32 exponents does not compile (torch 2.13, CPU: no vector conversion of that
    width), which kept the inverse temperatures eager, a graph break inside every frame of the
    round. log2 may be off by one unit in the last place near a power of two, so the floor is
    corrected by comparing with 2^(e-1) and 2^e, both exact.
    """
    values = values.double()
    exponent = torch.floor(torch.log2(values)) + 1.0
    exponent = torch.where(torch.exp2(exponent) <= values, exponent + 1.0, exponent)
    exponent = torch.where(torch.exp2(exponent - 1.0) > values, exponent - 1.0, exponent)
    return torch.where(torch.isfinite(values) & (values > 0), exponent, 0.0)


def inverse_temperatures_and_ties(
    temperature: torch.Tensor, row_scale: torch.Tensor, utility_ties: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(beta_i, t_i): :func:`inverse_temperatures`, and the tie width of a row at the T = 0 limit.

    t_i = beta_i w_i, w_i = ``utility_ties`` (market.tie_widths: the reference kernel's width, in
    utilities), on rows whose beta_i is at its upper limit (T_i = 0, or log2(e) / T_i above
    2^(E - e_i)), 0 on the others (module doc): beta_i is a power of two, so the scores
    beta_i U_ij within t_i of the row's best are exactly the utilities within w_i of it.
    """
    dtype = row_scale.dtype
    top, mantissa, _ = precision_limits(dtype)
    smallest = int(math.log2(torch.finfo(dtype).tiny))  # -126 or -1022
    exponent = binary_exponents(row_scale).clamp(min=-27, max=-smallest - mantissa - 6)  # row_scale < 2^exponent
    high, low = torch.exp2(top - exponent), torch.exp2(-mantissa - 6 - exponent)  # exact powers of two
    wanted = math.log2(math.e) / temperature.double()
    beta = torch.clamp(wanted, min=low, max=high).to(dtype)
    return beta, torch.where(wanted >= high, beta * utility_ties, 0.0)


def row_scales(sizes: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """|q_i| max(1, max_j |k_j|) + max_j |b_j| (B, H, N), from market.row_sizes: bounds |U_il| and |q_i| (module doc).

    Wider than the tie width's bound (market.tie_widths) where the keys are shorter than 1:
    beta_i q_i is an operand of the product and must stay below 2^E too.
    """
    query_norm, key_norm, bias_norm = sizes
    return query_norm * key_norm.clamp(min=1.0) + bias_norm
