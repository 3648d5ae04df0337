"""The round compiled by torch.compile (``run.compile``): the same equations in fewer, fused kernels.

Eager torch runs a round as a few hundred separate tensor operations, each costing a few
microseconds of dispatch whatever its size, and each elementwise pass writes a fresh
temporary. Where N is small (the ensembles of small economies, the O(N) uniform round at
N = 1000, sweeps of N = 128) that fixed cost is most of the round (docs/performance.md).
``torch.compile`` (TorchDynamo traces the round once per economy shape, Inductor fuses its
elementwise chains into C++/OpenMP loops on the CPU, Triton kernels on a GPU) removes part of
it: 5-27% of a round on the CPU where measured, next to nothing in some cases
(docs/performance.md, "The round compiled"). The eager round stays the readable path and the
default (``run.compile: off``); the compiled one computes the same equations, not bit for bit:
Inductor may regroup a sum or fuse a multiply-add, so it agrees with the eager round to
rounding (tests/test_compiled_round.py).

What is compiled is :func:`econspin.round.play_tagged`: :func:`econspin.round.play`, the round
without its bookkeeping, with the keying of its draws. The round index, a Python number that
changes every round, enters only as the round's mixed tag, a 0-d tensor
(:func:`econspin.randomness.round_tag`; a traced Python number would make every round a new
trace). The keys of (element, round, agent), their hashes into the round's random numbers
(:meth:`econspin.randomness.Draws.words`), the uniforms and the Box-Muller Gaussians are
traced and fuse into the round's loops, bit for bit the eager words (the traced hash takes its
64-bit products in 32-bit halves, :func:`econspin.randomness.mix64_exact`: Inductor's C++ for an
overflowing int64 product is undefined behaviour, which GCC folded into wrong words;
docs/performance_log.md, "The hashes compiled"; the Gaussians' words, read in loops of their
own, take them in uint64 on the CPU, :func:`econspin.randomness.mix64_unsigned`). Two parts
run eagerly, each chosen by measurement (docs/performance.md, "The round compiled"):

- the blocks of the N x N utilities (:func:`econspin.fused.expected_blocks`,
  :func:`econspin.fused_sampled.sampled_blocks`), where the round needs several blocks or long
  rows (a round of one block of rows of at most 512 sellers traces them into the graph instead:
  :mod:`econspin.traced_blocks`): Inductor's loops over a block recomputed
  exp2 for each reduction and took 5x the eager round at N = 1024. They are one node of the
  compiled graph, a torch custom operator (``econspin::expected_blocks``,
  ``econspin::sampled_blocks``) that runs the eager blocks: no graph break (inside, the
  sampled blocks count their running sums with a loop of their own compiled,
  :func:`econspin.fused_sampled.compiled_positions`: the same sellers). On CUDA they
  stay a graph break until a GPU has run the operators under CUDA graphs
  (:data:`econspin.compiled.OPERATOR_DEVICES`). (As
  ``torch.compiler.disable`` functions, they and the inverse temperatures broke the round
  into a graph per frame above each call: the expected round was 8 graphs, and is 1.)
  ``run.kernel: triton``'s blocks are traced on CUDA instead, as the registered operator
  ``econspin::triton_blocks`` of econspin.triton_blocks (its Triton kernels visible to Inductor);
  on the CPU its interpreted programs are a graph break.
- the loop of Wood's rejection step of the von Mises-Fisher spin draw over the agents left
  without an accepted attempt (sampled mode, d >= 2): it asks the host whether any agent is
  still without one, which no graph can hold. It is one operator of the graph too
  (``econspin::wood_rest``, :func:`econspin.wood.wood_rest_operator`), so the compiled sampled
  round is one graph as well; on CUDA, and where w requires a gradient, a graph break
  (:func:`econspin.wood._wood_rest_eagerly`).
  With a rejection budget (the sync-free rollout) there is no loop, and the whole of Wood's
  step is a graph break on every device (:func:`econspin.wood._wood_component_eagerly`).
  The rest of the draw (the concentration, every agent's first attempts of Wood's step and the
  next ones of a fixed number of the agents left, the Gaussians of the direction and its
  projection orthogonal to the field) is traced.

Where Inductor would recompute an elementwise result inside every loop that reads it (its
heuristics store a result only after a reduction, a heavy operation read twice or many reads),
:func:`stored` makes it keep the result instead; the spin draw stores its per-agent coefficients,
the field's layout and direction and its dot product this way (docs/performance_log.md, "The spin draw's
loops").

The effective inverse temperatures (:mod:`econspin.temperature_limits`) are traced: their
binary exponents come from log2 and exact powers of two, since Inductor's C++ for the int32
exponents of ``torch.frexp`` does not compile (torch 2.13, CPU).

Modes (``run.compile``):

- ``off``: eager torch (the default);
- ``default``: ``torch.compile(mode="default")``;
- ``reduce-overhead``: ``torch.compile(mode="reduce-overhead")``, which on a GPU replays the
  compiled kernels as CUDA graphs (on the CPU it is ``default``).

The compiled function is built once per mode and device type and kept for the process
(:func:`compiled_function`); on the CPU Inductor's C++ wrapper calls its kernels, and its guards
leave out module globals (:func:`round_guards`: what the round reads of the state and the economy
stays guarded). TorchDynamo compiles it once per economy shape (``dynamic=False``: shapes are
constants; a rollout never changes them) and reuses it for every later round and every economy of the same
shapes (and settings: mode, populations, response). Past torch's limit of compilations per
function (``torch._dynamo.config.recompile_limit``, 8), further shapes run eagerly.
"""

