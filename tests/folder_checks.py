"""What every run or sweep folder must satisfy, after any command, interrupted or not.

A folder is either complete (its manifest says so, and every file describes the last round)
or incomplete (a command is running or was killed): then its manifest, scenario.yaml,
checkpoint and tables describe one computation, every table is whole (files are renamed into
place), and the checkpoint never follows metrics rows that were not written. A sweep's record
of finished shards (``shards/``) holds the plan the folder's sweep cuts, and only whole shards.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch
import yaml

from econspin.fingerprint import scenario_digest
from econspin.output import (
    CHECKPOINT_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    SCENARIO_FILE,
    SHARDS_FOLDER,
    SWEEP_FILE,
    WEALTH_FILE,
)
from econspin.scenario import Scenario
from econspin.shard_record import DEFINITION_FILE
from econspin.sweep import Grid, plan_shards, sweep_points


def written(folder: Path) -> list[str]:
    """The names in a folder, temporary leftovers of a killed write aside."""
    return sorted(p.name for p in folder.iterdir() if not (p.name.startswith(".") and p.name.endswith(".tmp")))


def every_table_is_whole(folder: Path) -> None:
    for path in folder.rglob("*.parquet"):
        pd.read_parquet(path)  # a half-written table raises here


def scenario_of(folder: Path) -> Scenario:
    return Scenario.from_dict(yaml.safe_load((folder / SCENARIO_FILE).read_text()))


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def assert_run_folder_consistent(folder: Path) -> str:
    """Check a run folder; return its state: "absent", "started" (nothing to resume yet), "incomplete" or "complete"."""
    if not folder.exists() or not written(folder):
        return "absent"
    every_table_is_whole(folder)
    manifest = read_json(folder / MANIFEST_FILE)  # the first file a run writes
    recorded = manifest["fingerprint"]
    assert recorded["kind"] == "run"
    if not (folder / SCENARIO_FILE).exists():
        assert written(folder) == [MANIFEST_FILE], written(folder)
        return "started"
    scenario = scenario_of(folder)
    assert recorded["scenario"] == scenario_digest(scenario) and recorded["steps"] == scenario.run.steps
    if not (folder / CHECKPOINT_FILE).exists():
        assert manifest["status"] == "incomplete" and METRICS_FILE not in written(folder)
        return "started"
    checkpoint = torch.load(folder / CHECKPOINT_FILE, weights_only=True)
    assert {k: v for k, v in checkpoint["fingerprint"].items() if k != "steps"} == {
        k: v for k, v in recorded.items() if k != "steps"
    }
    done, rows, replicas = checkpoint["round"], checkpoint["metrics_rows"], scenario.run.replicas
    # the round-0 checkpoint comes before any metrics; later ones follow steps 0..done
    assert 0 <= done <= scenario.run.steps and rows == (done + 1) * replicas * (done > 0)
    metrics = pd.read_parquet(folder / METRICS_FILE) if rows else pd.DataFrame({"step": []})
    assert len(metrics) >= rows  # rows after the checkpoint are rounds a resume plays again
    expected_steps = [step for step in range(0, done + 1) for _ in range(replicas)] if done else []
    assert metrics["step"].iloc[:rows].tolist() == expected_steps
    if manifest["status"] == "incomplete":
        return "incomplete"
    assert manifest["status"] == "complete" and done == scenario.run.steps and len(metrics) == rows
    wealth = pd.read_parquet(folder / WEALTH_FILE)
    assert wealth["money"].to_numpy().tolist() == checkpoint["tensors"]["money"].reshape(-1).tolist()
    assert {"concentration.png", "wealth.png"} <= set(written(folder))
    return "complete"


def sweep_plan(folder: Path):
    """The scenario and points a sweep folder's scenario.yaml and manifest describe."""
    recorded = read_json(folder / MANIFEST_FILE)["fingerprint"]
    base = scenario_of(folder)
    points = sweep_points(base, [Grid(key, tuple(values)) for key, values in recorded["grid"].items()])
    return base, points


def assert_shard_record_consistent(folder: Path, base: Scenario, points: list) -> set[str]:
    """The record holds the plan of this sweep and whole shards of it; the names of the finished shards."""
    record = folder / SHARDS_FOLDER
    if not (record / DEFINITION_FILE).exists():  # claimed before the first shard is saved
        assert not record.exists() or not list(record.glob("*.parquet")), written(record)
        return set()
    definition = read_json(record / DEFINITION_FILE)
    shards = plan_shards(points, base.run.replicas, base.run.dtype, definition["points_per_shard"])
    assert definition["shards"] == {shard.name: [list(element) for element in shard.elements] for shard in shards}
    finished = set()
    for path in sorted(record.glob("*.parquet")):
        elements = definition["shards"][path.stem]
        table = pd.read_parquet(path)
        assert sorted(set(zip(table["point"], table["replica"]))) == sorted(map(tuple, elements))
        assert len(table) == len(elements) * (base.run.steps + 1)  # step 0 too
        finished.add(path.stem)
    return finished


def assert_sweep_folder_consistent(folder: Path) -> str:
    """Check a sweep folder; return "absent", "started", "incomplete" or "complete"."""
    if not folder.exists() or not written(folder):
        return "absent"
    every_table_is_whole(folder)
    manifest = read_json(folder / MANIFEST_FILE)
    recorded = manifest["fingerprint"]
    assert recorded["kind"] == "sweep"
    if not (folder / SCENARIO_FILE).exists():
        assert written(folder) == [MANIFEST_FILE], written(folder)
        return "started"
    base, points = sweep_plan(folder)
    assert recorded["scenario"] == scenario_digest(base)
    finished = assert_shard_record_consistent(folder, base, points)
    if manifest["status"] == "incomplete":
        assert SWEEP_FILE not in written(folder) or len(pd.read_parquet(folder / SWEEP_FILE)) == (
            len(points) * base.run.replicas * (base.run.steps + 1)
        )
        return "incomplete"
    table = pd.read_parquet(folder / SWEEP_FILE)
    assert len(table) == len(points) * base.run.replicas * (base.run.steps + 1)
    assert {"phase.png", "concentration.png"} <= set(written(folder))
    assert len(finished) == manifest["shards"]  # the record is kept whole: the same command again runs nothing
    # one definition of the cut: the manifest says what the record holds
    assert manifest["points_per_shard"] == read_json(folder / SHARDS_FOLDER / DEFINITION_FILE)["points_per_shard"]
    return "complete"
