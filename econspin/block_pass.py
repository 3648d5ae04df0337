"""A block's elementwise passes: eager, one operation at a time, or compiled into one kernel.

The blocks of both modes (econspin.fused, econspin.fused_sampled) take, for every buyer row i
of a block of scores beta_i U_ij (the diagonal and the trade network already applied, -BIG
where j is no seller):

    m_i    = max_j score_ij, or 0 on a row without a seller (every score -BIG)
    y_ij   = clamp(score_ij - (m_i - t_i), floor, 0)                   (t_i the row's tie width)
    e_ij   = 2^(y_ij), or 0 where that is at most 2^(floor + 1)

and the expected blocks the row sums

    s_i    = sum_j e_ij,    |e_i.| = (sum_j e_ij^2)^(1/2),    sum_j e_ij y_ij
    r_ik   = sum_j e_ij w_kj                                            (the two moment rows w_k)

leaving e in the block's weights for its products (received, revenue); the sampled blocks'
draw reads e and y (econspin.fused_sampled).

:func:`weigh` computes m_i, y and e, eagerly one torch operation at a time: five passes over
the block. The expected blocks then take each sum as a pass of its own and the moment rows as
a product (econspin.fused.expected_blocks): about sixteen reads and writes of the block in all.
On a CPU the block is sized to stay in the cache and each eager pass is one vectorised loop
over it; compiled, the same equations run no faster there (docs/performance.md). On a GPU a
block is larger than the cache, so every pass reads the whole block from device memory (and
most write it): on an H100 these passes were 57-72% of a fused round's device time at
N = 16384-65536, and a batched cuBLAS gemv over 512-row blocks (``gemmSN_TN``, by its shapes
the moment rows' product) 23% at N = 65536. Compiled by torch.compile, :func:`weigh_and_sum`
(:func:`one_pass`) is one kernel that reads the block twice (the row maximum, then the rest)
and writes e once, the sums and moments in it; :func:`weigh` (:func:`weigh_in_one_pass`) reads
it twice and writes y and e.

Where: the devices of :data:`COMPILED_DEVICES` (none until a GPU has measured the compiled
pass: experiments/gpu_check.py's ``block_pass`` step times both), outside any torch dispatch
mode (a function compiled under one breaks Dynamo for the process, econspin.flex.compiles),
outside a compiled round's tracing and outside a CUDA graph's capture (the blocks run eagerly
there, econspin.compiled). The two forms agree to rounding (tests/test_block_pass.py): the
sums are taken in another order; the sampled blocks draw the same sellers from either.

How: torch.compile's default, which makes a size dynamic once it changes, so that a run's
blocks (the full ones, the last one, their offsets in the round's tensors) share one graph; on
the devices of :data:`STATIC_SELLERS` (none by default) the sellers' axis N stays static, one
graph per N, its loops over N laid out for that N.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.fx.experimental._config as fx_config
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

from econspin import same_bits
from econspin.compiled import missing_compiler, stored, with_own_code
from econspin.inductor_setup import prepare_code_generation

# the devices whose blocks take the compiled passes; the CPU's cache-sized blocks gain nothing from them
COMPILED_DEVICES: tuple[str, ...] = ()
# the devices whose compiled passes keep the sellers' axis (the block's rows' length N) static: a kernel per N, its
# reduction over N laid out for that N. Elsewhere N goes dynamic on its first change (torch's default) and the
# kernel's launch configuration comes from the sizes it was compiled at: in the second H200 session the pass at
# N = 65536 took 0.92 of the eager round after compiling first at N = 4096 and 0.45 after 16384 and 32768
# (docs/performance.md); none until a GPU has timed both (experiments/gpu_block_pass.py's ways)
STATIC_SELLERS: tuple[str, ...] = ()
# graphs of each pass per process (two dtypes; sizes of 1, whole and partial blocks specialised apart; the test
# suite's many economies make 20): above Dynamo's default of 8, past which a pass runs its Python eagerly,
# operation by operation (the same numbers)
RECOMPILE_LIMIT = 64


def compiles(scores: torch.Tensor) -> bool:
    """Whether the pass over ``scores`` runs compiled (module doc), where torch.compile can build it."""
    if scores.device.type not in COMPILED_DEVICES or torch.compiler.is_compiling() or is_in_torch_dispatch_mode():
        return False
    if scores.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return False
    return _can_compile(scores.device.type)


@functools.cache
def _can_compile(device_type: str) -> bool:
    """Whether torch.compile has a compiler for ``device_type`` here (else the eager passes: the same numbers)."""
    return missing_compiler(torch.device(device_type)) is None


def weigh(scores: torch.Tensor, weights: torch.Tensor, row_max: torch.Tensor, tie_width: torch.Tensor,
          big: float, floor: float) -> None:
    """Write e into ``weights``, m_i into ``row_max`` (..., rows, 1) and y into ``scores``, in place.

    ``tie_width``: (..., rows) t_i. Eagerly, one torch operation at a time, the per-row result
    written where it is kept (out=): no copy. Where :func:`compiles`, one compiled kernel
    (:func:`weigh_in_one_pass`: two reads of the block, two writes), the same numbers to rounding.
    """
    if compiles(scores):
        with compiling():
            _compiled(weigh_in_one_pass, _sellers_static(scores, weights))(
                scores, weights, row_max, tie_width, big, floor
            )
        return
    zero = torch.zeros((), dtype=scores.dtype, device=scores.device)  # where(..., out=) takes no Python number
    torch.amax(scores, -1, keepdim=True, out=row_max)
    torch.where(row_max > -0.5 * big, row_max, zero, out=row_max)
    # y_ij = z_ij / ln 2; 0 on the ties of a row at the T = 0 limit (econspin.fused), where t_i > 0
    scores.sub_(row_max - tie_width[..., None]).clamp_(min=floor, max=0.0)
    # exp2 through torch's vector code for every entry: its scalar remainder rounds otherwise, and
    # which entries fall in it depends on the block's size, so on the batch (econspin.same_bits)
    torch.nn.functional.threshold_(same_bits.exp2(scores, weights), 2.0 ** (floor + 1), 0.0)


def weigh_and_sum(scores: torch.Tensor, weights: torch.Tensor, tie_width: torch.Tensor, moment_rows: torch.Tensor,
                  big: float, floor: float, outputs: tuple[torch.Tensor, ...]) -> None:
    """(m_i, s_i, |e_i.|, sum_j e_ij y_ij, r_i.) of a block by the compiled kernel into ``outputs``; e into ``weights``.

    ``scores``, ``weights``: (groups, rows, N); ``tie_width``: (groups, rows); ``moment_rows``:
    (groups, 2, N); ``outputs``: four (groups, rows) tensors and a (groups, rows, 2) one, views
    of where the round keeps them (written by the kernel: no copy a launch of its own). Where
    :func:`compiles` is false, econspin.fused.expected_blocks takes the same equations eagerly
    (:func:`weigh`, then a pass per sum and a product for the moments).
    """
    with compiling():
        static = _sellers_static(scores, weights, moment_rows)
        _compiled(one_pass, static)(scores, weights, tie_width, moment_rows, big, floor, *outputs)


def shifted_and_weights(scores, tie_width, big, floor):
    """(m_i, y, e) as whole-tensor expressions, for torch.compile; e stored (compiled.stored).

    Stored, because Inductor would otherwise compute e again in each loop that writes or sums
    it: in :func:`one_pass` exp2 twice, once in the sums' loop and once more in a third loop
    over the block that wrote the weights.
    """
    row_max = scores.amax(-1, keepdim=True)
    row_max = torch.where(row_max > -0.5 * big, row_max, 0.0)
    shifted = (scores - (row_max - tie_width[..., None])).clamp(floor, 0.0)
    powers = torch.exp2(shifted)
    return row_max, shifted, stored(torch.where(powers > 2.0 ** (floor + 1), powers, 0.0))


def one_pass(scores: torch.Tensor, weights: torch.Tensor, tie_width: torch.Tensor, moment_rows: torch.Tensor,
             big: float, floor: float, *outputs: torch.Tensor) -> None:
    """:func:`weigh_and_sum`'s equations for torch.compile: e to ``weights``, (m, s, |e|, sum e y, r) to ``outputs``."""
    row_max, shifted, powers = shifted_and_weights(scores, tie_width, big, floor)
    weights.copy_(powers)
    total, norm, dot, moments = row_sums(shifted, powers, moment_rows)
    for output, result in zip(outputs, (row_max.squeeze(-1), total, norm, dot, moments)):
        output.copy_(result)


