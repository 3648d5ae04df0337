"""Reduced-precision utilities (``run.utility_precision``): the utilities' matrix product in bf16 or TF32.

The fused kernels (:mod:`econspin.fused`, :mod:`econspin.fused_sampled`) form each block of
scaled utilities y_ij = beta_i U_ij as one matrix product of the per-round operands

    left_i = [beta_i q_i / sqrt(d_k), beta_i, 1],   right_j = [k_j, b_j, c_j]

(module doc of econspin.fused). ``run.utility_precision`` says in what precision that
product runs, and with bfloat16 also the expected mode's received product e @ u (the other
product with as many multiply-adds: N x N by N x d); everything else (exp2, the row
statistics, the moments, revenue's pass) stays in run.dtype, and money and revenue in float64
exactly as at full precision:

- ``full`` (the default): the product in run.dtype, bit for bit what the kernels did before
  the setting existed.
- ``bfloat16``: left and right rounded to bfloat16 (8 significant bits, unit roundoff
  u = 2^-8), their products summed in float32 inside the matrix product (oneDNN on the
  CPU, cuBLAS on CUDA), and the block rounded once more to bfloat16 on its way out (torch's
  bf16 product returns bf16; measured: its result equals the float64 product of the rounded
  operands rounded to bf16, docs/performance.md), then widened to float32. Each scaled
  utility then carries an error of at most

      |y~_ij - y_ij| <= (3u + 3u^2 + d 2^-24) sum_k |left_ik right_kj| <= 3.02 u beta_i A_i,

  with A_i = |q_i| max_j |k_j| / sqrt(d_k) + max_j |b_j| (c_j = 0 or -2^120 is exact in
  bf16), so each weight alpha_ij is off by a factor within 2^(+-2 Delta_i), Delta_i the
  row's largest such error (tests/test_reduced_precision.py holds the kernel to this bound).
  The received product rounds the weights and u_j to bf16 and its result once more: 3.02 u
  of sum_j alpha_ij |u_j| on top. Measured on the CPU (docs/performance.md, "Reduced
  precision"): 1.09-1.21x faster expected rounds, 0.97-1.13x sampled ones, at N = 1024-4096.
  At T_i = inf the row is still exactly uniform (beta_i squeezes y into [-2^-29, 0]). At
  T_i = 0 the row is the argmax of the *bf16-rounded* utilities: every seller whose rounded
  y~_ij equals the row's largest shares the budget equally, so sellers within about 2^-8 of
  the best utility now tie where full precision would separate them (utilities below about
  2^-85 of the row's scale excepted, as 2^-93 is at full precision).
- ``tf32``: the same product in float32 with CUDA's TF32 tensor cores allowed for it alone
  (10 significant bits on the inputs, float32 sums and output), scoped to that product. CUDA
  only: a CPU has no TF32 (oneDNN's CPU matrix products ignore torch's TF32 switch), so the
  setting is refused there rather than silently meaning ``full``.

Only with run.dtype float32 (a float64 run asks for float64 accuracy), on the fused kernels
of the attention market and on the Triton kernel (econspin.triton_blocks: the same two
products as tl.dot on the tensor cores, each tile rounded as torch rounds a block): the
reference kernel, the flex kernel, fixed couplings and the sparse network's kernel are
refused with one line. A round that needs gradients takes the
reference path (econspin.fused.uses_fused) and so full precision.
"""

from __future__ import annotations

import contextlib

import torch

UTILITY_PRECISIONS = ("full", "bfloat16", "tf32")
PRECISION_KERNELS = ("fused", "triton")  # the kernels with a utilities' product to round (triton: its tl.dot)
LOW_DTYPES = {"bfloat16": torch.bfloat16}  # the operands' dtype, where it is not the working one


def precision_conflict(precision: str, dtype: str, device: torch.device | None, kernel: str, market: str) -> str:
    """Why ``run.utility_precision: precision`` cannot run here, as one line; '' when it can.

    ``dtype`` is run.dtype's name, ``kernel`` the resolved kernel (``fused``, ``flex``, ``triton`` or
    ``reference``: :func:`econspin.scenario.resolved_kernel`), ``market`` which market kernel
    the economy takes: ``attention``, ``couplings`` or ``sparse``; ``device`` None (a scenario
    read before it is built) leaves the device unchecked.
    """
    if precision == "full":
        return ""
    key = f"run.utility_precision: {precision}"
    if dtype != "float32":
        return f"{key} needs run.dtype: float32 (a {dtype} run computes at full precision)"
    if market == "couplings":
        return f"{key} rounds the attention market's utilities; market.couplings has none (use full)"
    if market == "sparse":
        return f"{key} applies to the dense fused kernels; this trade network runs on the sparse kernel (use full)"
    if kernel not in PRECISION_KERNELS:
        return f"{key} needs run.kernel: auto, fused or triton (the {kernel} kernel computes at full precision)"
    if precision == "tf32" and device is not None and device.type != "cuda":
        return f"{key} is a CUDA tensor-core mode and this run is on the {device.type}; use bfloat16 on a CPU"
    return ""


def utility_operands(left: torch.Tensor, right: torch.Tensor, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The product's operands in the precision asked for: rounded once a round, O(N d) work."""
    low = LOW_DTYPES.get(precision)
    return (left, right) if low is None else (left.to(low), right.to(low))


@contextlib.contextmanager
def tensor_cores(allowed: bool):
    """CUDA's TF32 switch for matrix products set to ``allowed`` inside the block, as it was after."""
    if not allowed:
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def utility_product(
    left: torch.Tensor, right: torch.Tensor, scores: torch.Tensor, low: torch.Tensor | None, tf32: bool
) -> torch.Tensor:
    """Write left @ right (batched) into ``scores``, in the operands' precision; ``low``: a bf16 buffer like it.

    bf16 operands: the product (float32 sums) into ``low``, a bf16 buffer, then widened into
    ``scores``. TF32: the float32 product with tensor cores allowed for it alone.
    """
    if left.dtype == scores.dtype:
        with tensor_cores(tf32):
            torch.bmm(left, right, out=scores)
        return scores
    torch.bmm(left, right, out=low)
    return scores.copy_(low)


def received_product(weights: torch.Tensor, values: torch.Tensor, low: torch.Tensor | None) -> torch.Tensor:
    """The product weights @ values (batched), in the values' dtype: bf16 values have the weights rounded into ``low``.

    The result comes back in the values' dtype (bf16: float32 sums rounded once); the caller
    widens it where it stores it.
    """
    if values.dtype == weights.dtype:
        return torch.bmm(weights, values)
    return torch.bmm(low.view(weights.shape).copy_(weights), values)
