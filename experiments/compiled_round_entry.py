"""What a compiled expected round costs besides its kernels: each layer from ``step`` down to the eager blocks.

    OMP_WAIT_POLICY=PASSIVE python -m experiments.compiled_round_entry --agents 256 --repeats 1000

For the benchmark economy (econspin.bench) at B = 1, compiled (run.compile: default), one thread,
it times, interleaved call by call (median CPU time of ``--repeats`` calls each, no profiler):

- ``step``: the round as a rollout plays it (:func:`econspin.round.step`);
- ``compiled``: the torch.compile'd :func:`econspin.round.play_tagged` called directly: step's own
  bookkeeping (the next State) left out;
- ``transformed``: the bytecode TorchDynamo made of play_tagged, called as a plain function: the
  compiled function's entry (torch.compile's Python wrapper, the frame's cache lookup and its
  guards) left out;
- ``graph``: the compiled graph alone (AOTAutograd's runtime wrappers and Inductor's wrapper with
  its kernels), on the arguments the transformed code passed it;
- ``operator``: the blocks' operator (``econspin::expected_blocks``) through the dispatcher;
- ``blocks``: :func:`econspin.fused.expected_blocks` called eagerly on the same terms.

The differences between neighbours are each layer's cost; ``guards`` times the guard check of the
cached entry alone. Private torch APIs (the cache entries of a code object), torch 2.13.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
import types

import torch

import econspin
import econspin.fused as fused
from econspin.bench import bench_scenario
from econspin.compiled import compiled_function
from econspin.round import play_tagged, step
from econspin.simulate import Rollout


def layers(agents: int) -> dict:
    """The callables of each layer, after two compiled rounds."""
    rollout = Rollout.create([bench_scenario(agents)], [0], "cpu", "float32")
    state, economy = rollout.state, dataclasses.replace(rollout.economy, kernel="fused", compile="default")
    compiled = compiled_function(play_tagged, "default", "cpu")
    step(state, economy)
    step(state, economy)
    entry = torch._dynamo.eval_frame._debug_get_cache_entry_list(play_tagged.__code__)[0]
    transformed = types.FunctionType(entry.code, play_tagged.__globals__)
    graph_name = next(name for name in entry.code.co_names if name.startswith("__compiled_fn"))
    graph = play_tagged.__globals__[graph_name]
    arguments = []

    def capture(*passed):
        arguments.append(passed)
        return graph(*passed)

    play_tagged.__globals__[graph_name] = capture
    try:
        transformed(state, economy, None, None)
    finally:
        play_tagged.__globals__[graph_name] = graph
    terms = fused.round_terms(state, economy)
    moment_rows = torch.rand(terms.groups, 2, agents)
    operator_arguments = (*fused.block_arguments(terms, economy, None), moment_rows)
    frame = {"state": state, "economy": economy, "mixed_round": None, "budget": None}
    return {
        "step": lambda: step(state, economy),
        "compiled": lambda: compiled(state, economy, None, None),
        "transformed": lambda: transformed(state, economy, None, None),
        "graph": lambda: graph(*arguments[0]),
        "operator": lambda: torch.ops.econspin.expected_blocks.default(*operator_arguments),
        "blocks": lambda: fused.expected_blocks(terms, economy, moment_rows, None),
        "guards": lambda: entry.guard_manager.check(frame),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1000)
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    econspin.keep_freed_memory()
    with torch.no_grad():
        functions = layers(arguments.agents)
        times = {name: [] for name in functions}
        for _ in range(arguments.repeats):
            for name, function in functions.items():
                started = time.process_time()
                function()
                times[name].append(time.process_time() - started)
    medians = {name: statistics.median(values) * 1e6 for name, values in times.items()}
    for name, median in medians.items():
        print(f"{name:12s} {median:9.1f} us")
    order = ["step", "compiled", "transformed", "graph", "operator", "blocks"]
    for upper, lower in zip(order, order[1:]):
        print(f"{upper} - {lower}: {medians[upper] - medians[lower]:.1f} us")


if __name__ == "__main__":
    main()
