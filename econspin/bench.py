"""`econspin bench`: one round of each market kernel against the attention floor, in one run.

For every mode (expected by default; ``modes`` adds sampled), size N and batch B it builds
the benchmark economy (two populations, 80% at T = 1 and 20% at T = 0.1, d = 32, one head,
float32) and times, in interleaved repeats after a warm-up, the median of

- one round (``round.step``) on the reference kernel (``econspin.market.trade``),
- one round on the fused kernel (``econspin.fused``, sampled mode ``econspin.fused_sampled``),
- with ``kernels`` naming it, one round on the FlexAttention kernel (``econspin.flex``; expected
  mode only: compiled on CUDA, eager on a CPU, where it is a correctness twin and slow),
- with ``kernels`` naming it, one round on the Triton kernel (``econspin.triton_blocks``;
  either mode: compiled on CUDA, interpreted on a CPU, where it runs at tiny N alone),
  and with a reduced ``utility_precision`` once more at that precision (its products on a
  GPU's tensor cores),
- the floor: ``torch.nn.functional.scaled_dot_product_attention`` forward on q, k, v of
  shape (B, H, N, d_k), what any attention-shaped round must at least do.

It reports the ratios round / floor, the pair interactions per second B N^2 / round time,
and how far the two kernels' next states and money lie apart (they must agree to rounding).
Ratios measured in one run are what to compare between machines; absolute times move with
the machine and its load. The reference kernel is skipped where it would take too long
(``REFERENCE_PAIRS``), and so is the fused one past ``FUSED_PAIRS``.
"""

from __future__ import annotations

import dataclasses
import functools
import platform
import statistics
import time
from typing import Callable

import torch

from econspin.economy import resolve_device
from econspin.precision import tensor_cores
from econspin.round import step
from econspin.scenario import Scenario
from econspin.simulate import Rollout

SIZES = {True: (256, 1024, 4096), False: (256, 1024, 4096, 16384)}  # by --quick
BATCHES = (1, 16)
REPEATS = {True: 3, False: 7}
REFERENCE_PAIRS = {True: 2**24, False: 2**28}  # largest B N^2 the reference kernel is timed at
FUSED_PAIRS = {True: 2**28, False: 2**32}
# the FlexAttention kernel off CUDA materialises a few (B, N, N) score tensors per pass
FLEX_PAIRS = {"cuda": FUSED_PAIRS, "cpu": {True: 2**20, False: 2**24}}
# Triton's interpreter runs a program instance at a time: 0.23 s a round at N = 64 (docs/performance.md)
TRITON_PAIRS = {"cuda": FUSED_PAIRS, "cpu": {True: 2**12, False: 2**14}}
KERNELS = ("reference", "fused", "flex", "triton")
OPTIONAL_KERNELS = ("flex", "triton")  # timed where ``kernels`` names them (flex: expected mode only)
DEFAULT_KERNELS = ("reference", "fused")
DIMENSION = 32


MODES = ("expected", "sampled")


