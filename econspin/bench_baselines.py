"""`econspin bench`'s baselines: the engine against per-agent Mesa, batches against one by one, memory, floors.

Each section is a list of JSON-ready rows, every ratio measured within one run (a warm-up
call each, then interleaved repeats, the median; :func:`econspin.bench.timed`):

- ``reference``: the per-agent Mesa reference (``econspin.mesa.ReferenceModel``, numpy, one
  agent at a time, float64) against the engine's round on the benchmark economy (expected
  mode, float32, the fused kernel): N = 250 and 1000 with B = 1, and N = 256 with B = 64
  economies in one batch against one reference economy (per economy). Agent-steps per second
  and the ratio. The reference is timed by ``play_round`` (the agents' round, without its data
  collector's record), the engine by ``round.step``.
- ``boltzmann``: Mesa's own Boltzmann wealth model (``econspin.mesa.MoneyModel``, the
  tutorial's) against the engine's O(N) uniform round (:mod:`econspin.uniform`) on
  scenarios/boltzmann_wealth.yaml, N = 1000 and 10^5: the tutorial's agents' moves
  (``agents.shuffle_do("step")``, after a few steps, so that about 60% of the agents give as
  at stationarity) against ``round.step``.
- ``sweep``: a 64-point temperature sweep (the AI population's T, log-spaced over 0.02-2) at
  N = 128, a few rounds of each point: ``econspin.sweep.run_sweep`` with all points as one
  batch against the same call point by point (both build their economies and tables).
- ``memory``: the peak memory of one round above what the economy and state already hold.
  On the CPU, in a fresh Python process per case (keeping freed memory where the command's
  own process does, ``--no-keep-memory``): the resident set is read before the first
  round and its peak after (Linux: the peak is reset first through /proc/self/clear_refs, so a
  setup peak does not hide the round's; elsewhere ru_maxrss, which then bounds it from
  above); on a GPU, torch.cuda.max_memory_allocated.
- ``floors``: the attention floor two ways on the shapes of the round table: torch's
  scaled_dot_product_attention forward against the materialised softmax(q k^T / sqrt(d)) v
  plus its column sums (what a revenue pass adds), where the B N^2 scores fit.

Mesa is imported only by the sections that need it; without it they report one row saying so.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import subprocess
import sys
from pathlib import Path

import torch

from econspin.allocator import keeps_freed_memory
from econspin.bench import CLOCKS, DIMENSION, bench_scenario, compile_first, floor_inputs, timed
from econspin.economy import resolve_device
from econspin.round import step
from econspin.scenario import Scenario
from econspin.simulate import Rollout

SECTIONS = ("reference", "boltzmann", "sweep", "memory", "floors")
REFERENCE_SHAPES = {True: ((250, 1), (256, 64)), False: ((250, 1), (1000, 1), (256, 64))}  # (N, B) by --quick
BOLTZMANN_SIZES = {True: (1000,), False: (1000, 100_000)}
BOLTZMANN_WARM_STEPS = 5  # Mesa steps before timing: the share of agents who give settles near 0.6
SWEEP_POINTS, SWEEP_AGENTS, SWEEP_GRID = 64, 128, "populations.ai.temperature=log:0.02:2:64"
SWEEP_ROUNDS = {True: 5, False: 20}
MEMORY_CASES = {  # (kernel, N, B) by --quick
    True: (("uniform", 1_000_000, 1),),  # a fresh process costs seconds: one case
    False: (("fused", 4096, 1), ("fused", 16384, 1), ("fused", 100_000, 1), ("uniform", 1_000_000, 1)),
}
FLOOR_ENTRIES = {True: 2**24, False: 2**27}  # the most B N^2 scores the materialised floor builds, by --quick
SCENARIO_FOLDER = Path(__file__).resolve().parent.parent / "scenarios"
MESA_MISSING = "mesa is not installed (pip install 'econspin[mesa]'): section skipped"


def boltzmann_scenario(agents: int) -> Scenario:
    """scenarios/boltzmann_wealth.yaml with ``agents`` agents, on the CPU, in float32."""
    scenario = Scenario.from_yaml(SCENARIO_FOLDER / "boltzmann_wealth.yaml")
    return scenario.with_overrides({"populations.agents.count": agents, "run.device": "cpu"})


def _has_mesa() -> bool:
    try:
        import mesa  # noqa: F401
    except ImportError:
        return False
    return True


def _rate_row(agents: int, batch: int, baseline_s: float, engine_s: float, repeats: int) -> dict:
    """Times (ms), agent-steps per second of both, and the ratio per economy."""
    per_economy = engine_s / batch
    return {
        "agents": agents,
        "batch": batch,
        "repeats": repeats,
        "mesa_ms": baseline_s * 1e3,
        "engine_ms": engine_s * 1e3,
        "mesa_agent_steps_per_s": agents / baseline_s,
        "engine_agent_steps_per_s": agents * batch / engine_s,
        "ratio": baseline_s / per_economy,
    }


def reference_rows(device: torch.device, repeats: int, clock: str, shapes) -> list[dict]:
    """The per-agent ReferenceModel against the engine's round: one row per (N, B)."""
    if not _has_mesa():
        return [{"skipped": MESA_MISSING}]
    from econspin.mesa import ReferenceModel

    rows = []
    for agents, batch in shapes:
        scenario = bench_scenario(agents)
        model = ReferenceModel(scenario, seed=0)
        rollout = Rollout.create([scenario] * batch, list(range(batch)), str(device), "float32")
        with torch.no_grad():
            times = timed(
                {"mesa": model.play_round, "engine": lambda r=rollout: step(r.state, r.economy)},
                repeats,
                device,
                clock,
            )
        rows.append(_rate_row(agents, batch, times["mesa"], times["engine"], repeats))
    return rows


