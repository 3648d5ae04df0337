"""The Triton programs of the expected-mode block pass (econspin.triton_blocks), compiled or interpreted.

Each program works on one tile of buyers x sellers at a time, held in registers / SRAM: the
N x N utilities are never stored. For group g (batch element b, head h), buyer row i and
seller j the tile's scores are exactly those of :func:`econspin.fused.row_blocks`:

    S_ij = [beta_i q_i / sqrt(d_k), beta_i, 1] . [k_j, b_j, c_j]       (one tl.dot, K padded with zeros)
           + network bias_ij (0 or -BIG), or -BIG where the trade mask forbids i -> j,
    S_ij = -BIG on the diagonal, outside the N x N range, and (bias) where the network has no edge,
    y_ij = clamp(S_ij - (m_i - t_i), FLOOR, 0),   e_ij = 2^(y_ij), set to 0 at or below 2^(FLOOR + 1),

two programs, since revenue needs each row's s_i before its weights are summed down the columns:

1. :func:`row_sums_program` (grid: row tiles x groups): m_i = max_j S_ij (0 where no seller is
   allowed: the maximum is then about -BIG), s_i = sum_j e_ij, |e_i.|, sum_j e_ij y_ij, (e @ u)_i
   (d columns, a tl.dot) and sum_j e_ij [|u_j|^2, c_j |W_V W_O|^2] (two sums of products). A
   tile of rows with no row at the T = 0 limit finds m_i as it goes, rescaling its sums (one
   loop over the sellers, as flash attention's online softmax); one with such a row finds m_i
   first (two loops): its ties are measured from the final maximum.
2. :func:`revenue_program` (grid: seller tiles x groups): R_j = sum_i e_ij p_i, p_i = (s_i / H) /
   max(s_i, 1), each tile's sum added into a float64 accumulator: deterministic, no atomics.

At full precision every tl.dot runs with ``input_precision="ieee"``: TF32 (Triton's float32
default on CUDA) rounds the operands to 10 bits, which would move utilities by far more than
the T = 0 tie width and the 1e-5 tolerance allow. The scores' sums run in another order than
torch's matrix product; their rounding stays within the tie width t_i (econspin.fused's module
doc: any order of the d_k + 2 products is bounded alike). ``run.utility_precision`` (UTILITIES,
RECEIVED; econspin.precision) asks for the scores' product on the tensor cores instead: bf16
operands with float32 sums, the tile rounded to bf16 as torch's bf16 product rounds it, and
the received product e @ u on bf16 too; or TF32 for the scores' product alone.

The bodies below are plain functions: :func:`econspin.triton_programs.programs` decorates
copies of them (:data:`HELPERS` and :data:`PROGRAMS`), either with ``triton.jit`` (CUDA) or
with Triton's interpreter (CPU tensors, through numpy), so that one process runs both.
"""

from __future__ import annotations

import triton.language as tl


