"""The run folder: what a run or a sweep leaves on disk, written atomically.

Every file is written under a temporary name in the same folder and renamed into place, so a
reader (or a run killed half-way) only ever sees complete files. A run folder holds:

- ``scenario.yaml``: the resolved scenario, every default filled in;
- ``metrics.parquet``: one row per replica per round, step 0 (the initial state) first
  (step, replica, metrics...);
- ``wealth.parquet``: final money per agent (replica, agent, population, money);
- ``manifest.json``: the fingerprint (:mod:`econspin.fingerprint`), whether the output is
  complete, versions, device, seed, wall time, rounds per second;
- ``checkpoint.pt``: the state after the last recorded round, enough to resume;
- the figures (``concentration.png``, ``wealth.png``), drawn from the tables only.

A sweep folder holds ``sweep.parquet`` and ``phase.png`` instead of the run's tables, and
while it runs, ``batches/``: one finished batch a file, what ``sweep --resume`` keeps.
"""

from __future__ import annotations

import io
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

import econspin
from econspin.scenario import ScenarioError
from econspin.state import State

SCENARIO_FILE = "scenario.yaml"
METRICS_FILE = "metrics.parquet"
WEALTH_FILE = "wealth.parquet"
MANIFEST_FILE = "manifest.json"
CHECKPOINT_FILE = "checkpoint.pt"
SWEEP_FILE = "sweep.parquet"
SWEEP_BATCHES = "batches"  # an older econspin's record of a local sweep's batches: refused, removed by --force
SHARDS_FOLDER = "shards"  # a sweep's finished shards and its definition, either backend (econspin.shard_record)


