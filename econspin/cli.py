"""The ``econspin`` command: run, sweep, plot and check scenarios.

Bad input never ends in a traceback: one line naming the file and the key, exit status 2,
and nothing written.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import pandas as pd
import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text
from typer._click.exceptions import NoArgsIsHelpError, UsageError  # typer carries its own click

import econspin
from econspin.metrics import metric_names
from econspin.output import (
    CHECKPOINT_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    SCENARIO_FILE,
    SWEEP_FILE,
    WEALTH_FILE,
    CheckpointError,
    check_writable,
    load_checkpoint,
    manifest,
    save_checkpoint,
    wealth_table,
    write_json,
    write_table,
    write_text,
)
from econspin.progress import PlainProgress, progress_interval
from econspin.scenario import Scenario, ScenarioError
from econspin.simulate import Rollout


class OneLineErrors(typer.core.TyperGroup):
    """Usage errors (a bad option value, a missing argument, an unknown command) as one line, exit 2."""

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except NoArgsIsHelpError:
            raise
        except UsageError as error:
            command = f" (see {error.ctx.command_path} --help)" if error.ctx is not None else ""
            fail(f"{error.format_message()}{command}")


# Help, errors and paths are printed literally: what the user typed (a grid a:b:n, a name
# with [brackets]) is never read as rich markup or emoji codes.
app = typer.Typer(
    cls=OneLineErrors,
    rich_markup_mode=None,
    add_completion=False,
    no_args_is_help=True,
    help="Agent-based economies in which trade is attention.",
)
console = Console(stderr=True, markup=False, emoji=False, highlight=False)


def show_version(asked: bool) -> None:
    if asked:
        sys.stdout.write(f"econspin {econspin.__version__}\n")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=show_version, is_eager=True, help="Print econspin's version and exit.")
    ] = False,
):
    """Agent-based economies in which trade is attention."""


SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override a scenario key: key.path=value (value read as YAML). Repeatable."),
]


def fail(message: str, source: Path | None = None) -> None:
    """One line to stderr naming ``source`` (unless the message names it or an option), exit status 2."""
    if source is not None and not message.startswith((str(source), "--")):  # an option is no key of the file
        message = f"{source}: {message}"
    console.print(Text.assemble(("error:", "bold red"), " ", message), soft_wrap=True)
    raise typer.Exit(2)


def refuse_failed_allocation(error: Exception, source: Path | None) -> None:
    """One line, exit 2, for an allocation the machine refused (re-raise anything else).

    The memory estimate is checked first; this is for what it cannot see (a limit on the
    process, other programs' memory). Nothing has been written when the economy is built.
    """
    if not isinstance(error, MemoryError) and "allocate" not in str(error):
        raise error
    size = re.search(r"allocate (\d+) bytes", str(error))
    what = f"{int(size.group(1)) / 2**30:.1f} GiB" if size else "memory"
    fail(f"out of memory building the economy: could not allocate {what}; lower the scenario's sizes", source)


def parse_overrides(pairs: list[str] | None) -> dict:
    """``key.path=value`` pairs as a dict, values read as YAML."""
    overrides = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ScenarioError(f"--set {pair!r}: write key.path=value")
        key, text = pair.split("=", 1)
        if not key.strip():
            raise ScenarioError(f"--set {pair!r}: the key is empty; write key.path=value")
        try:
            overrides[key.strip()] = yaml.safe_load(text)
        except (yaml.YAMLError, RecursionError):
            raise ScenarioError(f"--set {key}: {text!r} is not a value") from None
    return overrides


def load_scenario(path: Path, overrides: dict) -> Scenario:
    """A scenario file with overrides, errors naming the file."""
    scenario = Scenario.from_yaml(path)
    if overrides:
        try:
            scenario = scenario.with_overrides(overrides)
        except ScenarioError as error:
            raise ScenarioError(f"{path}: {error}") from None
    return scenario


@contextlib.contextmanager
def progress_bar(total: int, description: str, quiet: bool):
    """A rich progress bar (on stderr) that advances by rounds; nothing when quiet.

    Without a terminal (stderr a file or a pipe) a bar would show nothing: a plain line every
    few seconds instead (econspin.progress).
    """
    if quiet:
        yield lambda _round: None
        return
    if not console.is_terminal:
        interval = progress_interval(lambda line: console.print(f"warning: {line}", soft_wrap=True))
        yield PlainProgress(total, description, lambda line: console.print(line, soft_wrap=True), interval)
        return
    columns = [TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda _round: progress.advance(task)


def sellers_of(scenario: Scenario) -> int:
    return sum(p.count for p in scenario.populations.values() if p.sells)


@app.command()
def run(
    scenario: Annotated[Optional[Path], typer.Argument(help="Scenario YAML file.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default runs/<scenario name>).")] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, help="Rounds to run (with --resume: the new total).")] = None,
    replicas: Annotated[Optional[int], typer.Option(min=1, help="Independent copies run as one batch.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed.")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu or cuda.")] = None,
    set_: SetOption = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run in this folder.")] = None,
    checkpoint_every: Annotated[
        Optional[int], typer.Option(min=1, help="Rounds between checkpoints (default: about 20 per run).")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar or summary.")] = False,
):
    """Run a scenario and write its folder: metrics, checkpoint, manifest, figures."""
    try:
        if resume is not None:
            if scenario is not None or set_ or replicas is not None or seed is not None:
                raise ScenarioError("--resume continues a run as it was: give no SCENARIO, --set, --replicas or --seed")
            if not (resume / SCENARIO_FILE).exists() or not (resume / CHECKPOINT_FILE).exists():
                raise ScenarioError(f"{resume}: not a run folder with {SCENARIO_FILE} and {CHECKPOINT_FILE}")
            loaded = load_scenario(resume / SCENARIO_FILE, {})
        else:
            if scenario is None:
                raise ScenarioError("run: give a SCENARIO file (or --resume DIR)")
            loaded = load_scenario(scenario, parse_overrides(set_))
        loaded = loaded.with_run_settings(steps=steps, replicas=replicas, seed=seed, device=device)
        target = resume if resume is not None else (out or Path("runs") / loaded.name)
        check_writable(target, "--resume" if resume is not None else "--out", folder=True)
        rollout = Rollout.create(
            [loaded] * loaded.run.replicas, list(range(loaded.run.replicas)), loaded.run.device, loaded.run.dtype
        )
    except ScenarioError as error:
        fail(str(error), resume / SCENARIO_FILE if resume is not None else scenario)
    except (MemoryError, RuntimeError) as error:  # torch's failed allocations are RuntimeErrors
        refuse_failed_allocation(error, resume / SCENARIO_FILE if resume is not None else scenario)
    previous = pd.DataFrame()
    if resume is not None:
        try:
            rollout.state, rows = load_checkpoint(resume / CHECKPOINT_FILE, rollout.state)
        except (ScenarioError, CheckpointError) as error:
            fail(str(error), resume / CHECKPOINT_FILE)
        previous = pd.read_parquet(resume / METRICS_FILE).iloc[:rows]
    write_text(target / SCENARIO_FILE, loaded.to_yaml())
    rounds = max(loaded.run.steps - rollout.state.round, 0)  # what this invocation plays
    every = checkpoint_every or max(1, loaded.run.steps // 20)
    started = time.perf_counter()
    try:
        with progress_bar(rounds, f"{loaded.name}", quiet) as advance:
            while rollout.state.round < loaded.run.steps:
                rollout.advance(min(every, loaded.run.steps - rollout.state.round), advance)
                table = pd.concat([previous, rollout.metrics()], ignore_index=True)
                write_table(target / METRICS_FILE, table)
                save_checkpoint(target / CHECKPOINT_FILE, rollout.state, rollout.replicas, len(table))
    except KeyboardInterrupt:
        console.print(f"interrupted after round {rollout.state.round}; continue with: econspin run --resume {target}")
        raise typer.Exit(130)
    wall_time = time.perf_counter() - started
    table = pd.read_parquet(target / METRICS_FILE) if rounds == 0 else table
    wealth = wealth_table(rollout.state, rollout.economy.population_names, rollout.economy.population, rollout.replicas)
    write_table(target / WEALTH_FILE, wealth)
    write_json(
        target / MANIFEST_FILE,
        manifest(
            loaded,
            rollout.economy.device,
            wall_time,
            rounds,
            {"resumed_from_round": loaded.run.steps - rounds},
        ),
    )
    draw_run_figures(target, loaded, table, wealth)
    if not quiet:
        summarise(table, target, wall_time, rounds)


def draw_run_figures(target: Path, scenario: Scenario, table: pd.DataFrame, wealth: pd.DataFrame) -> None:
    """concentration.png and wealth.png from the run's tables."""
    from econspin.plots import concentration_figure, wealth_figure

    concentration_figure(table, target / "concentration.png", scenario.name, sellers=sellers_of(scenario))
    wealth_figure(wealth, target / "wealth.png", scenario.name)


def summarise(table: pd.DataFrame, target: Path, wall_time: float, rounds: int) -> None:
    """The last round's metrics, mean over replicas, and where the files are."""
    last = table[table["step"] == table["step"].max()]
    summary = Table(title=f"round {int(last['step'].iloc[0])}, mean over {last['replica'].nunique()} replicas")
    summary.add_column("metric")
    summary.add_column("value", justify="right")
    for column in table.columns:
        if column not in ("step", "replica", "point"):
            summary.add_row(column, f"{last[column].mean():.4g}")
    console.print(summary)
    speed = f", {rounds / wall_time:.1f} rounds/s" if wall_time > 0 and rounds else ""
    console.print(f"wrote {target}/ in {wall_time:.1f} s{speed}")


@app.command()
def sweep(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML file.")],
    grid: Annotated[list[str], typer.Option(help="key.path=SPEC with SPEC a:b:n, log:a:b:n or v1,v2,... Repeatable.")],
    replicas: Annotated[Optional[int], typer.Option(min=1, help="Replicas per point.")] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, help="Rounds per point.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default runs/<name>-sweep).")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu or cuda.")] = None,
    set_: SetOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar or summary.")] = False,
):
    """Run every point of a grid (x replicas) as batched kernels; write sweep.parquet and phase.png."""
    from econspin.sweep import parse_grid, plan_batches, run_sweep, sweep_points

    try:
        base = load_scenario(scenario, parse_overrides(set_))
        base = base.with_run_settings(steps=steps, replicas=replicas, device=device)
        grids = [parse_grid(text) for text in grid]
        points = sweep_points(base, grids)
        target = out or Path("runs") / f"{base.name}-sweep"
        check_writable(target, "--out", folder=True)
    except ScenarioError as error:
        fail(str(error), scenario)
    run_settings = base.run
    total = len(points) * run_settings.replicas
    started = time.perf_counter()
    try:
        with progress_bar(
            run_settings.steps * len(plan_batches(points, run_settings.replicas, run_settings.dtype)),
            f"{base.name}: {len(points)} points x {run_settings.replicas} replicas",
            quiet,
        ) as advance:
            table = run_sweep(
                points, run_settings.replicas, run_settings.steps, run_settings.device, run_settings.dtype, advance
            )
    except ScenarioError as error:
        fail(str(error), scenario)
    except (MemoryError, RuntimeError) as error:  # nothing is written before every batch has run
        refuse_failed_allocation(error, scenario)
    except KeyboardInterrupt:
        console.print("sweep interrupted; nothing was written")
        raise typer.Exit(130)
    wall_time = time.perf_counter() - started
    keys = [g.key for g in grids]
    write_text(target / SCENARIO_FILE, base.to_yaml())
    write_table(target / SWEEP_FILE, table)
    write_json(
        target / MANIFEST_FILE,
        manifest(
            base,
            run_settings.device,
            wall_time,
            run_settings.steps,
            {"grid": {g.key: list(g.values) for g in grids}, "points": len(points), "batch_elements": total},
        ),
    )
    draw_sweep_figures(target, base, table, keys)
    if not quiet:
        console.print(f"wrote {target}/ ({len(points)} points x {run_settings.replicas} replicas) in {wall_time:.1f} s")