def tile_scores(
    left,
    right,
    network,
    row_start,
    column_start,
    agents,
    keys,
    left_row_stride,
    left_key_stride,
    right_key_stride,
    right_column_stride,
    KEYS_PADDED: tl.constexpr,
    NETWORK: tl.constexpr,
    BIG: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_COLUMNS: tl.constexpr,
    UTILITIES: tl.constexpr,
    ROUNDED: tl.constexpr,
):
    """S_ij for a tile of BLOCK_ROWS buyers from ``row_start`` and BLOCK_COLUMNS sellers from ``column_start``.

    ``left`` and ``right`` point at the group's operands (bf16 ones with UTILITIES "bf16");
    ``network`` at the N x N bias (NETWORK 1) or the trade mask as bytes (NETWORK 2); NETWORK
    0: none. UTILITIES: the product's precision, "ieee", "tf32" or "bf16" (:func:`product`);
    ROUNDED: bf16 products' scores rounded to bf16. A caller that needs only the row maximum
    rounds that instead: rounding to nearest is monotone, so the maximum of the rounded scores
    is the rounded maximum, and -BIG, a power of two, rounds to itself.

    An interior tile (all its buyers and sellers below N, its buyer and seller ranges apart, so
    that no buyer meets itself) takes :func:`score_tile` without the range and diagonal masks:
    at large N all tiles but about two a row of tiles. The branch is one per tile, the same for
    every thread of a program, as flash attention applies its causal mask on the diagonal's tiles alone.
    """
    rows = row_start + tl.arange(0, BLOCK_ROWS)
    columns = column_start + tl.arange(0, BLOCK_COLUMNS)
    buyers = left + rows[:, None] * left_row_stride  # each buyer's operand row
    sellers = right + columns[None, :] * right_column_stride  # each seller's operand column
    pairs = network + rows[:, None].to(tl.int64) * agents + columns[None, :]  # N^2 passes 2^31 at N = 46341
    inside = (row_start + BLOCK_ROWS <= agents) & (column_start + BLOCK_COLUMNS <= agents)
    apart = (column_start + BLOCK_COLUMNS <= row_start) | (row_start + BLOCK_ROWS <= column_start)
    if inside & apart:
        scores = score_tile(buyers, sellers, pairs, rows, columns, agents, keys, left_key_stride, right_key_stride,
                            KEYS_PADDED, NETWORK, BIG, UTILITIES, ROUNDED, True)  # fmt: skip
    else:
        scores = score_tile(buyers, sellers, pairs, rows, columns, agents, keys, left_key_stride, right_key_stride,
                            KEYS_PADDED, NETWORK, BIG, UTILITIES, ROUNDED, False)  # fmt: skip
    return scores


def score_tile(
    buyers,
    sellers,
    pairs,
    rows,
    columns,
    agents,
    keys,
    buyer_key_stride,
    seller_key_stride,
    KEYS_PADDED: tl.constexpr,
    NETWORK: tl.constexpr,
    BIG: tl.constexpr,
    UTILITIES: tl.constexpr,
    ROUNDED: tl.constexpr,
    INTERIOR: tl.constexpr,
):
    """The scores of :func:`tile_scores`' tile: ``buyers``, ``sellers`` and ``pairs`` point at its operands and network.

    The product runs over the d_k = ``keys`` - 2 query-key columns (padded to KEYS_PADDED), and
    the last two, beta_i b_j + 1 c_j, are added as two products a pair: inside the tl.dot they
    would pad d_k = 32 to 64 and double its work. Any order of the d_k + 2 products is bounded
    alike (econspin.fused's module doc), so the scores are those of one product. INTERIOR: the
    range and diagonal masks are constant true, and cost nothing.
    """
    key = tl.arange(0, KEYS_PADDED)
    features = keys - 2
    row_in, column_in = (rows[:, None] < agents) | INTERIOR, (columns[None, :] < agents) | INTERIOR
    left = tl.load(buyers + key[None, :] * buyer_key_stride, mask=row_in & (key[None, :] < features), other=0.0)
    right = tl.load(sellers + key[:, None] * seller_key_stride, mask=(key[:, None] < features) & column_in, other=0.0)
    scores = product(left, right, UTILITIES)
    beta = tl.load(buyers + features * buyer_key_stride, mask=row_in, other=0.0).to(scores.dtype)
    bias = tl.load(sellers + features * seller_key_stride, mask=column_in, other=0.0).to(scores.dtype)
    ones = tl.load(buyers + (features + 1) * buyer_key_stride, mask=row_in, other=0.0).to(scores.dtype)
    sellable = tl.load(sellers + (features + 1) * seller_key_stride, mask=column_in, other=0.0)
    scores += beta * bias + ones * sellable.to(scores.dtype)  # c_j = 0, or -2^120 on a non-seller
    if UTILITIES == "bf16":  # as torch's bf16 product: float32 sums rounded once to bf16 (econspin.precision)
        if ROUNDED:
            scores = bf16_rounded(scores)
    allowed = row_in & column_in & ((rows[:, None] != columns[None, :]) | INTERIOR)
    if NETWORK == 1:
        scores += tl.load(pairs, mask=row_in & column_in, other=0.0)
    if NETWORK == 2:
        edge = tl.load(pairs, mask=row_in & column_in, other=0)
        allowed = allowed & (edge != 0)
    return tl.where(allowed, scores, -BIG)


