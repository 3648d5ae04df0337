"""The Triton programs of the expected-mode block pass (econspin.triton_blocks), compiled or interpreted.

Each program works on one tile of buyers x sellers at a time, held in registers / SRAM: the
N x N utilities are never stored. For group g (batch element b, head h), buyer row i and
seller j the tile's scores are exactly those of :func:`econspin.fused.row_blocks`:

    S_ij = [beta_i q_i / sqrt(d_k), beta_i, 1] . [k_j, b_j, c_j]       (one tl.dot, K padded with zeros)
           + network bias_ij (0 or -BIG), or -BIG where the trade mask forbids i -> j,
    S_ij = -BIG on the diagonal, outside the N x N range, and (bias) where the network has no edge,
    y_ij = clamp(S_ij - (m_i - t_i), FLOOR, 0),   e_ij = 2^(y_ij), set to 0 at or below 2^(FLOOR + 1),

three passes, since e_ij needs the row maximum m_i first and revenue needs each row's s_i:

1. :func:`row_max_program` (grid: row tiles x groups): m_i = max_j S_ij, 0 where no seller is
   allowed (the maximum is then about -BIG).
2. :func:`row_sums_program` (same grid): s_i = sum_j e_ij, |e_i.|, sum_j e_ij y_ij and
   (e @ values)_i for values = [u_j, |u_j|^2, c_j |W_V W_O|^2] (d + 2 columns, a tl.dot).
3. :func:`revenue_program` (grid: seller tiles x groups): R_j = sum_i e_ij p_i, p_i = (s_i / H) /
   max(s_i, 1), each tile's sum added into a float64 accumulator: deterministic, no atomics.

Every tl.dot runs with ``input_precision="ieee"``: TF32 (Triton's float32 default on CUDA)
rounds the operands to 10 bits, which would move utilities by far more than the T = 0 tie
width and the 1e-5 tolerance allow. The scores' sums run in another order than torch's
matrix product; their rounding stays within the tie width t_i (econspin.fused's module doc:
any order of the d_k + 2 products is bounded alike).

The bodies below are plain functions: :func:`programs` decorates copies of them, in a
namespace of their own, either with ``triton.jit`` (CUDA) or with Triton's interpreter (CPU
tensors, through numpy), so that one process runs both without the TRITON_INTERPRET setting;
each interpreted launch leaves ``triton.language`` as it found it (:func:`language_kept`), so
that compiled programs traced later in the process see the library's own functions.
"""

from __future__ import annotations

import contextlib
import functools
import types

import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction


def score_tile(
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
):
    """S_ij for a tile of BLOCK_ROWS buyers from ``row_start`` and BLOCK_COLUMNS sellers from ``column_start``.

    ``left`` and ``right`` point at the group's operands; ``network`` at the N x N bias
    (NETWORK 1) or the trade mask as bytes (NETWORK 2); NETWORK 0: none.
    """
    rows = row_start + tl.arange(0, BLOCK_ROWS)
    columns = column_start + tl.arange(0, BLOCK_COLUMNS)
    key = tl.arange(0, KEYS_PADDED)
    row_in, column_in = rows[:, None] < agents, columns[None, :] < agents
    buyers = tl.load(
        left + rows[:, None] * left_row_stride + key[None, :] * left_key_stride,
        mask=row_in & (key[None, :] < keys),
        other=0.0,
    )
    sellers = tl.load(
        right + key[:, None] * right_key_stride + columns[None, :] * right_column_stride,
        mask=(key[:, None] < keys) & column_in,
        other=0.0,
    )
    scores = tl.dot(buyers, sellers, input_precision="ieee")
    allowed = row_in & column_in & (rows[:, None] != columns[None, :])
    # N^2 passes 2^31 at N = 46341: the network's offsets in 64 bits
    pair = rows[:, None].to(tl.int64) * agents + columns[None, :]
    if NETWORK == 1:
        scores += tl.load(network + pair, mask=row_in & column_in, other=0.0)
    if NETWORK == 2:
        edge = tl.load(network + pair, mask=row_in & column_in, other=0)
        allowed = allowed & (edge != 0)
    return tl.where(allowed, scores, -BIG)


def weight_tile(scores, shift, FLOOR: tl.constexpr, THRESHOLD: tl.constexpr):
    """(y_ij, e_ij) of a tile from its scores and the rows' shifts m_i - t_i; THRESHOLD = 2^(FLOOR + 1)."""
    shifted = tl.minimum(tl.maximum(scores - shift[:, None], FLOOR), 0.0)
    weights = tl.exp2(shifted)
    return shifted, tl.where(weights > THRESHOLD, weights, 0.0)


