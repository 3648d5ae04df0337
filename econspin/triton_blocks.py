"""``run.kernel: triton``: the expected-mode block pass as hand-written Triton programs.

:func:`triton_blocks` computes exactly what :func:`econspin.fused.expected_blocks` computes
(the same equations, fused.py's module doc: m_i, s_i, sum_j e_ij y_ij written into the round's
terms; |e_i.|, e @ [u, moment columns] and float64 revenue returned) in two passes over
tiles of buyers x sellers (the rows', then the columns'), flash-attention style: nothing N x N is stored, each tile's
utilities are one ``tl.dot`` in registers (econspin.triton_kernels). Everything else of the
step (the projections, temperatures and tie widths before; the entropies, surplus, moments'
normalisation and money's float64 rescaling after) is :func:`econspin.fused.fused_trade`'s,
which takes this pass as its ``blocks``.

Why: on a GPU the fused kernel's blocks run a dozen eager elementwise kernels over every
block, each reading and writing it from memory (docs/performance_log.md, "On a GPU: NVIDIA
H200"); here each tile is read once per pass and the elementwise work stays in registers.
On CUDA tensors the programs are compiled by ``triton.jit``; on CPU tensors they run under
Triton's interpreter (numpy, one program instance at a time: slow, for tests at small N),
which is how the test suite checks them without a GPU. The interpreted and the compiled
programs are built from the same function bodies (econspin.triton_programs.programs).

Under ``run.compile`` a CUDA round calls the programs through the operator
``econspin::triton_blocks`` (``torch.library.triton_op``, torch >= 2.6), whose Triton kernels
torch.compile and CUDA graphs see into: no break at the blocks (on a GPU: not yet run). On
a CPU the interpreted programs stay an eager break (``torch.compiler.disable``): they serve
tests, and a break costs them nothing next to the interpreter (the fused blocks are a custom
operator there instead, econspin.fused).

Reduced-precision utilities (``run.utility_precision``, econspin.precision) run here too, as
in the fused kernel: bf16 operands on the tensor cores (float32 sums, each tile rounded to
bf16 as torch's product rounds a block), the received product e @ u on bf16 too; or TF32 on
CUDA. Sampled mode (:func:`triton_sampled_trade`) runs the rows' pass without the moments,
then the draw (econspin.triton_draws): the fused kernel's sellers, up to a uniform within
rounding of a boundary; the gather of the sellers' signals and the float64 scatter of
revenue are econspin.fused_sampled's. Not covered, resolved as the flex kernel resolves
them: fixed couplings are refused, a sparse network takes its own kernel, and a round that
asks for gradients takes the reference path.

Tile sizes (:class:`Tiles`) change the order of the sums only: results agree beyond rounding
(tests/test_triton.py). Their best values on a GPU are what experiments/gpu_check.py's
``triton`` step measures; its timing is pending (docs/performance.md, "The Triton kernel").
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass

import torch

from econspin.economy import Economy
from econspin.fused import BlockTerms, RoundTerms, asks_for_gradients, exp2_limits, fused_trade
from econspin.fused_sampled import fused_sampled_trade
from econspin.market import MarketOutcome
from econspin.randomness import Draws
from econspin.state import State

MIN_DOT = 16  # tl.dot on CUDA: no tile side and no contraction narrower


@dataclass(frozen=True)
class Tiles:
    """Buyers and sellers per tile (powers of two >= 16), warps per program on CUDA, and the rows' pass.

    ``one_pass``: the rows' pass finds each row's maximum as it goes, one loop over the sellers
    where a tile of rows has no row at the T = 0 limit (econspin.triton_kernels.row_sums_program);
    False: always two loops, the maximum first. Both give the same results up to rounding.
    """

    rows: int = 64
    columns: int = 64
    warps: int = 4
    one_pass: bool = True

    def __post_init__(self):
        for name in ("rows", "columns"):
            size = getattr(self, name)
            if size < MIN_DOT or size & (size - 1):
                raise ValueError(f"Tiles.{name}: {size} is not a power of two >= {MIN_DOT}")


# the interpreter runs one program instance at a time in Python: at the test suite's small N
# the smallest tiles waste the least on padding; on CUDA 64 x 64 until measured (gpu_check's triton step)
DEFAULT_TILES = {"cuda": Tiles(64, 64, 4), "cpu": Tiles(16, 16, 1)}


def triton_missing() -> str | None:
    """Why ``run.kernel: triton`` cannot run here (one line), or None where the triton package imports."""
    if importlib.util.find_spec("triton") is None:
        return "run.kernel: triton needs the triton package (pip install 'econspin[gpu]'); use run.kernel: fused"
    return None


def uses_triton(state: State, economy: Economy) -> bool:
    """Whether a round takes :func:`triton_trade` or :func:`triton_sampled_trade`: triton, dense, no gradients."""
    if economy.kernel != "triton" or economy.couplings is not None:
        return False
    return economy.trade_edges is None and not asks_for_gradients(state, economy)


def triton_trade(
    state: State, economy: Economy, variances: torch.Tensor | None = None, tiles: Tiles | None = None
) -> MarketOutcome:
    """Expected-mode steps 1-5 as :func:`econspin.fused.fused_trade` with the Triton block pass."""
    return fused_trade(state, economy, variances=variances, blocks=functools.partial(triton_blocks, tiles=tiles))


def triton_sampled_trade(
    state: State, economy: Economy, draws: Draws | None = None, tiles: Tiles | None = None
) -> MarketOutcome:
    """Sampled-mode steps 1-5 as :func:`econspin.fused_sampled.fused_sampled_trade` with the Triton draw."""
    blocks = functools.partial(triton_sampled_blocks, tiles=tiles)
    return fused_sampled_trade(state, economy, draws, blocks=blocks)


def padded_width(width: int) -> int:
    """The smallest power of two >= max(width, MIN_DOT): a tl.arange and a tl.dot's contraction."""
    return max(MIN_DOT, 1 << (width - 1).bit_length())