def weight_tile(scores, shift, FLOOR: tl.constexpr, THRESHOLD: tl.constexpr):
    """(y_ij, e_ij) of a tile from its scores and the rows' shifts m_i - t_i; THRESHOLD = 2^(FLOOR + 1)."""
    shifted = tl.minimum(tl.maximum(scores - shift[:, None], FLOOR), 0.0)
    weights = tl.exp2(shifted)
    return shifted, tl.where(weights > THRESHOLD, weights, 0.0)


def row_tile(left, right, agents, left_group_stride, right_group_stride, BLOCK_ROWS: tl.constexpr):
    """(first row, group, the group's operands, the rows, which rows are below N) of a program over tiles of rows."""
    row_start = tl.program_id(0) * BLOCK_ROWS
    group = tl.program_id(1).to(tl.int64)
    rows = row_start + tl.arange(0, BLOCK_ROWS)
    return row_start, group, left + group * left_group_stride, right + group * right_group_stride, rows, rows < agents


def row_maximum(
    best,
    left,
    right,
    network,
    row_start,
    agents,
    keys,
    left_row_stride,
    left_key_stride,
    right_key_stride,
    right_column_stride,
    KEYS_PADDED: tl.constexpr,
    NETWORK: tl.constexpr,
    BIG: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_COLUMNS: tl.constexpr,
    UTILITIES: tl.constexpr,
):
    """m_i = max_j S_ij over a tile of rows (a loop over every seller tile, from ``best``, -BIG in the working dtype).

    0 on a row with no allowed seller.
    """
    for column_start in range(0, agents, BLOCK_COLUMNS):
        scores = tile_scores(
            left, right, network, row_start, column_start, agents, keys,
            left_row_stride, left_key_stride, right_key_stride, right_column_stride,
            KEYS_PADDED, NETWORK, BIG, BLOCK_ROWS, BLOCK_COLUMNS, UTILITIES, False,
        )  # fmt: skip
        best = tl.maximum(best, max_over(scores, 1))
    if UTILITIES == "bf16":  # the maximum of the rounded scores (score_tile's ROUNDED)
        best = bf16_rounded(best)
    return empty_rows_shifted_by_zero(best, BIG)


def empty_rows_shifted_by_zero(best, BIG: tl.constexpr):
    """The rows' shifts from their maxima: a row with no allowed seller (maximum about -BIG) is shifted by 0."""
    return tl.where(best > -0.5 * BIG, best, 0.0)


