"""Inductor's code generation spared work it repeats, and two of its CPU code patterns written faster (torch 2.13).

For each operation of a kernel it generates, Inductor asks a dtype-propagation handler for the
result's dtype, constructing ``DtypePropagationOpsHandler()`` each time
(``torch._inductor.codegen.common.CSEProxy._default``). The class keeps one instance, but Python
runs ``__init__`` at every construction, and that rebuilds every rule: several hundred
``setattr``, a ``dir`` and a set difference. The compiled sampled round generates hundreds of
thousands of operations (its traced hashes, Wood's first attempts and the Gaussians' polynomials,
each written as scalar and vector code); this setup took a fifth of compiling it
(docs/performance.md, "Compile time").

:func:`build_dtype_rules_once` makes ``__init__`` run the library's own once per set of
registered rules: again only when a rule has been registered since (the registries' sizes
change). The handler's rules, and so the generated code, are the same.

Each time a generated value is asked for again (its common subexpression found), Inductor
intersects its bounds with the bounds asked for (``CSE.generate``: ``var.bounds.tighten(bounds)``),
and ``ValueRanges.__and__`` builds ``sympy.Max`` of the lower and ``sympy.Min`` of the upper
bounds. Nearly always the two ranges are equal (138,192 of 140,076 intersections in one
compiled sampled round of 64 agents at d = 32, 11.9 s of its 61.5 s build), and sympy then
works out that the maximum of a number and itself is that number.
:func:`intersect_equal_ranges_at_once` returns the range itself when the two are equal, as
the intersection is; other pairs go to the library's own.

:func:`load_whole_integer_vectors` is about the code, not the time to write it. Inductor's C++
loads a vector of int64 or int32 with a count of elements (``VectorizedN<int64_t,2>::loadu(p, 8)``)
even where the count is the whole vector; on AVX2 ATen's integer ``loadu(p, count)`` copies the
elements into a stack buffer first (the float and double ones test for a whole vector), and a
32-byte load of a buffer just written as two 16-byte halves waits for the stores (a failed store
forward). The Gaussians' words are loaded so in their Box-Muller loop, and the hashes' keys in
Wood's attempts. Where the count is the whole vector, the loads are written without it, which
loads the same elements.

:func:`transpose_float_tiles_by_vectors` is about the code too. Where a kernel reads or writes
a tile of float32 across the layouts, Inductor's C++ calls its own
``transpose_mxn<float, M, N, false>`` (torch/csrc/inductor/cpp_prefix.h), which passes M and N
on as run-time sizes to ATen's scalar ``at::vec::transpose_mxn<float>(..., M, N)``: an element
at a time, though ATen's ``transpose_mxn<float, 8, 8>`` is written for Inductor with AVX2
shuffles. The kernels' code calls ``at::vec::transpose_mxn<float, M, N>`` instead, which is that
specialisation where there is one and the same scalar loop where there is none.

:func:`prepare_code_generation` installs all four. The compiled paths call it before building a
compiled function (econspin.compiled, econspin.fused_sampled, econspin.block_pass,
econspin.flex); each part changes nothing where torch lacks what it replaces. An Inductor cache
filled before the loads changed keeps the code it holds (slower, the same values).
"""

from __future__ import annotations

import functools
import re

ONCE_MARK = "_econspin_rules_once"  # set on each wrapper this module installs: installed once per process


def build_dtype_rules_once() -> bool:
    """Make Inductor's dtype-propagation handler build its rules once per registered set; whether it is installed."""
    try:
        from torch._inductor import dtype_propagation, utils
        from torch._inductor.codegen import common
    except ImportError:
        return False
    handler = getattr(dtype_propagation, "DtypePropagationOpsHandler", None)
    if handler is None or not hasattr(utils, "op_dtype_propagation_rules"):
        return False
    if getattr(handler.__init__, ONCE_MARK, False):
        return True
    library_init = handler.__init__

    def registered() -> tuple[int, int]:
        """The sizes of the registries __init__ reads: a rule registered later changes one of them."""
        return len(utils.op_dtype_propagation_rules), len(getattr(common, "pointwise_overrides_data", ()))

    @functools.wraps(library_init)
    def init_once(self) -> None:
        rules = registered()
        if self.__dict__.get("_rules_built_for") == rules:
            return
        library_init(self)
        self._rules_built_for = rules

    setattr(init_once, ONCE_MARK, True)
    handler.__init__ = init_once
    return True