def row_sums(shifted: torch.Tensor, powers: torch.Tensor, moment_rows: torch.Tensor):
    """(s_i, |e_i.|, sum_j e_ij y_ij, (sum_j e_ij w_kj)_k) of a block's y and e, as whole-tensor sums for torch.compile.

    The moment rows w_k (groups, K, N) as sums in Inductor's loops, not a batched K-row product.
    Also the sums of econspin.traced_blocks' expected blocks.
    """
    moments = torch.stack([(powers * moment_rows[:, None, k]).sum(-1) for k in range(moment_rows.shape[1])], -1)
    return powers.sum(-1), (powers * powers).sum(-1).sqrt(), (powers * shifted).sum(-1), moments


def weigh_in_one_pass(scores: torch.Tensor, weights: torch.Tensor, row_max: torch.Tensor, tie_width: torch.Tensor,
                      big: float, floor: float) -> None:
    """:func:`weigh`'s equations for torch.compile: y over ``scores``, e into ``weights``, m_i into ``row_max``."""
    maximum, shifted, powers = shifted_and_weights(scores, tie_width, big, floor)
    scores.copy_(shifted)
    weights.copy_(powers)
    row_max.copy_(maximum)


@contextlib.contextmanager
def compiling():
    """The settings a compiled pass is traced under (they act where a call compiles: a new shape or dtype).

    The passes take views: the block's weights, its rows' tie widths and the round's per-row tensors,
    whose storage offsets change from block to block. Dynamo makes a changed offset symbolic, but
    with duck sizing it also guards any offset that equals a size (or another offset) to stay equal,
    and the next block whose offset differs recompiles: at N = 65536 in blocks of 512 rows, the
    second block's offset 512 is the block's height. Without duck sizing each offset is a symbol of
    its own. RECOMPILE_LIMIT then bounds what is left (dtypes, sizes of 1 specialised apart).
    """
    with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT), fx_config.patch(use_duck_shape=False):
        yield


def _sellers_static(*blocks: torch.Tensor) -> bool:
    """Whether the pass over ``blocks`` (each (..., N)) keeps N static (:data:`STATIC_SELLERS`); if so, marked so."""
    if blocks[0].device.type not in STATIC_SELLERS:
        return False
    for block in blocks:
        torch._dynamo.mark_static(block, block.dim() - 1)
    return True


@functools.cache
def _compiled(function, sellers_static: bool = False):
    """``function`` compiled, once per process; shapes go dynamic on their first change (torch's default).

    ``sellers_static``: a copy of ``function`` with code of its own (Dynamo keeps its compiled
    graphs, and which sizes went dynamic, per code object), so that a pass with N static never
    takes a graph in which an earlier call made N dynamic, nor the other way round.
    """
    prepare_code_generation()
    return torch.compile(with_own_code(function, "sellers_static") if sellers_static else function)
