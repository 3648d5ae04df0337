"""Where one compiled kernel's time goes: each of its loop nests timed inside running rounds.

    python -m experiments.compiled_kernel_loops --mode sampled --dimension 32 --batch 128 --kernel 2

experiments/compiled_round_parts.py times each Inductor kernel of the compiled round as a whole;
on the CPU one kernel holds most of a round of one block (the blocks traced into the graph,
econspin.traced_blocks): a few thousand lines of C++ in a dozen loop nests. This script compiles
the round with Inductor's Python wrapper (as compiled_round_parts does), takes the C++ source of
kernel ``--kernel`` (the number Inductor ends its name with) from the compiled module, adds a
steady-clock reading after each top-level loop nest of its body, compiles that source with
Inductor's own C++ builder and puts it in the module in place of the kernel (the module looks
its kernels up by name at every call). The rounds then run on real data: what a nest costs
depends on it (scores at the exp2 floor, rows of a T = 0 agent), which random arguments would
not reproduce. It prints each nest's CPU milliseconds a round (1 thread, the mean over
``--rounds`` rounds after three warm-up rounds) with its loop ranges. The readings themselves
cost about 0.1 us a nest.

It leans on how Inductor writes a CPU kernel (torch 2.13): the body's top-level nests are the
blocks opened by a line ``    {`` and closed by a line ``    }``. Economies as in
experiments/benchmark_ensemble.py.
"""

from __future__ import annotations

import argparse
import ast
import ctypes
import hashlib
import re
import sys
import time

import torch

import econspin.compiled as compiled
from econspin import keep_freed_memory
from experiments.benchmark_ensemble import ensemble
from experiments.compiled_round_parts import compiled_modules, ensemble_arguments

NEST_END = "    }"  # a top-level loop nest of a kernel's body closes at this indentation
FIRST_LOOP = re.compile(r"for\(int64_t (x\d+)=static_cast<int64_t>\((\d+)L\); x\d+<static_cast<int64_t>\((\d+)L\)")


def instrumented(source: str, reader: str) -> tuple[str, list[str]]:
    """(the kernel's C++ with a clock reading after each top-level nest, each nest's loop ranges).

    Each call adds its nests' seconds to a static array, and counts itself; a C function
    ``reader`` of the same library copies them out (:func:`nest_sums`). A nest's ranges are the
    upper bounds of its loop variables x0, x1, ... as first met (vectorised loops step by 16).
    """
    lines, body, ranges, bounds = [], False, [], {}
    for line in source.split("\n"):
        if not body:
            lines.append(line)
            if line.startswith("{"):
                body = True
                lines.append("    auto __started = std::chrono::steady_clock::now();")
            continue
        loop = FIRST_LOOP.search(line)
        if loop is not None:
            bounds.setdefault(loop.group(1), loop.group(3))
        if line == NEST_END:
            nest = len(ranges)
            ranges.append(" x ".join(bounds[name] for name in sorted(bounds)) or "(no loop)")
            bounds = {}
            lines += [
                line,
                "    { auto __now = std::chrono::steady_clock::now();"
                f" __nest_seconds[{nest}] += std::chrono::duration<double>(__now - __started).count();"
                " __started = __now; }",
            ]
        elif line == "}":
            lines += ["    __calls += 1;", line]
            body = False
        else:
            lines.append(line)
    count = len(ranges)
    prefix = (
        "#include <chrono>\n"
        f"static double __nest_seconds[{max(count, 1)}]; static long __calls = 0;\n"
        f'extern "C" void {reader}(double* out) {{ for (int k = 0; k < {count}; k++) out[k] = __nest_seconds[k];'
        f" out[{count}] = (double) __calls; }}\n"
    )
    return prefix + "\n".join(lines), ranges


def compiled_kernel(argument_types: list[str], source: str):
    """The kernel of ``source`` compiled by Inductor's own C++ builder, called with arguments of ``argument_types``."""
    from torch._inductor.async_compile import AsyncCompile

    kernel = AsyncCompile().cpp_pybinding(argument_types, source)
    return kernel.result() if hasattr(kernel, "result") else kernel  # (a future where Inductor compiles in workers)


def nest_sums(reader: str, count: int) -> list[float]:
    """The seconds of each nest summed over the calls, then the number of calls, from the loaded library.

    Inductor loads the compiled source as a shared library and binds its kernel alone; the
    library is found among the process's mapped files by the reader's name (unique to the
    source) and opened again (dlopen hands back the loaded copy, whose sums these are).
    """
    with open("/proc/self/maps") as maps:
        paths = {line.split()[-1] for line in maps if line.rstrip().endswith(".so")}
    for path in sorted(paths):
        try:
            function = getattr(ctypes.CDLL(path), reader)
        except (OSError, AttributeError):
            continue
        sums = (ctypes.c_double * (count + 1))()
        function(sums)
        return list(sums)
    sys.exit("the instrumented kernel's library was not found among the loaded ones")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ensemble_arguments(parser, response="vmf")
    parser.add_argument("--kernel", type=int, default=2, help="the number Inductor ends the kernel's name with")
    parser.add_argument("--rounds", type=int, default=200)
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    keep_freed_memory()
    compiled.CPP_WRAPPER_DEVICES = ()  # the Python wrapper: its module calls each kernel by name
    from econspin.round import step

    state, economy = ensemble(
        arguments.batch, arguments.mode, arguments.agents, arguments.dimension, "cpu", arguments.response, "auto",
        "default",
    )  # fmt: skip
    with torch.no_grad():
        for _ in range(3):
            state = step(state, economy)
    suffix = f"_{arguments.kernel}"
    found = [
        (module, name)
        for module in compiled_modules()
        for name in dir(module)
        if name.startswith("cpp_fused") and name.endswith(suffix)
    ]
    if not found:
        sys.exit(f"no compiled kernel ending in {suffix}")
    module, name = found[-1]  # the round's module: the last compiled
    text = open(module.__file__).read()
    start = text.index(f"{name} = async_compile.cpp_pybinding(")
    argument_types = ast.literal_eval(text[text.index("[", start) : text.index("]", start) + 1])  # C type names
    source_start = text.index("r'''", start) + 4
    original = text[source_start : text.index("'''", source_start)]
    reader = f"nest_seconds_{hashlib.sha256(original.encode()).hexdigest()[:16]}"
    source, ranges = instrumented(original, reader)
    setattr(module, name, compiled_kernel(argument_types, source))
    with torch.no_grad():
        started = time.process_time()
        for _ in range(arguments.rounds):
            state = step(state, economy)
        round_seconds = (time.process_time() - started) / arguments.rounds
    sums = nest_sums(reader, len(ranges))
    print(
        f"{arguments.mode}, B = {arguments.batch}, N = {arguments.agents}, d = {arguments.dimension} "
        f"{arguments.response}: round {round_seconds * 1e3:.3f} ms (CPU time), kernel {name[:60]}...{suffix}"
    )
    calls = max(float(sums[-1]), 1.0)
    for nest, loops in enumerate(ranges):
        print(f"{float(sums[nest]) / calls * 1e3:8.3f} ms  nest {nest:2d}  loops {loops}")


if __name__ == "__main__":
    main()
