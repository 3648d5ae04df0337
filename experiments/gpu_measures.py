"""The timings of gpu_check's measuring steps, each run in a process of its own (``gpu_check --measure NAME``).

    python -m experiments.gpu_check --steps rollout,triton,triton_precision ...

:data:`MEASURES` names them: ``blocks`` (the fused round per buyer rows per block), ``rollout``
(B = 64, N = 256 per way of playing, :data:`WAYS`), ``flex``, ``triton`` (the Triton kernel per
shape and tile size), ``triton_precision`` (the same with its products on the tensor cores) and
``triton_sampled`` (the same in sampled mode).
Each returns its rows, which gpu_check writes to ``NAME_cuda.json``; experiments/gpu_check.py's
docstring says what each step is for. The helpers that set a module's switch for the length of
a call (:func:`with_setting`) serve experiments/gpu_profile.py and gpu_block_pass.py too.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import traceback
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from econspin.state import State

ROLLOUT_SHAPE = (64, 256)  # B, N: the GPU target of issue 9 (<= 5x SDPA forward)
ROLLOUT_ROUNDS = 32
TRITON_SHAPES = ((1, 4096), (1, 16384), (1, 65536), (64, 256))  # (B, N): issue 9's GPU targets
# (buyers, sellers, warps[, one_pass]) per tile: the sweep that picks econspin.triton_blocks.DEFAULT_TILES["cuda"];
# one_pass False: the rows' pass in two loops, the maximum first, against the default one loop (Tiles.one_pass)
TRITON_TILES = ((64, 64, 4), (64, 64, 4, False), (32, 64, 4), (64, 32, 4), (128, 64, 8), (64, 128, 4), (128, 128, 8))
# the bf16 and TF32 products (run.utility_precision) against issue 9's 4e11 pairs/s: large N, and B = 64, N = 256
TRITON_PRECISION_SHAPES = ((1, 16384), (1, 65536), (64, 256))
TRITON_PRECISION_TILES = ((64, 64, 4), (64, 64, 4, False), (128, 64, 4), (128, 64, 8), (64, 128, 4), (128, 128, 8))
TRITON_SAMPLED_TILES = ((64, 64, 4), (64, 64, 4, False), (128, 64, 8))  # sampled mode: the draw's float64 sums


# name: (chunk_rounds, sync_free, run.compile, switches (with_switches; {}: as they are), changes to the economy);
# chunk_rounds None: ROLLOUT_ROUNDS. Some ways play one mode only (plays_mode)
STORED_WAY = "sync-free chunks, reduce-overhead, blocks traced, values stored"
WAYS = {
    "round by round, Wood's loop": (1, False, "off", {}, {}),
    "sync-free chunks, eager": (None, True, "off", {}, {}),
    "sync-free chunks, Triton kernel": (None, True, "off", {}, {"kernel": "triton"}),
    # the blocks eager between the graphs (traced on the CPU only, as before TRACED_DEVICES named CUDA)
    "sync-free chunks, reduce-overhead": (None, True, "reduce-overhead", {"TRACED_DEVICES": ("cpu",)}, {}),
    # the blocks as one operator of the compiled graph on CUDA too: the whole expected round one CUDA graph
    "sync-free chunks, reduce-overhead, blocks inside the graph": (
        None, True, "reduce-overhead", {"OPERATOR_DEVICES": ("cpu", "cuda"), "TRACED_DEVICES": ("cpu",)}, {},
    ),  # fmt: skip
    # the blocks traced into the compiled graph (econspin.traced_blocks; B = 64, N = 256 is one block on CUDA):
    # Inductor's kernels for them, inside the CUDA graph
    "sync-free chunks, reduce-overhead, blocks traced": (
        None, True, "reduce-overhead", {"TRACED_DEVICES": ("cpu", "cuda")}, {},
    ),  # fmt: skip
    # the same, with the values the CPU's compiled round stores (the drawn sellers, |theta|; econspin.compiled.
    # stored_where_measured) stored on CUDA too: whether Triton's kernels gain from the stores as the C++ did
    STORED_WAY: (
        None, True, "reduce-overhead", {"TRACED_DEVICES": ("cpu", "cuda"), "STORED_DEVICES": ("cpu", "cuda")}, {},
    ),  # fmt: skip
    # the Triton kernel's programs inside the graph (econspin::triton_blocks), at full precision and on bf16 products
    "sync-free chunks, reduce-overhead, Triton kernel": (None, True, "reduce-overhead", {}, {"kernel": "triton"}),
    "sync-free chunks, reduce-overhead, Triton kernel, bf16 products": (
        None, True, "reduce-overhead", {}, {"kernel": "triton", "utility_precision": "bfloat16"},
    ),  # fmt: skip
}


def with_setting(module, name: str, value, function):
    """``function`` wrapped: each call runs with ``module.name`` set to ``value``, restored after."""

    def call():
        kept = getattr(module, name)
        setattr(module, name, value)
        try:
            return function()
        finally:
            setattr(module, name, kept)

    return call


def with_switches(switches: dict[str, tuple[str, ...]], function):
    """``function`` run with each of econspin.compiled.SWITCHES named in ``switches`` set, restored after.

    OPERATOR_DEVICES (econspin.compiled): the devices whose compiled rounds call the blocks as an
    operator; TRACED_DEVICES (econspin.traced_blocks): those whose compiled rounds of one block
    trace the blocks into the graph; STORED_DEVICES (econspin.compiled): those whose compiled
    rounds store the values ``stored_where_measured`` marks.
    """
    from econspin import compiled, traced_blocks

    modules = {"OPERATOR_DEVICES": compiled, "TRACED_DEVICES": traced_blocks, "STORED_DEVICES": compiled}
    for name, devices in switches.items():
        function = with_setting(modules[name], name, devices, function)
    return function


def plays_mode(switches: dict, changes: dict, mode: str) -> bool:
    """Whether a way of :data:`WAYS` with these switches and changes plays ``mode`` in the rollout step.

    A way on the Triton kernel plays expected mode only (its sampled mode, the Triton draw, would
    add two reduce-overhead compilations to the step's time); a way that sets STORED_DEVICES plays
    sampled mode only (the values it stores are the sampled round's: in expected mode it would
    compile the way without the stores again).
    """
    if changes.get("kernel") == "triton":
        return mode == "expected"
    if "STORED_DEVICES" in switches:
        return mode == "sampled"
    return True


def rollout_timing(
    device: torch.device, shape=ROLLOUT_SHAPE, rounds: int = ROLLOUT_ROUNDS, ways=tuple(WAYS), repeats: int = 5
) -> list[dict]:
    """Milliseconds a round at ``shape`` (B, N), per mode and way of playing, with the SDPA floor.

    Every way plays the same rounds, so each row also says whether its final state has the
    bits of the first way's (the eager ways must; a compiled one agrees to rounding).
    """
    from econspin.bench import bench_scenario, floor_inputs, timed
    from econspin.simulate import Rollout

    batch, agents = shape
    rows = []
    for mode in ("expected", "sampled"):
        # each mode's ways compile afresh: a way's round is its own entry of the round's first frame (guarded on
        # the switches, round.switches_on), and both modes' ways together would pass Dynamo's 8 a code object
        torch._dynamo.reset()
        q, k, v = floor_inputs(batch, 1, agents, device)
        functions = {"sdpa forward": lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)}
        rollouts, errors = {}, {}
        for name in ways:
            chunk_rounds, sync_free, compile_mode, switches, changes = WAYS[name]
            if not plays_mode(switches, changes, mode):
                continue
            try:
                rollout = Rollout.create([bench_scenario(agents, mode=mode)] * batch, list(range(batch)), str(device))
                rollout.economy = dataclasses.replace(rollout.economy, compile=compile_mode, **changes)
                rollout.chunk_rounds, rollout.sync_free = chunk_rounds or rounds, sync_free
                play = with_switches(switches, lambda r=rollout: r.advance(rounds))
                play()  # warm-up: compilation, graph capture
                functions[name] = play
                rollouts[name] = rollout
            except Exception:  # reported, not fatal: the other ways are still timed
                errors[name] = traceback.format_exc()[-3000:]
        try:
            times = timed(functions, repeats=repeats, device=device)
        except Exception as error:
            errors["timing"] = f"{type(error).__name__}: {error}"
            times = {}
        floor = times.get("sdpa forward")
        first = next(iter(rollouts.values()), None)
        for name, seconds in times.items():
            per_round = seconds if name == "sdpa forward" else seconds / rounds
            row = {"mode": mode, "way": name, "ms": per_round * 1e3, "ratio to sdpa": per_round / floor}
            if name in rollouts:
                row["same bits as the first way"] = bool(torch.equal(rollouts[name].state.states, first.state.states))
                row["replayed chunks"] = rollouts[name].replayed_chunks
            rows.append(row)
        rows += [{"mode": mode, "way": name, "error": text} for name, text in errors.items()]
    return rows


# large N under CUDA graphs: at N <= 16384 an eager round on either kernel is mostly a cost that does not grow with N
# (an H200's Triton market step took 3.2 ms at N = 4096 and 6.5 ms at N = 16384, SDPA forward 0.46 and 2.1 ms). The
# fused kernel's blocks between the graphs (its eager passes launched one by one) and as one operator inside them
LARGE_ROLLOUT_SHAPE = (1, 16384)
LARGE_ROLLOUT_WAYS = (
    "sync-free chunks, eager",
    "sync-free chunks, Triton kernel",
    "sync-free chunks, reduce-overhead",
    "sync-free chunks, reduce-overhead, blocks inside the graph",
    "sync-free chunks, reduce-overhead, Triton kernel",
    "sync-free chunks, reduce-overhead, Triton kernel, bf16 products",
)


def large_rollout_timing(device: torch.device, shape=LARGE_ROLLOUT_SHAPE, rounds: int = 8, repeats: int = 3):
    """:func:`rollout_timing` at one large economy: the fused and Triton kernels, eager and in CUDA graphs."""
    return rollout_timing(device, shape, rounds, LARGE_ROLLOUT_WAYS, repeats)


def block_timing(
    device: torch.device, sizes=(16384, 65536), rows_per_block=(32, 128, 512, 2048, 8192), repeats: int = 5
) -> list[dict]:
    """Milliseconds of one fused round (expected mode, B = 1) per buyer rows per block, with the SDPA floor."""
    from econspin.bench import bench_scenario, floor_inputs, round_difference, timed
    from econspin.round import step
    from econspin.simulate import Rollout

    rows = []
    for agents in sizes:
        rollout = Rollout.create([bench_scenario(agents)], [0], str(device), "float32")
        q, k, v = floor_inputs(1, 1, agents, device)
        functions = {"sdpa forward": lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)}
        economies = {size: dataclasses.replace(rollout.economy, chunk=size) for size in rows_per_block}
        functions.update({size: (lambda e=economy: step(rollout.state, e)) for size, economy in economies.items()})
        with torch.no_grad():
            times = timed(functions, repeats=repeats, device=device)
            first = step(rollout.state, economies[rows_per_block[0]])
            for size in rows_per_block:
                row = {"agents": agents, "rows per block": size, "ms": times[size] * 1e3}
                row["ratio to sdpa"] = times[size] / times["sdpa forward"]
                row["difference from the first"] = round_difference(first, step(rollout.state, economies[size]))
                rows.append(row)
        rows.append({"agents": agents, "rows per block": "sdpa forward", "ms": times["sdpa forward"] * 1e3})
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the workspace of the largest blocks, before the next size's
    return rows


def flex_timing(device: torch.device, sizes=(4096, 16384, 65536), repeats: int = 3) -> list[dict]:
    """Milliseconds of one round with the flex kernel, the fused kernel and SDPA (B = 1), and the flex compile time.

    The first round's block masks and passes are each timed and printed as they finish.
    """
    import econspin.flex as flex_module
    from econspin.bench import bench_scenario, floor_inputs, round_difference, timed
    from econspin.round import step
    from econspin.simulate import Rollout

    def printing_time(function):
        def timed_call(*arguments, **keywords):
            started = time.perf_counter()
            result = function(*arguments, **keywords)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            print(f"  {function.__name__}: {time.perf_counter() - started:.2f} s", flush=True)
            return result

        return timed_call

    rows = []
    for agents in sizes:
        rollout = Rollout.create([bench_scenario(agents)], [0], str(device), "float32")
        flex = dataclasses.replace(rollout.economy, kernel="flex")
        q, k, v = floor_inputs(1, 1, agents, device)
        with torch.no_grad():
            print(f"N = {agents}: the first flex round", flush=True)
            started, kept = time.perf_counter(), (flex_module.attention, flex_module.trade_masks)
            flex_module.attention, flex_module.trade_masks = map(printing_time, kept)
            try:
                first = step(rollout.state, flex)
            finally:
                flex_module.attention, flex_module.trade_masks = kept
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            row = {"agents": agents, "first flex round s": time.perf_counter() - started}
            print(row, flush=True)
            functions = {
                "sdpa forward": lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v),
                "fused": lambda: step(rollout.state, rollout.economy),
                "flex": lambda: step(rollout.state, flex),
            }
            times = timed(functions, repeats=repeats, device=device)
            row.update({f"{name} ms": seconds * 1e3 for name, seconds in times.items()})
            row["flex ratio"] = times["flex"] / times["sdpa forward"]
            row["fused ratio"] = times["fused"] / times["sdpa forward"]
            row["flex difference from fused"] = round_difference(step(rollout.state, rollout.economy), first)
        print(row, flush=True)
        rows.append(row)
    return rows


def synchronised(function, device: torch.device):
    """``function()``, the device's work finished before it returns."""
    result = function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return result


def tile_sweep(state, fused, triton, tiles, repeats: int, device: torch.device, clock: str) -> list[dict]:
    """The market step alone per tile size (triton_timing), beside the fused market step, with its difference."""
    from econspin.bench import relative_difference, timed
    from econspin.fused import fused_trade
    from econspin.fused_sampled import fused_sampled_trade
    from econspin.market import MarketOutcome
    from econspin.triton_blocks import Tiles, triton_sampled_trade, triton_trade

    batch, agents = state.states.shape[:2]
    fused_step, triton_step = (
        (fused_sampled_trade, triton_sampled_trade) if fused.mode == "sampled" else (fused_trade, triton_trade)
    )
    want = fused_step(state, fused)
    market, differences, rows = {"fused": lambda: fused_step(state, fused)}, {}, []
    for sizes in tiles:
        try:
            market[sizes] = functools.partial(triton_step, state, triton, tiles=Tiles(*sizes))
            got = synchronised(market[sizes], device)  # the first call compiles this size's programs
        except Exception as error:  # reported, not fatal: the other sizes are still timed
            market.pop(sizes, None)
            rows.append({"batch": batch, "agents": agents, "tiles": list(sizes), "error": repr(error)[-2000:]})
            print(rows[-1], flush=True)
            continue
        fields = (field.name for field in dataclasses.fields(MarketOutcome))
        differences[sizes] = max(relative_difference(getattr(want, name), getattr(got, name)) for name in fields)
    times = timed(market, repeats=repeats, device=device, clock=clock)
    for sizes, difference in differences.items():
        row = {"batch": batch, "agents": agents, "tiles": list(sizes), "market ms": times[sizes] * 1e3}
        row.update({"fused market ms": times["fused"] * 1e3, "difference from fused": difference})
        print(row, flush=True)
        rows.append(row)
    return rows


def triton_timing(
    device: torch.device,
    shapes=TRITON_SHAPES,
    tiles=TRITON_TILES,
    repeats: int = 3,
    clock: str = "wall",
    precision: str = "full",
    mode: str = "expected",
) -> list[dict]:
    """Milliseconds of one round on the Triton kernel, the fused kernel and SDPA per (B, N), and per tile size.

    Per shape: the first Triton round (its programs compiled) timed apart; the round on either
    kernel and SDPA forward, interleaved; the Triton round's next states and money against the
    fused one's. Then the market step alone (the only part that differs) per tile size of
    ``tiles`` ((buyers, sellers, warps[, one_pass]): econspin.triton_blocks.Tiles) beside the
    fused market step, each with its largest relative difference from the fused outcome over
    every field; a tile size that fails (compilation, resources) gives a row with its error.
    Each row is printed as it is measured.
    ``precision``: the Triton kernel's run.utility_precision. The fused kernel stays at full
    precision, so that the differences are the reduced precision's error, and SDPA forward at
    that precision (bf16 operands, or TF32) is timed beside the float32 one. ``mode``: the
    economy's (sampled: the Triton draw against fused_sampled's, the same sellers).
    """
    from econspin.bench import bench_scenario, floor_inputs, low_precision_floor, round_difference, timed
    from econspin.round import step
    from econspin.simulate import Rollout

    rows = []
    for batch, agents in shapes:
        scenarios = [bench_scenario(agents, mode=mode)] * batch
        rollout = Rollout.create(scenarios, list(range(batch)), str(device), "float32")
        state, fused = rollout.state, rollout.economy
        triton = dataclasses.replace(fused, kernel="triton", utility_precision=precision)
        q, k, v = floor_inputs(batch, fused.heads, agents, device)
        pairs = batch * agents * agents
        with torch.no_grad():
            started = time.perf_counter()
            first = synchronised(lambda: step(state, triton), device)
            row = {"batch": batch, "agents": agents, "precision": precision, "mode": mode}
            row["first triton round s"] = time.perf_counter() - started
            functions = {
                "sdpa forward": lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v),
                "fused": lambda: step(state, fused),
                "triton": lambda: step(state, triton),
            }
            if precision != "full":
                functions[f"sdpa forward {precision}"] = low_precision_floor(q, k, v, precision)
            times = timed(functions, repeats=repeats, device=device, clock=clock)
            row.update({f"{name} ms": seconds * 1e3 for name, seconds in times.items()})
            for name in ("fused", "triton"):
                row[f"{name} ratio"] = times[name] / times["sdpa forward"]
                row[f"{name} pairs per s"] = pairs / times[name]
            if precision != "full":
                row[f"triton ratio to sdpa {precision}"] = times["triton"] / times[f"sdpa forward {precision}"]
            want = step(state, fused)
            row["triton difference from fused"] = round_difference(want, first)
            row["agents differing from fused"] = differing_agents(want, first)
            if mode == "sampled":
                row["agents differing, fused from the cpu"] = differing_agents(cpu_round(scenarios), want.to("cpu"))
            print(row, flush=True)
            rows.append(row)

            rows += tile_sweep(state, fused, triton, tiles, repeats, device, clock)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the fused kernel's blocks at this size, before the next one's
    return rows


