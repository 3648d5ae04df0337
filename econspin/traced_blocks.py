"""The blocks traced into a compiled round, where one block holds the whole round.

Under ``run.compile`` the blocks of the N x N utilities run eagerly, as one operator node of
the compiled graph (econspin.fused.expected_blocks, econspin.fused_sampled.sampled_blocks).
That keeps the cache-sized loop over blocks out of the trace: Inductor's own loops over a
block once recomputed exp2 for each reduction and took 5x the eager round at N = 1024. But
where one block holds every row of every batch element and head (B H N^2 at most
econspin.fused.BLOCK_ENTRIES on a CPU: the ensembles of small economies, a sweep's batch, one
economy of a few hundred agents) there is no loop to keep out. This module writes the blocks' equations
for that case as whole-tensor expressions, which TorchDynamo traces into the round's graph and
Inductor fuses into a few loops, with e stored once (econspin.block_pass.shifted_and_weights):

    score_ij = [beta_i q_i / sqrt(d_k), beta_i, 1] . [k_j, b_j, c_j]   (one batched product)
               -BIG on the diagonal, plus the trade network's bias (0 on edges, -BIG elsewhere;
               -BIG off the edges from its boolean mask where the bias has no room)
    m_i, y_ij, e_ij                                                       (econspin.block_pass)

then, in expected mode (econspin.fused's module doc for each term),

    s_i = sum_j e_ij,  |e_i.|,  sum_j e_ij y_ij,  e @ u,  sum_j e_ij w_kj (the two moment rows w_k),
    revenue_j = sum_i e_ij (s_i^budget / H) / max(s_i, 1)                (summed over the rows, kept in float64)

and in sampled mode the inversion's count of econspin.fused_sampled.unrolled_positions: the
same float64 running sums in the same order, the same thresholds, so the same sellers as the
eager blocks wherever the weights are the same bits.

The eager blocks and these expressions agree to rounding (sums taken in other orders;
tests/test_traced_blocks.py). Measured against the operator in alternating runs
(docs/performance_log.md, "The blocks traced into the compiled round"): at B = 128, N = 64, d = 16
(2 threads, wall time) a compiled round took 0.75-0.78 ms expected and 0.85-0.88 ms sampled
against 0.98-1.00 and 1.12-1.18 ms; one such economy 0.08 and 0.10 ms against 0.22-0.27 ms. At
B = 1, d = 32 (1 thread, CPU time, ``econspin bench --compile default``): N = 256 2.43-2.45x SDPA
against 3.63-3.69x, N = 512 1.84-2.01x against 2.22-2.35x, but N = 1024 1.88-1.93x against
1.74-1.79x: rows of more than :data:`MAX_SELLERS` sellers keep the operator. Rounds larger than
one block, traced whole, were slower as well (N = 2048: 4.84 against 3.87 ms).

Where (:func:`traces`): inside a compiled round, on the devices of :data:`TRACED_DEVICES` (the
CPU and CUDA), with full-precision utilities
(``run.utility_precision: full``), rows of at most :data:`MAX_SELLERS` sellers and no
``run.chunk`` that cuts the rows into several blocks.
Everywhere else the operator, or the eager blocks, as before.
"""

from __future__ import annotations

import torch

from econspin.block_pass import row_sums, shifted_and_weights
from econspin.compiled import stored_where_measured
from econspin.economy import Economy
from econspin.fused import BlockTerms, exp2_limits, round_block_shape
from econspin.fused_sampled import threshold_tiles, unrolled_positions
from econspin.state import State

# the devices whose compiled rounds trace a round of one block; on CUDA since the traced blocks' CUDA test passed on
# an H200 (third session), where at B = 64, N = 256 under CUDA graphs they took 0.71 ms a round against 2.12 ms
# with the blocks between the graphs (expected mode; sampled 6.72 against 6.98; docs/performance.md)
TRACED_DEVICES: tuple[str, ...] = ("cpu", "cuda")
# rows of more sellers keep the operator: at N = 1024, B = 1 (one block) the traced round took 1.88-1.93x SDPA
# against 1.74-1.79x, at N = 512 1.84-2.01x against 2.22-2.35x (1 thread, CPU time, d = 32; module doc)
MAX_SELLERS = 512


