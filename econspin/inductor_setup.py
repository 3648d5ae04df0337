"""Inductor's code generation without a setup it repeats for every operation it writes (torch 2.13).

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
change). The handler's rules, and so the generated code, are the same. The compiled paths call
it before building a compiled function (econspin.compiled, econspin.fused_sampled,
econspin.block_pass, econspin.flex); it changes nothing where torch has no such handler.
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