def row_sums_program(
    left,
    right,
    network,
    shifted_max,
    tie_width,
    delivered,
    moment_rows,
    total,
    norm,
    dot,
    moments,
    agents,
    keys,
    left_group_stride,
    left_row_stride,
    left_key_stride,
    right_group_stride,
    right_key_stride,
    right_column_stride,
    delivered_group_stride,
    delivered_row_stride,
    delivered_column_stride,
    moment_group_stride,
    moment_kind_stride,
    moment_column_stride,
    dimension,
    KEYS_PADDED: tl.constexpr,
    VALUES_PADDED: tl.constexpr,
    NETWORK: tl.constexpr,
    BIG: tl.constexpr,
    FLOOR: tl.constexpr,
    THRESHOLD: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_COLUMNS: tl.constexpr,
    UTILITIES: tl.constexpr,
    RECEIVED: tl.constexpr,
    ONE_PASS: tl.constexpr,
    MOMENTS: tl.constexpr,
):
    """The rows' pass: m_i, s_i, |e_i.|, sum_j e_ij y_ij into (groups, N) outputs; (groups, N, d + 2) ``moments``.

    moments_i = [(e @ u)_i, sum_j e_ij mu_1j, sum_j e_ij mu_2j], with u = ``delivered`` (groups,
    N, d) and mu = ``moment_rows`` (groups, 2, N) = [|u_j|^2, c_j |W_V W_O|^2] (:func:`tile_sums`);
    without MOMENTS (sampled mode, econspin.triton_draws) neither is read nor ``moments`` written.

    ONE_PASS: a tile of rows none of which is at the T = 0 limit (every tie width t_i = 0) takes
    one loop over the sellers, as flash attention does: each seller tile is weighed against the
    rows' maximum so far, and when a later tile raises it by delta_i = m'_i - m_i, the sums so
    far are scaled by 2^(-delta_i) (|e| squared by 2^(-2 delta_i)), and sum_j e_ij y_ij becomes
    2^(-delta_i) (sum_j e_ij y_ij - delta_i s_i), since every y_ij drops by delta_i. At T = inf
    the scores of a row lie within 2^-(p+5) of each other, where 2^(-delta) rounds to exactly 1:
    the weights stay exactly 1. A tile with a row at the limit (t_i > 0: ties within t_i of the
    final maximum, which no scaling reproduces) takes two loops, the maximum first (:func:`row_maximum`);
    so does every tile without ONE_PASS. The branch is one per tile of rows, on data, in the
    program: nothing waits on the host.
    """
    row_start, group, left, right, rows, row_in = row_tile(left, right, agents, left_group_stride,
                                                           right_group_stride, BLOCK_ROWS)  # fmt: skip
    delivered += group * delivered_group_stride
    moment_rows += group * moment_group_stride
    ties = tl.load(tie_width + group * agents + rows, mask=row_in, other=0.0)
    sums = tl.full([BLOCK_ROWS], 0.0, ties.dtype)
    squares = tl.full([BLOCK_ROWS], 0.0, ties.dtype)
    products = tl.full([BLOCK_ROWS], 0.0, ties.dtype)
    firsts = tl.full([BLOCK_ROWS], 0.0, ties.dtype)
    seconds = tl.full([BLOCK_ROWS], 0.0, ties.dtype)
    received = tl.full([BLOCK_ROWS, VALUES_PADDED], 0.0, ties.dtype)
    best = tl.full([BLOCK_ROWS], -BIG, ties.dtype)  # the rows' maximum so far (ONE_PASS)
    one_pass = (max_over(ties, 0) == 0) & ONE_PASS
    if one_pass:
        shift = empty_rows_shifted_by_zero(best, BIG)  # raised tile by tile below
    else:
        shift = row_maximum(
            best, left, right, network, row_start, agents, keys,
            left_row_stride, left_key_stride, right_key_stride, right_column_stride,
            KEYS_PADDED, NETWORK, BIG, BLOCK_ROWS, BLOCK_COLUMNS, UTILITIES,
        )  # fmt: skip
    for column_start in range(0, agents, BLOCK_COLUMNS):
        scores = tile_scores(
            left, right, network, row_start, column_start, agents, keys,
            left_row_stride, left_key_stride, right_key_stride, right_column_stride,
            KEYS_PADDED, NETWORK, BIG, BLOCK_ROWS, BLOCK_COLUMNS, UTILITIES, True,
        )  # fmt: skip
        if one_pass:  # the same branch for every tile of the loop
            best = tl.maximum(best, max_over(scores, 1))
            raised = empty_rows_shifted_by_zero(best, BIG)
            # a row's first allowed seller may lower its shift from 0: its sums are 0 then, any finite scale does
            delta = raised - shift
            scale = tl.exp2(tl.minimum(-delta, 0.0))
            products = scale * (products - delta * sums)
            sums *= scale
            squares *= scale * scale
            if MOMENTS:
                firsts *= scale
                seconds *= scale
                received *= scale[:, None]
            shift = raised
        sums, squares, products, firsts, seconds, received = tile_sums(
            sums, squares, products, firsts, seconds, received, scores, shift - ties, delivered, moment_rows,
            column_start, agents, delivered_row_stride, delivered_column_stride, moment_kind_stride,
            moment_column_stride, dimension, VALUES_PADDED, FLOOR, THRESHOLD, BLOCK_COLUMNS, RECEIVED, MOMENTS,
        )  # fmt: skip
    tl.store(shifted_max + group * agents + rows, shift, mask=row_in)
    tl.store(total + group * agents + rows, sums, mask=row_in)
    tl.store(norm + group * agents + rows, tl.sqrt(squares), mask=row_in)
    tl.store(dot + group * agents + rows, products, mask=row_in)
    if MOMENTS:
        if RECEIVED == "bf16":
            received = bf16_rounded(received)
        store_moments(moments, group, agents, rows, row_in, received, firsts, seconds, dimension, VALUES_PADDED)