def row_max_program(
    left,
    right,
    network,
    shifted_max,
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
    BLOCK_ROWS: tl.constexpr,
    BLOCK_COLUMNS: tl.constexpr,
):
    """Pass 1: m_i = max_j S_ij, or 0 on a row with no allowed seller; ``shifted_max`` is (groups, N) contiguous."""
    row_start = tl.program_id(0) * BLOCK_ROWS
    group = tl.program_id(1).to(tl.int64)
    left += group * left_group_stride
    right += group * right_group_stride
    best = tl.full([BLOCK_ROWS], -float("inf"), shifted_max.dtype.element_ty)
    for column_start in range(0, agents, BLOCK_COLUMNS):
        scores = score_tile(
            left, right, network, row_start, column_start, agents, keys,
            left_row_stride, left_key_stride, right_key_stride, right_column_stride,
            KEYS_PADDED, NETWORK, BIG, BLOCK_ROWS, BLOCK_COLUMNS,
        )  # fmt: skip
        best = tl.maximum(best, max_over(scores, 1))
    rows = row_start + tl.arange(0, BLOCK_ROWS)
    best = tl.where(best > -0.5 * BIG, best, 0.0)
    tl.store(shifted_max + group * agents + rows, best, mask=rows < agents)


def row_sums_program(
    left,
    right,
    network,
    shifted_max,
    tie_width,
    values,
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
    value_group_stride,
    value_row_stride,
    value_column_stride,
    value_columns,
    KEYS_PADDED: tl.constexpr,
    VALUES_PADDED: tl.constexpr,
    NETWORK: tl.constexpr,
    BIG: tl.constexpr,
    FLOOR: tl.constexpr,
    THRESHOLD: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_COLUMNS: tl.constexpr,
):
    """Pass 2: s_i, |e_i.|, sum_j e_ij y_ij into (groups, N) outputs, (e @ values)_i into (groups, N, columns)."""
    row_start = tl.program_id(0) * BLOCK_ROWS
    group = tl.program_id(1).to(tl.int64)
    left += group * left_group_stride
    right += group * right_group_stride
    values += group * value_group_stride
    rows = row_start + tl.arange(0, BLOCK_ROWS)
    row_in = rows < agents
    shift = tl.load(shifted_max + group * agents + rows, mask=row_in, other=0.0)
    shift -= tl.load(tie_width + group * agents + rows, mask=row_in, other=0.0)
    sums = tl.full([BLOCK_ROWS], 0.0, shift.dtype)
    squares = tl.full([BLOCK_ROWS], 0.0, shift.dtype)
    products = tl.full([BLOCK_ROWS], 0.0, shift.dtype)
    received = tl.full([BLOCK_ROWS, VALUES_PADDED], 0.0, shift.dtype)
    columns = tl.arange(0, VALUES_PADDED)
    for column_start in range(0, agents, BLOCK_COLUMNS):
        scores = score_tile(
            left, right, network, row_start, column_start, agents, keys,
            left_row_stride, left_key_stride, right_key_stride, right_column_stride,
            KEYS_PADDED, NETWORK, BIG, BLOCK_ROWS, BLOCK_COLUMNS,
        )  # fmt: skip
        shifted, weights = weight_tile(scores, shift, FLOOR, THRESHOLD)
        sums += sum_over(weights, 1)
        squares += sum_over(weights * weights, 1)
        products += sum_over(shifted * weights, 1)
        sellers = column_start + tl.arange(0, BLOCK_COLUMNS)
        delivered = tl.load(
            values + sellers[:, None] * value_row_stride + columns[None, :] * value_column_stride,
            mask=(sellers[:, None] < agents) & (columns[None, :] < value_columns),
            other=0.0,
        )
        received += tl.dot(weights, delivered, input_precision="ieee")
    tl.store(total + group * agents + rows, sums, mask=row_in)
    tl.store(norm + group * agents + rows, tl.sqrt(squares), mask=row_in)
    tl.store(dot + group * agents + rows, products, mask=row_in)
    tl.store(
        moments + (group * agents + rows[:, None]) * value_columns + columns[None, :],
        received,
        mask=row_in[:, None] & (columns[None, :] < value_columns),
    )


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
):
    """Pass 3: R_j = sum_i e_ij p_i over every buyer tile, into float64 ``revenue`` (groups, N)."""
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
        scores = score_tile(
            left, right, network, row_start, column_start, agents, keys,
            left_row_stride, left_key_stride, right_key_stride, right_column_stride,
            KEYS_PADDED, NETWORK, BIG, BLOCK_ROWS, BLOCK_COLUMNS,
        )  # fmt: skip
        _, weights = weight_tile(scores, shift, FLOOR, THRESHOLD)
        earned += sum_over(weights * paid[:, None], 0).to(tl.float64)
    columns = column_start + tl.arange(0, BLOCK_COLUMNS)
    tl.store(revenue + group * agents + columns, earned, mask=columns < agents)


