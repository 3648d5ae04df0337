"""The expected-mode market step as one fused pass over cache-sized blocks of buyer rows.

It returns exactly what :func:`econspin.market.trade` returns in expected mode (every field of
:class:`~econspin.market.MarketOutcome`), computed from the same equations rearranged so that
each block of the N x N utilities is visited a few times while it is hot in the cache, and
nothing in a round waits on the host (no ``.item()``, no ``bool(tensor)``, no branch on data).

For every batch element b, head h, buyer i and seller j (see market.py for the model):

    U_ij = q_i . k_j / sqrt(d_k) + b_j,     b_j = gamma log(w_j / mean w),
    alpha_ij = e_ij / s_i,   e_ij = 2^(y_ij),   y_ij = beta_i U_ij - m_i,   m_i = max_l beta_i U_il,
    s_i = sum_j e_ij,        LSE_i = ln s_i   (the log-sum-exp of z_ij = U_ij / T_i - max, z = y ln 2).

Base 2 because torch's exp2 is 2.7x faster than its exp on the CPU. The temperature enters as
an effective inverse temperature beta_i (in base 2) folded into the query: one matrix product
gives beta_i U_ij together with the seller bias and the seller mask,

    [beta_i q_i / sqrt(d_k), beta_i, 1] . [k_j, b_j, c_j],   c_j = 0 (j sells) or -BIG,

and the limits become finite powers of two, so that no row needs a branch of its own:

    beta_i = clamp(log2(e) / T_i, 2^(-p - 6 - e_i), 2^(E - e_i)),

with 2^e_i >= |U_il| for every l and >= |q_i| (from |q_i| max(1, max|k|) / sqrt(d_k) + max|b|),
E = 100 (float32) or 996 (float64) and p the mantissa bits. At T_i = 0, the upper limit
spreads any two utilities of the row that differ by more than about 2^-93 (float32; 2^-986 in
float64) of the row's scale so far apart that every seller but the best ones gets weight
exactly 0 and the best ones exactly 1: the argmax, ties split equally. Ties are ties of the
utilities, not of their rounding: the matrix product may round equal utilities of two sellers
differently (BLAS kernels sum a block's last columns in another order than the others), so a
row at the upper limit counts every score within t_i = beta_i w_i of its maximum as tied, w_i =
(d_k + 4) eps (|q_i| max_j |k_j| / sqrt(d_k) + max_j |b_j|) the reference kernel's tie width in
utilities (market.tie_widths; eps the working precision's; the product's rounding error is at
most (d_k + 2) eps sum_k |l_ik r_kj| <= (d_k + 2) eps beta_i (|q_i| |k_j| / sqrt(d_k) + |b_j|)
there, and beta_i is a power of two, so both kernels tie the same utilities):
y_ij = min(beta_i U_ij - (m_i - t_i), 0), exactly 0 on those sellers. Rows below the limit have
t_i = 0 and y_ij as written. At T_i = inf, the lower limit squeezes the row into [-2^-(p+5),
0], where 2^y rounds to exactly 1: uniform over the allowed sellers. Before exp2, y is clamped
at the smallest normal exponent (exp2 leaves its fast vector path below it) and weights up to
twice that set to exactly 0. The diagonal (no self-trade) is set to -BIG in place and a trade
network adds its cached bias; a row with no allowed seller has m_i = -BIG, is shifted by 0
instead and has s_i = 0 (its outputs are 0).

Every reduction of MODEL.md then comes from the unnormalised block e, while it is hot:

    received:     a_ih = (e @ u)_i / s_i,     u_j = v_j W_O^h            (a product with d columns)
    moments:      ([|u_j|^2, c_j |W_V W_O|_F^2] @ e^T)_i / s_i          (a product with 2 rows)
    entropy:      H_i = LSE_i - ln 2 (sum_j e_ij y_ij) / s_i             (0 at T = 0 by construction)
    surplus:      S_i = m_i / beta_i + T_i LSE_i                         (m_i / beta_i at T = 0)
    impact:       kappa_i = |e_i.|^2 / s_i^2
    revenue:      R_j += sum_i e_ij (s_i^budget / H) / s_i               (alpha^T share, a vector @ e)

Eagerly these are a dozen passes over the block, cheap on a CPU, where it stays in the cache;
on the devices of econspin.block_pass.COMPILED_DEVICES (none yet: a GPU's, once measured) the
elementwise ones and the moments are one compiled kernel instead, two reads of the block.
The normalisation by s_i is applied to the small per-row results, never to the block. Money:
revenue is accumulated in float64 over blocks and rescaled per batch element so that
sum_j R_j equals sum_i s_i (the budgets actually spent) to float64 rounding, whatever the
working precision; each R_j then carries the working precision's rounding. Memory is
O(B H N (2 d_k + d)) plus two blocks of :func:`block_entries` entries (and the network's bias, if any).

Sampled mode draws from the same blocks (econspin.fused_sampled); fixed couplings, a sparse
trade network and a round that asks for gradients take other paths (:func:`uses_fused`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from econspin import block_pass
from econspin.block_pass import weigh
from econspin.compiled import eager_operator, eager_parts_as_operators, eagerly
from econspin.economy import Economy
from econspin.economy_terms import EconomyTerms, fixed_terms
from econspin.market import MarketOutcome, budgets, row_sizes, seller_bias, seller_moments, tie_widths
from econspin.precision import received_product, utility_operands, utility_product
from econspin.projections import projections_from
from econspin.state import State
from econspin.temperature_limits import inverse_temperatures_and_ties, precision_limits, row_scales
from econspin.workspace import workspace

BLOCK_ENTRIES = 2**20  # entries of one (batch-heads, rows, N) block on a CPU: two blocks stay in the L2/L3 caches
# On CUDA each block costs a dozen kernel launches whatever its size, so cache-sized blocks are
# launch-bound there: on an H200 the round at N = 65536 took 703 ms in blocks of 32 rows (2^21
# entries), 121 ms in blocks of 512 and 98 ms in blocks of 8192 (docs/performance_log.md, "Block size")
GPU_BLOCK_ENTRIES = 2**27
MIN_ROWS = 32  # thinner blocks cost more in overhead than the cache saves
PIECE_ROWS = 256  # a block of more rows has its 1- and 2-row products cut into pieces of this many (block_products)
LN2 = math.log(2.0)
# exp2 leaves its fast vector path where the result would be subnormal: scores are clamped to
# these floors first, and weights up to 2^(floor + 1) (tiny against the row's largest, 1) set to 0
EXP2_FLOOR = {torch.float32: -126.0, torch.float64: -1022.0}


def exp2_limits(dtype: torch.dtype) -> tuple[float, float]:
    """(BIG, the exp2 floor) of ``dtype``: -BIG marks a non-seller's score, the floor clamps y before exp2."""
    return 2.0 ** precision_limits(dtype)[2], EXP2_FLOOR[dtype]