# run.utility_precision -> the programs' UTILITIES and RECEIVED (econspin.triton_kernels.product)
PRODUCT_PRECISIONS = {"full": ("ieee", "ieee"), "bfloat16": ("bf16", "bf16"), "tf32": ("tf32", "ieee")}


def triton_blocks(terms: RoundTerms, economy: Economy, moment_rows: torch.Tensor, tiles: Tiles | None = None):
    """:func:`econspin.fused.expected_blocks` by the Triton programs: (|e_i.|, e @ [u, moments], float64 revenue).

    Writes m_i, s_i and sum_j e_ij y_ij into ``terms``. ``tiles``: default :data:`DEFAULT_TILES`
    for the device. CPU tensors run the interpreted programs, CUDA tensors the compiled ones:
    eagerly, launched from :func:`launched_blocks`; under ``run.compile`` as the registered
    operator ``econspin::triton_blocks`` (:func:`registered_blocks`), which torch.compile and CUDA
    graphs see into; on a CPU (or a torch without ``torch.library.triton_op``) as an eager break.
    ``economy.utility_precision`` sets the products' precision (:data:`PRODUCT_PRECISIONS`); with
    bfloat16 the operands in ``terms`` are bf16 already (econspin.precision.utility_operands).
    """
    left = terms.left
    tiles = tiles or DEFAULT_TILES["cuda" if left.is_cuda else "cpu"]
    network, network_kind = network_operand(terms, economy)
    utilities, received = PRODUCT_PRECISIONS[economy.utility_precision]
    delivered = terms.delivered.to(left.dtype)  # u_j, in bf16 where the received product is
    operands = (left, terms.right, network, network_kind, terms.tie_width, delivered, moment_rows, terms.share)
    settings = (tiles.rows, tiles.columns, tiles.warps, utilities, received, tiles.one_pass)
    if left.is_cuda and torch.compiler.is_compiling() and REGISTERED:
        results = torch.ops.econspin.triton_blocks(*operands, *settings)
    else:
        results = eager_blocks(*operands, *settings)
    shifted_max, total, dot, norm, moments, revenue = results
    terms.keep_rows(shifted_max, total, dot)  # what row_statistics reads after the blocks
    return norm, moments, revenue


def triton_sampled_blocks(
    terms: BlockTerms, economy: Economy, uniforms: torch.Tensor, rows: int | None = None, tiles: Tiles | None = None
) -> torch.Tensor:
    """:func:`econspin.fused_sampled.sampled_blocks` by the Triton programs: (groups, N) sellers drawn, -1 for none.

    Writes m_i, s_i and sum_j e_ij y_ij into ``terms``; ``uniforms`` (groups, N): each buyer's
    uniform of the choice stream. ``rows`` (the fused blocks' height) is not used: tiles are
    ``tiles``' (default :data:`DEFAULT_TILES`). Eagerly :func:`launched_draws`; under
    ``run.compile`` on CUDA the registered operator ``econspin::triton_draws``.
    """
    left = terms.left
    tiles = tiles or DEFAULT_TILES["cuda" if left.is_cuda else "cpu"]
    network, network_kind = network_operand(terms, economy)
    operands = (left, terms.right, network, network_kind, terms.tie_width, uniforms.to(torch.float64))
    utilities = PRODUCT_PRECISIONS[economy.utility_precision][0]
    settings = (tiles.rows, tiles.columns, tiles.warps, utilities, tiles.one_pass)
    if left.is_cuda and torch.compiler.is_compiling() and REGISTERED:
        shifted_max, total, dot, choice = torch.ops.econspin.triton_draws(*operands, *settings)
    else:
        shifted_max, total, dot, choice = eager_draws(*operands, *settings)
    terms.keep_rows(shifted_max, total, dot)
    return choice


