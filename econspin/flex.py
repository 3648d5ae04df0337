"""The expected-mode market step as FlexAttention passes: the GPU's formulation, checked on the CPU.

It returns exactly what :func:`econspin.fused.fused_trade` returns (every field of
:class:`~econspin.market.MarketOutcome`), from five passes of
``torch.nn.attention.flex_attention``: compiled by ``torch.compile`` into one Triton kernel
per pass on a CUDA GPU (nothing N x N is stored), run eagerly on a CPU, where FlexAttention
materialises the scores and serves as a correctness twin of the same formulation (slow:
docs/performance.md). For batch element b, head h, buyer i and seller j (market.py):

    U_ij = q_i . k_j / sqrt(d_k) + b_j      the raw score: query [q_i / sqrt(d_k), 1], key [k_j, b_j],
    z_ij = lambda_i U_ij                   the score_mod, lambda_i the natural inverse temperature,

with the block mask allowing i -> j where j sells, j != i and the trade network has the edge.
lambda_i = :func:`econspin.temperature_limits.inverse_temperatures` at T_i log2(e), i.e. 1 / T_i clamped to
powers of two that make T = 0 and T = inf finite (fused.py's module doc): at T = 0 every
seller but the best ones gets weight exactly 0 (the scores are 2^k U, exact), at T = inf
every allowed seller weight exactly 1.

1. Rows: values [u_j (d), |u_j|^2, c_j |W_V W_O|^2]; the output alpha @ values gives the
   received signal and the choice moments, and the LSE L_i = ln sum_j exp(z_ij) comes with it.
   The surplus is T_i L_i (L_i / lambda_i, the best utility, at T = 0 or with one partner).
2. The normaliser: L_i holds the rounding of a number as large as z_ij (eps |z|: 1e-5 of
   alpha at T = 0.01 in float32, measured), which the fused kernel avoids by shifting by the
   exact row maximum; FlexAttention returns no maximum on a CPU. So the scores
   l_ij = z_ij - L_i are taken once more, and their LSE L'_i is small and exact to rounding:
   ln alpha_ij = l_ij - L'_i, as exact as the fused kernel's (docs/performance.md).
3. Entropy: the LSE of the scores a + ln(-a), a = ln alpha_ij <= 0, is ln sum_j alpha_ij (-ln
   alpha_ij) = ln H_i: no cancellation between two large numbers (sum_j alpha_ij z_ij from
   value columns would cancel against L_i, to eps |z|).
4. Impact: the LSE of the scores 2 ln alpha_ij is ln sum_j alpha_ij^2.
5. Revenue: the transposed pass (queries the sellers [k_j, b_j], keys the buyers [q_i, 1], the
   mask transposed) at the scores ln alpha_ij + ln(s_i / H), whose LSE is ln R_jh. Money is
   then rescaled in float64 to the spent total, as fused.py does: sum_j R_j = sum_i s_i to
   float64 rounding whatever the working precision.

Argmax rows. Where lambda_i times the row's utility bound reaches 2^(p - 4) (p the mantissa
bits: T = 0, and T below about 2^-(p-4) of the utilities), z_ij is so large that L_i cannot
hold ln(ties) beside it (at T = 0, |z| reaches 2^100 in float32, 2^996 in float64), and
z_ij - L_i would carry its rounding. Such rows are the argmax: l_ij = 0 on the ties, the
sellers with z_ij >= L_i - ln(n_i) - max(lambda_i t_i, 2^(3-p) (|L_i| + ln n_i + 1)), t_i the
tie width of the other kernels (market.tie_widths, docs/model.md) and the second term a margin
above L_i's own rounding (a few units in the last place), and -inf elsewhere; L'_i is then
ln(ties), and passes 3-5 give ln(ties), 1 / ties and s_i / (H ties) to each tie. Where L_i
rounds to the largest z_ij (|z| beyond about 2^p ln n_i) and lambda_i t_i is the larger term
(t_i >= 5 eps of the row's size), these are the reference's and the fused kernel's ties.
Pass 1 takes such rows as softmax at the clamped lambda_i: the argmax, ties split equally.

CUDA: the passes run through ``torch.compile(flex_attention)`` (one compiled function per
process) for float32; Triton's FlexAttention accumulates in float32, so float64 runs the eager
form on a GPU too. Its ``tl.dot`` needs head dimensions of at least 16: queries, keys and
values are padded with zero columns to a power of two >= 16 on every device (zeros change
no product). On an H200 the compiled path agreed with the fused kernel (tests/test_flex.py's CUDA
test) and ran at 11-18x SDPA forward for N = 4096-65536, 2.6-2.8x the fused kernel's time
(docs/performance_log.md, "On a GPU: NVIDIA H200"): the fused kernel is the faster path there.

Memory: the block masks are built once per economy and kept while its seller flags and
network live. The eager form holds a few (B, H, N, N) score tensors per pass.
"""

