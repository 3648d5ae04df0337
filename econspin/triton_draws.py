"""The Triton kernel's sampled-mode draw (run.kernel: triton, mode: sampled): each buyer's seller by inversion.

The rows' pass (econspin.triton_kernels.row_sums_program, without the moments) gives each
row's maximum m_i, tie width t_i and total s_i = sum_j e_ij. Then :func:`draw_program` takes
each buyer's seller as econspin.fused_sampled draws it, from the buyer's uniform u_i of the
choice stream:

    c_i = the first j with  sum_{l <= j} e_il > u_i s_i,

the weights e_ij of econspin.fused's module doc recomputed tile by tile (nothing N x N in
memory), their running sum in float64 across the seller tiles, within a tile a float64
prefix sum (tl.cumsum) and the count of its sums at or below the threshold. Where rounding
leaves the running sum short of the threshold (the threshold lies within rounding of s_i,
whose sums ran in another order), the row takes the last seller that moved the running sum,
as fused_sampled does where it holds the threshold just below the total; a row of total 0
draws -1. The threshold is u_i times the rows' pass's s_i, not times the float64 running sum's
end, which only a third pass over the tiles would know first: the two differ by the rounding
of s_i, so a uniform within that rounding of a boundary (u near 1 and a tail of weights too
small to move s_i, for one) may draw another seller than fused_sampled's. So the
sellers are fused_sampled's, draw for draw, up to a uniform within rounding of a boundary
between two sellers; T = 0 rows weigh their tied best sellers exactly 1, so their draws
are exact (the k-th tie for u in [(k - 1) / n, k / n)). A row's draw reads that row and its
uniform only: the tile sizes change no draw beyond such rounding.
"""

from __future__ import annotations

import triton.language as tl

from econspin.triton_kernels import max_over, row_tile, sum_over, tile_scores, weight_tile


def draw_program(
    left,
    right,
    network,
    shifted_max,
    tie_width,
    total,
    uniforms,
    choice,
    agents,
    keys,
    left_group_stride,
    left_row_stride,
    left_key_stride,
    right_group_stride,
    right_key_stride,
    right_column_stride,
    KEYS_PADDED: tl.constexpr,
    NETWORK: tl.constexpr,
    BIG: tl.constexpr,
    FLOOR: tl.constexpr,
    THRESHOLD: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_COLUMNS: tl.constexpr,
    UTILITIES: tl.constexpr,
):
    """c_i for a tile of buyers (grid: row tiles x groups) into (groups, N) int64 ``choice``; -1 for none.

    ``shifted_max``, ``tie_width`` and ``total`` (groups, N): the rows' pass's m_i, t_i and s_i;
    ``uniforms`` (groups, N) float64.
    """
    row_start, group, left, right, rows, row_in = row_tile(left, right, agents, left_group_stride,
                                                           right_group_stride, BLOCK_ROWS)  # fmt: skip
    at = group * agents + rows
    shift = tl.load(shifted_max + at, mask=row_in, other=0.0) - tl.load(tie_width + at, mask=row_in, other=0.0)
    totals = tl.load(total + at, mask=row_in, other=0.0).to(tl.float64)
    threshold = tl.load(uniforms + at, mask=row_in, other=0.0) * totals
    running = tl.full([BLOCK_ROWS], 0.0, tl.float64)
    chosen = tl.full([BLOCK_ROWS], -1, tl.int32)
    last = tl.full([BLOCK_ROWS], -1, tl.int32)  # the last seller that moved the running sum, so far
    for column_start in range(0, agents, BLOCK_COLUMNS):
        scores = tile_scores(
            left, right, network, row_start, column_start, agents, keys,
            left_row_stride, left_key_stride, right_key_stride, right_column_stride,
            KEYS_PADDED, NETWORK, BIG, BLOCK_ROWS, BLOCK_COLUMNS, UTILITIES, True,
        )  # fmt: skip
        _, weights = weight_tile(scores, shift, FLOOR, THRESHOLD)
        cumulative = running[:, None] + running_sum(weights.to(tl.float64), 1)  # nondecreasing along a row
        below = sum_over((cumulative <= threshold[:, None]).to(tl.int32), 1)  # searchsorted, right
        chosen = tl.where((chosen < 0) & (below < BLOCK_COLUMNS), column_start + below, chosen)
        tile_end = max_over(cumulative, 1)
        # the first seller at which the running sum reached its value at the tile's end, if the tile moved it
        reached = column_start + sum_over((cumulative < tile_end[:, None]).to(tl.int32), 1)
        last = tl.where(tile_end > running, reached, last)
        running = tile_end
    chosen = tl.where(chosen >= 0, chosen, last)
    tl.store(choice + at, chosen.to(tl.int64), mask=row_in)


def running_sum(values, axis):
    """tl.cumsum over ``axis``: compiled programs run this body, interpreted ones the library's."""
    return tl.cumsum(values, axis)


DRAW_HELPERS = ("running_sum",)
DRAW_PROGRAMS = ("draw_program",)
DRAW_INTERPRETED_BODIES = {"running_sum": tl.cumsum.fn}
