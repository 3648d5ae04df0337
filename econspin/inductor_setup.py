"""Inductor's code generation without work it repeats for every operation it writes (torch 2.13).

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

:func:`prepare_code_generation` installs both. The compiled paths call it before building a
compiled function (econspin.compiled, econspin.fused_sampled, econspin.block_pass,
econspin.flex); each part changes nothing where torch lacks what it replaces.
"""

from __future__ import annotations

import functools

ONCE_MARK = "_econspin_rules_once"  # set on the wrapped __init__: installed once per process


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


def prepare_code_generation() -> bool:
    """Install :func:`build_dtype_rules_once` and :func:`intersect_equal_ranges_at_once`; whether both took."""
    rules = build_dtype_rules_once()
    ranges = intersect_equal_ranges_at_once()
    return rules and ranges