def cpu_round(scenarios) -> State:
    """One fused round of ``scenarios`` (replicas 0, 1, ...) on the CPU, float32: the same start as on any device.

    The rounding baseline of :func:`triton_timing` in sampled mode: the fused kernel on the
    device against itself on the CPU, where the draws differ only where the two devices' float32
    sums round a uniform across a boundary. The Triton kernel's count of differing agents is
    read against it: about as many is rounding; many more, a fault.
    """
    from econspin.round import step
    from econspin.simulate import Rollout

    rollout = Rollout.create(scenarios, list(range(len(scenarios))), "cpu", "float32")
    with torch.no_grad():
        return step(rollout.state, rollout.economy)


def differing_agents(want, got, tolerance: float = 1e-3) -> float:
    """The share of agents whose next state or money differs from ``want``'s by over ``tolerance`` of its scale.

    A sampled round's largest difference says that some buyer drew another seller, not how many:
    in float32 a row's total rounds differently on the two kernels, and a uniform within that
    rounding of a boundary draws the neighbour (docs/performance.md, the Triton kernel's sampled mode).
    """

    def beyond(wanted: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        wanted, result = wanted.double(), result.double()
        return (wanted - result).abs() > tolerance * wanted.abs().max().clamp(min=1e-300)

    return float((beyond(want.states, got.states).any(-1) | beyond(want.money, got.money)).double().mean())


def triton_precision_timing(
    device: torch.device, shapes=TRITON_PRECISION_SHAPES, tiles=TRITON_PRECISION_TILES, repeats: int = 3
) -> list[dict]:
    """:func:`triton_timing` with the Triton kernel's products on the tensor cores: bf16, then TF32 utilities."""
    return [row for precision in ("bfloat16", "tf32") for row in triton_timing(device, shapes, tiles, repeats,
                                                                                 precision=precision)]  # fmt: skip


def triton_sampled_timing(
    device: torch.device, shapes=TRITON_PRECISION_SHAPES, tiles=TRITON_SAMPLED_TILES, repeats: int = 3
) -> list[dict]:
    """:func:`triton_timing` in sampled mode: the Triton draw (econspin.triton_draws) against the fused one's."""
    return triton_timing(device, shapes, tiles, repeats, mode="sampled")


MEASURES = {
    "blocks": block_timing,
    "rollout": rollout_timing,
    "large_rollout": large_rollout_timing,
    "flex": flex_timing,
    "triton": triton_timing,
    "triton_precision": triton_precision_timing,
    "triton_sampled": triton_sampled_timing,
}