def boltzmann_rows(device: torch.device, repeats: int, clock: str, sizes, compile_mode: str = "off") -> list[dict]:
    """Mesa's Boltzmann wealth model (the agents' moves) against the engine's O(N) round, eager (and compiled).

    Both sides play on from round to round (the engine's state advances, as Mesa's model does).
    """
    if not _has_mesa():
        return [{"skipped": MESA_MISSING}]
    from econspin.mesa import MoneyModel
    from econspin.uniform import uses_uniform

    rows = []
    for agents in sizes:
        model = MoneyModel(n=agents, seed=0)
        rollout = Rollout.create([boltzmann_scenario(agents)], [0], str(device), "float32")
        for _ in range(BOLTZMANN_WARM_STEPS):
            model.agents.shuffle_do("step")
        rollout.advance(BOLTZMANN_WARM_STEPS)
        assert uses_uniform(rollout.state, rollout.economy), "the Boltzmann scenario left the uniform path"
        functions = {
            "mesa": lambda m=model: m.agents.shuffle_do("step"),
            "engine": _advancing(rollout.state, rollout.economy),
        }
        compiled = _compiled_function(functions, rollout.state, rollout.economy, compile_mode, device, clock)
        with torch.no_grad():
            times = timed(functions, repeats, device, clock)
        rows.append({**_rate_row(agents, 1, times["mesa"], times["engine"], repeats), **compiled})
        if compiled:
            rows[-1].update(compiled_ms=times["compiled"] * 1e3, compiled_ratio=times["mesa"] / times["compiled"])
    return rows


def _compiled_function(functions: dict, state, economy, compile_mode: str, device, clock: str) -> dict:
    """Adds the compiled round (``run.compile``) to ``functions``, compiled first: {} for off, else its compile time."""
    if compile_mode == "off":
        return {}
    compiled = dataclasses.replace(economy, compile=compile_mode)
    first, seconds = compile_first(state, compiled, device, clock)
    functions["compiled"] = _advancing(first, compiled)
    return {"compile": compile_mode, "compile_s": seconds}


def _advancing(state, economy):
    """A round that plays on from the last one it played, as Mesa's model does, not the same round again.

    Each call then pays what a rollout's round pays: the draws of a block of rounds, made once
    for them all (econspin.randomness.RoundBlock), included.
    """
    current = [state]

    def advance():
        current[0] = step(current[0], economy)

    return advance


