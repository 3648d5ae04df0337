"""``econspin fit-correction``: fit the ffn self-impact correction to a sampled ensemble.

A rim of the command line (:mod:`econspin.cli`) around :mod:`econspin.fitting`: the scenario
and the options are checked and ``--out`` is found writable before anything runs; the weights
file is written once, at the end, under a temporary name and renamed.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Annotated, Optional

import torch
import typer

from econspin.cli import SetOption, app, console, fail, load_scenario, parse_overrides, progress_bar
from econspin.fitting import DEFAULT_HIDDEN, fit_correction, fitting_scenario, sample_ensemble, weights_file_contents
from econspin.output import check_writable, write_atomically
from econspin.preflight import preflight_run
from econspin.scenario import ScenarioError

ROWS = ("none", "tap", "ffn_untrained", "ffn", "monte_carlo")


@app.command("fit-correction")
def fit_correction_command(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML file.")],
    out: Annotated[Path, typer.Option(help="Weights file to write (a torch file; name it in correction.weights).")],
    replicas: Annotated[int, typer.Option(min=2, help="Sampled replicas sharing the disorder.")] = 128,
    steps: Annotated[int, typer.Option(min=1, help="Rounds of each ensemble.")] = 20,
    epochs: Annotated[int, typer.Option(min=1, help="Adam steps over all teacher-forced windows.")] = 1000,
    window: Annotated[int, typer.Option(min=1, help="Rounds rolled freely from each ensemble mean.")] = 8,
    seed: Annotated[Optional[int], typer.Option(help="Disorder seed fitted (also scored on seed + 1).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "cpu",
    set_: SetOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar or summary.")] = False,
):
    """Fit each population's ffn correction so that the mean field follows the sampled ensemble mean."""
    try:
        loaded = load_scenario(scenario, parse_overrides(set_)).with_run_settings(seed=seed, device=device)
        check_writable(out, "--out", folder=False)
        sampled = fitting_scenario(loaded).with_overrides({"market.mode": "sampled"})
        preflight_run(sampled, replicas, steps)
        other_seed = loaded.with_run_settings(seed=loaded.run.seed + 1)
        hidden = {p.correction.hidden for p in loaded.populations.values() if p.correction.form == "ffn"}
        hidden = hidden.pop() if len(hidden) == 1 else DEFAULT_HIDDEN
    except ScenarioError as error:
        fail(str(error), scenario)
    started = time.perf_counter()
    try:
        with progress_bar(3 * steps + epochs, f"{loaded.name}: ensembles and fit", quiet) as advance:
            train = sample_ensemble(loaded, replicas, steps, loaded.run.device, advance)
            scored = {
                "held_out_replicas": sample_ensemble(loaded, replicas, steps, loaded.run.device, advance, replicas),
                "other_seed": sample_ensemble(other_seed, replicas, steps, loaded.run.device, advance),
            }
            fit = fit_correction(train, scored, epochs, window, hidden, advance)
    except ScenarioError as error:
        fail(str(error), scenario)
    wall_time = time.perf_counter() - started
    settings = {"replicas": replicas, "steps": steps, "epochs": epochs, "window": window, "hidden": hidden,
                "seed": loaded.run.seed, "other_seed": loaded.run.seed + 1, "wall_time": wall_time}
    contents = weights_file_contents(fit, train.scenario, settings)
    buffer = io.BytesIO()
    torch.save(contents, buffer)
    write_atomically(out, lambda handle: handle.write(buffer.getvalue()))
    if not quiet:
        labels = list(fit.errors)
        console.print(f"RMS per-agent error against the ensemble mean, rounds 1..{steps} ({', '.join(labels)}):")
        for row in ROWS:
            console.print(f"  {row:14s}" + "".join(f" {fit.errors[label][row]:10.4f}" for label in labels))
        console.print(f"wrote {out} in {wall_time:.1f} s; use it as correction: {{form: ffn, weights: {out}}}",
                      soft_wrap=True)
