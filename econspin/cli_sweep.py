"""``econspin sweep``: every point of a grid (x replicas) as batched kernels, locally or on Ray.

A rim of the command line (:mod:`econspin.cli`): the grid is validated point by point and the
memory estimated before anything is written; the folder's fingerprint decides between a fresh
start, a resume and a refusal; finished batches (or Ray's shards) are kept so that an
interrupted sweep goes on where it stopped.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import pandas as pd
import typer
from rich.text import Text

from econspin.cli import (
    ForceOption,
    SetOption,
    app,
    console,
    fail,
    load_scenario,
    named_source,
    parse_overrides,
    progress_bar,
    refuse_failed_allocation,
    sellers_of,
)
from econspin.fingerprint import (
    check_folder,
    clear_outputs,
    differences,
    fingerprint,
    finished,
    finished_batch,
    forget_final_files,
    read_manifest,
    recorded_fingerprint,
    refuse_another_device,
    refuse_differences,
)
from econspin.output import (
    MANIFEST_FILE,
    SCENARIO_FILE,
    SHARDS_FOLDER,
    SWEEP_BATCHES,
    SWEEP_FILE,
    check_writable,
    manifest,
    write_json,
    write_table,
    write_text,
)
from econspin.preflight import confirm_grid, preflight_sweep
from econspin.scenario import Scenario, ScenarioError


@app.command()
def sweep(
    scenario: Annotated[Optional[Path], typer.Argument(help="Scenario YAML file.")] = None,
    grid: Annotated[
        Optional[list[str]], typer.Option(help="key.path=SPEC with SPEC a:b:n, log:a:b:n or v1,v2,... Repeatable.")
    ] = None,
    replicas: Annotated[Optional[int], typer.Option(min=1, help="Replicas per point.")] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, help="Rounds per point.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default runs/<name>-sweep).")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu or cuda.")] = None,
    set_: SetOption = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the sweep in this folder.")] = None,
    force: ForceOption = False,
    susceptibility: Annotated[
        Optional[list[str]],
        typer.Option(
            "--susceptibility",
            help="OBSERVABLE:INPUT, e.g. hhi:populations.ai.temperature: add d OBSERVABLE / d INPUT (autograd, "
            "float64 mean field) to sweep.parquet and phase.png. Repeatable.",
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar or summary.")] = False,
    backend: Annotated[
        str, typer.Option(help="local (this process) or ray (shards as Ray tasks: docs/sweeps.md).")
    ] = "local",
    address: Annotated[
        Optional[str], typer.Option(help="With --backend ray: auto or HOST:PORT of a cluster (default: a local one).")
    ] = None,
    cpus_per_shard: Annotated[
        Optional[float], typer.Option(min=0.001, help="With --backend ray: CPUs per shard.")
    ] = None,
    gpus_per_shard: Annotated[Optional[float], typer.Option(min=0, help="With --backend ray: GPUs per shard.")] = None,
    points_per_shard: Annotated[
        Optional[int], typer.Option(min=1, help="At most K points per batched kernel (ray default 8).")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Run a grid of more than 10 000 points.")] = False,
):
    """Run every point of a grid (x replicas) as batched kernels; write sweep.parquet and phase.png."""
    from econspin.susceptibilities import (
        check_sweep_points,
        parse_susceptibility_option,
        sweep_rounds,
        sweep_susceptibility,
    )
    from econspin.sweep import Grid, assemble, check_points, parse_grid, plan_shards, run_shard, sweep_points
    from econspin.sweep_ray import (  # imports Ray only when it runs
        RayOptions,
        ShardsFailed,
        check_ray_device,
        check_ray_sweep,
        sweep_on_ray,
    )

    try:
        if backend not in ("local", "ray"):
            raise ScenarioError(f"--backend {backend!r}: local or ray")
        if backend == "local" and (address, cpus_per_shard, gpus_per_shard) != (None, None, None):
            raise ScenarioError("--address, --cpus-per-shard and --gpus-per-shard go with --backend ray")
        ray_options = None
        if backend == "ray":
            ray_options = RayOptions(address, cpus_per_shard or 1, gpus_per_shard or 0, points_per_shard)
        if resume is not None:
            if scenario is not None or grid or set_ or replicas is not None or steps is not None or force:
                raise ScenarioError(
                    "--resume continues a sweep as it was: give no SCENARIO, --grid, --set, --replicas, --steps "
                    "or --force"
                )
            if susceptibility:
                raise ScenarioError("--resume continues a sweep as it was: give no --susceptibility")
            recorded = recorded_fingerprint(resume, "sweep")
            if finished(resume, recorded.get("steps")):
                if not quiet:
                    console.print(f"{resume} holds a complete sweep; nothing to do")
                return
            base = load_scenario(resume / SCENARIO_FILE, {}).with_run_settings(device=device)
            refuse_another_device(resume, base.run.device)
            grids = [Grid(key, tuple(values)) for key, values in (recorded.get("grid") or {}).items()]
            overrides, target = recorded.get("overrides"), resume
            susceptibility = (read_manifest(resume) or {}).get("susceptibility") or []
        else:
            if scenario is None or not grid:
                missing = "--grid is missing" if scenario else "Missing argument 'SCENARIO'"
                raise ScenarioError(f"{missing} (or give --resume DIR)")
            overrides = parse_overrides(set_)
            base = load_scenario(scenario, overrides)
            base = base.with_run_settings(steps=steps, replicas=replicas, device=device)
            grids = [parse_grid(text) for text in grid]
            if ray_options is not None:  # an option out of place, before this machine's devices are looked at
                check_ray_device(base.run.device, ray_options)
            counts = [len(g.values) for g in grids]
            yes = yes or (at_terminal() and confirm_large_grid(counts, base.run.replicas))
            confirm_grid(base, counts, yes)
            target = out or Path("runs") / f"{base.name}-sweep"
            check_writable(target, "--out", folder=True)
        current = fingerprint("sweep", base, overrides, {g.key: g.values for g in grids})
        if resume is not None:
            found = differences(recorded, current, None, base, places=("in its manifest", "now"))
            refuse_differences(
                resume, found, f"its {MANIFEST_FILE} does not describe {SCENARIO_FILE} and this econspin"
            )
        else:
            check_folder(target, current, base, "--out", force)
        points = sweep_points(base, grids)
        run_settings = base.run
        if ray_options is not None:  # Ray's own plan (its default shard size), checked against the folder
            shards, _ = check_ray_sweep(points, grids, base, target, ray_options)
        else:
            shards = plan_shards(points, run_settings.replicas, run_settings.dtype, points_per_shard)
        preflight_sweep(points, run_settings.replicas, run_settings.steps, run_settings.device, run_settings.dtype)
        check_points(points, run_settings.dtype)  # each point built alone: after the memory check
        responses = [parse_susceptibility_option(text, base) for text in susceptibility or []]
        for response in responses:
            check_sweep_points(response, points)
    except ScenarioError as error:
        fail(str(error), named_source(str(error), resume, scenario))
    if resume is None:
        # a Ray sweep's finished shards stay: the same command again skips them (econspin.shard_record)
        clear_outputs(target, keep=(SHARDS_FOLDER,) if backend == "ray" else ())
    forget_final_files(target, (SWEEP_FILE, "phase.png", "concentration.png"))  # and what a killed write left
    grid_record = {
        "grid": {g.key: list(g.values) for g in grids},
        "points": len(points),
        "susceptibility": [f"{observable}:{wrt}" for observable, wrt in responses],
        "fingerprint": current,
    }
    write_json(target / MANIFEST_FILE, manifest(base, run_settings.device, 0.0, 0, grid_record, complete=False))
    write_text(target / SCENARIO_FILE, base.to_yaml())
    description = f"{base.name}: {len(points)} points x {run_settings.replicas} replicas"
    started = time.perf_counter()
    try:
        if backend == "ray":
            table, extra = sweep_on_ray(
                points, grids, base, target, ray_options, lambda rounds: progress_bar(rounds, description, quiet),
                say=(lambda line: None) if quiet else console.print,
            )
            grid_record.update(extra)
            kept = extra.get("shards_skipped", 0)
        else:
            tables = {
                index: finished_batch(target, index, shard.elements, run_settings.steps)
                for index, shard in enumerate(shards)
            }
            missing = [index for index, table in tables.items() if table is None]
            kept = len(shards) - len(missing)
            with progress_bar(run_settings.steps * len(missing), description, quiet) as advance:
                for index in missing:
                    tables[index] = run_shard(
                        points, shards[index].elements, run_settings.steps, run_settings.device, run_settings.dtype,
                        advance,
                    )
                    write_table(target / SWEEP_BATCHES / f"batch-{index:05d}.parquet", tables[index])
            table = assemble(points, [tables[index] for index in range(len(shards))])
        for response in responses:
            rounds = sweep_rounds(points, run_settings.replicas, run_settings.steps)
            with progress_bar(rounds, f"d {response[0]} / d {response[1]}", quiet) as advance:
                table = sweep_susceptibility(table, points, response, run_settings.steps, run_settings.device, advance)
    except ScenarioError as error:
        fail(str(error), scenario)
    except (MemoryError, RuntimeError) as error:  # nothing is written before every batch has run
        refuse_failed_allocation(error, scenario)
    except KeyboardInterrupt:
        if backend == "ray":
            console.print(
                f"sweep interrupted; the finished shards are kept in {target}/{SHARDS_FOLDER}: run the same "
                "command to go on"
            )
        else:
            done = f"{sum(table is not None for table in tables.values())} of {len(shards)} batches done"
            console.print(f"sweep interrupted with {done}; continue with: econspin sweep --resume {target}")
        raise typer.Exit(130)
    except ShardsFailed as failure:
        console.print(Text.assemble(("error:", "bold red"), " ", str(failure)), soft_wrap=True)
        raise typer.Exit(1)
    wall_time = time.perf_counter() - started
    write_table(target / SWEEP_FILE, table)
    draw_sweep_figures(target, base, table, [g.key for g in grids])
    grid_record["batch_elements"] = len(points) * run_settings.replicas
    used = run_settings.device if backend == "local" else "cpu"  # Ray's shards report their own device
    write_json(target / MANIFEST_FILE, manifest(base, used, wall_time, run_settings.steps, grid_record))
    shutil.rmtree(target / SWEEP_BATCHES, ignore_errors=True)  # sweep.parquet holds them all now
    if not quiet:
        pieces = "shards" if backend == "ray" else "batches"
        kept_words = f", {kept} of {len(shards)} {pieces} kept from before" if kept else ""
        size = f"{len(points)} points x {run_settings.replicas} replicas{kept_words}"
        console.print(f"wrote {target}/ ({size}) in {wall_time:.1f} s")


def at_terminal() -> bool:
    """Whether someone can answer a question (standard input is a terminal)."""
    return sys.stdin.isatty()


def confirm_large_grid(counts: list[int], replicas: int) -> bool:
    """At a terminal, ask before a grid of more than MAX_POINTS_UNCONFIRMED points (elsewhere --yes says so)."""
    from econspin import preflight

    points = math.prod(counts)
    if points <= preflight.MAX_POINTS_UNCONFIRMED:
        return False
    return typer.confirm(f"the grid has {points} points x {replicas} replicas; run them all?", err=True)


def draw_sweep_figures(target: Path, scenario: Scenario, table: pd.DataFrame, keys: list[str]) -> None:
    """phase.png, and concentration.png for the first, middle and last points."""
    from econspin.plots import concentration_figure, phase_figure
    from econspin.susceptibilities import is_susceptibility_column
    from econspin.sweep import final_values

    responses = [column for column in table.columns if is_susceptibility_column(column)]
    phase_figure(
        final_values(table, keys), keys, target / "phase.png", scenario.name, sellers_of(scenario), responses
    )
    points = sorted(table["point"].unique())
    chosen = sorted({points[0], points[len(points) // 2], points[-1]})
    subset = table[table["point"].isin(chosen)].copy()
    label = keys[0] if len(keys) == 1 else "point"
    if len(keys) > 1:
        subset["point"] = subset[keys].astype(str).agg(", ".join, axis=1)
    concentration_figure(subset, target / "concentration.png", scenario.name, sellers=sellers_of(scenario), group=label)
