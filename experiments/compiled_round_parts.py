"""Where a compiled round's time goes: each Inductor kernel and each eager island, timed inside running rounds.

    OMP_WAIT_POLICY=PASSIVE python -m experiments.compiled_round_parts --mode sampled --dimension 32 --response large_d

torch.profiler names a compiled graph's kernels (with ``torch._inductor.config.cpp.enable_kernel_profile``)
but its own bookkeeping inflated some of them several times over (a 0.24 ms kernel showed as
1.2 ms; docs/performance_log.md, "The sampled round at d = 32"). This script times instead, with
the process's CPU clock and nothing else running in the process:

- every C++ kernel Inductor generated for the round and every matrix product it hands to
  ``extern_kernels.bmm``: after the warm-up rounds have compiled the round, the loaded
  compiled modules' kernel functions are wrapped in a timer (the modules look them up by name
  at every call);
- the parts of the round that run eagerly: the inversion inside the sampled blocks (eager, or
  ``compiled_draws``: its compiled count of the running sums, which also sums e y), and the
  loop of Wood's step over the agents left where it is a graph break
  (``wood._wood_rest_eagerly``, ``torch.compiler.disable``: on a device outside
  ``compiled.OPERATOR_DEVICES``, so not on the CPU since Wood's loop became an operator),
  wrapped before the first round is compiled (the wrapper disabled as the function it replaces);
- the custom operators the graph calls, the blocks (``econspin::expected_blocks``,
  ``econspin::sampled_blocks``) and, on the CPU, Wood's loop (``econspin::wood_rest``): their
  CPU time from torch.profiler in a second series of rounds (one event each, nothing inside
  them instrumented).

What the parts leave of the round is the rest: TorchDynamo's entries and guards between
graphs, Python, and eager operations outside these functions. Times are medians' worth of
nothing: sums over ``--rounds`` rounds divided by the count, on a shared machine; compare parts
within one run. B economies of N agents as in experiments/benchmark_ensemble.py.
"""

from __future__ import annotations

import argparse
import collections
import time

import torch

import econspin.compiled as compiled
import econspin.fused_sampled as fused_sampled
import econspin.wood as wood
from experiments.benchmark_ensemble import ensemble

TIMES: collections.Counter = collections.Counter()


def timed(name: str, function, disabled: bool):
    """``function`` with its CPU time added to TIMES[name] at every call (disabled under torch.compile if it was)."""

    def wrapper(*arguments, **keywords):
        started = time.process_time()
        result = function(*arguments, **keywords)
        TIMES[name] += time.process_time() - started
        return result

    return torch.compiler.disable(wrapper) if disabled else wrapper


def wrap_eager_islands() -> None:
    """The functions run eagerly between compiled graphs, timed (before anything is compiled)."""
    loop = wood._wood_rest_eagerly
    wood._wood_rest_eagerly = timed("eager _wood_rest_eagerly", getattr(loop, "__wrapped__", loop), True)
    # called only inside the sampled blocks' operator: the eager inversion, or the compiled count with sum e y
    inversion, counted = fused_sampled.inverse_cdf, fused_sampled.compiled_draws
    fused_sampled.inverse_cdf = timed("inverse_cdf (inside econspin::sampled_blocks)", inversion, False)
    fused_sampled.compiled_draws = timed("compiled_draws and sum e y (inside econspin::sampled_blocks)", counted, False)


def compiled_modules() -> list:
    """The Python modules Inductor has loaded in this process (its compiled graphs' wrappers), oldest first."""
    from torch._inductor.codecache import PyCodeCache

    modules = PyCodeCache.modules
    return list(modules.values()) if isinstance(modules, dict) else list(modules)


def ensemble_arguments(parser: argparse.ArgumentParser, response: str = "large_d") -> None:
    """The options naming the ensemble (experiments/benchmark_ensemble.py's economies): mode, N, B, d, response."""
    parser.add_argument("--mode", default="sampled")
    parser.add_argument("--agents", type=int, default=64)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--dimension", type=int, default=32)
    parser.add_argument("--response", default=response)


def wrap_compiled_kernels() -> None:
    """Every loaded Inductor module's C++ kernels and its extern bmm, timed."""
    for module in compiled_modules():
        for name in [name for name in dir(module) if name.startswith("cpp_fused")]:
            # the fused operations' names, cut, and the kernel's number: two kernels may share the first 70 characters
            label = f"kernel {name[len('cpp_fused_') :][:70]} ..._{name.rsplit('_', 1)[-1]}"
            setattr(module, name, timed(label, getattr(module, name), False))
        extern = getattr(module, "extern_kernels", None)
        if extern is not None and not getattr(extern, "_timed", False):
            extern._timed = True
            product = extern.bmm

            def bmm(*arguments, _product=product, **keywords):
                started = time.process_time()
                result = _product(*arguments, **keywords)
                TIMES[f"extern bmm {tuple(arguments[0].shape)}"] += time.process_time() - started
                return result

            extern.bmm = bmm


def operator_times(step, state, economy, rounds: int) -> dict[str, float]:
    """CPU ms a round in each econspin:: operator (the blocks, Wood's loop), by torch.profiler over ``rounds``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(rounds):
            state = step(state, economy)
    return {
        f"operator {event.key}": event.cpu_time_total / rounds / 1e3
        for event in profiler.key_averages()
        if event.key.startswith("econspin::")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ensemble_arguments(parser)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--compile", default="default")
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    # the round compiled with Inductor's Python wrapper, whose module looks its kernels up by name at every
    # call (the C++ wrapper of CPP_WRAPPER_DEVICES calls them inside one C++ function): the same kernels
    compiled.CPP_WRAPPER_DEVICES = ()
    wrap_eager_islands()
    from econspin.round import step

    state, economy = ensemble(
        arguments.batch, arguments.mode, arguments.agents, arguments.dimension, "cpu", arguments.response, "auto",
        arguments.compile,
    )  # fmt: skip
    wrap_compiled_kernels()
    with torch.no_grad():
        for _ in range(5):
            state = step(state, economy)
        TIMES.clear()
        started = time.process_time()
        for _ in range(arguments.rounds):
            state = step(state, economy)
        total = time.process_time() - started
        per_round = {name: seconds / arguments.rounds * 1e3 for name, seconds in TIMES.items()}
        per_round.update(operator_times(step, state, economy, arguments.rounds))
    print(
        f"{arguments.mode}, B = {arguments.batch}, N = {arguments.agents}, d = {arguments.dimension} "
        f"{arguments.response}, compile {arguments.compile}: round {total / arguments.rounds * 1e3:.3f} ms (CPU time)"
    )
    for name, milliseconds in sorted(per_round.items(), key=lambda item: -item[1]):
        print(f"{milliseconds:8.3f} ms  {name}")


if __name__ == "__main__":
    main()