def sum_over(values, axis):
    """tl.sum over ``axis``: compiled programs run this body, interpreted ones the library's (:func:`programs`)."""
    return tl.sum(values, axis)


def max_over(values, axis):
    """tl.max over ``axis``: compiled programs run this body, interpreted ones the library's (:func:`programs`)."""
    return tl.max(values, axis)


HELPERS = ("score_tile", "weight_tile", "sum_over", "max_over")
PROGRAMS = ("row_max_program", "row_sums_program", "revenue_program")
# the library functions the reductions call: the interpreter cannot call them from an interpreted
# program (they are triton.jit functions), so an interpreted program runs an interpreted copy of each instead
REDUCTIONS = {"sum_over": tl.sum, "max_over": tl.max}


def function_copy(function: types.FunctionType, namespace: dict) -> types.FunctionType:
    """``function`` with ``namespace`` as its globals (the same code, defaults and annotations)."""
    copy = types.FunctionType(function.__code__, namespace, function.__name__, function.__defaults__)
    copy.__kwdefaults__, copy.__annotations__ = function.__kwdefaults__, function.__annotations__
    copy.__qualname__, copy.__doc__ = function.__qualname__, function.__doc__
    return copy


def interpreted(function: types.FunctionType) -> InterpretedFunction:
    """``function`` (a plain body) for Triton's interpreter, run in a copy of its own module's namespace.

    The interpreter cannot call a ``triton.jit`` function from an interpreted one, and writes
    its own names into the namespace it runs a body in: a copy keeps the library's module as it was.
    """
    return InterpretedFunction(function_copy(function, dict(function.__globals__)))


def language_holders() -> list:
    """triton.language's modules and classes: where the interpreter patches its own functions in."""
    modules = [tl, tl.core, tl.math, tl.standard]
    classes = {value for module in modules for value in vars(module).values() if isinstance(value, type)}
    return modules + sorted((cls for cls in classes if cls.__module__.startswith("triton.")), key=str)


@contextlib.contextmanager
def language_kept():
    """Inside: whatever the interpreter does to triton.language; after: triton.language as it was before.

    A program run by the interpreter patches the language's functions for its run and restores
    them, but a function it calls from the program (``score_tile``, the library's ``tl.sum``)
    patches them again and leaves those patches behind (triton 3.9: ``tl.core.load``, ``full``
    and 60 more stayed lambdas). A compiled program traced after that in the same process
    fails on them ("Unsupported function referenced"): so each interpreted launch restores them.
    """
    saved = [(holder, dict(vars(holder))) for holder in language_holders()]
    try:
        yield
    finally:
        for holder, before in saved:
            now = dict(vars(holder))
            for name in now.keys() - before.keys():
                if not isinstance(now[name], types.ModuleType):  # a submodule imported meanwhile stays
                    delattr(holder, name)
            for name, value in before.items():
                if now.get(name, before) is not value:
                    setattr(holder, name, value)


class InterpretedProgram:
    """An interpreted program whose launches (``program[grid](...)``) leave triton.language as they found it."""

    def __init__(self, program: InterpretedFunction):
        self.program = program

    def __getitem__(self, grid):
        def launch(*arguments, **keywords):
            with language_kept():
                return self.program[grid](*arguments, **keywords)

        return launch


@functools.cache
def programs(interpreted_kind: bool) -> types.SimpleNamespace:
    """The three programs, compiled by ``triton.jit`` or (``interpreted_kind``) run by Triton's interpreter.

    Copies of the functions above share a namespace of their own (a copy of this module's), in
    which each helper's name is its decorated copy, and for the interpreter each reduction's
    name an interpreted copy of the library function it calls (:data:`REDUCTIONS`): the programs
    call only functions of their own kind. Built once per process and kind; neither kind reads
    or sets TRITON_INTERPRET.
    """
    namespace = dict(globals())
    for name in (*HELPERS, *PROGRAMS):
        if interpreted_kind and name in REDUCTIONS:
            namespace[name] = interpreted(REDUCTIONS[name].fn)
            continue
        copy = function_copy(globals()[name], namespace)
        namespace[name] = InterpretedFunction(copy) if interpreted_kind else triton.jit(copy)
    if interpreted_kind:
        return types.SimpleNamespace(**{name: InterpretedProgram(namespace[name]) for name in PROGRAMS})
    return types.SimpleNamespace(**{name: namespace[name] for name in PROGRAMS})
