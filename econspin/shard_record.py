"""The finished-shards record of a sweep folder: what lets a re-run skip the work already done.

A sweep run shard by shard (``econspin sweep --backend ray``) keeps, in ``shards/`` of its
output folder:

- ``sweep.json``: the sweep's own definition: the resolved scenario (seed, steps, replicas,
  device and dtype included), the grid and the shard plan (each shard's (point, replica)
  elements);
- ``<shard name>.parquet``: a finished shard's table, written atomically the moment it arrives.

A re-run with the same definition skips every shard whose table is there. A folder whose record
holds another definition is refused, naming the first key that differs, so two sweeps are never
mixed in one table. The record is kept apart from ``manifest.json`` (the run's provenance).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

from econspin.output import SHARDS_FOLDER, write_json, write_table
from econspin.scenario import Scenario, ScenarioError
from econspin.sweep import Grid, Shard

DEFINITION_FILE = "sweep.json"


def sweep_definition(
    scenario: Scenario, grids: list[Grid], points_per_shard: int | None, shards: list[Shard]
) -> dict:
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


class ShardRecord:
    """The ``shards/`` folder of one sweep's output folder."""

    def __init__(self, folder: Path, definition: dict):
        self.folder = Path(folder) / SHARDS_FOLDER
        self.definition = definition

    def refuse_another(self, option: str = "--out") -> None:
        """Refuse (ScenarioError) a folder whose record holds another sweep; write nothing."""
        path = self.folder / DEFINITION_FILE
        if not path.exists():
            return
        try:
            recorded = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ScenarioError(f"{option} {self.folder.parent}: {path} is not a sweep record ({error})") from None
        difference = first_difference(recorded, self.definition)
        if difference is not None:
            key, there, here = difference
            key = key.replace("grid.", "--grid ", 1).replace("scenario.", "", 1)
            key = key.replace("points_per_shard", "--points-per-shard")
            raise ScenarioError(
                f"{option} {self.folder.parent}: holds a different sweep ({key}: {_shown(there)} there, "
                f"{_shown(here)} here); choose another {option} or delete {self.folder} to start over"
            )

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

    def save(self, name: str, table: pd.DataFrame) -> None:
        write_table(self.path(name), table)

    def load(self, name: str) -> pd.DataFrame:
        return pd.read_parquet(self.path(name))


def _shown(value, longest: int = 60) -> str:
    text = "absent" if value is None else json.dumps(value)
    return text if len(text) <= longest else text[: longest - 3] + "..."
