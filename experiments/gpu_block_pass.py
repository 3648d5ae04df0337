"""The fused round with its blocks' passes eager and compiled into one kernel (econspin.block_pass), against SDPA.

On a GPU the fused round's eager passes over each block of utilities read the block from
device memory each time: 57-72% of its device time on an H100 at N = 16384-65536
(docs/performance.md). ``econspin.block_pass`` writes them as one compiled kernel. This script
plays the benchmark economy (``econspin.bench``'s: d = 32, one head, float32) in each of
``--modes`` at each ``--shapes`` B x N on ``--device``, with the eager passes and with the compiled passes
(``block_pass.COMPILED_DEVICES`` naming the device), as they are and with the sellers' axis N
static (``block_pass.STATIC_SELLERS`` naming it too: a kernel per N), at each ``--rows`` (buyer rows per
block; ``default`` the device's own), beside torch's SDPA forward on the same shapes, and
prints one JSON row per shape and way: ms a round (median of ``--repeats``, interleaved),
the ratio to SDPA, the compiled pass's first round apart (its compilation) and its next state's
largest relative difference from the eager round's. experiments/gpu_check.py runs it as its
``block_pass`` step.

    python -m experiments.gpu_block_pass --device cuda --shapes 1x16384,1x65536,64x256 --modes expected,sampled
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

# the compiled pass as it is, and with the sellers' axis N static (block_pass.STATIC_SELLERS: a kernel per N)
WAYS = ("eager passes", "compiled pass", "compiled pass, sellers static")


def with_compiled_pass(devices: tuple[str, ...], function, static_devices: tuple[str, ...] = ()):
    """``function`` run with block_pass.COMPILED_DEVICES as ``devices``, STATIC_SELLERS as ``static_devices``."""
    from econspin import block_pass
    from experiments.gpu_measures import with_setting

    return with_setting(block_pass, "STATIC_SELLERS", static_devices,
                        with_setting(block_pass, "COMPILED_DEVICES", devices, function))  # fmt: skip


def pass_timing(device: torch.device, shapes, rows_per_block=(None,), repeats: int = 5,
                modes=("expected",)) -> list[dict]:
    """One row per mode, shape, rows per block and way, and one for SDPA per mode and shape (module doc)."""
    from econspin.bench import bench_scenario, compile_first, floor_inputs, round_difference, timed
    from econspin.round import step
    from econspin.simulate import Rollout

    rows = []
    for mode, (batch, agents) in ((mode, shape) for mode in modes for shape in shapes):
        scenario = bench_scenario(agents, mode=mode)
        rollout = Rollout.create([scenario] * batch, list(range(batch)), str(device), "float32")
        q, k, v = floor_inputs(batch, 1, agents, device)
        functions = {"sdpa forward": lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)}
        firsts, first_seconds = {}, {}
        for rows_each in rows_per_block:
            economy = dataclasses.replace(rollout.economy, chunk=rows_each)
            for way in WAYS:
                devices = (device.type,) if way != "eager passes" else ()
                static = (device.type,) if way == "compiled pass, sellers static" else ()
                first = with_compiled_pass(devices, lambda e=economy: compile_first(rollout.state, e, device), static)
                firsts[rows_each, way], first_seconds[rows_each, way] = first()
                play = with_compiled_pass(devices, lambda e=economy: step(rollout.state, e), static)
                functions[rows_each, way] = play
        with torch.no_grad():
            times = timed(functions, repeats=repeats, device=device)
        floor = times.pop("sdpa forward")
        rows.append({"mode": mode, "batch": batch, "agents": agents, "way": "sdpa forward", "ms": floor * 1e3})
        for (rows_each, way), seconds in times.items():
            row = {"mode": mode, "batch": batch, "agents": agents, "rows per block": rows_each or "default", "way": way}
            row.update({"ms": seconds * 1e3, "ratio to sdpa": seconds / floor})
            row["first round s"] = first_seconds[rows_each, way]
            row["difference from the eager passes"] = round_difference(
                firsts[rows_each, "eager passes"], firsts[rows_each, way]
            )
            rows.append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def summary(rows: list[dict]) -> str:
    """One line: the compiled pass's round over the eager passes' round, per mode, shape and rows per block."""
    eager = {(r["mode"], r["batch"], r["agents"], r["rows per block"]): r["ms"] for r in rows
             if r["way"] == "eager passes"}  # fmt: skip
    ratios = [f"{mode} {batch}x{agents} rows {each}{static}: {r['ms'] / eager[mode, batch, agents, each]:.2f}"
              for r in rows if r["way"].startswith("compiled pass")
              for mode, batch, agents, each in [(r["mode"], r["batch"], r["agents"], r["rows per block"])]
              for static in [" N static" if r["way"].endswith("sellers static") else ""]]  # fmt: skip
    return "compiled pass / eager passes, a round: " + "; ".join(ratios)


def main(arguments: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes", default="1x16384,1x65536,64x256", help="B x N, comma-separated")
    parser.add_argument("--rows", default="default",
                        help="buyer rows per block, comma-separated; default: the device's")
    parser.add_argument("--modes", default="expected", help="market modes, comma-separated: expected, sampled")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the rows here too")
    options = parser.parse_args(arguments)
    shapes = [tuple(int(n) for n in shape.split("x")) for shape in options.shapes.split(",")]
    rows_per_block = tuple(None if rows == "default" else int(rows) for rows in options.rows.split(","))
    device = torch.device(options.device)
    rows = pass_timing(device, shapes, rows_per_block, options.repeats, tuple(options.modes.split(",")))
    for row in rows:
        print(json.dumps(row))
    print(summary(rows))  # last: gpu_check prints each step's last line
    if options.json:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        options.json.write_text(json.dumps({"device": name, "torch": torch.__version__, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
