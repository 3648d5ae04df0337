"""The record of a sweep's finished work: what lets a resume or a re-run skip the shards already done.

Every sweep, whichever backend runs it (``--backend local`` or ``ray``), keeps in ``shards/``
of its output folder:

- ``sweep.json``: the sweep's own definition: the resolved scenario (seed, steps, replicas and
  dtype included), the grid, ``--points-per-shard`` and the shard plan (each shard's
  (point, replica) elements);
- ``<shard name>.parquet``: a finished shard's table, written atomically the moment it is done,
  with the device it ran on in the table's ``attrs``.

A resume or a re-run with the same definition skips every shard whose table is there, on
either backend: a folder one backend began, the other can finish. A record of another sweep is
refused, naming the first key that differs, and a record of this sweep cut into other shards
(another ``--points-per-shard``) is refused naming both plans, so two sweeps, or two cuts of
one, are never mixed in one table. ``sweep --resume`` keeps the plan the record holds.

The record is kept apart from ``manifest.json`` (the command's provenance), and kept after the
sweep completes: the same command again rewrites the folder from it without running a shard.
Folders of econspin versions that kept the local backend's finished batches in ``batches/``
are refused in one line, naming the folder to delete.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import yaml

from econspin.output import SHARDS_FOLDER, SWEEP_BATCHES, write_json, write_table
from econspin.scenario import Scenario, ScenarioError
from econspin.sweep import Grid, Shard

DEFINITION_FILE = "sweep.json"
# settings of one invocation, not of the computation: the kind of device is checked on its own
# (econspin.fingerprint.refuse_another_device), and a resume may name it as auto or as cpu
INVOCATION_KEYS = ("run.device",)
NOT_RECORDED = object()  # recorded_points_per_shard of a folder without a record


def sweep_definition(scenario: Scenario, grids: list[Grid], points_per_shard: int | None, shards: list[Shard]) -> dict:
    """What makes two sweeps the same, as JSON-ready data (tuples read back as lists)."""
    definition = {
        "scenario": yaml.safe_load(scenario.to_yaml()),
        "grid": {grid.key: list(grid.values) for grid in grids},
        "points_per_shard": points_per_shard,
        "shards": {shard.name: [list(element) for element in shard.elements] for shard in shards},
    }
    return json.loads(json.dumps(definition))


def first_difference(there, here, path: str = "") -> tuple[str, object, object] | None:
    """The first key path at which two JSON values differ, with both values; None if equal."""
    if isinstance(there, dict) and isinstance(here, dict):
        for key in list(there) + [key for key in here if key not in there]:
            found = first_difference(there.get(key), here.get(key), f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
        return None
    return None if there == here else (path, there, here)


def read_definition(folder: Path, option: str = "--out") -> dict | None:
    """The definition a sweep folder's record holds; None without a record.

    Raises ScenarioError (one line) for a record that cannot be read, and for a folder of the
    older ``batches/`` record.
    """
    folder = Path(folder)
    if (folder / SWEEP_BATCHES).is_dir():
        raise ScenarioError(
            f"{option} {folder}: keeps its finished batches in {SWEEP_BATCHES}/, the record of an older "
            f"econspin, which this one does not read; delete {folder / SWEEP_BATCHES} to run them again "
            "(to the same numbers), or choose another folder"
        )
    path = folder / SHARDS_FOLDER / DEFINITION_FILE
    if not path.exists():
        return None
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ScenarioError(f"{option} {folder}: {path} is not a sweep record ({error})") from None
    if not isinstance(recorded, dict) or not isinstance(recorded.get("shards"), dict):
        raise ScenarioError(f"{option} {folder}: {path} is not a sweep record (no shard plan)")
    return recorded


def recorded_points_per_shard(folder: Path, option: str = "--resume"):
    """The ``--points-per-shard`` a folder's record was cut with (None: whole batches), or NOT_RECORDED."""
    recorded = read_definition(folder, option)
    return NOT_RECORDED if recorded is None else recorded.get("points_per_shard")


def plan_words(definition: dict) -> str:
    """'3 shards of at most 2 points' or '1 shard of whole batches'."""
    count = len(definition["shards"])
    cut = definition.get("points_per_shard")
    size = "whole batches" if cut is None else f"at most {cut} point{'s' if cut != 1 else ''}"
    return f"{count} shard{'s' if count != 1 else ''} of {size}"


