"""``econspin sweep``: every point of a grid (x replicas) as batched kernels, locally or on Ray.

A rim of the command line (:mod:`econspin.cli`): the grid is validated point by point and the
memory estimated before anything is written; the folder's fingerprint decides between a fresh
start, a resume and a refusal; finished shards are kept so that an interrupted sweep goes on
where it stopped.

Both backends run the same shard plan (:func:`econspin.sweep.plan_shards`) and keep the same
record of finished shards (:mod:`econspin.shard_record`), so either can resume a folder the
other began, as long as the plan agrees.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable
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
        Optional[int],
        typer.Option(min=1, help="At most K points per batched kernel (ray default 8; a resume keeps the folder's)."),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Run a grid of more than 10 000 points.")] = False,
):
    """Run every point of a grid (x replicas) as batched kernels; write sweep.parquet and phase.png."""
    from econspin.shard_record import NOT_RECORDED, ShardRecord, recorded_points_per_shard, sweep_definition
    from econspin.susceptibilities import (
        check_sweep_points,
        parse_susceptibility_option,
        sweep_rounds,
        sweep_susceptibility,
    )
    from econspin.sweep import Grid, check_points, parse_grid, plan_shards, sweep_points
    from econspin.sweep_ray import (  # imports Ray only when it runs
        DEFAULT_POINTS_PER_SHARD,
        RayOptions,
        ShardsFailed,
        check_ray_device,
        import_ray,
        sweep_on_ray,
    )

    try:
        if backend not in ("local", "ray"):
            raise ScenarioError(f"--backend {backend!r}: local or ray")
        if backend == "local" and (address, cpus_per_shard, gpus_per_shard) != (None, None, None):
            raise ScenarioError("--address, --cpus-per-shard and --gpus-per-shard go with --backend ray")
        ray_options = None
        if backend == "ray":
            ray_options = RayOptions(address, cpus_per_shard or 1, gpus_per_shard or 0)
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
            if ray_options is not None:
                check_ray_device(base.run.device, ray_options)
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
            if ray_options is not None:  # an option out of place, before this machine's devices are looked at
                check_ray_device(base.run.device, ray_options)
            grids = [parse_grid(text) for text in grid]
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
        option = "--resume" if resume is not None else "--out"
        recorded_cut = NOT_RECORDED
        if points_per_shard is None and resume is not None:
            recorded_cut = recorded_points_per_shard(resume)
        if recorded_cut is not NOT_RECORDED:  # a resume keeps the plan its record holds, whole batches (None) too
            points_per_shard = recorded_cut
        elif points_per_shard is None and backend == "ray":
            points_per_shard = DEFAULT_POINTS_PER_SHARD
        shards = plan_shards(points, run_settings.replicas, run_settings.dtype, points_per_shard)
        record = ShardRecord(target, sweep_definition(base, grids, points_per_shard, shards))
        if not force:  # --force replaces the record with the rest of the folder's outputs
            record.refuse_another(option, resuming=resume is not None)
        if ray_options is not None:
            import_ray()
        preflight_sweep(points, run_settings.replicas, run_settings.steps, run_settings.device, run_settings.dtype)
        check_points(points, run_settings.dtype)  # each point built alone: after the memory check
        responses = [parse_susceptibility_option(text, base) for text in susceptibility or []]
        for response in responses:
            check_sweep_points(response, points)
    except ScenarioError as error:
        fail(str(error), named_source(str(error), resume, scenario))
    if resume is None:
        # the finished shards stay (the same command again skips them), unless --force starts over
        clear_outputs(target, keep=() if force else (SHARDS_FOLDER,))
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
        say = (lambda line: None) if quiet else console.print
        bar = lambda rounds: progress_bar(rounds, description, quiet)  # noqa: E731
        if backend == "ray":
            table, extra = sweep_on_ray(points, shards, record, base, ray_options, bar, say)
        else:
            table, extra = sweep_here(points, shards, record, base, bar, say)
        grid_record.update(extra)
        for response in responses:
            rounds = sweep_rounds(points, run_settings.replicas, run_settings.steps)
            with progress_bar(rounds, f"d {response[0]} / d {response[1]}", quiet) as advance:
                table = sweep_susceptibility(table, points, response, run_settings.steps, run_settings.device, advance)
    except ScenarioError as error:
        fail(str(error), scenario)
    except (MemoryError, RuntimeError) as error:  # nothing is written before every batch has run
        refuse_failed_allocation(error, scenario)
    except KeyboardInterrupt:
        done = f"{len(record.finished())} of {len(shards)} shards done"
        console.print(
            f"sweep interrupted with {done}, kept in {record.folder}: continue with econspin sweep --resume {target} "
            "(on either backend)"
        )
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
    if not quiet:
        kept = extra["shards_skipped"]
        kept_words = f", {kept} of {len(shards)} shards kept from before" if kept else ""
        size = f"{len(points)} points x {run_settings.replicas} replicas{kept_words}"
        console.print(f"wrote {target}/ ({size}) in {wall_time:.1f} s")


def sweep_here(
    points: list[tuple[dict, Scenario]],
    shards: list,
    record,
    scenario: Scenario,
    progress: Callable[[int], contextlib.AbstractContextManager[Callable[[int], None]]],
    say: Callable[[str], None],
) -> tuple[pd.DataFrame, dict]:
    """Run the shards the record lacks in this process, one after another; the table and the manifest's facts.

    The local backend's counterpart of :func:`econspin.sweep_ray.sweep_on_ray`: the same plan,
    the same record, each shard saved the moment it is done.
    """
    from econspin.shard_record import mark_device, shard_facts
    from econspin.sweep import assemble, run_shard

    settings = scenario.run
    todo = record.to_run(shards, say)
    record.claim()
    with progress(settings.steps * len(todo)) as advance:
        for shard in todo:
            table = run_shard(points, shard.elements, settings.steps, settings.device, settings.dtype, advance)
            record.save(shard.name, mark_device(table, settings.device))
    tables = [record.load(shard.name) for shard in shards]
    facts = {"backend": "local", **shard_facts(tables, record, len(shards) - len(todo))}
    return assemble(points, tables), facts


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
    phase_figure(final_values(table, keys), keys, target / "phase.png", scenario.name, sellers_of(scenario), responses)
    points = sorted(table["point"].unique())
    chosen = sorted({points[0], points[len(points) // 2], points[-1]})
    subset = table[table["point"].isin(chosen)].copy()
    label = keys[0] if len(keys) == 1 else "point"
    if len(keys) > 1:
        subset["point"] = subset[keys].astype(str).agg(", ".join, axis=1)
    concentration_figure(subset, target / "concentration.png", scenario.name, sellers=sellers_of(scenario), group=label)
