"""The Triton kernel's bodies (econspin.triton_kernels, econspin.triton_draws) as programs of either kind.

:func:`programs` decorates copies of the bodies, in a namespace of their own, either with
``triton.jit`` (CUDA tensors) or with Triton's interpreter (CPU tensors, through numpy), so
that one process runs both without the TRITON_INTERPRET setting; each interpreted launch
leaves ``triton.language`` as it found it (:func:`language_kept`), so that compiled programs
traced later in the process see the library's own functions.
"""

from __future__ import annotations

import contextlib
import functools
import types

import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction, InterpreterError

from econspin import triton_draws, triton_kernels

HELPERS = (*triton_kernels.HELPERS, *triton_draws.DRAW_HELPERS)
# every program: the expected mode's two (econspin.triton_kernels), then the sampled mode's draw
PROGRAMS = (*triton_kernels.PROGRAMS, *triton_draws.DRAW_PROGRAMS)
INTERPRETED_BODIES = {**triton_kernels.INTERPRETED_BODIES, **triton_draws.DRAW_INTERPRETED_BODIES}


def function_copy(function: types.FunctionType, namespace: dict) -> types.FunctionType:
    """``function`` with ``namespace`` as its globals (the same code, defaults and annotations)."""
    copy = types.FunctionType(function.__code__, namespace, function.__name__, function.__defaults__)
    copy.__kwdefaults__, copy.__annotations__ = function.__kwdefaults__, function.__annotations__
    copy.__qualname__, copy.__doc__ = function.__qualname__, function.__doc__
    return copy


def interpreted(function: types.FunctionType) -> "InterpretedHelper":
    """``function`` (a plain body) for Triton's interpreter, run in a copy of its own module's namespace.

    The interpreter cannot call a ``triton.jit`` function from an interpreted one, and writes
    its own names into the namespace it runs a body in: a copy keeps the library's module as it was.
    """
    return InterpretedHelper(function_copy(function, dict(function.__globals__)))


class InterpretedHelper(InterpretedFunction):
    """A helper called from interpreted programs that patches triton.language once a launch, not once a call.

    The interpreter's call of a helper patches the language's functions in the helper's
    namespace before running it (``inspect.getmembers`` over triton.language, its tensor and
    math: 17,688 times in one test of N = 300 in tiles of 16 to 64, 23% of its time under
    cProfile; the test ran 1.6x faster with a patch a launch, docs/testing.md, "What takes the
    suite's time") and never restores them: they stay patched until the
    launch ends (:func:`language_kept`). A second call in the same launch would find every
    function already patched (a patched one is a lambda, not a builtin, and is passed over),
    so it runs the body alone. :attr:`launch` counts the launches of :class:`InterpretedProgram`.
    """

    launch = 0

    def __init__(self, function: types.FunctionType):
        super().__init__(function)
        self.patched_in = -1  # the launch in which this helper last patched the language

    def __call__(self, *arguments, **keywords):
        if self.patched_in != InterpretedHelper.launch:
            self.patched_in = InterpretedHelper.launch
            return super().__call__(*arguments, **keywords)
        body = self.rewrite()
        try:
            return body(*arguments, **keywords)
        except Exception as error:  # as the library's call reports an error in a helper
            raise InterpreterError(repr(error)) from error


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
            InterpretedHelper.launch += 1  # each helper patches the language again at its first call
            with language_kept():
                return self.program[grid](*arguments, **keywords)

        return launch


@functools.cache
def programs(interpreted_kind: bool) -> types.SimpleNamespace:
    """The programs, compiled by ``triton.jit`` or (``interpreted_kind``) run by Triton's interpreter.

    Copies of the functions of econspin.triton_kernels and econspin.triton_draws share a
    namespace of their own (a copy of those modules'), in which each helper's name is its
    decorated copy; for the interpreter the names in :data:`INTERPRETED_BODIES` are interpreted
    copies of the bodies there (the library's reductions and prefix sum, the widening product):
    the programs call only functions of their own kind. Built once per process and kind;
    neither kind reads or sets TRITON_INTERPRET.
    """
    bodies = {**vars(triton_kernels), **vars(triton_draws)}
    namespace = dict(bodies)
    for name in (*HELPERS, *PROGRAMS):
        if interpreted_kind and name in INTERPRETED_BODIES:
            namespace[name] = interpreted(INTERPRETED_BODIES[name])
            continue
        copy = function_copy(bodies[name], namespace)
        if not interpreted_kind:
            namespace[name] = triton.jit(copy)
        else:  # a program patches the language at each launch itself; a helper, once a launch
            namespace[name] = InterpretedFunction(copy) if name in PROGRAMS else InterpretedHelper(copy)
    if interpreted_kind:
        return types.SimpleNamespace(**{name: InterpretedProgram(namespace[name]) for name in PROGRAMS})
    return types.SimpleNamespace(**{name: namespace[name] for name in PROGRAMS})