def sweep_rows(
    device: torch.device, repeats: int, clock: str, rounds: int, agents: int = SWEEP_AGENTS, compile_mode: str = "off"
) -> list[dict]:
    """A 64-point temperature sweep: all points as one batch against the points one by one.

    With ``compile_mode`` (``run.compile``) both are timed compiled too: one shape each, so
    each compiles once, in the warm-up call (timed apart as ``compile_s``).
    """
    from econspin.sweep import parse_grid, plan_batches, run_sweep, sweep_points

    def sweep(setting: str):
        base = bench_scenario(agents).with_overrides({"run.device": str(device), "run.compile": setting})
        return sweep_points(base, [parse_grid(SWEEP_GRID)])

    points = sweep("off")
    one_batch = len(plan_batches(points, 1, "float32")) == 1  # else the batched side is several batches
    functions = {
        "one_by_one": lambda: [run_sweep([point], 1, rounds, str(device), "float32") for point in points],
        "batched": lambda: run_sweep(points, 1, rounds, str(device), "float32"),
    }
    row = {}
    if compile_mode != "off":
        compiled_points = sweep(compile_mode)
        functions["one_by_one_compiled"] = lambda: [
            run_sweep([point], 1, rounds, str(device), "float32") for point in compiled_points
        ]
        functions["batched_compiled"] = lambda: run_sweep(compiled_points, 1, rounds, str(device), "float32")
        now = CLOCKS[clock]
        started = now()
        run_sweep(compiled_points[:1], 1, 1, str(device), "float32")
        run_sweep(compiled_points, 1, 1, str(device), "float32")
        row = {"compile": compile_mode, "compile_s": now() - started}
    times = timed(functions, repeats, device, clock)
    row.update(
        {
            "agents": agents,
            "points": len(points),
            "rounds": rounds,
            "repeats": repeats,
            "one_batch": one_batch,
            "one_by_one_ms": times["one_by_one"] * 1e3,
            "batched_ms": times["batched"] * 1e3,
            "ratio": times["one_by_one"] / times["batched"],
        }
    )
    if compile_mode != "off":
        row["one_by_one_compiled_ms"] = times["one_by_one_compiled"] * 1e3
        row["batched_compiled_ms"] = times["batched_compiled"] * 1e3
        row["compiled_ratio"] = times["one_by_one_compiled"] / times["batched_compiled"]
        row["compiled_ratio_to_eager_one_by_one"] = times["one_by_one"] / times["batched_compiled"]
    return [row]


def _case_rollout(kernel: str, agents: int, batch: int, device: str) -> Rollout:
    scenario = boltzmann_scenario(agents) if kernel == "uniform" else bench_scenario(agents)
    return Rollout.create([scenario] * batch, list(range(batch)), device, "float32")


