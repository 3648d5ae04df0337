"""``econspin fit-correction``: fit the ffn self-impact correction to sampled ensembles.

A rim of the command line (:mod:`econspin.cli`) around :mod:`econspin.fitting`: the scenario,
every grid point and the options are checked and ``--out`` is found writable before anything
runs; the weights file is written once, at the end, under a temporary name and renamed.

One fit can cover a family: ``--seeds 0-3`` (disorder seeds) and ``--grid key=SPEC`` (the
sweep's grammar: ``a:b:n``, ``log:a:b:n`` or ``v1,v2,...``; several form a product) give one
ensemble per point and seed, all fitted at once. The fit is scored on every ensemble fitted,
on other replicas of the first (``held_out_replicas``) and on every point at the seed after
the last one fitted (``held out: seed S``: other disorder).
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Annotated, Optional

import torch
import typer

from econspin.cli import SetOption, app, console, fail, load_scenario, parse_overrides, progress_bar
from econspin.corrections import FEED_FORWARD_FEATURES
from econspin.fitting import (
    DEFAULT_HIDDEN,
    LEARNING_RATE,
    fit_correction,
    fitting_scenario,
    sample_ensemble,
    weights_file_contents,
)
from econspin.output import check_writable, write_atomically
from econspin.preflight import preflight_run
from econspin.scenario import Scenario, ScenarioError
from econspin.sweep import parse_grid, sweep_points

COLUMNS = ("none", "tap", "ffn_untrained", "ffn", "monte_carlo")
MAX_ENSEMBLES = 256  # each ensemble is R replicas x steps rounds and a batch of windows in every epoch


def parse_seeds(text: str) -> list[int]:
    """``a-b`` (a to b inclusive) or ``a,b,c``: the disorder seeds fitted at once."""
    try:
        if "-" in text.strip().lstrip("-") and "," not in text:
            low, high = (int(part) for part in text.split("-", 1))
            seeds = list(range(low, high + 1))
        else:
            seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise ScenarioError(f"--seeds {text!r}: write FIRST-LAST (e.g. 0-3) or a list (e.g. 0,2,5)") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise ScenarioError(f"--seeds {text!r}: give at least one seed, none negative, none twice")
    return seeds


def ensemble_label(overrides: dict, seed: int, grid_given: bool) -> str:
    """``seed 3``, or ``populations.ai.temperature=0.3, seed 3`` for a point of a grid."""
    point = ", ".join(f"{key}={value}" for key, value in overrides.items())
    return f"{point}, seed {seed}" if grid_given else f"seed {seed}"


def family(base: Scenario, grid: list[str] | None, seeds: list[int]) -> dict[str, Scenario]:
    """Every point of the grid at every seed, by label; each validated before anything runs."""
    grids = [parse_grid(text) for text in grid or []]
    if any(g.key == "run.seed" for g in grids):
        raise ScenarioError("--grid run.seed: give the disorder seeds with --seeds (the held-out seed follows them)")
    points = sweep_points(base, grids) if grids else [({}, base)]
    return {
        ensemble_label(overrides, seed, bool(grid)): scenario.with_run_settings(seed=seed)
        for overrides, scenario in points
        for seed in seeds
    }


@app.command("fit-correction")
def fit_correction_command(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML file.")],
    out: Annotated[Path, typer.Option(help="Weights file to write (a torch file; name it in correction.weights).")],
    replicas: Annotated[int, typer.Option(min=2, help="Sampled replicas sharing the disorder.")] = 128,
    steps: Annotated[int, typer.Option(min=1, help="Rounds of each ensemble.")] = 20,
    epochs: Annotated[int, typer.Option(min=1, help="Adam steps over all teacher-forced windows.")] = 300,
    window: Annotated[int, typer.Option(min=1, help="Rounds rolled freely from each ensemble mean.")] = 8,
    features: Annotated[
        str, typer.Option(help="invariant (transfers to other disorders) or state (x_i, V_i, kappa_i).")
    ] = "invariant",
    learning_rate: Annotated[float, typer.Option(help="Adam's step size (> 0).")] = LEARNING_RATE,
    seed: Annotated[Optional[int], typer.Option(help="One disorder seed fitted (also scored on seed + 1).")] = None,
    seeds: Annotated[
        Optional[str], typer.Option(help="Disorder seeds fitted at once: FIRST-LAST or a,b,c (scored on LAST + 1).")
    ] = None,
    grid: Annotated[
        Optional[list[str]],
        typer.Option(help="key.path=SPEC (a:b:n, log:a:b:n or v1,v2,...): fit every point at once. Repeatable."),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "cpu",
    set_: SetOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar or summary.")] = False,
):
    """Fit each population's ffn correction so that the mean field follows the sampled ensemble mean."""
    try:
        if features not in FEED_FORWARD_FEATURES:
            raise ScenarioError(f"--features {features!r}: choose {' or '.join(sorted(FEED_FORWARD_FEATURES))}")
        if not learning_rate > 0 or learning_rate == float("inf"):
            raise ScenarioError(f"--learning-rate {learning_rate}: give a finite number above 0")
        if seed is not None and seeds is not None:
            raise ScenarioError("--seed and --seeds: give one of them")
        loaded = load_scenario(scenario, parse_overrides(set_)).with_run_settings(seed=seed, device=device)
        fitted_seeds = parse_seeds(seeds) if seeds is not None else [loaded.run.seed]
        check_writable(out, "--out", folder=False)
        train = family(loaded, grid, fitted_seeds)
        held_out_seed = max(fitted_seeds) + 1
        held_out = {f"held out: {label}": value for label, value in family(loaded, grid, [held_out_seed]).items()}
        if len(train) + len(held_out) + 1 > MAX_ENSEMBLES:
            raise ScenarioError(
                f"--seeds, --grid: {len(train)} ensembles to fit, at most {MAX_ENSEMBLES - 1} with those held out"
            )
        for value in [*train.values(), *held_out.values()]:
            preflight_run(fitting_scenario(value).with_overrides({"market.mode": "sampled"}), replicas, steps)
        hidden = {p.correction.hidden for p in loaded.populations.values() if p.correction.form == "ffn"}
        hidden = hidden.pop() if len(hidden) == 1 else DEFAULT_HIDDEN
    except ScenarioError as error:
        fail(str(error), scenario)
    started = time.perf_counter()
    ensembles = len(train) + len(held_out) + 1
    try:
        with progress_bar(
            ensembles * steps + epochs, f"{loaded.name}: {ensembles} ensembles and the fit", quiet
        ) as advance:
            device_name = loaded.run.device
            sampled = {
                label: sample_ensemble(value, replicas, steps, device_name, advance) for label, value in train.items()
            }
            first = next(iter(train.values()))
            scored = {"held_out_replicas": sample_ensemble(first, replicas, steps, device_name, advance, replicas)}
            scored.update(
                {
                    label: sample_ensemble(value, replicas, steps, device_name, advance)
                    for label, value in held_out.items()
                }
            )
            fitted_on = sampled if len(sampled) > 1 else {"train": next(iter(sampled.values()))}
            fit = fit_correction(fitted_on, scored, epochs, window, hidden, advance, features, learning_rate)
    except ScenarioError as error:
        fail(str(error), scenario)
    wall_time = time.perf_counter() - started
    settings = {
        "replicas": replicas,
        "steps": steps,
        "epochs": epochs,
        "window": window,
        "hidden": hidden,
        "features": features,
        "learning_rate": learning_rate,
        "seed": fitted_seeds[0],
        "seeds": fitted_seeds,
        "grid": list(grid or []),
        "other_seed": held_out_seed,
        "wall_time": wall_time,
    }
    contents = weights_file_contents(fit, {label: e.scenario for label, e in fitted_on.items()}, settings)
    buffer = io.BytesIO()
    torch.save(contents, buffer)
    write_atomically(out, lambda handle: handle.write(buffer.getvalue()))
    if not quiet:
        print_errors(fit.errors, steps)
        console.print(
            f"wrote {out} in {wall_time:.1f} s; use it as correction: "
            f"{{form: ffn, features: {features}, weights: {out}}}",
            soft_wrap=True,
        )


def print_errors(found: dict[str, dict[str, float]], steps: int) -> None:
    """One line per ensemble scored: the RMS per-agent error of each correction and its Monte Carlo part."""
    width = max(len(label) for label in found)
    console.print(f"RMS per-agent error against the ensemble mean, rounds 1..{steps}:", soft_wrap=True)
    console.print(f"  {'':{width}s}" + "".join(f" {column:>13s}" for column in COLUMNS), soft_wrap=True)
    for label, errors in found.items():
        console.print(f"  {label:{width}s}" + "".join(f" {errors[column]:13.4f}" for column in COLUMNS), soft_wrap=True)
