"""The ``econspin`` command: run, sweep, plot and check scenarios.

Bad input never ends in a traceback: one line naming the file and the key, exit status 2,
and nothing written.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
import warnings
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
from econspin import allocator
from econspin.economy import resolve_device
from econspin.fingerprint import (
    check_folder,
    clear_outputs,
    comparable_scenario,
    fingerprint,
    finished,
    forget_final_files,
    read_manifest,
    recorded_fingerprint,
    resumable_checkpoint,
    resumed_metrics,
)
from econspin.memory import available_memory, format_bytes
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
from econspin.preflight import check_files, preflight_run
from econspin.progress import PlainProgress, progress_interval
from econspin.scenario import Scenario, ScenarioError, ScenarioWarning
from econspin.simulate import Rollout


class OneLineErrors(typer.core.TyperGroup):
    """Usage errors (a bad option value, a missing argument, an unknown command) as one line, exit 2."""

    def invoke(self, ctx: typer.Context):
        try:
            with warnings_as_lines():
                return super().invoke(ctx)
        except NoArgsIsHelpError:
            raise
        except UsageError as error:
            command = f" (see {error.ctx.command_path} --help)" if error.ctx is not None else ""
            fail(f"{error.format_message()}{command}")
        except OSError as error:  # a disk that fills or a folder made read-only during a run: the file and why
            fail(f"{error.filename}: {error.strerror}" if error.filename else f"cannot write or read: {error}")


@contextlib.contextmanager
def warnings_as_lines():
    """Each ScenarioWarning printed as one line, 'warning: ...', when it is raised (once per text)."""
    with warnings.catch_warnings():
        warnings.simplefilter("default", ScenarioWarning)
        python_way = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, ScenarioWarning):
                console.print(Text.assemble(("warning:", "bold yellow"), " ", str(message)), soft_wrap=True)
            else:
                python_way(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


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

ForceOption = Annotated[
    bool,
    typer.Option(
        "--force", help="Replace the econspin outputs of an --out folder that holds something else (others stay)."
    ),
]

CompileOption = Annotated[
    Optional[str],
    typer.Option(
        "--compile",
        help="run.compile: off (eager), default or reduce-overhead: the round through torch.compile.",
    ),
]


KEEP_MEMORY_VARIABLE = "ECONSPIN_KEEP_MEMORY"
KEEP_MEMORY_VALUES = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
}


def show_version(asked: bool) -> None:
    if asked:
        sys.stdout.write(f"econspin {econspin.__version__}\n")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=show_version, is_eager=True, help="Print econspin's version and exit.")
    ] = False,
    keep_memory: Annotated[
        bool,
        typer.Option(
            "--keep-memory/--no-keep-memory",
            help="Keep freed memory in the process for the next round (glibc: faster small ensembles, "
            "docs/performance.md). ECONSPIN_KEEP_MEMORY=0 in the environment also turns it off.",
        ),
    ] = True,
):
    """Agent-based economies in which trade is attention."""
    setting = os.environ.get(KEEP_MEMORY_VARIABLE, "1").strip().lower()
    if setting not in KEEP_MEMORY_VALUES:
        fail(f"{KEEP_MEMORY_VARIABLE}={setting!r} in the environment: write 1 (keep freed memory) or 0 (do not)")
    if keep_memory and KEEP_MEMORY_VALUES[setting]:
        # the command owns its process, so it chooses; the engine never sets this (econspin.allocator)
        allocator.keep_freed_memory()


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
    force: ForceOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar or summary.")] = False,
    compile_mode: CompileOption = None,
):
    """Run a scenario and write its folder: metrics, checkpoint, manifest, figures."""
    record = None  # the checkpoint resumed from
    try:
        if resume is not None:
            if scenario is not None or set_ or replicas is not None or seed is not None or force or compile_mode:
                raise ScenarioError(
                    "--resume continues a run as it was: "
                    "give no SCENARIO, --set, --replicas, --seed, --compile or --force"
                )
            recorded = recorded_fingerprint(resume, "run")
            if not (resume / SCENARIO_FILE).exists():
                raise ScenarioError(f"--resume {resume}: the run stopped before writing {SCENARIO_FILE}; run it again")
            loaded = load_scenario(resume / SCENARIO_FILE, {}).with_run_settings(steps=steps, device=device)
            current = fingerprint("run", loaded, recorded.get("overrides"))
            record = resumable_checkpoint(resume, recorded, current, loaded)
            target = resume
        else:
            if scenario is None:
                raise ScenarioError("run: give a SCENARIO file (or --resume DIR)")
            overrides = parse_overrides(set_)
            loaded = load_scenario(scenario, overrides)
            loaded = loaded.with_run_settings(
                steps=steps, replicas=replicas, seed=seed, device=device, compile=compile_mode
            )
            target = out or Path("runs") / loaded.name
            check_writable(target, "--out", folder=True)
            current = fingerprint("run", loaded, overrides)
            check_folder(target, current, loaded, "--out", force)
        preflight_run(loaded, loaded.run.replicas, loaded.run.steps, wealth=True)
        rollout = Rollout.create(
            [loaded] * loaded.run.replicas, list(range(loaded.run.replicas)), loaded.run.device, loaded.run.dtype
        )
        done = record["round"] if record is not None else 0
        if resume is not None and done == loaded.run.steps and finished(resume, loaded.run.steps):
            if not quiet:
                console.print(f"{resume} already holds all {done} rounds; nothing to do")
            return
    except (ScenarioError, CheckpointError) as error:
        fail(str(error), named_source(str(error), resume, scenario))
    except (MemoryError, RuntimeError) as error:  # torch's failed allocations are RuntimeErrors
        refuse_failed_allocation(error, resume / SCENARIO_FILE if resume is not None else scenario)
    previous = pd.DataFrame()
    if record is not None:
        try:
            rollout.state, rows = load_checkpoint(resume / CHECKPOINT_FILE, rollout.state)
            previous = resumed_metrics(resume, rows)
        except (ScenarioError, CheckpointError) as error:  # a message that names no file is the checkpoint's
            fail(str(error), None if str(error).startswith(str(resume)) else resume / CHECKPOINT_FILE)
    scenario_data = comparable_scenario(loaded)
    started_manifest = manifest(loaded, rollout.economy.device, 0.0, 0, {"fingerprint": current}, complete=False)
    if resume is None:
        clear_outputs(target)
    write_json(target / MANIFEST_FILE, started_manifest)  # first: the folder is this run's, and incomplete
    forget_final_files(target, (WEALTH_FILE, "concentration.png", "wealth.png"))  # they described the last round
    write_text(target / SCENARIO_FILE, loaded.to_yaml())
    if record is None:  # resumable from the start on
        save_checkpoint(target / CHECKPOINT_FILE, rollout.state, rollout.replicas, 0, current, scenario_data)
    rounds = loaded.run.steps - rollout.state.round  # what this invocation plays
    every = checkpoint_every or max(1, loaded.run.steps // 20)
    started = time.perf_counter()
    table = previous
    try:
        with progress_bar(rounds, f"{loaded.name}", quiet) as advance:
            while rollout.state.round < loaded.run.steps:
                rollout.advance(min(every, loaded.run.steps - rollout.state.round), advance)
                table = pd.concat([previous, rollout.metrics()], ignore_index=True)
                write_table(target / METRICS_FILE, table)  # first: the checkpoint never follows rows not written
                save_checkpoint(
                    target / CHECKPOINT_FILE, rollout.state, rollout.replicas, len(table), current, scenario_data
                )
    except KeyboardInterrupt:
        console.print(f"interrupted after round {rollout.state.round}; continue with: econspin run --resume {target}")
        raise typer.Exit(130)
    wall_time = time.perf_counter() - started
    wealth = wealth_table(rollout.state, rollout.economy.population_names, rollout.economy.population, rollout.replicas)
    write_table(target / WEALTH_FILE, wealth)
    draw_run_figures(target, loaded, table, wealth)
    extra = {"fingerprint": current, "resumed_from_round": loaded.run.steps - rounds}
    write_json(target / MANIFEST_FILE, manifest(loaded, rollout.economy.device, wall_time, rounds, extra))  # last
    if not quiet:
        summarise(table, target, wall_time, rounds)


def named_source(message: str, resume: Path | None, scenario: Path | None) -> Path | None:
    """The file an error is about: the scenario, or the folder's scenario.yaml (unless the message names a file)."""
    if resume is None:
        return scenario
    return None if message.startswith(str(resume)) else resume / SCENARIO_FILE


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
def plot(directory: Annotated[Path, typer.Argument(help="A run or sweep folder.")]):
    """(Re)draw the figures of a run or sweep folder from its tables."""
    try:
        scenario = load_scenario(directory / SCENARIO_FILE, {})
    except ScenarioError as error:
        fail(str(error))
    recorded = read_manifest(directory) or {}
    if recorded.get("status") == "incomplete":
        kind = recorded.get("fingerprint", {}).get("kind", "run")
        fail(
            f"{directory}: its {kind} has not finished (interrupted, or still running); "
            f"finish it with: econspin {kind} --resume {directory}"
        )
    if (directory / SWEEP_FILE).exists():
        keys = list(recorded.get("grid", {}))
        cli_sweep.draw_sweep_figures(directory, scenario, pd.read_parquet(directory / SWEEP_FILE), keys)
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
        check_files(loaded)
        estimate = preflight_run(loaded, loaded.run.replicas, loaded.run.steps, wealth=True)
    except ScenarioError as error:
        fail(str(error), scenario)
    free = available_memory(resolve_device(loaded.run.device))
    available = "unknown memory" if free is None else format_bytes(free)
    sys.stdout.write(loaded.to_yaml())
    populations = ", ".join(f"{name} {p.count}" for name, p in loaded.populations.items())
    console.print(
        f"ok: {loaded.agent_count} agents ({populations}); metrics: "
        f"{', '.join(['step', 'replica', *metric_names(loaded.populations)])}",
        highlight=False,
    )
    # run.chunk sets the blocks whatever the budget: say so where they take the round over it
    budget_mb, chunk = loaded.run.memory_budget_mb, loaded.run.chunk
    over = estimate.device.get("round", 0.0) > budget_mb * 2**20
    within = f"over, in blocks of run.chunk = {chunk} rows," if over and chunk is not None else "within"
    console.print(
        f"memory: {estimate.describe()} for {loaded.run.replicas} replicas x {loaded.run.steps} rounds; "
        f"a round {within} run.memory_budget_mb = {budget_mb:g} "
        f"({format_bytes(budget_mb * 2**20)}); {available} available",
        highlight=False,
        soft_wrap=True,
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


# the commands in modules of their own register themselves on app (they import this module)
from econspin import cli_bench, cli_fit, cli_sweep  # noqa: E402, F401

if __name__ == "__main__":  # pragma: no cover - python -m econspin.cli
    # this file runs as __main__; cli_bench, cli_sweep and cli_fit registered their commands on the app of econspin.cli
    from econspin.cli import app as registered_app

    registered_app()