from __future__ import annotations

import functools
import math
import warnings
import weakref

import torch
from torch.nn.attention.flex_attention import AuxRequest, BlockMask, create_block_mask, flex_attention
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from econspin.economy import Economy
from econspin.fused import asks_for_gradients
from econspin.inductor_setup import prepare_code_generation
from econspin.market import MarketOutcome, budgets, row_sizes, seller_bias, seller_moment_columns, tie_widths
from econspin.projections import projections
from econspin.state import State
from econspin.temperature_limits import inverse_temperatures, row_scales

LOG2E = math.log2(math.e)
MIN_HEAD_DIM = 16  # Triton's tl.dot on CUDA: no narrower queries, keys or values
COMPILED_DEVICES = ("cuda",)  # where the float32 passes run compiled: torch 2.13's CPU FlexAttention returns no LSE
RECOMPILE_LIMIT = 64  # compiled graphs of FlexAttention per process: 5 passes x the shapes it meets


def uses_flex(state: State, economy: Economy) -> bool:
    """Whether a round takes :func:`flex_trade`: run.kernel flex, expected mode, no gradients asked for.

    The sampled mode of ``run.kernel: flex`` is resolved to the fused kernel when the economy
    is built; FlexAttention has no backward pass on the CPU, so a round whose inputs require
    gradients takes the reference path (same numbers, differentiable).
    """
    if economy.kernel != "flex" or economy.mode != "expected" or economy.couplings is not None:
        return False
    return economy.trade_edges is None and not asks_for_gradients(state, economy)


def padded(tensor: torch.Tensor) -> torch.Tensor:
    """The last dimension padded with zero columns to a power of two >= MIN_HEAD_DIM."""
    width = tensor.shape[-1]
    target = max(MIN_HEAD_DIM, 1 << (width - 1).bit_length())
    return torch.nn.functional.pad(tensor, (0, target - width))


@functools.cache
def _compiled_flex_attention():
    """FlexAttention compiled once per process (CUDA): its score_mods are arguments, not constants."""
    prepare_code_generation()
    return torch.compile(flex_attention, dynamic=False)


def compiles(query: torch.Tensor) -> bool:
    """Whether a pass on ``query`` runs compiled: float32 on COMPILED_DEVICES, outside any torch dispatch mode.

    Under a dispatch mode (econspin.host_syncs.HostSyncRecorder, debugging modes) the eager form
    runs: torch.compile does not trace under one, and a compiled FlexAttention called there
    leaves Dynamo unable to trace FlexAttention's operator for the rest of the process (torch
    2.11-2.13: every later call, eager or compiled, fails in ``sdpa_dense``; tests/test_flex.py).
    """
    return query.device.type in COMPILED_DEVICES and query.dtype == torch.float32 and not is_in_torch_dispatch_mode()