from __future__ import annotations

import functools
import os
import sysconfig
import types
from typing import Callable

import torch

from econspin.inductor_setup import prepare_code_generation

COMPILE_MODES = ("off", "default", "reduce-overhead")
# The devices whose compiled rounds call their eager parts (the blocks, Wood's loop) as custom
# operators, one node of the graph each. On CUDA they stay graph breaks (:func:`eagerly`) until a
# GPU has run the operators under CUDA graphs (run.compile: reduce-overhead would capture the
# blocks' eager kernels inside the graph; the blocks keep no buffer across calls there, since
# econspin.workspace reuses memory on the CPU only; Wood's loop asks the host, and with a rejection
# budget it is not called); experiments/gpu_check.py times both.
OPERATOR_DEVICES = ("cpu",)
# The devices whose compiled rounds store the values :func:`stored_where_measured` marks. Measured on the
# CPU only (docs/performance.md, "Drawn sellers and |theta| stored"); experiments/gpu_check.py's rollout
# times CUDA both ways.
STORED_DEVICES = ("cpu",)
# module globals that choose how a compiled round is built, flipped between ways of one rollout: guarded (round_guards)
SWITCHES = (".OPERATOR_DEVICES", ".TRACED_DEVICES", ".STORED_DEVICES")


def eager_parts_as_operators(device: torch.device) -> bool:
    """Whether a compiled round on ``device`` calls its eager parts as operators (else as graph breaks)."""
    return device.type in OPERATOR_DEVICES


# the eager parts' operators (econspin.fused, econspin.fused_sampled), registered on the dispatcher directly
_OPERATORS = torch.library.Library("econspin", "FRAGMENT")


def eager_operator(name: str, fake: Callable, reads_the_host: bool = False) -> Callable:
    """A decorator: ``function`` as the operator econspin::``name`` (schema from its annotations), ``fake`` its shapes.

    ``reads_the_host``: the operator reads a tensor's value on the host, which a CUDA graph cannot
    capture; tagged ``cudagraph_unsafe``, Inductor leaves it out of the graphs it records (under
    ``run.compile: reduce-overhead`` with CUDA among :data:`OPERATOR_DEVICES`). Untagged, Wood's
    loop failed that capture on an H200 ("operation not permitted when stream is capturing").

    Called through the dispatcher straight into ``function``, not through torch.library.custom_op's
    wrappers (autograd's, Dynamo's, the check of outputs for aliases): 4 against 11-15 us a call for an
    operator that does nothing, 0.19 against 0.20 ms for the expected blocks at B = 1, N = 64
    (docs/performance.md). Nothing differentiates through it: a round whose inputs require gradients
    takes no block operator (econspin.fused.uses_fused), nor Wood's loop's where w requires one
    (econspin.wood._wood_rest_compiled). torch.library.opcheck checks the schema and the fake
    shapes (tests/test_compiled_round.py, tests/test_wood.py).
    """

    def register(function: Callable):
        unsafe = getattr(torch.Tag, "cudagraph_unsafe", None)  # a tag of torch >= 2.9: none before
        tags = (unsafe,) if reads_the_host and unsafe is not None else ()
        _OPERATORS.define(name + torch.library.infer_schema(function, mutates_args=()), tags=tags)
        _OPERATORS.impl(name, function, "CompositeExplicitAutograd")
        torch.library.register_fake(f"econspin::{name}", fake, lib=_OPERATORS)
        return getattr(torch.ops.econspin, name).default

    return register