def intersect_equal_ranges_at_once() -> bool:
    """Make ``ValueRanges.__and__`` return a range intersected with an equal one unchanged; whether it is installed.

    Equal as the dataclass compares ranges: the same kind (bool, int or float) and bounds equal as
    sympy compares them, so the library's own would build ``ValueRanges(Max(l, l), Min(u, u))``
    (``Or`` and ``And`` for booleans): a range equal to this one. Ranges are immutable, so
    returning this one is the same.
    """
    try:
        from torch.utils._sympy.value_ranges import ValueRanges
    except ImportError:
        return False
    library_and = ValueRanges.__and__
    if getattr(library_and, ONCE_MARK, False):
        return True

    @functools.wraps(library_and)
    def intersect(self, other):
        # the dataclass's own equality: the same class, bounds and kind
        if self is other or self == other:
            return self
        return library_and(self, other)

    setattr(intersect, ONCE_MARK, True)
    ValueRanges.__and__ = intersect
    return True


WHOLE_LOAD_DTYPES = ("int32", "int64")  # whose ATen AVX2 loadu(p, count) goes through a buffer


def load_whole_integer_vectors() -> bool:
    """Make Inductor's C++ load whole int32 and int64 vectors without a count; whether it is installed.

    Only a plain load (no mask) of a kernel's whole vectors (not its tail loop's) changes, and only
    where the vectors it names hold exactly the kernel's ``num_elems`` elements: ``loadu(p)`` then
    reads what ``loadu(p, num_elems)`` reads.
    """
    try:
        import torch
        from torch._inductor.codegen import cpp
    except ImportError:
        return False
    kernel = getattr(cpp, "CppVecKernel", None)
    library_line = getattr(kernel, "_get_vec_load_line", None)
    if library_line is None or not hasattr(cpp, "cexpr_index"):
        return False
    if getattr(library_line, ONCE_MARK, False):
        return True
    whole_dtypes = {getattr(torch, name) for name in WHOLE_LOAD_DTYPES}

    @functools.wraps(library_line)
    def load_line(self, var, index, dtype, load_mask=None):
        line = library_line(self, var, index, dtype, load_mask)
        if load_mask is not None or dtype not in whole_dtypes or self.num_elems != self.tiling_factor:
            return line
        lanes = self.vec_isa.bit_width() // (8 * dtype.itemsize)
        if self._get_num_vectors(dtype) * lanes != self.num_elems:
            return line
        vector_type = self._get_vec_type(dtype)
        count = f", {cpp.cexpr_index(self.num_elems)})"
        if line.startswith(f"{vector_type}::loadu(") and line.endswith(count):
            return line[: -len(count)] + ")"
        return line

    setattr(load_line, ONCE_MARK, True)
    kernel._get_vec_load_line = load_line
    return True


# Inductor's call of its own non-atomic float transpose, with the tile's sizes as it writes them
INDUCTOR_FLOAT_TRANSPOSE = re.compile(
    r"(?<![:\w])transpose_mxn<float,static_cast<int64_t>\((\d+)L?\),static_cast<int64_t>\((\d+)L?\),false>\("
)


def with_vector_transposes(code: str) -> str:
    """A kernel's C++ with each non-atomic float tile transpose calling ATen's sized template."""
    return INDUCTOR_FLOAT_TRANSPOSE.sub(lambda found: f"at::vec::transpose_mxn<float,{found[1]},{found[2]}>(", code)


def transpose_float_tiles_by_vectors() -> bool:
    """Make Inductor's C++ kernels transpose float tiles by ATen's sized template; whether it is installed.

    ``at::vec::transpose_mxn<float, M, N>`` is ATen's AVX2 (and AVX-512) register transpose where
    it is specialised, 8 x 8 on AVX2, and otherwise the loop Inductor's own call reaches. Atomic
    adds (``true``) and other dtypes are left as written.
    """
    try:
        from torch._inductor.codegen import cpp
    except ImportError:
        return False
    group = getattr(cpp, "KernelGroup", None)
    library_group = getattr(group, "codegen_group", None)
    if library_group is None:
        return False
    if getattr(library_group, ONCE_MARK, False):
        return True

    @functools.wraps(library_group)
    def codegen_group(self, name=None) -> str:
        return with_vector_transposes(library_group(self, name))

    setattr(codegen_group, ONCE_MARK, True)
    group.codegen_group = codegen_group
    return True


def prepare_code_generation() -> bool:
    """Install the four parts of this module; whether all took.

    :func:`build_dtype_rules_once`, :func:`intersect_equal_ranges_at_once`,
    :func:`load_whole_integer_vectors`, :func:`transpose_float_tiles_by_vectors`.
    """
    rules = build_dtype_rules_once()
    ranges = intersect_equal_ranges_at_once()
    loads = load_whole_integer_vectors()
    transposes = transpose_float_tiles_by_vectors()
    return rules and ranges and loads and transposes