def store_moments(moments, group, agents, rows, row_in, received, firsts, seconds, dimension,
                  VALUES_PADDED: tl.constexpr):  # fmt: skip
    """The rows' [(e @ u)_i, sum_j e_ij mu_1j, sum_j e_ij mu_2j] into (groups, N, d + 2) ``moments``."""
    row_moments = moments + (group * agents + rows) * (dimension + 2)
    columns = tl.arange(0, VALUES_PADDED)
    tl.store(
        row_moments[:, None] + columns[None, :],
        received,
        mask=row_in[:, None] & (columns[None, :] < dimension),
    )
    tl.store(row_moments + dimension, firsts, mask=row_in)
    tl.store(row_moments + dimension + 1, seconds, mask=row_in)


def tile_sums(
    sums,
    squares,
    products,
    firsts,
    seconds,
    received,
    scores,
    shift,
    delivered,
    moment_rows,
    column_start,
    agents,
    delivered_row_stride,
    delivered_column_stride,
    moment_kind_stride,
    moment_column_stride,
    dimension,
    VALUES_PADDED: tl.constexpr,
    FLOOR: tl.constexpr,
    THRESHOLD: tl.constexpr,
    BLOCK_COLUMNS: tl.constexpr,
    RECEIVED: tl.constexpr,
    MOMENTS: tl.constexpr,
):
    """The row sums with one more seller tile's weights e_ij = 2^(y_ij), y_ij = min(S_ij - ``shift``_i, 0).

    e @ u is a tl.dot of d columns (padded to VALUES_PADDED) in RECEIVED's precision: "bf16" (e
    rounded to the bf16 of u, float32 sums, rounded once at the end by the caller, as
    econspin.precision.received_product) or "ieee". The two moment columns are sums of products in
    the working precision: inside the dot they would pad d = 32 to 64 columns, and with bf16
    values they would be rounded.
    """
    shifted, weights = weight_tile(scores, shift, FLOOR, THRESHOLD)
    sums += sum_over(weights, 1)
    squares += sum_over(weights * weights, 1)
    products += sum_over(shifted * weights, 1)
    if MOMENTS:
        sellers = column_start + tl.arange(0, BLOCK_COLUMNS)
        seller_in = sellers < agents
        first = tl.load(moment_rows + sellers * moment_column_stride, mask=seller_in, other=0.0)
        second = tl.load(moment_rows + moment_kind_stride + sellers * moment_column_stride, mask=seller_in, other=0.0)
        firsts += sum_over(weights * first[None, :], 1)
        seconds += sum_over(weights * second[None, :], 1)
        columns = tl.arange(0, VALUES_PADDED)
        values = tl.load(
            delivered + sellers[:, None] * delivered_row_stride + columns[None, :] * delivered_column_stride,
            mask=seller_in[:, None] & (columns[None, :] < dimension),
            other=0.0,
        )
        if RECEIVED == "bf16":  # e_ij rounded to bf16 as torch rounds it (the cast then exact on either kind)
            received += product(bf16_rounded(weights).to(tl.bfloat16), values, RECEIVED)
        else:
            received += product(weights, values, RECEIVED)
    return sums, squares, products, firsts, seconds, received