def network_operand(terms: BlockTerms, economy: Economy) -> tuple[torch.Tensor, int]:
    """(the network as the programs read it, its kind): the (N, N) bias (1), the mask as bytes (2), or none (0)."""
    if terms.network_bias is not None:
        return terms.network_bias, 1
    if economy.trade_mask is not None:
        return economy.trade_mask.contiguous().view(torch.uint8), 2
    return terms.left, 0  # never read


def launched_blocks(
    left: torch.Tensor,
    right: torch.Tensor,
    network: torch.Tensor,
    network_kind: int,
    tie_width: torch.Tensor,
    delivered: torch.Tensor,
    moment_rows: torch.Tensor,
    share: torch.Tensor,
    rows: int,
    columns: int,
    warps: int,
    utilities: str,
    received: str,
    one_pass: bool,
    wrap=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two programs on a round's operands (econspin.fused.RoundTerms): fresh (m, s, sum e y, |e|, moments, R).

    ``network``: the (N, N) bias (``network_kind`` 1), the trade mask as bytes (2), or anything
    (0: no network); ``delivered`` u (groups, N, d), ``moment_rows`` (groups, 2, N), ``share``
    s_i / H; ``utilities`` and ``received``: the products' precisions (:data:`PRODUCT_PRECISIONS`);
    ``one_pass``: :attr:`Tiles.one_pass`.
    The moments come back as (groups, N, d + 2): [e @ u, e @ moment_rows^T]. ``wrap``: what each
    program is launched through (torch.library.wrap_triton inside the registered operator).
    """
    launch = Launch.of(left, right, network, tie_width, network_kind, utilities, rows, columns, warps, wrap)
    shifted_max, total, dot, norm, moments = launch.rows_pass(delivered, moment_rows, received, one_pass)
    revenue = torch.empty(total.shape, dtype=torch.float64, device=total.device)
    # total >= 1 on a row with partners (its best seller weighs exactly 1), 0 on an empty row
    per_unit = (share / total.clamp(min=1.0)).contiguous()
    launch.wrap(launch.kernels.revenue_program)[launch.grid(columns)](
        *launch.operands, shifted_max, launch.tie_width, per_unit, revenue, launch.agents, launch.keys, *launch.strides,
        **launch.constants, **launch.weights, **launch.shape,
    )  # fmt: skip
    return shifted_max, total, dot, norm, moments, revenue


@dataclass
class Launch:
    """What every program of one round's launch shares: the programs of the tensors' kind, grids and constants."""

    kernels: object  # econspin.triton_programs.programs(...)
    wrap: object  # what each program is launched through (torch.library.wrap_triton inside an operator)
    left: torch.Tensor
    right: torch.Tensor
    network: torch.Tensor
    tie_width: torch.Tensor  # (groups, N) t_i, contiguous: every program reads it at group * N + row
    constants: dict
    weights: dict
    shape: dict

    @classmethod
    def of(cls, left, right, network, tie_width, network_kind, utilities, rows, columns, warps, wrap=None) -> Launch:
        from econspin.triton_programs import programs  # triton is optional: imported where the kernel runs

        big, floor = exp2_limits(tie_width.dtype)
        keys = left.shape[-1]  # d_k + 2: a runtime number (one program for every d_k up to 16)
        constants = dict(KEYS_PADDED=padded_width(keys - 2), BIG=big, NETWORK=network_kind, UTILITIES=utilities)
        return cls(
            programs(interpreted_kind=not left.is_cuda), wrap or (lambda program: program), left, right, network,
            tie_width.contiguous(), constants, dict(FLOOR=floor, THRESHOLD=2.0 ** (floor + 1)),
            dict(BLOCK_ROWS=rows, BLOCK_COLUMNS=columns, num_warps=warps),
        )  # fmt: skip

    @property
    def agents(self) -> int:
        return self.left.shape[1]

    @property
    def keys(self) -> int:
        return self.left.shape[2]

    @property
    def operands(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.left, self.right, self.network

    @property
    def dtype(self) -> torch.dtype:
        """The working precision, t_i's (left is bf16 with bf16 utilities)."""
        return self.tie_width.dtype

    @property
    def strides(self) -> tuple:
        return *self.left.stride(), *self.right.stride()

    def grid(self, tile: int) -> tuple[int, int]:
        """(tiles of ``tile`` agents covering N, groups): a program per tile of rows (or columns) and group."""
        return tiles_covering(self.agents, tile), self.left.shape[0]

    def per_row(self) -> torch.Tensor:
        """A fresh (groups, N) result in the working precision, contiguous: the programs index them so."""
        return torch.empty(self.left.shape[:2], dtype=self.dtype, device=self.left.device)

    def rows_pass(self, delivered, moment_rows, received, one_pass):
        """econspin.triton_kernels.row_sums_program: fresh (m, s, sum e y, |e|, moments or None).

        ``delivered`` None: no moments (sampled mode): e @ u and the moment columns are neither
        read nor written.
        """
        groups, agents = self.left.shape[:2]
        shifted_max, total, dot, norm = (self.per_row() for _ in range(4))
        if delivered is None:  # pointers never read, strides never used
            moments, dimension, values, strides = None, 0, (self.left, self.left), (0,) * 6
        else:
            dimension, values = delivered.shape[-1], (delivered, moment_rows)
            moments = torch.empty(groups, agents, dimension + 2, dtype=self.dtype, device=self.left.device)
            strides = (*delivered.stride(), *moment_rows.stride())
        self.wrap(self.kernels.row_sums_program)[self.grid(self.shape["BLOCK_ROWS"])](
            *self.operands, shifted_max, self.tie_width, *values, total, norm, dot,
            self.left if moments is None else moments, agents, self.keys, *self.strides, *strides,
            dimension, VALUES_PADDED=padded_width(dimension), RECEIVED=received, ONE_PASS=one_pass,
            MOMENTS=delivered is not None, **self.constants, **self.weights, **self.shape,
        )  # fmt: skip
        return shifted_max, total, dot, norm, moments


def launched_draws(
    left: torch.Tensor,
    right: torch.Tensor,
    network: torch.Tensor,
    network_kind: int,
    tie_width: torch.Tensor,
    uniforms: torch.Tensor,
    rows: int,
    columns: int,
    warps: int,
    utilities: str,
    one_pass: bool,
    wrap=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sampled mode's programs: the rows' pass without moments, then the draw (econspin.triton_draws).

    Fresh (m, s, sum e y, the sellers drawn (groups, N) int64, -1 for none), for the float64
    ``uniforms`` (groups, N); the other arguments as :func:`launched_blocks`' (the working
    precision is ``tie_width``'s).
    """
    launch = Launch.of(left, right, network, tie_width, network_kind, utilities, rows, columns, warps, wrap)
    shifted_max, total, dot, _, _ = launch.rows_pass(None, None, "ieee", one_pass)
    choice = torch.empty(total.shape, dtype=torch.long, device=total.device)
    launch.wrap(launch.kernels.draw_program)[launch.grid(rows)](
        *launch.operands, shifted_max, launch.tie_width, total, uniforms.contiguous(), choice,
        launch.agents, launch.keys, *launch.strides, **launch.constants, **launch.weights, **launch.shape,
    )  # fmt: skip
    return shifted_max, total, dot, choice


# eagerly, and under run.compile where the operator is not used (CPU tensors: the interpreter runs numpy)
eager_blocks = torch.compiler.disable(launched_blocks)
eager_draws = torch.compiler.disable(launched_draws)

# econspin::triton_blocks: the programs as an operator whose triton kernels torch.compile sees
# (torch.library.triton_op, torch >= 2.6), so that a compiled CUDA round, CUDA graphs included,
# needs no break at the blocks. It reads its inputs and returns fresh tensors: nothing mutated.
REGISTERED = hasattr(torch.library, "triton_op") and triton_missing() is None
if REGISTERED:

    @torch.library.triton_op("econspin::triton_blocks", mutates_args=())
    def registered_blocks(
        left: torch.Tensor,
        right: torch.Tensor,
        network: torch.Tensor,
        network_kind: int,
        tie_width: torch.Tensor,
        delivered: torch.Tensor,
        moment_rows: torch.Tensor,
        share: torch.Tensor,
        rows: int,
        columns: int,
        warps: int,
        utilities: str,
        received: str,
        one_pass: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """:func:`launched_blocks` with each program launched through torch.library.wrap_triton."""
        operands = (left, right, network, network_kind, tie_width, delivered, moment_rows, share)
        settings = (rows, columns, warps, utilities, received, one_pass)
        return launched_blocks(*operands, *settings, wrap=torch.library.wrap_triton)

    @torch.library.triton_op("econspin::triton_draws", mutates_args=())
    def registered_draws(
        left: torch.Tensor,
        right: torch.Tensor,
        network: torch.Tensor,
        network_kind: int,
        tie_width: torch.Tensor,
        uniforms: torch.Tensor,
        rows: int,
        columns: int,
        warps: int,
        utilities: str,
        one_pass: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """:func:`launched_draws` with each program launched through torch.library.wrap_triton."""
        operands = (left, right, network, network_kind, tie_width, uniforms)
        return launched_draws(*operands, rows, columns, warps, utilities, one_pass, wrap=torch.library.wrap_triton)


def tiles_covering(size: int, tile: int) -> int:
    """Tiles of ``tile`` that cover ``size``."""
    return -(-size // tile)