def bench_scenario(agents: int, dimension: int = DIMENSION, mode: str = "expected") -> Scenario:
    """The benchmark economy: 80% humans at T = 1, 20% AI agents at T = 0.1.

    On the fused kernel by name: every timing names the kernel it times, and those that take the
    economy as it is built time the fused one (``run.kernel: auto`` is the Triton kernel in
    expected mode on CUDA).
    """
    return Scenario.from_dict(
        {
            "name": "bench",
            "populations": {
                "human": {"count": agents - agents // 5, "temperature": 1.0},
                "ai": {"count": agents // 5, "temperature": 0.1},
            },
            "market": {"d": dimension, "mode": mode},
            "run": {"device": "cpu", "kernel": "fused"},
        }
    )


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def timed(
    functions: dict[str, Callable[[], object]], repeats: int, device: torch.device, clock: str = "wall"
) -> dict[str, float]:
    """Median time (s) of each function: one warm-up call each, then interleaved repeats.

    ``clock`` is wall time, or ``cpu``: the CPU time of this process (all its threads), which
    on a machine shared with other work does not count the time the process waits for a core.
    """
    now = CLOCKS[clock]

    def once(function) -> float:
        started = now()
        function()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return now() - started

    for function in functions.values():
        once(function)
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            times[name].append(once(function))
    return {name: statistics.median(values) for name, values in times.items()}


def floor_inputs(batch: int, heads: int, agents: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """q, k, v (B, H, N, DIMENSION) for the attention floor: standard normal from seed 0 on ``device``."""
    generator = torch.Generator(device=device).manual_seed(0)
    return tuple(torch.randn(batch, heads, agents, DIMENSION, generator=generator, device=device) for _ in range(3))


def relative_difference(want: torch.Tensor, got: torch.Tensor) -> float:
    """The largest |want - got| over the largest |want|."""
    return float((want.double() - got.double()).abs().max() / want.double().abs().max().clamp(min=1e-300))


def round_difference(want, got) -> float:
    """The larger :func:`relative_difference` of two next states' spins and money."""
    return max(relative_difference(want.states, got.states), relative_difference(want.money, got.money))


def compile_first(state, economy, device: torch.device, clock: str = "wall") -> tuple[object, float]:
    """(the first round of a ``run.compile`` economy, seconds it took): tracing and code generation included."""
    now = CLOCKS[clock]
    started = now()
    with torch.no_grad():
        first = step(state, economy)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return first, now() - started


def measure(
    agents: int,
    batch: int,
    device: torch.device,
    quick: bool,
    repeats: int,
    clock: str = "wall",
    mode="expected",
    compile_mode: str = "off",
    utility_precision: str = "full",
    kernels: tuple[str, ...] = DEFAULT_KERNELS,
) -> dict:
    """One row of the benchmark: times (ms), ratios, pairs per second, kernel agreement.

    ``kernels`` names the kernels timed (:data:`KERNELS`); with ``flex`` the row also holds
    ``flex_ms``, ``flex_ratio``, ``flex_pairs_per_s`` and ``flex_difference``, how far its next
    round lies from the fused one (None where it was not run: sampled mode, or past ``FLEX_PAIRS``);
    with ``triton`` the same ``triton_*`` columns (either mode; past ``TRITON_PAIRS`` not run), and with a
    reduced ``utility_precision`` also ``triton_low_ms``, ``triton_low_pairs_per_s`` and
    ``triton_low_difference`` (from the full-precision fused round: the reduced precision's error).
    With ``compile_mode`` (a ``run.compile`` value other than off) the fused round is also
    timed compiled (:mod:`econspin.compiled`), interleaved with the others; its first call,
    the compilation, is timed apart (``compile_s``). With ``utility_precision`` (a
    ``run.utility_precision`` other than full) the fused round is also timed at that
    precision (``low_*``), beside SDPA on bf16 q, k, v (``low_floor_ms``; TF32 on CUDA: on
    float32 ones with TF32 allowed), and its next states and money compared with the
    full-precision fused round's (``low_difference``).
    """
    rollout = Rollout.create([bench_scenario(agents, mode=mode)] * batch, list(range(batch)), str(device), "float32")
    state, economy = rollout.state, rollout.economy
    timed_kernels = kernels
    kernels = {name: dataclasses.replace(economy, kernel=name) for name in KERNELS}
    pairs = batch * agents * agents
    kind = "cuda" if device.type == "cuda" else "cpu"
    run = {"reference": pairs <= REFERENCE_PAIRS[quick], "fused": pairs <= FUSED_PAIRS[quick]}
    run["flex"] = mode == "expected" and pairs <= FLEX_PAIRS[kind][quick]
    run["triton"] = pairs <= TRITON_PAIRS[kind][quick]
    run = {name: run[name] and name in timed_kernels for name in KERNELS}
    q, k, v = floor_inputs(batch, economy.heads, agents, device)
    functions = {"floor": lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)}
    functions.update({name: (lambda e=kernels[name]: step(state, e)) for name in kernels if run[name]})

    @functools.cache
    def fused_round():
        """The eager fused round, every comparison's baseline: played once, when first asked for."""
        with torch.no_grad():
            return step(state, kernels["fused"])

    def against_fused(other) -> float:
        """How far the next states and money of ``other`` (a State) lie from the fused round's."""
        return round_difference(fused_round(), other)

    compiled_row = {}
    if compile_mode != "off" and run["fused"]:
        compiled = dataclasses.replace(kernels["fused"], compile=compile_mode)
        first, seconds = compile_first(state, compiled, device, clock)
        compiled_row = {"compile": compile_mode, "compile_s": seconds, "compiled_difference": against_fused(first)}
        functions["compiled"] = lambda: step(state, compiled)
    low_row = {}
    if utility_precision != "full" and run["fused"]:
        low = dataclasses.replace(kernels["fused"], utility_precision=utility_precision)
        functions["low"] = lambda: step(state, low)
        functions["low_floor"] = low_precision_floor(q, k, v, utility_precision)
        with torch.no_grad():
            low_row["low_difference"] = against_fused(step(state, low))
    if utility_precision != "full" and run["triton"]:
        triton_low = dataclasses.replace(kernels["triton"], utility_precision=utility_precision)
        functions["triton_low"] = lambda: step(state, triton_low)
        with torch.no_grad():
            low_row["triton_low_difference"] = against_fused(step(state, triton_low))
    with torch.no_grad():
        times = timed(functions, repeats, device, clock)
        row = {"mode": mode, "agents": agents, "batch": batch, "pairs": pairs, "repeats": repeats}
        row["floor_ms"] = times["floor"] * 1e3
        for name in KERNELS:
            if name in OPTIONAL_KERNELS and name not in timed_kernels:
                continue  # its columns appear only where asked for
            seconds = times.get(name)
            row[f"{name}_ms"] = None if seconds is None else seconds * 1e3
            row[f"{name}_ratio"] = None if seconds is None else seconds / times["floor"]
            row[f"{name}_pairs_per_s"] = None if seconds is None else pairs / seconds
        row["speedup"] = (
            None if None in (row["reference_ms"], row["fused_ms"]) else row["reference_ms"] / row["fused_ms"]
        )
        for name in OPTIONAL_KERNELS:
            if name in timed_kernels:
                row[f"{name}_difference"] = None if name not in times else against_fused(step(state, kernels[name]))
        if "compiled" in times:
            compiled_row["compiled_ms"] = times["compiled"] * 1e3
            compiled_row["compiled_ratio"] = times["compiled"] / times["floor"]
            compiled_row["compiled_speedup"] = times["fused"] / times["compiled"]
        row.update(compiled_row)
        if "low" in times:
            low_row["low_ms"], low_row["low_floor_ms"] = times["low"] * 1e3, times["low_floor"] * 1e3
            low_row["low_ratio"] = times["low"] / times["floor"]
            low_row["low_speedup"] = times["fused"] / times["low"]
            low_row["low_pairs_per_s"] = pairs / times["low"]
        if "triton_low" in times:
            low_row["triton_low_ms"] = times["triton_low"] * 1e3
            low_row["triton_low_pairs_per_s"] = pairs / times["triton_low"]
        row.update(low_row)
        row["compared"] = run["reference"] and run["fused"]
        row["state_difference"] = row["money_difference"] = None
        if row["compared"]:
            reference, fused = step(state, kernels["reference"]), fused_round()
            row["state_difference"] = relative_difference(reference.states, fused.states)
            row["money_difference"] = relative_difference(reference.money, fused.money)
    return row


def low_precision_floor(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, utility_precision: str):
    """SDPA forward at the reduced precision: on bf16 q, k, v, or (tf32) float32 with TF32 allowed."""
    if utility_precision == "bfloat16":
        low = tuple(t.to(torch.bfloat16) for t in (q, k, v))
        return lambda: torch.nn.functional.scaled_dot_product_attention(*low)

    def with_tensor_cores():
        with tensor_cores(True):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    return with_tensor_cores


def run_bench(
    quick: bool = False,
    device: str = "cpu",
    threads: int | None = None,
    sizes: tuple[int, ...] | None = None,
    batches: tuple[int, ...] | None = None,
    repeats: int | None = None,
    on_row: Callable[[dict], None] | None = None,
    clock: str = "wall",
    modes: tuple[str, ...] = ("expected",),
    baselines: tuple[str, ...] = (),
    compile_mode: str = "off",
    utility_precision: str = "full",
    kernels: tuple[str, ...] = DEFAULT_KERNELS,
) -> dict:
    """The whole benchmark as a JSON-ready dict: machine, versions, threads, one row per (mode, N, B).

    ``baselines`` names sections of :mod:`econspin.bench_baselines` (Mesa, sweeps, memory,
    floors) to measure after the rows, in the same run; each becomes a key of the result.
    ``compile_mode`` (a ``run.compile`` value) adds the compiled round to the rows, the
    Boltzmann and the sweep sections; ``utility_precision`` the fused round at that
    ``run.utility_precision`` to the rows.
    """
    resolved = resolve_device(device)
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        result = {
            "device": device_name(resolved),
            "device_type": resolved.type,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "dimension": DIMENSION,
            "heads": 1,
            "dtype": "float32",
            "modes": list(modes),
            "quick": quick,
            "clock": clock,
            "compile": compile_mode,
            "utility_precision": utility_precision,
            "kernels": list(kernels),
            "rows": [],
        }
        for mode in modes:
            for agents in sizes or SIZES[quick]:
                for batch in batches or BATCHES:
                    count = repeats or REPEATS[quick]
                    row = measure(
                        agents, batch, resolved, quick, count, clock, mode, compile_mode, utility_precision, kernels
                    )
                    result["rows"].append(row)
                    if on_row is not None:
                        on_row(row)
        from econspin.bench_baselines import run_baselines  # it imports this module

        shape = (sizes or SIZES[quick], batches or BATCHES)
        count = repeats or REPEATS[quick]
        result.update(run_baselines(baselines, quick, resolved, count, clock, *shape, compile_mode=compile_mode))
        return result
    finally:
        torch.set_num_threads(previous)


def bench_table(result: dict):
    """A rich table of the benchmark rows."""
    from rich.table import Table

    title = f"one round, d = {result['dimension']}, {result['dtype']}: {result['device']}, "
    title += f"torch {result['torch']}, {result['threads']} threads, {result['clock']} time"
    table = Table(title=title)
    headers = (
        "mode",
        "N",
        "B",
        "SDPA ms",
        "ref ms",
        "fused ms",
        "ref/SDPA",
        "fused/SDPA",
        "speedup",
        "fused pairs/s",
        "max diff",
    )
    extra_columns = []  # (header, row key, format) shown after the common columns
    if result.get("compile", "off") != "off":  # the compiled fused round beside the eager one
        extra_columns += [
            ("compiled ms", "compiled_ms", ".3g"),
            ("compiled/SDPA", "compiled_ratio", ".2f"),
            ("fused/compiled", "compiled_speedup", ".2f"),
            ("compile s", "compile_s", ".3g"),
            ("compiled diff", "compiled_difference", ".1e"),
        ]
    if result.get("utility_precision", "full") != "full":  # the fused round at the reduced precision
        extra_columns += [
            ("low ms", "low_ms", ".3g"),
            ("low/SDPA", "low_ratio", ".2f"),
            ("fused/low", "low_speedup", ".2f"),
            ("SDPA low ms", "low_floor_ms", ".3g"),
            ("low diff", "low_difference", ".1e"),
        ]
    for name in OPTIONAL_KERNELS:  # the FlexAttention and Triton kernels beside the fused one
        if name in result.get("kernels", ()):
            extra_columns += [
                (f"{name} ms", f"{name}_ms", ".3g"),
                (f"{name}/SDPA", f"{name}_ratio", ".2f"),
                (f"{name} diff", f"{name}_difference", ".1e"),
            ]
    if "triton" in result.get("kernels", ()) and result.get("utility_precision", "full") != "full":
        extra_columns += [
            ("triton low ms", "triton_low_ms", ".3g"),
            ("triton low pairs/s", "triton_low_pairs_per_s", ".2e"),
            ("triton low diff", "triton_low_difference", ".1e"),
        ]
    for column in (*headers, *(header for header, _, _ in extra_columns)):
        table.add_column(column, justify="right")

    def show(value, form):
        return "-" if value is None else format(value, form)

    for row in result["rows"]:
        agreement = "-" if not row["compared"] else f"{max(row['state_difference'], row['money_difference']):.1e}"
        extra = tuple(show(row.get(key), form) for _, key, form in extra_columns)
        table.add_row(
            row["mode"],
            str(row["agents"]),
            str(row["batch"]),
            show(row["floor_ms"], ".3g"),
            show(row["reference_ms"], ".3g"),
            show(row["fused_ms"], ".3g"),
            show(row["reference_ratio"], ".1f"),
            show(row["fused_ratio"], ".2f"),
            show(row["speedup"], ".1f"),
            show(row["fused_pairs_per_s"], ".2e"),
            agreement,
            *extra,
        )
    return table