def with_own_code(function: types.FunctionType, suffix: str) -> types.FunctionType:
    """``function`` with a code object of its own, named ``<its name>_<suffix>``: the same body, globals and defaults.

    TorchDynamo keeps per code object its compiled graphs, its count of recompilations (at most
    torch._dynamo.config.recompile_limit) and which sizes went dynamic; a copy compiled apart
    shares none of them with the original or with another copy.
    """
    code = function.__code__.replace(co_name=f"{function.__code__.co_name}_{suffix}")
    return types.FunctionType(code, function.__globals__, code.co_name, function.__defaults__)


def stored(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` itself; under torch.compile, a view of it that makes Inductor store it instead of inlining it.

    Inductor writes an elementwise result into memory only where a heuristic asks (a reduction,
    a heavy operation such as exp read twice, many reads); otherwise it recomputes the result
    inside every loop that reads it, in that loop's layout. Where that loop runs over another
    axis the recomputation can cost more than the stored values: the von Mises-Fisher draw's
    per-agent coefficients, inlined into the loop over each agent's d components, became
    scalar code with three square roots per agent and component block (docs/performance_log.md,
    "The spin draw's loops"). Inductor's lowering of ``as_strided`` stores its input, so the
    traced round gets such a view of the tensor onto its own sizes and strides: the same values.
    """
    if torch.compiler.is_compiling():
        return tensor.as_strided(tensor.shape, tensor.stride())
    return tensor


def stored_where_measured(tensor: torch.Tensor) -> torch.Tensor:
    """:func:`stored` on the devices of :data:`STORED_DEVICES` (the CPU), ``tensor`` itself elsewhere.

    For values Inductor's C++ was measured recomputing: a value per agent read by a loop over many
    elements of each agent (the drawn seller by the gather of its d values, |theta| by the d
    components of theta_hat) was recomputed there from its own inputs in every vector step, as
    scalar code or square roots (docs/performance.md, "Drawn sellers and |theta| stored"). A GPU's
    kernels were not measured with these stores, so they keep Inductor's choice until they are.
    """
    return stored(tensor) if stores_measured_values(tensor.device) else tensor


def stores_measured_values(device: torch.device) -> bool:
    """Whether a compiled round on ``device`` stores what :func:`stored_where_measured` marks."""
    return device.type in STORED_DEVICES


# Rows of a stored (components, agents) layout that lie a multiple of 1 KiB apart fall into a
# sixteenth or less of the L1 data cache's 64 sets (a set per 64-byte line of a 4 KiB way), so a
# loop over every component of a few agents at a time keeps evicting its own lines. Padded by one
# line they lie an odd number of lines apart and fall into every set.
CONFLICTING_ROW_BYTES = 1024
ROW_PADDING_BYTES = 64


def padded_width(width: int, element_size: int) -> int:
    """Elements a row of ``width`` takes in :func:`stored_in_padded_rows`: a cache line more where rows conflict."""
    if (width * element_size) % CONFLICTING_ROW_BYTES:
        return width
    return width + ROW_PADDING_BYTES // element_size


def stored_in_padded_rows(rows: torch.Tensor) -> torch.Tensor:
    """``rows`` (R, W) stored (:func:`stored`) as R rows of :func:`padded_width` elements each: the same values.

    For a round's values laid out by component, (d, agents): each row of B N agents, 32 KiB apart
    at B = 128, N = 64 in float32. The compiled draw's field, written transposed into such rows
    (then by a scalar 8 x 8 tile copy on AVX2), took about 0.5 ms more of its kernel's 3.3 ms
    unpadded; with the tiles transposed in registers (econspin.inductor_setup), padded rows still
    measured about 0.1 ms shorter (docs/performance.md, "The field laid out in padded rows" and
    "Float tiles transposed in registers"). Eagerly, and where no padding is needed, ``rows``
    stored contiguous.
    """
    width = rows.shape[-1]
    padded = padded_width(width, rows.element_size())
    if padded == width or not torch.compiler.is_compiling():
        return stored(rows.contiguous())
    return stored(torch.nn.functional.pad(rows, (0, padded - width)))[..., :width]


@torch.compiler.disable
def eagerly(function, *arguments):
    """``function(*arguments)`` outside the compiled graph: a graph break in every frame above."""
    return function(*arguments)


class CompilerMissing(RuntimeError):
    """torch.compile cannot generate code on this machine (no C++ compiler, or no Triton for a GPU)."""


def missing_compiler(device: torch.device) -> str | None:
    """Why torch.compile cannot build kernels for ``device`` here, or None if it can.

    Inductor writes C++ for the CPU and compiles it with the system's compiler; for CUDA it
    writes Triton kernels.
    """
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "torch.compile needs Triton for a CUDA device, and it is not installed"
    from torch._inductor import cpp_builder

    try:
        cpp_builder.get_cpp_compiler()
    except Exception as error:  # inductor raises its own InvalidCxxCompiler, or an OSError from a probe
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        return f"torch.compile needs a C++ compiler for the CPU, and none was found ({first})"
    headers = os.path.join(sysconfig.get_paths()["include"], "Python.h")
    if not os.path.exists(headers):
        # inductor's CPU kernels are loaded through a small C extension built against Python.h
        return f"torch.compile needs Python's C headers for the CPU, and {headers} is missing"
    return None


def require_compiler(mode: str, device: torch.device) -> None:
    """Raise :class:`CompilerMissing` (one line) if ``mode`` compiles and no compiler serves ``device``."""
    if mode == "off":
        return
    reason = missing_compiler(torch.device(device))
    if reason is not None:
        raise CompilerMissing(f"run.compile: {mode}: {reason}; use run.compile: off")


# The devices whose compiled rounds call their kernels from Inductor's C++ wrapper (cpp_wrapper) instead of its
# Python one: the graph's call, its buffers, size checks and views, is C++. On the CPU 0.03-0.08 ms less a round at
# B = 1, N = 256, the same kernels and bits (docs/performance_log.md, "The compiled round's guards and wrapper");
# not run on CUDA.
CPP_WRAPPER_DEVICES = ("cpu",)


def round_guards(guards) -> list[bool]:
    """TorchDynamo's guard filter for the compiled round: keep every guard but those on module globals.

    What the round reads of its arguments stays guarded (the state's and the economy's tensors, their
    shapes, dtypes and devices, every setting the trace read: mode, response, populations, budgets,
    memory budget, ...), and so does torch's global state (grad mode, threads, default dtype): a change
    there recompiles. Left out: the guards that econspin's and torch's module globals (functions, constants,
    modules) are still what the trace read, which nothing changes while a rollout runs: 82 guards of the
    benchmark round's 213 remain. Each costs little, but the check runs at the start of every round on
    caches the round has just filled: 0.07-0.2 ms for the 213, 0.04-0.1 ms for the 82 (docs/performance_log.md,
    "The compiled round's guards and wrapper"). Whoever patches a module global that the round reads
    (tests) calls torch._dynamo.reset(). Kept: the guards on :data:`SWITCHES` (:data:`OPERATOR_DEVICES`,
    econspin.traced_blocks.TRACED_DEVICES, :data:`STORED_DEVICES`), which experiments/gpu_check.py flips
    between ways of playing the same rollout, timed in turn: each setting gets its own graph (without
    them, the graph traced first served both). The round reads them first (econspin.round.switches_on),
    so that its first frame is guarded on them too, not only the frame where the blocks are.
    """
    return [not guard.is_global or any(name in guard.name for name in SWITCHES) for guard in guards]


def replays_cuda_graphs(mode: str, device: torch.device) -> bool:
    """Whether a function compiled in ``mode`` on ``device`` runs as CUDA graphs (a replay overwrites their outputs)."""
    return mode == "reduce-overhead" and device.type == "cuda"


@functools.cache
def compiled_function(function: Callable, mode: str, device_type: str = "cpu") -> Callable:
    """``function`` compiled by torch.compile in ``mode`` (a run.compile value other than off) for ``device_type``.

    Built once per process and device type, with ``mode``'s options (torch.compile takes a mode or
    options, not both), :func:`round_guards` and, on CPP_WRAPPER_DEVICES, Inductor's C++ wrapper.
    """
    if mode not in COMPILE_MODES or mode == "off":
        raise ValueError(f"run.compile: {mode!r} is not a compiling mode; choose one of {COMPILE_MODES[1:]}")
    # work Inductor repeats for each operation it generates, spared: over a third of a sampled round's
    # build (econspin.inductor_setup)
    prepare_code_generation()
    options = {**torch._inductor.list_mode_options(mode, False), "guard_filter_fn": round_guards}
    if device_type in CPP_WRAPPER_DEVICES:
        options["cpp_wrapper"] = True
    return torch.compile(function, dynamic=False, options=options)