def attention(query, key, value, score_mod, block_mask: BlockMask):
    """(output, LSE) of one FlexAttention pass; compiled on CUDA in float32, eager elsewhere.

    The compiled function keeps one graph per score_mod and shape, all under one code object:
    five passes at a few sizes (``econspin bench``) pass Dynamo's default of 8, past which it
    would fall back to the eager form, so the limit is raised while a compiled pass runs.
    (Eagerly, FlexAttention's own tracing wrapper falls back to the same operator past it.)
    """
    function, limit = flex_attention, torch._dynamo.config.recompile_limit
    if compiles(query):
        function, limit = _compiled_flex_attention(), RECOMPILE_LIMIT
    with warnings.catch_warnings(), torch._dynamo.config.patch(recompile_limit=limit):
        # eager is this kernel's purpose off CUDA: no advice to compile
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        output, aux = function(
            query, key, value, score_mod=score_mod, block_mask=block_mask, scale=1.0, return_aux=AuxRequest(lse=True)
        )
    return output, aux.lse


_MASKS: dict[int, tuple[weakref.ref, weakref.ref | None, dict]] = {}  # id(seller) -> refs and {N, device: masks}


def trade_masks(economy: Economy) -> tuple[BlockMask, BlockMask, torch.Tensor]:
    """(rows' block mask, the transposed one, n_i the allowed sellers), cached per seller flags and network.

    Buyer i may buy from seller j where j sells, j != i and the trade network (if any) has
    i -> j; the masks broadcast over batch elements and heads. Building them evaluates the
    mask on every pair once (on CUDA through torch.compile, as torch advises for large N).
    """
    seller, network = economy.seller, economy.trade_mask
    agents, device = seller.shape[0], seller.device
    key = id(seller)
    entry = _MASKS.get(key)
    if entry is None or entry[0]() is not seller or (entry[1]() if entry[1] else None) is not network:
        network_ref = weakref.ref(network) if network is not None else None
        entry = _MASKS[key] = (weakref.ref(seller, lambda _, masks=_MASKS: masks.pop(key, None)), network_ref, {})
    cached = entry[2].get((agents, str(device)))
    if cached is not None:
        return cached

    def rows(b, h, buyer, sold):
        allowed = seller[sold] & (buyer != sold)
        return allowed if network is None else allowed & network[buyer, sold]

    def columns(b, h, sold, buyer):
        return rows(b, h, buyer, sold)

    compiled = device.type == "cuda"
    masks = tuple(
        create_block_mask(mask, None, None, agents, agents, device=device, _compile=compiled)
        for mask in (rows, columns)
    )
    if network is None:
        partners = seller.sum() - seller.long()
    else:
        allowed = network & seller[None, :]
        partners = allowed.sum(-1) - allowed.diagonal().long()
    entry[2][(agents, str(device))] = cached = (*masks, partners)
    return cached