def traces(state: State, economy: Economy) -> bool:
    """Whether this round's blocks are traced into the graph: compiling, one block, full precision (module doc)."""
    states = state.states
    if not torch.compiler.is_compiling() or states.device.type not in TRACED_DEVICES:
        return False
    if economy.utility_precision != "full":
        return False
    batch, agents, _ = states.shape
    if agents > MAX_SELLERS:
        return False
    groups, itemsize = batch * economy.heads, states.dtype.itemsize
    # the blocks fused.row_blocks would take: one, all the groups and rows
    shape = round_block_shape(groups, agents, economy.chunk, states.device, economy.memory_budget, itemsize)
    return shape == (groups, agents)


def weighed_scores(terms: BlockTerms, trade_mask: torch.Tensor | None, by_columns: bool = False):
    """(m_i (groups, N, 1), y, e (groups, N, N)) of the whole round's one block.

    ``trade_mask``: the economy's network (N, N), read where its additive bias is None (it had no
    room in run.memory_budget_mb, econspin.economy_terms.network_terms), as fused.row_blocks reads it.
    ``by_columns``: the block laid out seller by seller (strides (N^2, 1, N)), the same numbers.
    """
    big, floor = exp2_limits(terms.delivered.dtype)
    if by_columns:
        scores = torch.bmm(terms.right.transpose(1, 2), terms.left.transpose(1, 2)).transpose(1, 2)
    else:
        scores = torch.bmm(terms.left, terms.right)  # beta_i U_ij, -BIG for non-sellers
    # the diagonal written in place: a mask built from torch.eye became a uint8 comparison per
    # entry in Inductor's loops, which took 1.3 ms of a 1.9 ms round at B = 128, N = 64
    scores.diagonal(dim1=1, dim2=2).fill_(-big)
    if terms.network_bias is not None:  # a trade network's mask, as 0 on edges and -BIG elsewhere (economy_terms)
        scores = scores + terms.network_bias
    elif trade_mask is not None:
        scores = scores.masked_fill(~trade_mask, -big)
    return shifted_and_weights(scores, terms.tie_width, big, floor)


def traced_expected_blocks(terms: BlockTerms, economy: Economy, moment_rows: torch.Tensor):
    """econspin.fused.expected_blocks of one block as whole-tensor expressions: (|e_i.|, e @ [u, moments], revenue).

    Writes m_i, s_i and sum_j e_ij y_ij into ``terms``; revenue in float64, unnormalised as there.
    """
    row_max, shifted, weights = weighed_scores(terms, economy.trade_mask)
    # s_i, |e_i.|, sum_j e_ij z_ij / ln 2 and the two moment rows; the moments and revenue as sums in Inductor's
    # loops, not batched 2- and 1-row products (MKL's small products): 0.72-0.73 against 0.76-0.77 ms a round at
    # B = 128, N = 64 (2 threads, d = 16, the expected cases alone); in the ensemble benchmark's eight cases
    # 0.76-0.78 ms either way
    total, norm, dot, moments = row_sums(shifted, weights, moment_rows)
    received = torch.bmm(weights, terms.delivered)
    # total >= 1 on a row with partners, 0 on an empty row (its weights are all 0)
    per_unit = terms.share / total.clamp(min=1.0)
    revenue = (per_unit[..., None] * weights).sum(1).double()  # sum_i e_ij per_unit_i
    terms.keep_rows(row_max.squeeze(-1), total, dot)
    return norm, torch.cat([received, moments], dim=-1), revenue


def traced_sampled_blocks(terms: BlockTerms, economy: Economy, uniforms: torch.Tensor, rows: int | None = None):
    """econspin.fused_sampled.sampled_blocks of one block: (groups, N) the sellers drawn at ``uniforms``.

    Writes m_i, s_i and sum_j e_ij y_ij into ``terms``. ``rows`` is what the blocks' callers
    pass; :func:`traces` has found that one block holds them all.
    """
    # laid out by sellers, so that the count's loop over a row's sellers reads each seller's
    # weights for consecutive rows: Inductor vectorises it across rows (by rows it left the loop
    # scalar, 64 strided loads a row): 0.85-0.87 against 1.05-1.07 ms a round at B = 128, N = 64
    row_max, shifted, weights = weighed_scores(terms, economy.trade_mask, by_columns=True)
    tile, levels = threshold_tiles(weights, uniforms)
    choice, total, dot = unrolled_positions(weights, uniforms, tile, *levels, scores=shifted)
    terms.keep_rows(row_max.squeeze(-1), total, dot)
    # inlined, the gather of each seller's signal counted the seller again from the count's float64 partial sums
    return stored_where_measured(choice.squeeze(-1))