def _resident_kib(field: str) -> int | None:
    """VmRSS or VmHWM of this process in KiB (Linux), else None."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def memory_probe(kernel: str, agents: int, batch: int, device: str) -> dict:
    """In this process: build the case, then measure the peak of its first round.

    The first round, because a freed allocation stays resident in the C allocator's heap and
    would hide a second round's working set; it includes what a round caches for the next
    (the sellers' layout, a network's bias), which is small beside its blocks.
    """
    rollout = _case_rollout(kernel, agents, batch, device)
    resolved = resolve_device(device)
    with torch.no_grad():
        if resolved.type == "cuda":
            torch.cuda.synchronize(resolved)
            before = torch.cuda.memory_allocated(resolved)
            torch.cuda.reset_peak_memory_stats(resolved)
            step(rollout.state, rollout.economy)
            torch.cuda.synchronize(resolved)
            peak, method = torch.cuda.max_memory_allocated(resolved), "torch.cuda.max_memory_allocated"
            return {"held_mb": before / 2**20, "round_peak_mb": (peak - before) / 2**20, "method": method}
        before = _resident_kib("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as clear:
                clear.write("5")  # the peak resident set restarts from the current one
            method = "VmHWM after a reset, minus VmRSS before"
        except OSError:
            method = "ru_maxrss minus VmRSS before (an upper bound: setup may have peaked higher)"
        step(rollout.state, rollout.economy)
        peak = _resident_kib("VmHWM") if method.startswith("VmHWM") else None
        if peak is None:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        before = before if before is not None else 0
        return {"held_mb": before / 1024, "round_peak_mb": (peak - before) / 1024, "method": method}


def memory_rows(device: torch.device, cases, keep_memory: bool | None = None) -> list[dict]:
    """Each case's round in a fresh process (the CPU) or after a reset of the peak (CUDA).

    A fresh process keeps freed memory (:mod:`econspin.allocator`) if ``keep_memory`` says so,
    by default if this process does (the command's ``--no-keep-memory``): the peak is measured
    under the setting the command runs its rounds with. Its row says whether glibc took it
    (``keep_freed_memory``).
    """
    keep_memory = keeps_freed_memory() if keep_memory is None else keep_memory
    rows = []
    package_root = str(Path(__file__).resolve().parent.parent)
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]))
    for kernel, agents, batch in cases:
        row = {"kernel": kernel, "agents": agents, "batch": batch, "pairs": batch * agents * agents}
        if device.type == "cuda":
            row.update(memory_probe(kernel, agents, batch, str(device)))
        else:
            code = (
                "import json, torch; from econspin.allocator import keep_freed_memory; "
                "from econspin.bench_baselines import memory_probe; "
                f"kept = keep_freed_memory() if {keep_memory!r} else False; "
                f"torch.set_num_threads({torch.get_num_threads()}); "
                f"row = memory_probe({kernel!r}, {agents}, {batch}, 'cpu'); "
                "print(json.dumps({**row, 'keep_freed_memory': kept}))"
            )
            done = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, env=environment, check=False
            )
            if done.returncode != 0:
                row["error"] = (done.stderr.strip().splitlines() or ["the probe failed"])[-1]
            else:
                row.update(json.loads(done.stdout.strip().splitlines()[-1]))
        rows.append(row)
    return rows


def floor_rows(device: torch.device, repeats: int, clock: str, sizes, batches, entries: int) -> list[dict]:
    """SDPA forward against the materialised softmax, its product with v and its column sums (up to ``entries``)."""
    rows = []
    for agents in sizes:
        for batch in batches:
            if batch * agents * agents > entries:
                continue
            q, k, v = floor_inputs(batch, 1, agents, device)

            def materialised():
                alpha = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(DIMENSION), dim=-1)
                return alpha @ v, alpha.sum(-2)  # the rows' output and the columns' pass (revenue)

            functions = {
                "sdpa": lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v),
                "materialised": materialised,
            }
            with torch.no_grad():
                times = timed(functions, repeats, device, clock)
            rows.append(
                {
                    "agents": agents,
                    "batch": batch,
                    "repeats": repeats,
                    "sdpa_ms": times["sdpa"] * 1e3,
                    "materialised_ms": times["materialised"] * 1e3,
                    "ratio": times["materialised"] / times["sdpa"],
                }
            )
    return rows


def run_baselines(
    sections: tuple[str, ...],
    quick: bool,
    device: torch.device,
    repeats: int,
    clock: str,
    sizes: tuple[int, ...],
    batches: tuple[int, ...],
    on_section=None,
    compile_mode: str = "off",
) -> dict[str, list[dict]]:
    """The chosen sections as {name: rows}; ``sizes`` and ``batches`` are the round table's (for the floors).

    ``compile_mode`` (``run.compile``) adds the compiled engine to the Boltzmann and sweep sections.
    """
    makers = {
        "reference": lambda: reference_rows(device, repeats, clock, REFERENCE_SHAPES[quick]),
        "boltzmann": lambda: boltzmann_rows(device, repeats, clock, BOLTZMANN_SIZES[quick], compile_mode),
        "sweep": lambda: sweep_rows(device, repeats, clock, SWEEP_ROUNDS[quick], compile_mode=compile_mode),
        "memory": lambda: memory_rows(device, MEMORY_CASES[quick]),
        "floors": lambda: floor_rows(device, repeats, clock, sizes, batches, FLOOR_ENTRIES[quick]),
    }
    result = {}
    for name in sections:
        result[name] = makers[name]()
        if on_section is not None:
            on_section(name)
    return result


def parse_sections(text: str | None) -> tuple[str, ...]:
    """``--baselines``: comma-separated section names, ``all`` (the default) or ``none``."""
    if text is None or text == "all":
        return SECTIONS
    if text == "none":
        return ()
    names = tuple(part.strip() for part in text.split(","))
    unknown = [name for name in names if name not in SECTIONS]
    if unknown:
        raise ValueError(
            f"--baselines {text!r}: unknown {', '.join(unknown)}; choose from all, none, {', '.join(SECTIONS)}"
        )
    return names


AGENTS, BATCH = ("N", "agents", "d"), ("B", "batch", "d")
RATES = [  # the reference and Boltzmann sections: both times, both rates
    ("Mesa ms", "mesa_ms", ".3g"),
    ("engine ms", "engine_ms", ".3g"),
    ("Mesa agent-steps/s", "mesa_agent_steps_per_s", ".3g"),
    ("engine agent-steps/s", "engine_agent_steps_per_s", ".3g"),
]
COLUMNS = {  # section: (title, [(header, key, format)])
    "reference": (
        "per-agent Mesa reference (ReferenceModel.play_round, numpy) against the engine's round",
        [AGENTS, BATCH, *RATES, ("ratio per economy", "ratio", ".1f")],
    ),
    "boltzmann": (
        "Mesa's Boltzmann wealth model (agents.shuffle_do) against the engine's O(N) uniform round",
        [AGENTS, *RATES, ("ratio", "ratio", ".1f")],
    ),
    "sweep": (
        "temperature sweep, econspin.sweep.run_sweep: all points in one batch against one by one",
        [AGENTS, ("points", "points", "d"), ("rounds", "rounds", "d"), ("one by one ms", "one_by_one_ms", ".4g")]
        + [("batched ms", "batched_ms", ".4g"), ("ratio", "ratio", ".1f")],
    ),
    "memory": (
        "memory of one round above what the economy and state hold",
        [("kernel", "kernel", "s"), AGENTS, BATCH, ("held MiB", "held_mb", ".4g")]
        + [("round peak MiB", "round_peak_mb", ".4g"), ("measured as", "method", "s")],
    ),
    "floors": (
        "the floor two ways: SDPA forward against the materialised softmax (@ v, column sums)",
        [AGENTS, BATCH, ("SDPA ms", "sdpa_ms", ".3g"), ("materialised ms", "materialised_ms", ".3g")]
        + [("ratio", "ratio", ".2f")],
    ),
}


COMPILED_COLUMNS = {  # with --compile: the compiled engine's columns, where a section has them
    "boltzmann": [("compiled ms", "compiled_ms", ".3g"), ("ratio compiled", "compiled_ratio", ".1f")]
    + [("compile s", "compile_s", ".3g")],
    "sweep": [("one by one compiled ms", "one_by_one_compiled_ms", ".4g")]
    + [("batched compiled ms", "batched_compiled_ms", ".4g"), ("ratio compiled", "compiled_ratio", ".1f")]
    + [("eager one by one / batched compiled", "compiled_ratio_to_eager_one_by_one", ".1f")]
    + [("compile s", "compile_s", ".3g")],
}


def baseline_tables(result: dict) -> list:
    """One rich table per baseline section present in ``result``."""
    from rich.table import Table

    tables = []
    for name, (title, columns) in COLUMNS.items():
        if name not in result:
            continue
        if result.get("compile", "off") != "off":
            columns = columns + COMPILED_COLUMNS.get(name, [])
        table = Table(title=title)
        for header, _, _ in columns:
            table.add_column(header, justify="right")
        for row in result[name]:
            if "skipped" in row or "error" in row:
                table.add_row(row.get("skipped") or row["error"], *[""] * (len(columns) - 1))
                continue
            table.add_row(*(format(row[key], form) for _, key, form in columns))
        tables.append(table)
    return tables
