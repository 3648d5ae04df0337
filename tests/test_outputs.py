"""What the outputs say (issue 11, item 9).

The wealth CCDF, grid values as typed, the step-0 row, file modes, help and --version, the
package metadata, and progress where stderr is no terminal.
"""

import json
import os
import stat
import subprocess
import sys
import tomllib
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cli import TINY as CLI_TINY
from typer.testing import CliRunner

import econspin
from econspin import plots
from econspin.cli import app
from econspin.output import write_text
from econspin.progress import PlainProgress
from econspin.sweep import parse_values

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent

TINY = CLI_TINY.replace("steps: 8", "steps: 3")  # 12 humans and 4 AI agents, 2 replicas


def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


# --- the wealth CCDF: P(money >= w) over all agents, zero included, exact for integer money


def test_ccdf_of_unit_money_counts_every_agent_and_every_tie():
    values, probability = plots.wealth_ccdf(np.array([0, 0, 1, 1, 2.0]))
    assert values.tolist() == [0.0, 1.0, 2.0]
    assert probability.tolist() == [1.0, 3 / 5, 1 / 5]  # exact: counts over N = 5


@given(st.lists(st.integers(0, 6), min_size=1, max_size=40))
@settings(max_examples=60, deadline=None)
def test_ccdf_is_the_share_of_agents_holding_at_least_w(money):
    values, probability = plots.wealth_ccdf(np.array(money, dtype=float))
    assert values.tolist() == sorted(set(money))
    assert probability.tolist() == [sum(m >= w for m in money) / len(money) for w in values]


def test_the_wealth_figure_draws_the_ccdf_of_all_agents(tmp_path, monkeypatch):
    drawn = {}
    monkeypatch.setattr(plots, "_save", lambda figure, path: drawn.setdefault("figure", figure))
    wealth = pd.DataFrame({"replica": 0, "agent": range(5), "population": "agents", "money": [0.0, 0, 1, 1, 2]})
    plots.wealth_figure(wealth, tmp_path / "wealth.png", "unit money")
    (line,) = drawn["figure"].axes[0].get_lines()
    assert line.get_xdata().tolist() == [1.0, 2.0]  # zero has no place on log axes ...
    assert line.get_ydata().tolist() == [3 / 5, 1 / 5]  # ... but counts in every share


# --- grid values print as typed


def test_a_linear_grid_holds_the_decimals_typed():
    assert [repr(value) for value in parse_values("0.01:0.03:3", "x")] == ["0.01", "0.02", "0.03"]
    assert parse_values("0:0.1:6", "x") == (0.0, 0.02, 0.04, 0.06, 0.08, 0.1)
    assert parse_values("0.1:0.7:7", "x") == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


@given(st.integers(-500, 500), st.integers(1, 500), st.sampled_from([2, 3, 5, 11]), st.sampled_from([1, 2, 3]))
@settings(max_examples=80, deadline=None)
def test_linear_grid_values_are_the_nearest_floats_to_the_exact_decimals(start, width, count, places):
    unit = Decimal(1).scaleb(-places)
    low, high = start * unit, (start + width * (count - 1)) * unit  # every step a whole number of units
    values = parse_values(f"{low}:{high}:{count}", "x")
    assert values == tuple(float(low + k * width * unit) for k in range(count))
    assert all(Decimal(repr(value)) == low + k * width * unit for k, value in enumerate(values))


