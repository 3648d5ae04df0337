"""The sampled-mode market step on the fused path: each buyer's draw taken block-wise.

In sampled mode (MODEL.md) buyer i draws one seller c_i ~ alpha_i. in each market h, pays it
s_i / H and receives its signal v_{c_i} W_O^h. The reference kernel
(:func:`econspin.market.trade`) draws by inversion: with the uniform u_ih of the buyer's
choice stream (:mod:`econspin.randomness`, DRAW_CHOICE, index h),

    c_i = the first j with  sum_{l <= j} alpha_il > u_ih sum_l alpha_il.

This module makes the same draw from the blocks of :func:`econspin.fused.row_blocks`, which
hold whole rows of the unnormalised weights e_ij = s_i alpha_ij: inversion does not care
about the normalisation, so with the same uniforms it picks the same sellers, draw for draw,
up to a uniform that falls within rounding of a boundary between two sellers (an event of
probability about N 2^-52 per draw in float64, N 2^-23 in float32). The draw of a row reads
that row and its uniform only, so it does not depend on the block size or the batch layout.

Inversion rather than Gumbel-max because Gumbel-max needs N random numbers per row (N^2
hashes a round, other numbers than the reference's single uniform): hashing 2^20 words alone
took 6.2 ms against 3.8 ms for the whole two-level inversion of a 1024 x 1024 block (one
thread, interleaved, on a loaded machine). Inversion in two levels, because a float64
cumulative sum over whole rows is slower than the rest of the block (12 ms for a 256 x 4096
block on one core, against 0.8 ms for the received product):

    tile sums  S_t = sum_{j in tile t} e_ij           (working precision, one pass over the block)
    tile       t_i = the first t with sum_{t' <= t} S_t' > u_ih sum_t S_t        (sums over t in float64)
    seller     c_i = the first j of tile t_i with  sum_{t' < t_i} S_t' + sum_{l in t_i, l <= j} e_il > threshold,

with tiles of the power of two at or above sqrt(N) columns (rows of at most ONE_TILE sellers
in one level: a float64 running sum over the whole row) and the threshold kept strictly
below the row's total as in :func:`econspin.choice.sample_choice`. The tile found has
positive weight. Where rounding between the two levels leaves the tile's running sum short
of the threshold (float32 tile sums carry float32 rounding), the threshold is held just
below the tile's end, which draws the tile's last seller that moved the running sum: a
chosen seller has positive weight. T = 0 rows weigh their best sellers exactly 1 and
every other 0 (ties drawn uniformly), T = inf rows weigh every allowed seller exactly 1, and
a row without an allowed seller has total 0 and draws -1 (it spends and receives nothing).

Within the tile, the seller is the count of the tile's running sums at or below the threshold
(what a binary search, searchsorted right, returns on nondecreasing sums). Eagerly, the tile
is cast into float64, summed by torch's cumsum and searched (:func:`running_positions`). In a
compiled round (run.compile, where the blocks are the operator econspin::sampled_blocks) one
compiled loop over the rows does it instead (:func:`compiled_positions`): the same float64
sums in the same order, the same thresholds and the count, written column by column so that
Inductor vectorises across rows and keeps a row's sums in registers: the same sellers, bit for
bit, in 0.31 ms against 0.6-0.8 ms for a 128 x 64 x 64 block (docs/performance_log.md, "The
inversion's count compiled"); the same call sums s_i and sum_j e_ij y_ij, which the eager loop
takes in passes of their own (docs/performance_log.md, "The sampled blocks' sums from the compiled
count"). The eager round compiles nothing, but on the devices of
econspin.block_pass.COMPILED_DEVICES (none by default) the weights y and e of each block.

After the blocks, the received signal is a gather of u_{c_i} and revenue a scatter-add of
s_i / H at c_i in float64, market by market in row order as the reference adds them (so on
the CPU the same sellers give the same bits of revenue): no N x N flows. Entropy and surplus
come from the rows as in expected mode; the field and choice variances and the impact are 0,
as on the reference path (they feed only the expected mode's correction).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

from econspin.compiled import eager_operator, eager_parts_as_operators, eagerly, with_own_code
from econspin.economy import Economy
from econspin.fused import (
    BlockSettings,
    BlockTerms,
    RoundTerms,
    blocks_from_arguments,
    operator_results,
    round_terms,
    row_blocks,
    row_statistics,
)
from econspin.inductor_setup import prepare_code_generation
from econspin.market import MarketOutcome
from econspin.randomness import DRAW_CHOICE, Draws
from econspin.state import State
from econspin.workspace import workspace

ONE_TILE = 64  # rows up to this many sellers are searched in one level
# a compiled round's blocks count with compiled_positions where a block's rows times its tile
# width reach this; below it the call into the compiled loop (about 0.06-0.1 ms) costs more than
# the eager count (python -m experiments.inversion_count, 1 thread: N = 64 with 1, 16 and 32
# economies a block, 0.035 / 0.102, 0.097 / 0.098 and 0.264 / 0.128 ms eager / compiled;
# N = 1024, B = 1, 32 768 sums, 0.466 / 0.601 ms; N = 256, B = 16, 65 536, 0.92 / 0.71 ms)
COMPILED_COUNT_FROM = 1 << 16


def tile_width(agents: int) -> int:
    """Columns per tile: the power of two at or above sqrt(N); N <= ONE_TILE: the whole row.

    Measured (one thread, interleaved): at N = 96, 128, 256, 512, 1024 and 4096 this width
    was the fastest of 8 to 64 and of the whole row (2.6x faster than the whole row at N = 128);
    at N = 32 and 64 the whole row was as fast or faster.
    """
    if agents <= ONE_TILE:
        return agents
    return 2 ** math.ceil(math.log2(math.sqrt(agents)))


def inverse_cdf(
    weights: torch.Tensor, uniforms: torch.Tensor, tile: int | None = None, compiled: bool = False
) -> torch.Tensor:
    """(..., rows) long: per row of ``weights`` (..., rows, N) >= 0 the inversion draw at ``uniforms``.

    Two levels (module docstring): the tile of the threshold from the tile sums (taken in the
    working precision, accumulated in float64), then the seller within that tile from a
    float64 running sum. -1 where a row's weights are all 0. ``compiled``: the seller within
    the tile found by :func:`compiled_draws` (a compiled round's blocks), else by
    :func:`running_positions`; the same sellers.
    """
    if compiled:
        return compiled_draws(weights, uniforms, tile)[0]
    tile, (first_column, start, threshold) = threshold_tiles(weights, uniforms, tile)
    in_tile = weights if first_column is None else tile_columns(weights, first_column, tile)
    return drawn_columns(running_positions(in_tile, uniforms, start, threshold), first_column, tile).squeeze(-1)


def compiled_draws(
    weights: torch.Tensor, uniforms: torch.Tensor, tile: int | None = None, scores: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(:func:`inverse_cdf`'s draws, (..., rows) s_i = sum_j e_ij and sum_j e_ij y_ij of ``scores`` y, or None).

    The tile of the threshold found eagerly, then one call of :func:`compiled_positions` for the
    seller within it and, from the same call with ``scores`` (..., rows, N), the rows' sums.
    """
    tile, levels = threshold_tiles(weights, uniforms, tile)
    return compiled_positions(weights, uniforms, tile, *levels, scores=scores)


def threshold_tiles(
    weights: torch.Tensor, uniforms: torch.Tensor, tile: int | None = None
) -> tuple[int, tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]]:
    """(the tile width, (first column, start, threshold)): the tile of each row's threshold; None in one tile.

    The first level of the inversion: the tile sums in the working precision, accumulated in
    float64, and the first tile whose accumulated sum passes u * total; ``start`` is the sum
    of the tiles before it, each (..., rows, 1).
    """
    agents = weights.shape[-1]
    tile = min(tile or tile_width(agents), agents)
    count = -(-agents // tile)
    if count == 1:  # one tile: no first level
        return tile, (None, None, None)
    full = agents // tile
    sums = weights[..., : full * tile].unflatten(-1, (full, tile)).sum(-1)
    if count > full:  # the last, narrower tile
        sums = torch.cat([sums, weights[..., full * tile :].sum(-1, keepdim=True)], dim=-1)
    cumulative = sums.double().cumsum(-1)  # (a float32 block's .sum(dtype=float64) takes a slow path)
    threshold = _below_total(uniforms, cumulative[..., -1:])
    chosen_tile = torch.searchsorted(cumulative, threshold, right=True).clamp_(max=count - 1)
    start = torch.where(chosen_tile > 0, cumulative.gather(-1, (chosen_tile - 1).clamp(min=0)), 0.0)
    return tile, (chosen_tile * tile, start, threshold)


def drawn_columns(position: torch.Tensor, first_column: torch.Tensor | None, tile: int) -> torch.Tensor:
    """The seller drawn at each row's ``position`` in the tile from ``first_column`` (None: the row), -1 for none.

    Every running sum is at or below the threshold (position = tile) only where they are all 0
    (threshold 0): a row of weight 0, whose first level found a tile of total 0 too. Elsewhere
    the threshold lies below the tile's end.
    """
    column = position if first_column is None else first_column + position
    return torch.where(position == tile, -1, column)


def tile_columns(weights: torch.Tensor, first_column: torch.Tensor, tile: int) -> torch.Tensor:
    """(..., rows, tile): each row's weights from ``first_column`` (..., rows, 1) on, 0 past the row's end."""
    columns = first_column + torch.arange(tile, device=weights.device)
    return weights.gather(-1, columns.clamp(max=weights.shape[-1] - 1)).mul_(columns < weights.shape[-1])


def running_positions(
    in_tile: torch.Tensor, uniforms: torch.Tensor, start: torch.Tensor | None = None,
    threshold: torch.Tensor | None = None,
) -> torch.Tensor:
    """(..., rows, 1) long: how many of each row's float64 running sums over ``in_tile`` lie at or below its threshold.

    That count is the column drawn (the running sums are nondecreasing: searchsorted, right).
    One level (``start`` None): the threshold is u * total kept below the total; two levels:
    the running sums start at ``start`` and ``threshold`` is held just below the tile's end.
    """
    # float64 running sums in memory reused from round to round: the block cast into it, then
    # summed in place (torch.cumsum(..., dtype=float64, out=) casts into a fresh tensor of the
    # block's size first, whose new pages cost 1.4 ms a round at B = 128, N = 64; the same
    # sums, bit for bit); not in the block itself, since in_tile may be the block, read after
    running = workspace("running sums", in_tile.numel(), torch.float64, in_tile.device).view(in_tile.shape)
    running.copy_(in_tile).cumsum_(-1)
    if start is None:
        threshold = _below_total(uniforms, running[..., -1:])
    else:
        # where rounding leaves the tile's running sum short of the threshold: the tile's last
        # seller that moved it (the threshold held just below the tile's end)
        running.add_(start)
        threshold = torch.minimum(threshold, torch.nextafter(running[..., -1:], torch.zeros_like(threshold)))
    return torch.searchsorted(running, threshold, right=True)


# pragma: no mutate start
# (mutation testing, docs/testing.md: _compiled_unrolled_positions compiles a copy of this function's code
# object, which a mutated module's trampoline in its place does not have)
def unrolled_positions(
    weights: torch.Tensor, uniforms: torch.Tensor | None, tile: int, first_column: torch.Tensor | None,
    start: torch.Tensor | None, threshold: torch.Tensor | None, scores: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(rows, 1) :func:`drawn_columns` of :func:`running_positions` of (rows, N) ``weights``, for torch.compile.

    The same float64 sums in the same order, ((e_1 + e_2) + e_3) + ..., as torch's cumsum adds
    them, the same thresholds, and a count of the sums at or below them: written column by
    column, elementwise across rows, so that Inductor makes one loop over the rows, vectorised,
    that reads each weight of the tile once and keeps a row's sums in registers (no float64
    copy of the block, no gathered tile, no binary search). One level: ``uniforms`` (rows,);
    two levels: the tile's ``first_column``, ``start`` and ``threshold`` (rows, 1). With
    ``scores`` (rows, N), also the rows' totals s_i and sum_j e_ij y_ij (rows,), the entropy's:
    s_i in one level the float64 running sum's last, rounded to the working precision (0.05 ms
    eagerly for the block's sum), sum e y in a loop of Inductor's own that reads the block once
    and writes nothing back (eagerly a product written over the scores, then summed: 0.10
    against 0.05 ms for a 128 x 64 x 64 block); both equal the eager sums to rounding.
    """
    agents = weights.shape[-1]
    if first_column is None:
        columns = weights.split(1, dim=-1)
    else:
        indices = [first_column + offset for offset in range(tile)]
        columns = [weights.gather(-1, index.clamp(max=agents - 1)) * (index < agents) for index in indices]
    running = [columns[0].double()]
    for column in columns[1:]:
        running.append(running[-1] + column.double())
    if start is None:
        threshold = _below_total(uniforms, running[-1])
    else:
        running = [partial + start for partial in running]
        threshold = torch.minimum(threshold, torch.nextafter(running[-1], torch.zeros_like(threshold)))
    # the count as a tree of sums of 0 and 1 in float64 (exact in any order; short dependency chains),
    # cast to an integer once: 0.24 against 0.28 ms for a 128 x 64 x 64 block summed in int64
    counted = [(partial <= threshold).double() for partial in running]
    while len(counted) > 1:
        counted = [a + b for a, b in zip(counted[0::2], counted[1::2])] + counted[len(counted) - len(counted) % 2 :]
    columns = drawn_columns(counted[0].long(), first_column, tile)
    if scores is None:
        return columns, None, None
    totals = weights.sum(-1) if first_column is not None else running[-1].squeeze(-1).to(weights.dtype)
    return columns, totals, (scores * weights).sum(-1)
# pragma: no mutate end


@functools.cache
def _compiled_unrolled_positions(shape: tuple) -> Callable:
    """:func:`unrolled_positions` compiled for one (tile, N, levels, dtype), as a function of its own.

    Its own code object, so its own compilations: TorchDynamo counts them (at most
    torch._dynamo.config.recompile_limit, 8) per code object, and a process that plays economies
    of several sizes would otherwise run out of them and then run the unrolled loop eagerly, a
    few hundred small operations. The number of rows is dynamic (compiled_positions marks it):
    row blocks of other heights reuse the code.
    """
    function = with_own_code(unrolled_positions, "_".join(str(part) for part in shape))
    prepare_code_generation()
    # Inductor leaves a loop with 35 strided loads or more scalar (cpp.enable_tiling_heuristics),
    # here one per column: vectorised across rows it took 0.26 ms against 0.59 ms for a 128 x 64 x 64 block
    return torch.compile(function, dynamic=False, options={"cpp.enable_tiling_heuristics": False})


def compiled_positions(
    weights: torch.Tensor, uniforms: torch.Tensor, tile: int, first_column: torch.Tensor | None = None,
    start: torch.Tensor | None = None, threshold: torch.Tensor | None = None, scores: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """((..., rows) the sellers drawn, bit for bit :func:`inverse_cdf`'s; with ``scores``, s_i and sum_j e_ij y_ij).

    By :func:`unrolled_positions` compiled, once per tile width, N, level count, dtype and
    whether ``scores`` come too.
    """
    agents = weights.shape[-1]
    flat = [None if value is None else value.reshape(-1, 1) for value in (first_column, start, threshold)]
    uniforms = uniforms.reshape(-1) if start is None else None
    blocks = [None if value is None else value.reshape(-1, agents) for value in (weights, scores)]
    arguments = [blocks[0], uniforms, tile, *flat, blocks[1]]
    for argument in arguments:
        if isinstance(argument, torch.Tensor) and argument.shape[0] > 1:  # (a dimension of 1 is specialised)
            torch._dynamo.mark_dynamic(argument, 0)
    shape = (tile, agents, "one" if first_column is None else "two", str(weights.dtype).removeprefix("torch."))
    shape = (*shape, "dots") if scores is not None else shape
    columns, *sums = _compiled_unrolled_positions(shape)(*arguments)
    rows = weights.shape[:-1]
    return columns.view(rows), *(None if values is None else values.view(rows) for values in sums)


def count_work(weights: torch.Tensor) -> int:
    """The running sums the count of a block of ``weights`` (..., rows, N) takes: rows times the tile width."""
    agents = weights.shape[-1]
    return weights.numel() // max(agents, 1) * min(tile_width(agents), agents)


def _below_total(uniforms: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """The threshold u * total, kept strictly below total (as :func:`econspin.choice.sample_choice` keeps it)."""
    return torch.minimum(uniforms.unsqueeze(-1).double() * total, torch.nextafter(total, torch.zeros_like(total)))


def sampled_choices(
    state: State, economy: Economy, draws: Draws | None = None, rows: int | None = None, blocks: Callable | None = None
) -> tuple[torch.Tensor, RoundTerms]:
    """(B, H, N) long sellers c_ih (-1: nobody to buy from), and the round's terms (rows' statistics filled).

    ``blocks``: what draws them, :func:`sampled_blocks` by default (econspin.triton_blocks passes its own).
    """
    batch, agents, _ = state.states.shape
    heads = economy.heads
    draws = state.draws() if draws is None else draws
    # compiled on the CPU, hashed in uint64 in a loop of their own (in 32-bit halves inline: econspin.wood)
    uniforms = draws.uniform(DRAW_CHOICE, heads, own_loop=True).transpose(0, 1).reshape(batch * heads, agents)
    terms = round_terms(state, economy)
    blocks = blocks or sampled_blocks
    return blocks(terms, economy, uniforms, rows).view(batch, heads, agents), terms


def sampled_blocks(
    terms: BlockTerms, economy: Economy | BlockSettings, uniforms: torch.Tensor, rows: int | None = None,
    compiled_inversion: bool = False,
) -> torch.Tensor:
    """(groups, N) long: each row's seller drawn at its uniform (groups, N); writes m_i, s_i, sum e y to ``terms``.

    Under run.compile the blocks run eagerly, as one node of the compiled graph on the CPU and a
    graph break on CUDA, as in expected mode (econspin.fused.expected_blocks); the node counts
    the running sums with :func:`compiled_positions` (``compiled_inversion``) in blocks of at
    least COMPILED_COUNT_FROM sums: the same sellers. That call also returns s_i and sum e y
    (equal to the eager sums to rounding), two passes over the block fewer than the eager loop.
    """
    if torch.compiler.is_compiling():
        if not eager_parts_as_operators(terms.left.device):
            return eagerly(sampled_blocks, terms, economy, uniforms, rows)
        return operator_results(_sampled_blocks_operator, terms, economy, rows, uniforms, True)[0]
    choice = torch.empty(uniforms.shape, dtype=torch.long, device=uniforms.device)
    for g, r, scores, weights in row_blocks(terms, economy, rows):
        if compiled_inversion and count_work(weights) >= COMPILED_COUNT_FROM:
            # s_i and the entropy's sum from the count's call, two passes over the block fewer: the sums to rounding
            choice[g, r], terms.total[g, r], terms.dot[g, r] = compiled_draws(weights, uniforms[g, r], scores=scores)
        else:
            torch.sum(weights, -1, out=terms.total[g, r])
            choice[g, r] = inverse_cdf(weights, uniforms[g, r])
            terms.dot[g, r] = scores.mul_(weights).sum(-1)  # sum_j e_ij z_ij / ln 2 (entropy)
    return choice


def _sampled_blocks_shapes(left, right, delivered, share, tie_width, network_bias, trade_mask, rows, chunk,
                           memory_budget, utility_precision, uniforms, compiled_inversion):
    per_row = [uniforms.new_empty(uniforms.shape, dtype=delivered.dtype) for _ in range(3)]
    return *per_row, uniforms.new_empty(uniforms.shape, dtype=torch.long)


@eager_operator("sampled_blocks", _sampled_blocks_shapes)
def _sampled_blocks_operator(
    left: torch.Tensor, right: torch.Tensor, delivered: torch.Tensor, share: torch.Tensor, tie_width: torch.Tensor,
    network_bias: torch.Tensor | None, trade_mask: torch.Tensor | None, rows: int, chunk: int,
    memory_budget: float, utility_precision: str, uniforms: torch.Tensor, compiled_inversion: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`sampled_blocks` run eagerly: (m_i, s_i, sum e y, the sellers); econspin.fused's operator for why."""
    terms, settings, rows = blocks_from_arguments(left, right, delivered, share, tie_width, network_bias,
                                                  trade_mask, rows, chunk, memory_budget, utility_precision)
    choice = sampled_blocks(terms, settings, uniforms, rows, compiled_inversion)
    return terms.shifted_max, terms.total, terms.dot, choice


def fused_sampled_trade(
    state: State, economy: Economy, draws: Draws | None = None, rows: int | None = None, blocks: Callable | None = None
) -> MarketOutcome:
    """Sampled-mode steps 1-5 for every buyer, as :func:`econspin.market.trade` computes them.

    ``draws`` defaults to the state's own (``state.draws()``); ``rows`` fixes the buyer rows
    per block (default: ``run.chunk``, else cache-sized blocks) and changes no draw; ``blocks``
    draws the sellers (:func:`sampled_choices`).
    """
    choice, terms = sampled_choices(state, economy, draws, rows, blocks)
    batch, heads, agents = choice.shape
    d = terms.delivered.shape[-1]
    chosen = choice >= 0
    index = choice.clamp(min=0)
    delivered = terms.delivered.view(batch, heads, agents, d)
    # u_{c_i} as rows of one (B H N, d) table: torch's gather along an axis with an expanded
    # index took 0.5 ms against 0.1 ms for this index_select at B = 128, N = 64, d = 16
    table_rows = (index + torch.arange(batch * heads, device=index.device).view(batch, heads, 1) * agents).view(-1)
    got = delivered.reshape(-1, d).index_select(0, table_rows).view(batch, heads, agents, d)
    buyer = economy.buyer.to(delivered.dtype)
    got.mul_(chosen[..., None])
    # in place: fewer fresh pages; one market's signal is its own (torch's sum over an axis of one copies it)
    received = (got[:, 0] if heads == 1 else got.sum(1)).mul_(buyer[None, :, None])
    spending = terms.spend * terms.fixed.has_partner  # the mask is the same for every batch element and head
    market_revenue = torch.zeros(batch, heads, agents, dtype=torch.float64, device=choice.device)
    market_revenue.scatter_add_(2, index, (spending / heads)[:, None, :] * chosen)
    revenue = market_revenue[:, 0]
    for head in range(1, heads):  # markets added in order, as the reference adds them
        revenue = revenue + market_revenue[:, head]
    entropy, surplus, _ = row_statistics(state, economy, terms)
    zeros = torch.zeros(batch, agents, dtype=delivered.dtype, device=choice.device)
    return MarketOutcome(
        received=received,
        revenue=revenue,
        spending=spending,
        entropy=entropy.view(batch, heads, agents).mean(1),
        surplus=surplus.view(batch, heads, agents).mean(1),
        field_variance=zeros,
        choice_variance=zeros,
        impact=zeros,
    )