def revenue_program(
    left,
    right,
    network,
    shifted_max,
    tie_width,
    per_unit,
    revenue,
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
    """The columns' pass: R_j = sum_i e_ij p_i over every buyer tile, into float64 ``revenue`` (groups, N)."""
    column_start = tl.program_id(0) * BLOCK_COLUMNS
    group = tl.program_id(1).to(tl.int64)
    left += group * left_group_stride
    right += group * right_group_stride
    earned = tl.full([BLOCK_COLUMNS], 0.0, tl.float64)
    for row_start in range(0, agents, BLOCK_ROWS):
        rows = row_start + tl.arange(0, BLOCK_ROWS)
        row_in = rows < agents
        shift = tl.load(shifted_max + group * agents + rows, mask=row_in, other=0.0)
        shift -= tl.load(tie_width + group * agents + rows, mask=row_in, other=0.0)
        paid = tl.load(per_unit + group * agents + rows, mask=row_in, other=0.0)
        scores = tile_scores(
            left, right, network, row_start, column_start, agents, keys,
            left_row_stride, left_key_stride, right_key_stride, right_column_stride,
            KEYS_PADDED, NETWORK, BIG, BLOCK_ROWS, BLOCK_COLUMNS, UTILITIES, True,
        )  # fmt: skip
        _, weights = weight_tile(scores, shift, FLOOR, THRESHOLD)
        earned += sum_over(weights * paid[:, None], 0).to(tl.float64)
    columns = column_start + tl.arange(0, BLOCK_COLUMNS)
    tl.store(revenue + group * agents + columns, earned, mask=columns < agents)


def bf16_rounded(values):
    """float32 ``values`` rounded to the nearest bf16, ties to even, as float32: torch's ``.to(torch.bfloat16)``.

    Written on the bits, not as ``.to(tl.bfloat16)``: Triton's interpreter (3.9) truncates that
    cast where a GPU rounds to nearest, so a cast would make the CPU's tests check other numbers
    than the GPU computes. (No NaN reaches it; infinities keep their bits.)
    """
    bits = values.to(tl.uint32, bitcast=True)
    bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return bits.to(tl.float32, bitcast=True)


def product(left, right, PRECISION: tl.constexpr):
    """The tl.dot of two tiles, float32 (or float64) sums: PRECISION "tf32" on the tensor cores' TF32, else exact.

    bf16 operands ("bf16") multiply exactly on the tensor cores; float32 ones with "ieee" are
    not rounded (Triton's float32 default on CUDA is TF32, which keeps 10 bits of each operand
    and would move utilities by far more than the T = 0 tie width and the 1e-5 tolerance allow).
    """
    if PRECISION == "tf32":
        return tl.dot(left, right, input_precision="tf32")
    return tl.dot(left, right, input_precision="ieee")


def widened_product(left, right, PRECISION: tl.constexpr):
    """:func:`product` for the interpreter: bf16 operands widened to float32 first, exactly.

    The interpreter's tl.dot multiplies bf16 operands as the integers that store them (triton
    3.9: numpy's matmul of their uint16 bits); widened, the products are exact and the sums
    float32, as on the tensor cores.
    """
    if PRECISION == "bf16":
        return tl.dot(left.to(tl.float32), right.to(tl.float32), input_precision="ieee")
    return tl.dot(left, right, input_precision="ieee")


def sum_over(values, axis):
    """tl.sum over ``axis``: compiled programs run this body, interpreted ones the library's (:func:`programs`)."""
    return tl.sum(values, axis)


def max_over(values, axis):
    """tl.max over ``axis``: compiled programs run this body, interpreted ones the library's (:func:`programs`)."""
    return tl.max(values, axis)


HELPERS = (
    "tile_scores",
    "score_tile",
    "weight_tile",
    "row_tile",
    "row_maximum",
    "empty_rows_shifted_by_zero",
    "tile_sums",
    "store_moments",
    "bf16_rounded",
    "sum_over",
    "max_over",
    "product",
)
PROGRAMS = ("row_sums_program", "revenue_program")
# what an interpreted program calls instead of a helper: for the reductions, the library functions'
# bodies (the interpreter cannot call them from an interpreted program: they are triton.jit
# functions); for the product, the body that widens bf16 operands
INTERPRETED_BODIES = {"sum_over": tl.sum.fn, "max_over": tl.max.fn, "product": widened_product}