def test_a_log_grid_keeps_its_ends_and_its_round_values():
    values = parse_values("log:0.02:2:9", "x")
    assert (values[0], values[4], values[-1]) == (0.02, 0.2, 2.0)
    assert parse_values("log:0.001:1000:7", "x") == (0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
    assert max(abs(a / b - 1) for a, b in zip(values, np.logspace(np.log10(0.02), np.log10(2), 9))) < 1e-11


@pytest.mark.parametrize("spec", ["nan:1:3", "0:inf:2", "log:nan:1:3", "0x1:2:2"])
def test_grid_ends_that_are_no_finite_decimal_are_refused(spec):
    from econspin.scenario import ScenarioError

    with pytest.raises(ScenarioError, match="not a"):
        parse_values(spec, "--grid key")


def test_a_sweep_table_and_manifest_hold_the_typed_values(tmp_path):
    out = tmp_path / "sweep"
    result = runner.invoke(app, ["sweep", str(tiny(tmp_path)), "--grid", "populations.ai.temperature=0.01:0.03:3",
                                 "--steps", "2", "--replicas", "1", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(out / "sweep.parquet")
    assert [str(v) for v in sorted(table["populations.ai.temperature"].unique())] == ["0.01", "0.02", "0.03"]
    grid = json.loads((out / "manifest.json").read_text())["grid"]
    assert grid == {"populations.ai.temperature": [0.01, 0.02, 0.03]}
    # every point starts with its initial state: one step-0 row per point and replica
    assert (table["step"] == 0).sum() == 3 and table.groupby("point")["step"].min().eq(0).all()


# --- metrics.parquet starts with the initial state


def test_metrics_start_with_the_initial_state_and_a_resume_keeps_one_such_row(tmp_path):
    out = tmp_path / "run"
    assert runner.invoke(app, ["run", str(tiny(tmp_path)), "--out", str(out), "--quiet"]).exit_code == 0
    metrics = pd.read_parquet(out / "metrics.parquet")
    initial = metrics[metrics["step"] == 0]
    assert initial["replica"].tolist() == [0, 1]
    assert (initial["total_wealth"] == 16.0).all() and (initial["gini"] == 0.0).all()  # 16 agents, equal money
    assert initial[["hhi", "cr4", "attention_entropy", "surplus"]].isna().all().all()  # no round played yet
    assert metrics[metrics["step"] > 0][["hhi", "surplus"]].notna().all().all()
    result = runner.invoke(app, ["run", "--resume", str(out), "--steps", "5", "--quiet"])
    assert result.exit_code == 0, result.output
    resumed = pd.read_parquet(out / "metrics.parquet")
    assert resumed["step"].tolist() == [step for step in range(6) for _ in range(2)]
    assert runner.invoke(app, ["plot", str(out)]).exit_code == 0


# --- files honour the umask


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_written_files_get_the_mode_the_umask_leaves(tmp_path, mask):
    previous = os.umask(mask)
    try:
        write_text(tmp_path / "one.txt", "x")
        out = tmp_path / "run"
        assert runner.invoke(app, ["run", str(tiny(tmp_path)), "--out", str(out), "--quiet"]).exit_code == 0
    finally:
        os.umask(previous)
    files = [tmp_path / "one.txt", *out.iterdir()]
    assert len(files) == 8
    assert {path.name: stat.S_IMODE(path.stat().st_mode) for path in files} == {
        path.name: 0o666 & ~mask for path in files
    }


# --- the command line describes itself


def test_help_shows_flags_as_flags_and_names_the_version():
    for command in ([], ["run"], ["sweep"], ["plot"], ["check"], ["viz"], ["bench"]):
        text = runner.invoke(app, [*command, "--help"]).output
        assert "<bool>" not in text and "[default: False]" not in text, command
    assert "--quiet" in runner.invoke(app, ["sweep", "--help"]).output
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"econspin {econspin.__version__}\n"


def test_the_license_is_an_spdx_string_with_a_setuptools_that_reads_it():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "MIT"  # a table is deprecated: pip warns on every install
    assert "setuptools>=77" in project["build-system"]["requires"]  # PEP 639 strings from 77 on


# --- progress without a terminal


def test_plain_progress_writes_a_line_per_interval_with_rounds_and_rate():
    now = [0.0]
    lines = []
    progress = PlainProgress(10, "demo", lines.append, interval=5.0, clock=lambda: now[0])
    for _ in range(10):
        now[0] += 2.0  # 2 s per round: a line after rounds 3, 6 and 9
        progress(0)
    assert lines == [
        "demo: 3/10 rounds, 0.5 rounds/s, about 14 s left",
        "demo: 6/10 rounds, 0.5 rounds/s, about 8 s left",
        "demo: 9/10 rounds, 0.5 rounds/s, about 2 s left",
    ]


def test_a_run_whose_stderr_is_a_pipe_prints_plain_progress_lines(tmp_path):
    environment = {**os.environ, "ECONSPIN_PROGRESS_SECONDS": "0", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "econspin.cli", "run", str(tiny(tmp_path)), "--out", str(tmp_path / "r")]
    finished = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=120)
    assert finished.returncode == 0, finished.stderr
    progress = [line for line in finished.stderr.splitlines() if " rounds/s" in line and "/3 rounds" in line]
    assert [line.split(",")[0] for line in progress] == ["tiny: 1/3 rounds", "tiny: 2/3 rounds", "tiny: 3/3 rounds"]
    assert "\x1b[" not in finished.stderr and "\r" not in finished.stderr  # no terminal codes in a log


def test_a_progress_interval_that_is_no_number_is_named_and_skipped(monkeypatch, tmp_path):
    monkeypatch.setenv("ECONSPIN_PROGRESS_SECONDS", "soon")
    result = runner.invoke(app, ["run", str(tiny(tmp_path)), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "warning: ECONSPIN_PROGRESS_SECONDS='soon' is not a number of seconds >= 0; using 5" in result.output
