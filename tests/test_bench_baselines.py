"""`econspin bench`'s baselines (econspin.bench_baselines): what each section measures, never its timings."""

import json

import pytest
import torch
from typer.testing import CliRunner

from econspin import allocator, bench_baselines
from econspin.bench_baselines import (
    SECTIONS,
    baseline_tables,
    boltzmann_rows,
    floor_rows,
    memory_probe,
    memory_rows,
    parse_sections,
    reference_rows,
    sweep_rows,
)
from econspin.cli import app

CPU = torch.device("cpu")
RATE_FIELDS = {
    "agents",
    "batch",
    "repeats",
    "mesa_ms",
    "engine_ms",
    "mesa_agent_steps_per_s",
    "engine_agent_steps_per_s",
    "ratio",
}


def check_rates(rows, shapes):
    assert [(row["agents"], row["batch"]) for row in rows] == list(shapes)
    for row in rows:
        assert set(row) == RATE_FIELDS
        assert row["mesa_ms"] > 0 and row["engine_ms"] > 0
        # agent-steps per second and the ratio per economy follow from the two times
        assert row["mesa_agent_steps_per_s"] == pytest.approx(row["agents"] / row["mesa_ms"] * 1e3)
        assert row["engine_agent_steps_per_s"] == pytest.approx(row["agents"] * row["batch"] / row["engine_ms"] * 1e3)
        assert row["ratio"] == pytest.approx(row["engine_agent_steps_per_s"] / row["mesa_agent_steps_per_s"])


def test_reference_and_boltzmann_sections():
    check_rates(reference_rows(CPU, 1, "cpu", ((24, 1), (16, 3))), ((24, 1), (16, 3)))
    check_rates(boltzmann_rows(CPU, 1, "cpu", (300,)), ((300, 1),))


def test_sections_that_need_mesa_say_so_without_it(monkeypatch):
    monkeypatch.setattr(bench_baselines, "_has_mesa", lambda: False)
    result = {"reference": reference_rows(CPU, 1, "cpu", ((24, 1),)), "boltzmann": boltzmann_rows(CPU, 1, "cpu", (9,))}
    assert result["reference"] == result["boltzmann"] == [{"skipped": bench_baselines.MESA_MISSING}]
    assert len(baseline_tables(result)) == 2


def test_sweep_section_runs_every_point_both_ways():
    (row,) = sweep_rows(CPU, 1, "cpu", rounds=2, agents=10)
    assert row["points"] == 64 and row["rounds"] == 2 and row["one_batch"]
    assert row["ratio"] == pytest.approx(row["one_by_one_ms"] / row["batched_ms"])


def test_memory_of_a_round():
    """In this process (a probe) and in a fresh one (the section): the round's peak above what is held."""
    probe = memory_probe("uniform", 5000, 2, "cpu")
    assert probe["held_mb"] > 0 and probe["round_peak_mb"] >= 0 and probe["method"]
    (row,) = memory_rows(CPU, (("fused", 64, 2),))
    assert row["kernel"] == "fused" and row["pairs"] == 2 * 64**2 and "error" not in row, row
    assert row["held_mb"] > 0 and row["round_peak_mb"] >= 0


def test_the_memory_sections_fresh_process_keeps_freed_memory_as_this_one_does(monkeypatch):
    """The probe's process takes the setting where this one asked (the command's --no-keep-memory)."""
    for asked in (False, True):
        monkeypatch.setattr(allocator, "_asked", asked)
        (row,) = memory_rows(CPU, (("fused", 32, 1),))
        assert "error" not in row, row
        assert row["keep_freed_memory"] is (asked and allocator.glibc() is not None)


def test_floor_section_skips_what_does_not_fit():
    rows = floor_rows(CPU, 1, "cpu", (32, 48), (1, 2), entries=2 * 48**2)
    assert [(row["agents"], row["batch"]) for row in rows] == [(32, 1), (32, 2), (48, 1), (48, 2)]
    assert floor_rows(CPU, 1, "cpu", (80,), (1,), entries=2 * 48**2) == []  # 80^2 scores: too many
    rows = floor_rows(CPU, 1, "cpu", (32,), (1,), entries=2**20)
    assert rows[0]["ratio"] == pytest.approx(rows[0]["materialised_ms"] / rows[0]["sdpa_ms"])


def test_sections_by_name():
    assert parse_sections(None) == parse_sections("all") == SECTIONS
    assert parse_sections("none") == ()
    assert parse_sections("memory, floors") == ("memory", "floors")
    with pytest.raises(ValueError, match="unknown mesa"):
        parse_sections("floors,mesa")


def test_cli_writes_the_sections_and_refuses_unknown_ones(tmp_path):
    runner = CliRunner()
    out = tmp_path / "bench.json"
    arguments = ["bench", "--quick", "--sizes", "32", "--batches", "1", "--repeats", "1", "--threads", "1"]
    result = runner.invoke(app, [*arguments, "--baselines", "boltzmann,floors", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "Boltzmann" in result.output and "materialised" in result.output
    written = json.loads(out.read_text())
    assert [row["agents"] for row in written["boltzmann"]] == [1000] and written["floors"][0]["agents"] == 32
    assert "reference" not in written and "sweep" not in written
    refused = runner.invoke(app, [*arguments, "--baselines", "mesa"])
    assert refused.exit_code == 2 and "--baselines 'mesa'" in refused.output
