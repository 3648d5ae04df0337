"""What an output folder holds, so that two computations are never mixed in one folder.

This module holds the fingerprint and the checks made on a folder before a command writes
in it: ``--out`` into a folder of something else, ``--resume`` from a checkpoint of another
scenario. The shards an interrupted sweep already finished are recorded and checked by
:mod:`econspin.shard_record`.

Every folder a run or a sweep writes records a fingerprint of what decides its numbers (in
``manifest.json``, and in every checkpoint): a digest of the validated scenario with every
default filled in, a digest of every file it reads (network, couplings, weights), the
options (steps, replicas, seed, the grid, the ``--set`` overrides as typed) and the econspin
and torch versions. Two commands whose fingerprints agree compute
the same numbers. A command whose fingerprint differs from the folder's is refused, naming
what differs, unless ``--force`` asks to replace the folder's econspin outputs (files that
econspin did not write are never touched).

The overrides are kept for the record only: the scenario digest already holds their effect,
and the same scenario reached through a file edit or through ``--set`` is the same run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml

import econspin
from econspin.economy import resolve_device
from econspin.output import (
    CHECKPOINT_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    SCENARIO_FILE,
    SHARDS_FOLDER,
    SWEEP_BATCHES,
    SWEEP_FILE,
    WEALTH_FILE,
    CheckpointError,
    checkpoint_record,
)
from econspin.scenario import Scenario, ScenarioError

# Every name an econspin command writes in its folder; --force removes these and nothing else.
OUTPUTS = (
    MANIFEST_FILE,  # first, so that a folder half cleared is never taken for the old computation
    SCENARIO_FILE,
    METRICS_FILE,
    WEALTH_FILE,
    CHECKPOINT_FILE,
    SWEEP_FILE,
    SWEEP_BATCHES,
    SHARDS_FOLDER,
    "concentration.png",
    "wealth.png",
    "phase.png",
)

# run settings that belong to one invocation, not to the computation: a resumed run asks for
# more rounds, and auto and cpu name one device (a checkpoint records the kind it continues on)
INVOCATION_SETTINGS = ("steps", "device")

# fingerprint entries that decide the numbers (the overrides are a record of how they were typed)
COMPARED = ("kind", "scenario", "steps", "grid", "files", "econspin", "torch")

KIND_WORDS = {"run": "a run", "sweep": "a sweep"}


def comparable_scenario(scenario: Scenario | dict) -> dict:
    """The resolved scenario as plain data, without the settings of one invocation."""
    data = scenario.model_dump() if isinstance(scenario, Scenario) else dict(scenario)
    data = json.loads(json.dumps(data, default=str))  # tuples as lists, as a YAML or JSON reader sees them
    data["run"] = {key: value for key, value in data.get("run", {}).items() if key not in INVOCATION_SETTINGS}
    return data


def scenario_digest(scenario: Scenario | dict) -> str:
    """SHA-256 of the comparable scenario, keys sorted (the same for equal scenarios, however written)."""
    text = json.dumps(comparable_scenario(scenario), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def fingerprint(kind: str, scenario: Scenario, overrides: dict | None = None, grid: dict | None = None) -> dict:
    """What decides the numbers of a ``kind`` ("run" or "sweep") output, as JSON-ready data."""
    return {
        "kind": kind,
        "scenario": scenario_digest(scenario),
        "steps": scenario.run.steps,
        "replicas": scenario.run.replicas,
        "seed": scenario.run.seed,
        "grid": {key: list(values) for key, values in grid.items()} if grid else None,
        "overrides": dict(overrides or {}),
        "files": file_digests(scenario),
        "econspin": econspin.__version__,
        "torch": str(torch.__version__),  # a str subclass, which a weights-only checkpoint cannot hold
    }


def file_digests(scenario: Scenario) -> dict[str, str]:
    """SHA-256 of every file the scenario reads (network, couplings, weights), by key path.

    The scenario names a file by its path; what decides the numbers is what the file holds.
    """
    named = {}
    if scenario.market.network is not None and scenario.market.network.edge_list:
        named["market.network.edge_list"] = scenario.market.network.edge_list
    if scenario.market.couplings is not None and scenario.market.couplings.file:
        named["market.couplings.file"] = scenario.market.couplings.file
    for name, population in scenario.populations.items():
        if population.correction.weights:
            named[f"populations.{name}.correction.weights"] = population.correction.weights
    digests = {}
    for key, path in named.items():
        try:
            digests[key] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except OSError as error:
            raise ScenarioError(f"{key}: cannot read {path}: {error.strerror or error}") from None
    return digests


def differences(
    recorded: dict,
    current: dict,
    recorded_scenario: dict | None,
    scenario: Scenario,
    ignore: tuple = (),
    places: tuple[str, str] = ("there", "here"),
) -> list[str]:
    """What differs between two fingerprints, in words (``places`` name where each value is found).

    A different scenario digest is spelt out as the scenario keys that differ, when the recorded
    scenario is at hand.
    """
    there, here = places
    found = []
    for key in COMPARED:
        if key in ignore or recorded.get(key) == current.get(key):
            continue
        if key == "scenario" and recorded_scenario is not None:
            keys = scenario_differences(recorded_scenario, scenario, places)
            found.extend(keys or ["the scenario"])
        elif key == "scenario":
            found.append("the scenario")
        elif key == "files":
            before, after = recorded.get("files") or {}, current.get("files") or {}
            changed = sorted(name for name in set(before) | set(after) if before.get(name) != after.get(name))
            found.extend(f"the contents of {name}" for name in changed)
        else:
            found.append(f"{key} {_shown(recorded.get(key))} {there}, {_shown(current.get(key))} {here}")
    return found


def scenario_differences(recorded: dict, scenario: Scenario, places: tuple[str, str] = ("there", "here")) -> list[str]:
    """The key paths whose values differ, with both values."""
    before, after = _flat(comparable_scenario(recorded)), _flat(comparable_scenario(scenario))
    return [
        f"{key} {_shown(before.get(key))} {places[0]}, {_shown(after.get(key))} {places[1]}"
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    ]


def in_words(found: list[str], most: int = 3) -> str:
    """At most ``most`` differences, and how many more."""
    more = f" and {len(found) - most} more" if len(found) > most else ""
    return "; ".join(found[:most]) + more


def read_manifest(folder: Path) -> dict | None:
    """The folder's manifest, or None without a readable one."""
    try:
        data = json.loads((Path(folder) / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_scenario_data(folder: Path) -> dict | None:
    """The folder's scenario.yaml as plain data, or None without a readable one."""
    try:
        data = yaml.safe_load((Path(folder) / SCENARIO_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def held_outputs(folder: Path) -> tuple[list[str], list[str]]:
    """The econspin outputs in ``folder`` and the other names there (temporary leftovers in neither)."""
    folder = Path(folder)
    if not folder.is_dir():
        return [], []
    ours, others = [], []
    for entry in sorted(folder.iterdir()):
        if _is_leftover(entry):
            continue
        (ours if entry.name in OUTPUTS else others).append(entry.name)
    return ours, others


def check_folder(folder: Path, current: dict, scenario: Scenario, option: str, force: bool) -> None:
    """Refuse (ScenarioError, one line) to write ``current``'s outputs into a folder of something else.

    An empty or missing folder, or one holding the outputs of the same fingerprint (the same
    command again: it starts over), is accepted. Anything else needs ``force``.
    """
    ours, others = held_outputs(folder)
    if force or not (ours or others):
        return
    what = KIND_WORDS[current["kind"]]
    recorded = (read_manifest(folder) or {}).get("fingerprint")
    if ours and isinstance(recorded, dict):
        found = differences(recorded, current, read_scenario_data(folder), scenario)
        if not found:  # the same command again: it starts over (files beside it stay)
            return
        held = KIND_WORDS.get(recorded.get("kind"), "another output")
        extend = ""
        if found == [f"steps {recorded.get('steps')} there, {current['steps']} here"] and current["kind"] == "run":
            if isinstance(recorded.get("steps"), int) and current["steps"] > recorded["steps"]:
                extend = f"continue it with --resume {folder} --steps {current['steps']}, "
        raise ScenarioError(
            f"{option} {folder}: holds {held} that differs ({in_words(found)}); "
            f"{extend}choose another {option}, or --force to replace its econspin outputs"
        )
    elif ours:
        raise ScenarioError(
            f"{option} {folder}: holds econspin outputs without a fingerprint (written before econspin "
            f"recorded one), so they cannot be told apart from {what}'s; choose another {option}, or --force "
            "to replace them"
        )
    raise ScenarioError(
        f"{option} {folder}: is not empty ({in_words(others)}) and holds no econspin output; choose another "
        f"{option}, or --force to write {what} beside those files"
    )


def clear_outputs(folder: Path, keep: tuple[str, ...] = ()) -> None:
    """Remove the econspin outputs but ``keep``, and temporary leftovers, in ``folder``; the manifest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for name in OUTPUTS:
        if name in keep:
            continue
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    remove_leftovers(folder)


def remove_leftovers(folder: Path) -> None:
    """Temporary files a killed command left (never renamed into place)."""
    for entry in Path(folder).glob(".*.tmp"):
        if _is_leftover(entry):
            entry.unlink(missing_ok=True)


def _is_leftover(entry: Path) -> bool:
    """A temporary file of :func:`econspin.output.write_atomically` (``.name.random.tmp``)."""
    return entry.name.startswith(".") and entry.name.endswith(".tmp") and entry.is_file()


def _flat(data: Any, prefix: str = "") -> dict:
    if isinstance(data, dict):
        flat = {}
        for key, value in data.items():
            flat.update(_flat(value, f"{prefix}{key}."))
        return flat or {prefix[:-1]: {}}
    return {prefix[:-1]: data}


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def recorded_fingerprint(folder: Path, kind: str, option: str = "--resume") -> dict:
    """The fingerprint a folder's manifest records, refusing (one line) a folder without one or of another kind."""
    manifest = read_manifest(folder)
    if manifest is None:
        raise ScenarioError(f"{option} {folder}: not a {kind} folder (no readable {MANIFEST_FILE})")
    recorded = manifest.get("fingerprint")
    if not isinstance(recorded, dict):
        raise ScenarioError(
            f"{option} {folder}: written without a fingerprint (by econspin {manifest.get('econspin', 'before 0.1')}),"
            f" so it cannot be checked that its files belong together; run it again into a new folder"
        )
    if recorded.get("kind") != kind:
        held = recorded.get("kind")
        raise ScenarioError(
            f"{option} {folder}: is {KIND_WORDS.get(held, 'another')} folder; continue it with econspin {held} --resume"
        )
    return recorded


def refuse_differences(folder: Path, found: list[str], what: str) -> None:
    """One line naming what differs (``what`` says between what), before anything is written."""
    if found:
        raise ScenarioError(f"--resume {folder}: {what}: {in_words(found)}; run it again into a new folder")


def resumable_checkpoint(folder: Path, recorded: dict, current: dict, scenario: Scenario) -> dict | None:
    """The record of the checkpoint a resume continues from (None: none yet, start at round 0).

    Refused in one line: a checkpoint of another scenario, options or versions than the
    folder's scenario.yaml and this econspin, and a new total below the rounds already done.
    """
    if not (folder / CHECKPOINT_FILE).exists():  # stopped before its first checkpoint
        found = differences(recorded, current, None, scenario, ("steps",), ("in its manifest", "now"))
        refuse_differences(folder, found, f"its {MANIFEST_FILE} does not describe {SCENARIO_FILE} and this econspin")
        return None
    record = checkpoint_record(folder / CHECKPOINT_FILE)
    made = record.get("fingerprint")
    if not isinstance(made, dict):
        raise ScenarioError(
            f"--resume {folder}: {CHECKPOINT_FILE} was written without a fingerprint, so it cannot be checked "
            f"against {SCENARIO_FILE}; run it again into a new folder"
        )
    places = ("in the checkpoint", "now")
    found = differences(made, current, record.get("scenario"), scenario, ("steps",), places)
    refuse_differences(folder, found, f"its {CHECKPOINT_FILE} was made by another computation")
    done = int(record["round"])
    if scenario.run.steps < done:
        raise ScenarioError(
            f"--steps {scenario.run.steps}: {folder} holds {done} rounds already and --steps with --resume is the new "
            f"total; to keep only the first {scenario.run.steps} rounds, run the scenario again into a new folder "
            "(the rounds are the same)"
        )
    return record


def finished(folder: Path, steps: int) -> bool:
    """Whether the folder's manifest records a complete run of ``steps`` rounds."""
    recorded = read_manifest(folder) or {}
    return recorded.get("status") == "complete" and recorded.get("fingerprint", {}).get("steps") == steps


def resumed_metrics(folder: Path, rows: int) -> pd.DataFrame:
    """The metrics rows a checkpoint follows (rows after it are played again)."""
    if rows == 0:
        return pd.DataFrame()
    try:
        table = pd.read_parquet(folder / METRICS_FILE)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{folder / METRICS_FILE}: cannot read ({type(error).__name__}); run it again") from None
    if len(table) < rows:
        raise CheckpointError(
            f"{folder / METRICS_FILE}: holds {len(table)} rows but {CHECKPOINT_FILE} follows {rows}; "
            "the folder was changed by hand: run it again"
        )
    return table.iloc[:rows]


def forget_final_files(folder: Path, names: tuple[str, ...]) -> None:
    """Remove files that describe a finished command, before the folder changes under them."""
    for name in names:
        (folder / name).unlink(missing_ok=True)
    remove_leftovers(folder)
    if (folder / SHARDS_FOLDER).is_dir():
        remove_leftovers(folder / SHARDS_FOLDER)


def refuse_another_device(folder: Path, device: str) -> None:
    """A sweep's finished shards are continued only on the kind of device that ran them (bit for bit)."""
    made_on = str((read_manifest(folder) or {}).get("device", "")).split(":")[0]
    here = resolve_device(device).type
    if made_on and made_on != here:
        raise ScenarioError(
            f"--resume {folder}: its shards were run on {made_on} and continue bit for bit only there; "
            f"resume with --device {made_on} (this sweep would use {here})"
        )