def block_entries(device: torch.device | str, memory_budget: float, itemsize: int) -> int:
    """Entries of one block: BLOCK_ENTRIES on a CPU, more on CUDA.

    On CUDA: as many as keep four blocks (what econspin.memory counts for the round's block buffers) within half of
    run.memory_budget_mb, between BLOCK_ENTRIES and GPU_BLOCK_ENTRIES: 2^25 at the default
    budget of 1024 MiB in float32.
    """
    if torch.device(device).type != "cuda":
        return BLOCK_ENTRIES
    return int(max(BLOCK_ENTRIES, min(GPU_BLOCK_ENTRIES, memory_budget // (8 * itemsize))))


def block_shape(groups: int, agents: int, rows: int | None = None, entries: int | None = None) -> tuple[int, int]:
    """(batch-heads, rows) per block: about ``entries`` entries (default BLOCK_ENTRIES), at least MIN_ROWS rows.

    One batch-head per block unless whole ones fit (small N): a product over many thin
    blocks costs more than the cache saves (measured: docs/performance.md).
    """
    entries = BLOCK_ENTRIES if entries is None else entries
    if rows is None:
        rows = max(MIN_ROWS, entries // agents)
    rows = max(1, min(rows, agents))
    together = entries // (agents * agents) if rows == agents else 1
    return max(1, min(groups, together)), rows


def round_block_shape(groups: int, agents: int, rows: int | None, device, memory_budget: float,
                      itemsize: int) -> tuple[int, int]:
    """:func:`block_shape` at :func:`block_entries` for ``device``: the blocks of a round (``rows`` None: sized)."""
    return block_shape(groups, agents, rows, block_entries(device, memory_budget, itemsize))


def uses_fused(state: State, economy: Economy) -> bool:
    """Whether a round takes a fused step: the economy says so and nothing asks for gradients.

    Expected mode takes :func:`fused_trade`, sampled mode
    :func:`econspin.fused_sampled.fused_sampled_trade`. The fused steps write into reused
    buffers, which autograd cannot follow; a round whose inputs require gradients takes the
    reference path (same numbers, differentiable).
    """
    if economy.kernel != "fused" or economy.couplings is not None:
        return False
    if economy.trade_edges is not None:  # a sparse network has a kernel of its own
        return False
    return not asks_for_gradients(state, economy)


def asks_for_gradients(state: State, economy: Economy) -> bool:
    """Whether autograd is on and a round's input or parameter requires a gradient."""
    inputs = (state.states, state.fields, state.money, state.temperature)
    parameters = (economy.query, economy.key, economy.value, economy.output, economy.visibility, economy.spend)
    return torch.is_grad_enabled() and any(t.requires_grad for t in (*inputs, *parameters))


@dataclass(frozen=True)
class BlockTerms:
    """What the blocks of a round read, and the per-row results they write.

    groups = B H: batch element b, head h is group b H + h. Every (groups, N) tensor holds
    one number per buyer row; ``shifted_max`` (m_i) is written by :func:`row_blocks`,
    ``total`` (s_i) and ``dot`` by the mode's own loop.
    """

    # the utilities' operands, in run.utility_precision's dtype (econspin.precision)
    left: torch.Tensor  # (groups, N, d_k + 2): [beta_i q_i / sqrt(d_k), beta_i, 1]
    right: torch.Tensor  # (groups, d_k + 2, N): [k_j, b_j, c_j]
    delivered: torch.Tensor  # (groups, N, d): u_j = v_j W_O^h
    share: torch.Tensor  # (groups, N) s_i / H in the working precision
    tie_width: torch.Tensor  # (groups, N) t_i: scores within t_i of the row's maximum are ties (module doc)
    network_bias: torch.Tensor | None  # (N, N), 0 on edges and -BIG elsewhere, or None
    shifted_max: torch.Tensor  # (groups, N)
    total: torch.Tensor  # (groups, N)
    dot: torch.Tensor  # (groups, N) sum_j e_ij y_ij

    @property
    def groups(self) -> int:
        return self.left.shape[0]

    def keep_rows(self, shifted_max: torch.Tensor, total: torch.Tensor, dot: torch.Tensor) -> None:
        """Copy m_i, s_i and sum e y from an operator that returns them (the eager loops write them here)."""
        for kept, result in ((self.shifted_max, shifted_max), (self.total, total), (self.dot, dot)):
            kept.copy_(result)


@dataclass(frozen=True)
class RoundTerms(BlockTerms):
    """:class:`BlockTerms`, and what the rest of a fused step reads."""

    fixed: EconomyTerms  # what depends on the economy alone, built once per economy (econspin.economy_terms)
    beta: torch.Tensor  # (B, H, N) effective inverse temperatures (base 2)
    spend: torch.Tensor  # (B, N) float64 budgets s_i


@dataclass(frozen=True)
class BlockSettings:
    """What the block loop reads of the economy (an :class:`Economy` has the same attributes).

    The compiled round's block operators (:func:`block_arguments`) pass these alone.
    """

    chunk: int | None
    memory_budget: float
    utility_precision: str
    trade_mask: torch.Tensor | None


def round_terms(state: State, economy: Economy) -> RoundTerms:
    """The per-round (B, H, N, .) tensors of the fused steps: projections, bounds, budgets, network."""
    x = state.states
    batch, agents, d = x.shape
    heads, key_dimension = economy.heads, economy.query.shape[-1]
    dtype, device = x.dtype, x.device
    groups = batch * heads
    fixed = fixed_terms(state, economy)

    query, key, delivered, _ = projections_from(state, economy, fixed)
    bias = seller_bias(state, economy)[:, None, :].expand(batch, heads, agents)
    spend = budgets(state, economy)

    # effective inverse temperatures (base 2), from a bound on each row's utilities
    sizes = row_sizes(query, key, bias)
    # (B, H, N): beta >= |U_il| and |q_i|; t_i, the tie width of rows at the T = 0 limit
    utility_ties = tie_widths(sizes, key_dimension)
    beta, tie_width = inverse_temperatures_and_ties(state.temperature[:, None, :], row_scales(sizes), utility_ties)
    left = torch.cat([query * beta[..., None], beta[..., None], fixed.ones], dim=-1)
    right = torch.cat([key, bias[..., None], fixed.seller_column[..., None]], dim=-1)
    left, right = (t.reshape(groups, agents, -1) for t in (left, right))
    # contiguous, not a view of the projections: a compiled round then writes u_j alone (1 of the 3 MiB of
    # projections at B = 128, N = 64, d = 32), where the blocks read it (econspin.projections.rows_together)
    delivered = delivered.reshape(groups, agents, d).contiguous()
    tie_width = tie_width.reshape(groups, agents)
    share = (spend / heads).to(dtype)[:, None, :].expand(batch, heads, agents).reshape(groups, agents)
    shifted_max, total, dot = torch.empty(3, groups, agents, dtype=dtype, device=device).unbind()
    left, right = utility_operands(left, right.transpose(1, 2), economy.utility_precision)
    return RoundTerms(
        left=left,
        right=right,
        delivered=delivered,
        fixed=fixed,
        beta=beta,
        spend=spend,
        share=share,
        tie_width=tie_width,
        network_bias=fixed.network_bias,
        shifted_max=shifted_max,
        total=total,
        dot=dot,
    )


def row_blocks(terms: BlockTerms, economy: Economy | BlockSettings, rows: int | None = None, weighed: bool = True):
    """Each block of buyer rows as (groups, rows, scores, weights), its m_i written to ``terms``.

    ``scores`` holds y_ij = beta_i U_ij - m_i (clamped at the exp2 floor), ``weights`` e_ij =
    2^(y_ij) (0 below twice the floor, for disallowed pairs and for every row without a
    partner; econspin.block_pass.weigh); the caller writes s_i = sum_j e_ij (the sampled blocks'
    compiled count sums the rows it reads anyway: econspin.fused_sampled). Both live in one
    buffer, reused from round to round (:func:`workspace`): a block is valid until the next is
    yielded. Not ``weighed``: ``scores`` holds beta_i U_ij with the diagonal and the network
    applied, and neither ``weights`` nor m_i is written (econspin.block_pass.weigh_and_sum's to do).
    """
    left, right = terms.left, terms.right
    groups, agents = terms.groups, left.shape[1]
    dtype, device = terms.delivered.dtype, left.device
    big, floor = exp2_limits(dtype)
    rows = rows if rows is not None else economy.chunk
    group_size, block_rows = round_block_shape(groups, agents, rows, device, economy.memory_budget, dtype.itemsize)
    buffer = workspace("blocks", 2 * group_size * block_rows * agents, dtype, device)
    low = None  # bf16 operands (run.utility_precision): their product lands in a buffer of their own first
    if left.dtype != dtype:
        low = workspace("low blocks", group_size * block_rows * agents, left.dtype, device)
    tf32 = economy.utility_precision == "tf32"
    for g0 in range(0, groups, group_size):
        g = slice(g0, min(g0 + group_size, groups))
        for r0 in range(0, agents, block_rows):
            r = slice(r0, min(r0 + block_rows, agents))
            shape = (g.stop - g.start, r.stop - r.start, agents)
            size = math.prod(shape)
            scores, weights = buffer[:size].view(shape), buffer[size : 2 * size].view(shape)
            low_scores = low[:size].view(shape) if low is not None else None
            utility_product(left[g, r], right[g], scores, low_scores, tf32)  # beta_i U_ij, -BIG for non-sellers
            scores.diagonal(offset=r0, dim1=1, dim2=2).fill_(-big)
            if terms.network_bias is not None:
                scores.add_(terms.network_bias[r])
            elif economy.trade_mask is not None:
                scores.masked_fill_(~economy.trade_mask[r], -big)
            if weighed:
                weigh(scores, weights, terms.shifted_max[g, r, None], terms.tie_width[g, r], big, floor)
            yield g, r, scores, weights


def fused_trade(
    state: State,
    economy: Economy,
    rows: int | None = None,
    variances: torch.Tensor | None = None,
    blocks: Callable | None = None,
) -> MarketOutcome:
    """Expected-mode steps 1-5 for every buyer, as :func:`econspin.market.trade` computes them.

    ``rows`` fixes the buyer rows per block (default: ``run.chunk``, else cache-sized blocks);
    the result does not depend on it beyond rounding. ``variances``: the sellers' spin
    variances c_j (market.spin_variance), where the round has them already. ``blocks``: the
    block pass, ``blocks(terms, economy, moment_rows)`` with the results of
    :func:`expected_blocks` (default: that one, with ``rows``); econspin.triton_blocks passes
    its Triton programs here, and everything else of the step is this function's.
    """
    terms = round_terms(state, economy)
    groups, agents, d = terms.delivered.shape
    delivered = terms.delivered.view(-1, economy.heads, agents, d)
    moment_rows = torch.stack(seller_moments(state, economy, delivered, terms.fixed.gains, variances), dim=-2)
    moment_rows = moment_rows.view(groups, 2, agents)  # [|u_j|^2, c_j |W_V W_O|_F^2] as two rows
    if blocks is None:
        norm, moments, revenue = expected_blocks(terms, economy, moment_rows, rows)
    else:
        norm, moments, revenue = blocks(terms, economy, moment_rows)

    batch, heads = state.states.shape[0], economy.heads
    entropy, surplus, inverse_total = row_statistics(state, economy, terms)
    moments = moments * inverse_total[..., None]
    per_head = moments[..., :d]
    choice = moments[..., d] - (per_head**2).sum(-1)
    impact = (norm * inverse_total) ** 2

    def over_heads(values: torch.Tensor, mean: bool = False) -> torch.Tensor:
        # one head: a sum or mean of one number is that number, but for -0 (it gives +0), and none
        # of these is -0 (each is a sum of terms >= +0, or a - b with a >= +0): the same bits
        if heads == 1:
            return values.reshape(batch, agents, *values.shape[2:])
        values = values.reshape(batch, heads, agents, *values.shape[2:])
        return values.mean(1) if mean else values.sum(1)

    buyer = terms.fixed.buyer
    spending = terms.spend * terms.fixed.has_partner  # the mask is the same for every batch element and head
    revenue = over_heads(revenue)
    spent, earned = spending.sum(1, keepdim=True), revenue.sum(1, keepdim=True)
    revenue = revenue * torch.where(earned > 0, spent / earned, 0.0)  # sum R = sum s exactly
    # where every agent buys, the buyers' mask multiplies by 1: a pass over B N d numbers saved
    received = over_heads(per_head)
    return MarketOutcome(
        received=received if economy.every_agent_buys else received * buyer[None, :, None],
        revenue=revenue,
        spending=spending,
        entropy=over_heads(entropy, mean=True),
        surplus=over_heads(surplus, mean=True),
        field_variance=over_heads(choice + moments[..., d + 1]) / d * buyer,
        choice_variance=over_heads(choice) * buyer,
        impact=over_heads(impact, mean=True) * buyer,
    )


def expected_blocks(
    terms: BlockTerms, economy: Economy | BlockSettings, moment_rows: torch.Tensor, rows: int | None = None
):
    """The blocks' per-row results: (|e_i.|, (e @ [u, moments])_i, float64 revenue (groups, N)), unnormalised.

    Writes m_i, s_i and sum_j e_ij y_ij into ``terms`` as it goes. Under run.compile
    (econspin.compiled), where the round is more than one block (else econspin.traced_blocks
    traces its equations into the graph), the blocks run eagerly all the same, as one node of the compiled graph
    (:func:`_expected_blocks_operator`) on the devices of econspin.compiled.OPERATOR_DEVICES (the
    CPU), as a graph break elsewhere (CUDA; econspin.compiled.eagerly): Inductor's own loops
    over a block took 5x the eager round at N = 1024 (it recomputed exp2 for each reduction
    instead of keeping the weights; docs/performance.md), while eagerly each pass is one
    vectorised loop over a block in the cache and the products are MKL's.
    """
    if torch.compiler.is_compiling():
        if not eager_parts_as_operators(terms.left.device):
            return eagerly(expected_blocks, terms, economy, moment_rows, rows)
        return operator_results(_expected_blocks_operator, terms, economy, rows, moment_rows)
    groups, agents, d = terms.delivered.shape
    dtype, device = terms.delivered.dtype, terms.delivered.device
    norm = torch.empty(groups, agents, dtype=dtype, device=device)
    moments = torch.empty(groups, agents, d + 2, dtype=dtype, device=device)
    revenue = torch.zeros(groups, agents, dtype=torch.float64, device=device)
    low = terms.left.dtype if terms.left.dtype != dtype else None  # bf16 utilities: the received product too
    delivered = terms.delivered if low is None else terms.delivered.to(low)
    compiled_pass = block_pass.compiles(terms.delivered)  # the block's passes as one compiled kernel (a GPU's)
    limits = exp2_limits(dtype)
    for g, r, scores, weights in row_blocks(terms, economy, rows, weighed=not compiled_pass):
        if compiled_pass:
            kept = (terms.shifted_max[g, r], terms.total[g, r], norm[g, r], terms.dot[g, r], moments[g, r, d:])
            block_pass.weigh_and_sum(scores, weights, terms.tie_width[g, r], moment_rows[g], *limits, kept)
        else:
            torch.sum(weights, -1, out=terms.total[g, r])
            torch.linalg.vector_norm(weights, dim=-1, out=norm[g, r])
            torch.sum(scores.mul_(weights), -1, out=terms.dot[g, r])  # sum_j e_ij z_ij / ln 2
        rounded = None if low is None else workspace("low weights", weights.numel(), low, device)
        moments[g, r, :d] = received_product(weights, delivered[g], rounded)  # (d columns: no padding)
        # total >= 1 on a row with partners (its best seller weighs exactly 1), 0 on an empty row,
        # whose weights are all 0: what it would spend goes nowhere
        per_unit = terms.share[g, r] / terms.total[g, r].clamp(min=1.0)
        block_products(None if compiled_pass else moment_rows[g], per_unit, weights, moments[g, r, d:], revenue[g])
    return norm, moments, revenue


def block_products(moment_rows: torch.Tensor | None, per_unit: torch.Tensor, weights: torch.Tensor,
                   moments: torch.Tensor, revenue: torch.Tensor) -> None:
    """The block's 1- and 2-row products: moments = (moment_rows @ e^T)^T, revenue += per_unit @ e (in float64).

    No ``moment_rows``: the revenue alone (the compiled pass summed the moments). MKL runs a
    product of 1 or 2 rows on one thread: at N = 1024, B = 1 (one block of 1024 rows)
    the second thread sat idle through 0.25 ms of them. A block of many rows is therefore cut into
    pieces of PIECE_ROWS rows, batched in one product, which MKL spreads over the threads. The
    pieces' size is fixed, not the threads' count: the numbers depend on neither the threads nor
    the batch (a batched sweep keeps each point's bits). The pieces' revenue is summed in float64.
    """
    groups, rows, agents = weights.shape
    pieces = rows // PIECE_ROWS if rows % PIECE_ROWS == 0 else 1
    if pieces < 2:
        if moment_rows is not None:
            moments.copy_(torch.bmm(moment_rows, weights.transpose(1, 2)).transpose(1, 2))
        # a row vector times the block: 0.05 ms against 0.47 ms for block^T times a column at B = 128, N = 64
        revenue.add_(torch.bmm(per_unit[:, None, :], weights).squeeze(1))  # (+= would copy it back onto itself)
        return
    cut = weights.reshape(groups * pieces, PIECE_ROWS, agents)
    if moment_rows is not None:
        kinds = moment_rows.shape[1]  # every piece reads its group's moment rows (one group: a view, no copy)
        every_piece = moment_rows[:, None].expand(groups, pieces, kinds, agents).reshape(groups * pieces, kinds, agents)
        # (groups pieces, kinds, PIECE_ROWS): a piece's columns are its rows' moments, in order
        piece_moments = torch.bmm(every_piece, cut.transpose(1, 2)).view(groups, pieces, kinds, PIECE_ROWS)
        moments.unflatten(1, (pieces, PIECE_ROWS)).copy_(piece_moments.transpose(2, 3))
    earned = torch.bmm(per_unit.reshape(groups * pieces, 1, PIECE_ROWS), cut).view(groups, pieces, agents)
    revenue.add_(earned.sum(1, dtype=torch.float64))


def block_arguments(terms: BlockTerms, economy: Economy | BlockSettings, rows: int | None) -> tuple:
    """What a block operator takes: the tensors of ``terms`` and the settings, None as -1."""
    settings = (-1 if rows is None else rows, -1 if economy.chunk is None else economy.chunk)
    tensors = (terms.left, terms.right, terms.delivered, terms.share, terms.tie_width, terms.network_bias)
    return (*tensors, economy.trade_mask, *settings, float(economy.memory_budget), economy.utility_precision)


def operator_results(operator, terms: BlockTerms, economy: Economy | BlockSettings, rows: int | None, *extra):
    """A block operator's results after m_i, s_i and sum e y, which go into ``terms`` as the eager loops write them."""
    results = operator(*block_arguments(terms, economy, rows), *extra)
    terms.keep_rows(*results[:3])
    return results[3:]


def blocks_from_arguments(left, right, delivered, share, tie_width, network_bias, trade_mask, rows, chunk,
                          memory_budget, utility_precision):
    """(terms with fresh per-row results, settings, rows) from :func:`block_arguments`."""
    per_row = [delivered.new_empty(delivered.shape[0], delivered.shape[1]) for _ in range(3)]  # 0.8 us, not 2.6
    terms = BlockTerms(left, right, delivered, share, tie_width, network_bias, *per_row)
    settings = BlockSettings(None if chunk < 0 else chunk, memory_budget, utility_precision, trade_mask)
    return terms, settings, None if rows < 0 else rows


def _expected_blocks_shapes(left, right, delivered, share, tie_width, network_bias, trade_mask, rows, chunk,
                            memory_budget, utility_precision, moment_rows):
    groups, agents, d = delivered.shape
    per_row = [delivered.new_empty(groups, agents) for _ in range(4)]
    moments = delivered.new_empty(groups, agents, d + 2)
    return *per_row, moments, delivered.new_empty(groups, agents, dtype=torch.float64)


# one node of a compiled round instead of a graph break in every frame above the call (a
# torch.compiler.disable'd function splits the traced round there into graphs of its own)
@eager_operator("expected_blocks", _expected_blocks_shapes)
def _expected_blocks_operator(
    left: torch.Tensor, right: torch.Tensor, delivered: torch.Tensor, share: torch.Tensor, tie_width: torch.Tensor,
    network_bias: torch.Tensor | None, trade_mask: torch.Tensor | None, rows: int, chunk: int,
    memory_budget: float, utility_precision: str, moment_rows: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`expected_blocks` run eagerly: (m_i, s_i, sum e y, |e_i.|, moments, revenue)."""
    terms, settings, rows = blocks_from_arguments(left, right, delivered, share, tie_width, network_bias,
                                                  trade_mask, rows, chunk, memory_budget, utility_precision)
    norm, moments, revenue = expected_blocks(terms, settings, moment_rows, rows)
    return terms.shifted_max, terms.total, terms.dot, norm, moments, revenue


def row_statistics(state: State, economy: Economy, terms: RoundTerms):
    """(entropy, surplus, 1 / s_i) per row, (groups, N), from m_i, s_i and sum_j e_ij y_ij."""
    batch, agents, _ = state.states.shape
    heads, fixed = economy.heads, terms.fixed
    temperature = state.temperature[:, None, :].expand(batch, heads, agents).reshape(batch * heads, agents)
    total = terms.total.clamp(min=1.0)  # total >= 1 where there is a partner
    inverse_total = torch.reciprocal(total)
    lse = torch.log(total)  # natural log-sum-exp of z_ij = ln 2 * scores; 0 on empty rows
    entropy = torch.where(torch.isinf(temperature), lse, lse - LN2 * terms.dot * inverse_total)
    entropy = torch.where(fixed.several_partners, entropy / fixed.entropy_scale, 0.0)  # ln n_i: the largest
    spread = torch.where((temperature == 0) | fixed.few_partners, 0.0, temperature * lse)
    beta = terms.beta.reshape(batch * heads, agents)
    surplus = torch.where(fixed.has_partner, terms.shifted_max / beta + spread, 0.0)
    return entropy, surplus, inverse_total
