"""The sampled blocks' inversion, eager against its compiled count, on the blocks of a running round.

    OMP_WAIT_POLICY=PASSIVE python -m experiments.inversion_count --sizes 32:128,64:128,128:128,256:16,1024:1

For each N:B, B economies of N agents as in experiments/benchmark_ensemble.py play three eager
sampled rounds; the last block that :func:`econspin.fused_sampled.inverse_cdf` received (the
unnormalised weights of the round and their uniforms) is kept and inverted again, eagerly
(``compiled=False``: float64 copy, cumsum, searchsorted) and with the count compiled
(``compiled=True``: the count a compiled round's blocks call, there through
``compiled_draws`` with the rows' sums too), each timed alone (1 thread, CPU
time, median of 7 series of 50 calls), and the two draws compared bit for bit.

``--rounds``: instead, the compiled sampled round itself, median of 20 series of 5 rounds (CPU
time) at each N:B; it calls nothing the branch added, so the same file times another tree's
round: ``PYTHONPATH=/path/to/other/tree python experiments/inversion_count.py --rounds``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from experiments.benchmark_ensemble import ensemble


def milliseconds(function, calls: int = 50, series: int = 7) -> list[float]:
    """CPU ms a call of ``function``: one value per series of ``calls`` calls, after one call to warm up."""
    function()
    times = []
    for _ in range(series):
        started = time.process_time()
        for _ in range(calls):
            function()
        times.append((time.process_time() - started) / calls * 1e3)
    return times


def captured_block(agents: int, batch: int, dimension: int, response: str):
    """(weights, uniforms): the last block an eager sampled round inverted."""
    import econspin.fused_sampled as fused_sampled
    from econspin.round import step

    seen = []
    inversion = fused_sampled.inverse_cdf

    def keep(weights, uniforms, *arguments, **keywords):
        seen.append((weights.clone(), uniforms.clone()))
        return inversion(weights, uniforms, *arguments, **keywords)

    fused_sampled.inverse_cdf = keep
    try:
        state, economy = ensemble(batch, "sampled", agents, dimension, "cpu", response, "auto", "off")
        with torch.no_grad():
            step(state, economy)
    finally:
        fused_sampled.inverse_cdf = inversion
    return seen[-1]


def time_blocks(agents: int, batch: int, dimension: int, response: str) -> str:
    from econspin.fused_sampled import inverse_cdf, tile_width

    weights, uniforms = captured_block(agents, batch, dimension, response)
    started = time.process_time()
    compiled = inverse_cdf(weights, uniforms, compiled=True)
    compile_seconds = time.process_time() - started
    same = torch.equal(compiled, inverse_cdf(weights, uniforms))
    eager = statistics.median(milliseconds(lambda: inverse_cdf(weights, uniforms)))
    counted = statistics.median(milliseconds(lambda: inverse_cdf(weights, uniforms, compiled=True)))
    return (
        f"N = {agents:5d}, B = {batch:4d}: block {tuple(weights.shape)}, tile {tile_width(agents)}: "
        f"eager {eager:.3f} ms, compiled count {counted:.3f} ms, same draws: {same} "
        f"(first call {compile_seconds:.1f} s cpu)"
    )


def time_rounds(agents: int, batch: int, dimension: int, response: str) -> str:
    from econspin.round import step

    state, economy = ensemble(batch, "sampled", agents, dimension, "cpu", response, "auto", "default")
    with torch.no_grad():
        times = milliseconds(lambda: step(state, economy), calls=5, series=20)
    low, _, high = statistics.quantiles(times, n=4)
    return (
        f"N = {agents:5d}, B = {batch:4d}: compiled sampled round {statistics.median(times):.3f} ms "
        f"(quartiles {low:.3f}-{high:.3f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="32:128,64:128,128:128,256:16,1024:1", help="N:B pairs")
    parser.add_argument("--dimension", type=int, default=16)
    parser.add_argument("--response", default="vmf")
    parser.add_argument("--rounds", action="store_true", help="time the compiled sampled round instead")
    arguments = parser.parse_args()
    torch.set_num_threads(1)
    for size in arguments.sizes.split(","):
        agents, batch = (int(part) for part in size.split(":"))
        timer = time_rounds if arguments.rounds else time_blocks
        print(timer(agents, batch, arguments.dimension, arguments.response), flush=True)


if __name__ == "__main__":
    main()