def check_writable(path: Path, option: str, folder: bool) -> None:
    """Refuse (ScenarioError) an output ``path`` that cannot be written, before any work starts.

    A folder must not be a file; a file must not be a folder; the nearest existing folder
    above must be a folder this process may write in. Nothing is created.
    """
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        wanted, found = ("folder", "file") if folder else ("file", "folder")
        raise ScenarioError(f"{option} {path}: is a {found}, not a {wanted}")
    existing = path if folder else path.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ScenarioError(f"{option} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ScenarioError(f"{option} {path}: cannot write in {existing}")


def write_atomically(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write ``path`` through a temporary file in its folder, then rename it into place."""
    path = Path(path)
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        # mkstemp creates the file private (0600); a file written directly would get 0666 less
        # the umask, so the renamed file gets that too
        os.fchmod(handle, 0o666 & ~current_umask())
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):  # a full disk or a folder made read-only: name the file meant, not the stream
            error.filename = str(path)
        raise


def current_umask() -> int:
    """The process's umask (reading it means setting it: it is put straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(path: Path, text: str) -> None:
    """Atomically write a text file."""
    write_atomically(path, lambda stream: stream.write(text.encode()))


def write_table(path: Path, table: pd.DataFrame) -> None:
    """Atomically write a parquet table."""
    write_atomically(path, lambda stream: table.to_parquet(stream, index=False))


def write_json(path: Path, data: dict) -> None:
    """Atomically write JSON."""
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def save_checkpoint(
    path: Path,
    state: State,
    replicas: list[int],
    metrics_rows: int,
    fingerprint: dict | None = None,
    scenario: dict | None = None,
) -> None:
    """Atomically save a state (on the CPU) with the number of metrics rows it follows.

    The device type the state ran on is recorded: a resumed run continues bit for bit only on
    the same kind of device (the draws are the same anywhere; the floating-point rounding is not).
    So are the run's ``fingerprint`` and resolved ``scenario`` (plain data), so that a resume
    can name what differs between the checkpoint and the scenario it would continue with.
    """
    cpu = state.to("cpu")
    payload = {
        "econspin": econspin.__version__,
        "fingerprint": fingerprint,
        "scenario": scenario,
        "device": state.states.device.type,
        "round": cpu.round,
        "replicas": replicas,
        "metrics_rows": metrics_rows,
        "tensors": {
            name: getattr(cpu, name)
            for name in ("states", "fields", "money", "temperature", "revenue", "spending", "entropy", "surplus")
        },
        "random_keys": cpu.random_keys,
    }
    write_atomically(path, lambda stream: torch.save(payload, stream))


class CheckpointError(ValueError):
    """A checkpoint this version cannot resume."""


def checkpoint_record(path: Path) -> dict:
    """A checkpoint's record without its tensors: round, metrics rows, device, fingerprint, scenario.

    An unreadable file raises CheckpointError (a checkpoint is written atomically, so this is a
    file damaged or replaced by hand, never one cut short by a killed run).
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds for a damaged file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(error).__name__})") from None
    if not isinstance(payload, dict) or "round" not in payload:
        raise CheckpointError(f"{path}: not an econspin checkpoint")
    return {key: value for key, value in payload.items() if key not in ("tensors", "random_keys")}


def load_checkpoint(path: Path, template: State) -> tuple[State, int]:
    """The state saved in ``path``, on ``template``'s device, and its metrics row count.

    The state's random keys are restored with it, so a resumed run draws the numbers the
    uninterrupted run would have drawn. Checkpoints of versions that kept one torch.Generator
    state per element (``random_states``) are refused: their streams cannot be continued.
    A checkpoint made on another kind of device is refused too (ScenarioError): the draws
    would continue, but the floating-point rounding of the other device would not, and a
    resumed run is meant to be bit-identical to the uninterrupted one.
    """
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if "random_keys" not in payload:
        raise CheckpointError(
            f"{path}: written with per-element generator states, before counter-based draws; "
            "this version cannot continue its random streams: run it again from the start"
        )
    device = template.states.device
    made_on = payload.get("device") or _manifest_device(path.parent / MANIFEST_FILE)
    if made_on is not None and made_on != device.type:
        raise ScenarioError(
            f"the checkpoint was made on {made_on} and continues bit for bit only there; "
            f"resume with --device {made_on} (this run would use {device.type})"
        )
    tensors = {name: value.to(device) for name, value in payload["tensors"].items()}
    state = template.replace(
        round=int(payload["round"]),
        random_keys=payload["random_keys"].to(device),
        **tensors,
    )
    return state, int(payload["metrics_rows"])


def _manifest_device(path: Path) -> str | None:
    """The device type a run folder's manifest records, or None without a readable one."""
    try:
        return torch.device(json.loads(path.read_text())["device"]).type
    except (OSError, ValueError, TypeError, KeyError, RuntimeError):
        return None


def wealth_table(state: State, population_names: tuple[str, ...], population, replicas: list[int]) -> pd.DataFrame:
    """Final money per agent and replica, long form."""
    money = state.money.detach().cpu().numpy()
    batch, agents = money.shape
    names = [population_names[index] for index in population.cpu().tolist()]
    return pd.DataFrame(
        {
            "replica": [replica for replica in replicas for _ in range(agents)],
            "agent": list(range(agents)) * batch,
            "population": names * batch,
            "money": money.reshape(-1),
        }
    )


def manifest(scenario, device, wall_time: float, rounds: int, extra: dict | None = None, complete: bool = True) -> dict:
    """Provenance of a run (``device`` a torch.device or a name, ``auto`` included).

    ``complete`` False marks a folder whose command has not finished (it is running, or was
    interrupted): its tables and checkpoint agree with each other, its final files are absent.
    """
    from econspin.economy import resolve_device

    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    data = {
        "status": "complete" if complete else "incomplete",
        "econspin": econspin.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "scenario": scenario.name,
        "seed": scenario.run.seed,
        "replicas": scenario.run.replicas,
        "steps": rounds,
        "wall_time_seconds": round(wall_time, 4),
        "rounds_per_second": round(rounds / wall_time, 3) if wall_time > 0 else None,
    }
    data.update(extra or {})
    return data