@torch.compiler.disable  # under run.compile the passes run as FlexAttention itself runs them
def flex_trade(state: State, economy: Economy) -> MarketOutcome:
    """Expected-mode steps 1-5 for every buyer as five FlexAttention passes (module doc)."""
    x = state.states
    batch, agents, d = x.shape
    heads = economy.heads
    dtype = x.dtype
    mantissa = round(-math.log2(torch.finfo(dtype).eps)) + 1

    query, key, delivered, value_output = projections(state, economy)  # delivered: u_j = v_j W_O^h
    bias = seller_bias(state, economy)[:, None, :].expand(batch, heads, agents)
    spend = budgets(state, economy)
    row_mask, column_mask, partners = trade_masks(economy)

    sizes = row_sizes(query, key, bias)
    row_scale = row_scales(sizes)
    bias = bias[..., None]
    ones = torch.ones_like(bias)
    temperature = state.temperature[:, None, :].expand(batch, heads, agents)
    inverse = inverse_temperatures(temperature * LOG2E, row_scale)  # lambda_i = 1 / T_i, clamped
    argmax = inverse * row_scale >= 2.0 ** (mantissa - 4)

    # 1. rows: alpha @ [u, |u|^2, c |W|^2] and L_i
    buyers, sellers = padded(torch.cat([query, ones], -1)), padded(torch.cat([key, bias], -1))
    moments = seller_moment_columns(state, economy, delivered, value_output)
    values = padded(torch.cat([delivered, moments], -1))
    output, lse = attention(buyers, sellers, values, lambda score, b, h, i, j: score * inverse[b, h, i], row_mask)
    per_head, moments = output[..., :d], output[..., d : d + 2]

    # 2. the log-weights l_ij = z_ij - L_i (argmax rows: 0 on the ties, -inf elsewhere) and their LSE L'_i
    log_partners = torch.log(partners.clamp(min=1).to(dtype))
    # at least docs/model.md's tie width, lambda_i t_i in z's units: the reference's and the fused kernel's ties
    ties = inverse * tie_widths(sizes, economy.query.shape[-1])
    margin = torch.maximum(2.0 ** (3 - mantissa) * (lse.abs() + log_partners + 1.0), ties)
    threshold = lse - log_partners - margin

    def log_weight(score, b, h, i):
        z = score * inverse[b, h, i]
        tie = torch.where(z >= threshold[b, h, i], 0.0, -math.inf)
        return torch.where(argmax[b, h, i], tie, z - lse[b, h, i])

    nothing = torch.zeros_like(values[..., :MIN_HEAD_DIM])
    _, normaliser = attention(buyers, sellers, nothing, lambda score, b, h, i, j: log_weight(score, b, h, i), row_mask)

    def log_alpha(score, b, h, i):  # ln alpha_ij = l_ij - L'_i, <= 0
        return (log_weight(score, b, h, i) - normaliser[b, h, i]).clamp(max=0.0)

    # 3. entropy: ln sum_j alpha_ij (-ln alpha_ij), a term of 0 where alpha_ij = 1
    def entropy_score(score, b, h, i, j):
        log_probability = log_alpha(score, b, h, i)
        term = log_probability + torch.log(-log_probability)
        return torch.where(log_probability > -math.inf, term, -math.inf)  # -inf + ln(inf) would be NaN

    _, log_entropy = attention(buyers, sellers, nothing, entropy_score, row_mask)

    # 4. impact: ln sum_j alpha_ij^2
    def impact_score(score, b, h, i, j):
        return 2.0 * log_alpha(score, b, h, i)

    _, log_impact = attention(buyers, sellers, nothing, impact_score, row_mask)

    # 5. revenue: R_jh = sum_i exp(ln alpha_ij + ln(s_i / H)), the transposed pass
    log_share = torch.log((spend / heads).to(dtype))[:, None, :].expand(batch, heads, agents)

    def revenue_score(score, b, h, j, i):
        return log_alpha(score, b, h, i) + log_share[b, h, i]

    _, log_revenue = attention(sellers, buyers, nothing, revenue_score, column_mask)
    revenue = torch.exp(log_revenue.double()).sum(1)  # markets added in float64

    has_partner = partners > 0
    entropy = torch.where(partners > 1, torch.exp(log_entropy) / torch.log(partners.clamp(min=2).to(dtype)), 0.0)
    impact = torch.where(has_partner, torch.exp(log_impact), 0.0)
    # the inclusive value T_i L_i; L_i / lambda_i where that is the limit: the best utility at T = 0
    # (L_i = its z to rounding) and the one partner's utility (also at T = inf)
    single = argmax | (partners <= 1)
    surplus = torch.where(has_partner, torch.where(single, lse / inverse, temperature * lse), 0.0)
    choice = moments[..., 0] - (per_head**2).sum(-1)

    buyer = economy.buyer.to(dtype)
    spending = spend * has_partner
    spent, earned = spending.sum(1, keepdim=True), revenue.sum(1, keepdim=True)
    revenue = revenue * torch.where(earned > 0, spent / earned, torch.zeros_like(earned))  # sum R = sum s exactly
    return MarketOutcome(
        received=per_head.sum(1) * buyer[None, :, None],
        revenue=revenue,
        spending=spending,
        entropy=entropy.mean(1),
        surplus=surplus.mean(1),
        field_variance=(choice + moments[..., 1]).sum(1) / d * buyer,
        choice_variance=choice.sum(1) * buyer,
        impact=impact.mean(1) * buyer,
    )