class ShardRecord:
    """The ``shards/`` folder of one sweep's output folder."""

    def __init__(self, folder: Path, definition: dict):
        self.folder = Path(folder) / SHARDS_FOLDER
        self.definition = definition

    def refuse_another(self, option: str = "--out", resuming: bool = False) -> None:
        """Refuse (ScenarioError) a record of another sweep, or of this one cut otherwise; write nothing.

        A record of this very plan is taken as the definition: two ``--points-per-shard`` that
        cut the same shards are one sweep, and what the folder says of it (``sweep.json`` and
        the manifest's ``points_per_shard``) stays what its first command recorded.
        """
        output = self.folder.parent
        recorded = read_definition(output, option)
        if recorded is None:
            return
        there, here = _compared(recorded), _compared(self.definition)
        difference = first_difference(there, here)
        if difference is not None:
            key, before, after = difference
            key = key.replace("grid.", "--grid ", 1).replace("scenario.", "", 1)
            raise ScenarioError(
                f"{option} {output}: holds a different sweep ({key}: {_shown(before)} there, "
                f"{_shown(after)} here); choose another {option} or delete {self.folder} to start over"
            )
        if recorded["shards"] != self.definition["shards"]:
            go_on = (
                "resume without --points-per-shard to go on with its shards"
                if resuming
                else f"continue it with econspin sweep --resume {output} (which keeps its shards)"
            )
            raise ScenarioError(
                f"{option} {output}: holds this sweep cut into {plan_words(recorded)}, not into "
                f"{plan_words(self.definition)} (--points-per-shard); {go_on}, or delete {self.folder} to start over"
            )
        self.definition = recorded

    def claim(self) -> None:
        """Record the definition (kept as it is if the folder already holds this sweep)."""
        path = self.folder / DEFINITION_FILE
        if not path.exists():
            write_json(path, self.definition)

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.parquet"

    def finished(self) -> set[str]:
        """Names of the shards whose tables are recorded."""
        return {name for name in self.definition["shards"] if self.path(name).exists()}

    def to_run(self, shards: list[Shard], say: Callable[[str], None]) -> list[Shard]:
        """The shards not recorded, in plan order; ``say`` is told how many are finished already."""
        finished = self.finished()
        todo = [shard for shard in shards if shard.name not in finished]
        if finished:
            say(f"{len(finished)} of {len(shards)} shards are finished in {self.folder}; {len(todo)} to run")
        return todo

    def save(self, name: str, table: pd.DataFrame) -> None:
        write_table(self.path(name), table)

    def load(self, name: str) -> pd.DataFrame:
        return pd.read_parquet(self.path(name))


def mark_device(table: pd.DataFrame, device: str) -> pd.DataFrame:
    """The table, with the device a shard ran on (``device`` resolved here) in its ``attrs``."""
    import torch

    from econspin.economy import resolve_device

    resolved = resolve_device(device)
    table.attrs["device"] = str(resolved)
    table.attrs["device_name"] = (
        torch.cuda.get_device_name(resolved) if resolved.type == "cuda" else platform.processor() or "cpu"
    )
    return table


def shard_facts(tables: list[pd.DataFrame], record: ShardRecord, skipped: int) -> dict:
    """What the manifest says of a sweep's shards: the devices they ran on, how many, how cut."""
    devices = sorted({table.attrs.get("device", "unknown") for table in tables})
    names = sorted({table.attrs.get("device_name", "unknown") for table in tables})
    return {
        "device": ", ".join(devices),
        "device_name": ", ".join(names),
        "shards": len(tables),
        "shards_skipped": skipped,
        "points_per_shard": record.definition["points_per_shard"],
    }


def _compared(definition: dict) -> dict:
    """The scenario and grid of a definition, without the settings of one invocation."""
    scenario = json.loads(json.dumps(definition.get("scenario")))
    for key in INVOCATION_KEYS:
        section, name = key.split(".")
        if isinstance(scenario, dict) and isinstance(scenario.get(section), dict):
            scenario[section].pop(name, None)
    return {"scenario": scenario, "grid": definition.get("grid")}


def _shown(value, longest: int = 60) -> str:
    text = "absent" if value is None else json.dumps(value)
    return text if len(text) <= longest else text[: longest - 3] + "..."