def draw_sweep_figures(target: Path, scenario: Scenario, table: pd.DataFrame, keys: list[str]) -> None:
    """phase.png, and concentration.png for the first, middle and last points."""
    from econspin.plots import concentration_figure, phase_figure
    from econspin.sweep import final_values

    phase_figure(final_values(table, keys), keys, target / "phase.png", scenario.name, sellers=sellers_of(scenario))
    points = sorted(table["point"].unique())
    chosen = sorted({points[0], points[len(points) // 2], points[-1]})
    subset = table[table["point"].isin(chosen)].copy()
    label = keys[0] if len(keys) == 1 else "point"
    if len(keys) > 1:
        subset["point"] = subset[keys].astype(str).agg(", ".join, axis=1)
    concentration_figure(subset, target / "concentration.png", scenario.name, sellers=sellers_of(scenario), group=label)


@app.command()
def plot(directory: Annotated[Path, typer.Argument(help="A run or sweep folder.")]):
    """(Re)draw the figures of a run or sweep folder from its tables."""
    try:
        scenario = load_scenario(directory / SCENARIO_FILE, {})
    except ScenarioError as error:
        fail(str(error))
    if (directory / SWEEP_FILE).exists():
        import json

        keys = list(json.loads((directory / MANIFEST_FILE).read_text()).get("grid", {}))
        draw_sweep_figures(directory, scenario, pd.read_parquet(directory / SWEEP_FILE), keys)
    elif (directory / METRICS_FILE).exists() and (directory / WEALTH_FILE).exists():
        draw_run_figures(
            directory, scenario, pd.read_parquet(directory / METRICS_FILE), pd.read_parquet(directory / WEALTH_FILE)
        )
    else:
        fail(f"{directory}: no {METRICS_FILE} or {SWEEP_FILE} to plot")
    console.print(f"drew the figures in {directory}/")


@app.command()
def check(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML file.")],
    set_: SetOption = None,
):
    """Validate a scenario and print it resolved, every default filled in."""
    try:
        loaded = load_scenario(scenario, parse_overrides(set_))
        from econspin.economy import estimate_memory
        from econspin.simulate import DTYPES

        if loaded.market.couplings is None:
            estimate_memory(loaded, loaded.run.replicas, DTYPES[loaded.run.dtype])
    except ScenarioError as error:
        fail(str(error), scenario)
    sys.stdout.write(loaded.to_yaml())
    populations = ", ".join(f"{name} {p.count}" for name, p in loaded.populations.items())
    console.print(
        f"ok: {loaded.agent_count} agents ({populations}); metrics: "
        f"{', '.join(['step', 'replica', *metric_names(loaded.populations)])}",
        highlight=False,
    )


@app.command()
def viz(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML file.")],
    port: Annotated[int, typer.Option(help="Port to serve the page on (1 to 65535).")] = 8765,
    host: Annotated[str, typer.Option(help="Address to listen on (127.0.0.1: this machine only).")] = "127.0.0.1",
):
    """Open a scenario in a Mesa SolaraViz dashboard, served offline (needs the viz extra)."""
    try:
        from econspin.mesa.serve import serve

        def announce(line: str) -> None:
            console.print(line, highlight=False, soft_wrap=True)

        serve(scenario, host=host, port=port, announce=announce)
    except ScenarioError as error:
        fail(str(error), scenario if not str(error).startswith(("--", "the dashboard")) else None)
    except ImportError as error:  # the mesa extra is missing: econspin.mesa needs Mesa itself
        fail(f"the dashboard needs {error.name or 'mesa'}: pip install 'econspin[viz]'")


@app.command()
def bench(
    quick: Annotated[bool, typer.Option("--quick", help="N up to 4096, 3 repeats: under a minute on 2 cores.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "cpu",
    json_file: Annotated[
        Optional[Path], typer.Option("--json", help="Also write the results to this JSON file.")
    ] = None,
    threads: Annotated[Optional[int], typer.Option(min=1, help="torch threads (default: torch's).")] = None,
    sizes: Annotated[Optional[str], typer.Option(help="Comma-separated N (default 256,1024,4096[,16384]).")] = None,
    batches: Annotated[Optional[str], typer.Option(help="Comma-separated B (default 1,16).")] = None,
    repeats: Annotated[
        Optional[int], typer.Option(min=1, help="Timed repeats per case (default 3 quick, 7 full).")
    ] = None,
    clock: Annotated[str, typer.Option(help="wall, or cpu: process CPU time (blind to waiting for a core).")] = "wall",
):
    """Time one round of the reference and fused kernels against the attention floor (SDPA)."""
    from econspin.bench import bench_table, run_bench

    def numbers(text: str | None, option: str, least: int) -> tuple[int, ...] | None:
        if text is None:
            return None
        try:
            values = tuple(int(part) for part in text.split(","))
        except ValueError:
            values = ()
        if not values or min(values) < least:
            raise ScenarioError(f"{option} {text!r}: give comma-separated integers >= {least}")
        return values

    try:
        if clock not in ("wall", "cpu"):
            raise ScenarioError(f"--clock {clock!r}: wall or cpu")
        if json_file is not None:
            check_writable(json_file, "--json", folder=False)
        result = run_bench(
            quick,
            device,
            threads,
            numbers(sizes, "--sizes", 2),
            numbers(batches, "--batches", 1),
            repeats,
            on_row=lambda row: console.print(f"N = {row['agents']}, B = {row['batch']}: done", highlight=False),
            clock=clock,
        )
    except ScenarioError as error:
        fail(str(error))
    Console(width=max(120, Console().width)).print(bench_table(result))
    if json_file is not None:
        write_json(json_file, result)
        console.print(f"wrote {json_file}")


if __name__ == "__main__":  # pragma: no cover - python -m econspin.cli
    app()
