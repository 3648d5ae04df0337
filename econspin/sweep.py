"""Parameter sweeps: a grid of scenario points, every point x replica a batch element.

A grid is written ``key.path=SPEC`` with SPEC one of ``a:b:n`` (n values from a to b,
evenly spaced), ``log:a:b:n`` (evenly spaced in log), or ``v1,v2,...`` (a list; each value
read as YAML, so ``true``, ``0.5`` and ``sphere`` keep their types). Several grids form
their Cartesian product. Points whose scenarios agree in shape (agent counts, d, heads,
mode, network, and for a random network the seed it is drawn with) run together as one
batched kernel, split into batches that fit the memory budget. Replica r of every point
shares its random streams (common random numbers), so differences between points are not
blurred by different noise.

A sweep runs as shards: the planner's batches, optionally cut between points into pieces of
at most ``points_per_shard`` points. The local backend runs them here one after another;
``econspin.sweep_ray`` runs each as a Ray task. Both run :func:`run_shard` and join the
pieces with :func:`assemble`, so the two tables are the same.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

import numpy as np
import pandas as pd
import yaml

from econspin.couplings import coupling_fields
from econspin.economy import build_economy, compile_inputs, shape_signature
from econspin.memory import SWEEP_BLOCK_ROWS, MemoryModel
from econspin.scenario import Scenario, ScenarioError
from econspin.simulate import DTYPES, Rollout


@dataclass(frozen=True)
class Grid:
    """One swept key and its values."""

    key: str
    values: tuple


def parse_grid(text: str) -> Grid:
    """Read ``key.path=SPEC``; a bad spec raises ScenarioError naming it."""
    if "=" not in text:
        raise ScenarioError(f"--grid {text!r}: write key.path=SPEC, e.g. populations.ai.temperature=log:0.01:1:9")
    key, spec = (part.strip() for part in text.split("=", 1))
    if not key or not spec:
        raise ScenarioError(f"--grid {text!r}: both the key path and the values are needed")
    return Grid(key, parse_values(spec, f"--grid {key}"))


def parse_values(spec: str, where: str) -> tuple:
    """The values a SPEC denotes."""
    parts = spec.split(":")
    try:
        if parts[0] == "log":
            if len(parts) != 4:
                raise ValueError("log grids are log:a:b:n")
            low, high, count = float(_decimal(parts[1])), float(_decimal(parts[2])), int(parts[3])
            if low <= 0 or high <= 0:
                raise ValueError("log grids need a > 0 and b > 0")
            return log_spaced(low, high, _count(count))
        if len(parts) == 3:
            return evenly_spaced(_decimal(parts[0]), _decimal(parts[1]), _count(int(parts[2])))
        if len(parts) != 1:
            raise ValueError("use a:b:n, log:a:b:n or v1,v2,...")
    except ValueError as error:
        raise ScenarioError(f"{where}: {spec!r}: {error}") from None
    values = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            raise ScenarioError(f"{where}: {spec!r}: empty value in the list")
        try:
            values.append(yaml.safe_load(item))
        except (yaml.YAMLError, RecursionError):
            raise ScenarioError(f"{where}: {item!r} is not a value") from None
    return tuple(values)


MAX_GRID_VALUES = 1_000_000  # values on one axis; refused before they are made (a sweep's size is checked later)


def evenly_spaced(low: Decimal, high: Decimal, count: int) -> tuple[float, ...]:
    """``count`` values from ``low`` to ``high`` in decimal arithmetic, so that they print as typed.

    Binary floating point would carry noise into tables, legends and folder names
    (0.01:0.03:3 gives 0.019999999999999997 in numpy); each value here is the float nearest
    to the exact decimal a + k (b - a) / (n - 1).
    """
    if count == 1:
        return (float(low),)
    return tuple(float(low + (high - low) * index / (count - 1)) for index in range(count))


def log_spaced(low: float, high: float, count: int) -> tuple[float, ...]:
    """``count`` values evenly spaced in log from ``low`` to ``high``, both ends exactly as typed.

    The values between are irrational in general: rounded to 12 significant digits, which
    drops the last bits of noise (0.2 for 0.19999999999999998) and nothing a model can feel.
    """
    values = np.logspace(math.log10(low), math.log10(high), count)
    values[0], values[-1] = low, high
    return tuple(float(f"{value:.12g}") for value in values)


def _decimal(text: str) -> Decimal:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a number") from None
    if not value.is_finite():
        raise ValueError(f"{text!r} is not a finite number")
    return value


def _count(count: int) -> int:
    if count < 1:
        raise ValueError("n must be at least 1")
    if count > MAX_GRID_VALUES:
        raise ValueError(f"n = {count} is more than {MAX_GRID_VALUES} values on one axis")
    return count


def sweep_points(base: Scenario, grids: list[Grid]) -> list[tuple[dict, Scenario]]:
    """Every point of the grids' product with its validated scenario.

    Each point is validated as a whole scenario, so values valid alone but not together are
    refused here, before any work, naming the point. A point's values are read back from its
    validated scenario (``inf`` typed in a list is the float inf, ``1`` for a temperature is 1.0),
    so every column of the sweep's table has one type.
    """
    keys = [grid.key for grid in grids]
    if len(set(keys)) != len(keys):
        raise ScenarioError("--grid: the same key is swept twice")
    for key in keys:
        if key.startswith("run.") and key != "run.seed":
            raise ScenarioError(f"--grid {key}: run settings are the same for every point (set them with --set)")
    points = []
    for values in itertools.product(*(grid.values for grid in grids)):
        overrides = dict(zip(keys, values))
        try:
            scenario = base.with_overrides(overrides)
        except ScenarioError as error:
            raise ScenarioError(f"{point_name(overrides)}: {error}") from None
        points.append(({key: value_at(scenario, key) for key in keys}, scenario))
    return points


def point_name(overrides: dict) -> str:
    """How a point is named in messages: ``--grid key=value, --grid key=value``."""
    return ", ".join(f"--grid {key}={value}" for key, value in overrides.items())


def value_at(scenario: Scenario, key: str):
    """The value of a dotted key path in a validated scenario."""
    value = scenario
    for part in key.split("."):
        value = value[part] if isinstance(value, dict) else getattr(value, part)
    return value.model_dump_json() if hasattr(value, "model_dump_json") else value  # a table holds plain values


def check_points(points: list[tuple[dict, Scenario]], dtype: str) -> None:
    """Compile the sweep's points alone, on the CPU, before any work starts: one per set of compile inputs.

    What only the compiler checks (a weights file against d, a network or couplings file
    against the agent count, tied projections against d_k and d_v) is refused here, naming the
    first point it refuses. Points that differ only where the compiler cannot refuse them
    (temperatures, budgets, distributions: :func:`econspin.economy.compile_inputs`) compile
    alike, so one of them is compiled for all: the sweep itself builds every point once more,
    in its batch.
    """
    checked = set()
    for overrides, scenario in points:
        inputs = compile_inputs(scenario)
        if inputs in checked:
            continue
        checked.add(inputs)
        try:
            build_economy([scenario], [0], "cpu", DTYPES[dtype])
            coupling_fields(scenario)  # the only file the round-0 state reads
        except ScenarioError as error:
            raise ScenarioError(f"{point_name(overrides)}: {error}") from None


def plan_batches(
    points: list[tuple[dict, Scenario]], replicas: int, dtype: str | None = None
) -> list[list[tuple[int, int]]]:
    """(point, replica) elements grouped by shape and cut into batches that fit the memory budget.

    A batch holds as many elements as leave room for blocks of ``SWEEP_BLOCK_ROWS`` rows, at
    the precision ``dtype`` (default: the scenarios' own).
    """
    groups: dict[tuple, list[tuple[int, int]]] = {}
    for index in range(len(points)):
        for replica in range(replicas):
            groups.setdefault(shape_signature(points[index][1]), []).append((index, replica))
    batches = []
    for members in groups.values():
        scenario = points[members[0][0]][1]
        memory = MemoryModel.of_scenario(scenario, DTYPES[dtype or scenario.run.dtype])
        size = memory.elements_per_batch(min(scenario.agent_count, SWEEP_BLOCK_ROWS))
        batches.extend(members[start : start + size] for start in range(0, len(members), size))
    return batches


@dataclass(frozen=True)
class Shard:
    """A named piece of a sweep: (point, replica) elements run as one batched kernel."""

    name: str
    elements: tuple[tuple[int, int], ...]

    @property
    def points(self) -> list[int]:
        """The points the shard holds (all of their replicas, unless memory split them)."""
        return sorted({point for point, _ in self.elements})


def plan_shards(
    points: list[tuple[dict, Scenario]], replicas: int, dtype: str | None = None, points_per_shard: int | None = None
) -> list[Shard]:
    """The memory planner's batches, each cut into shards of at most ``points_per_shard`` points.

    Without ``points_per_shard`` a shard is one batch of :func:`plan_batches`. Cuts fall
    between points, so a shard holds every replica the batch holds of each of its points.
    The plan depends on the sweep alone, never on where it runs: a re-run cuts the same shards.
    """
    pieces = []
    for batch in plan_batches(points, replicas, dtype):
        order = list(dict.fromkeys(point for point, _ in batch))
        step = points_per_shard or len(order)
        for start in range(0, len(order), step):
            chosen = set(order[start : start + step])
            pieces.append(tuple(element for element in batch if element[0] in chosen))
    digits = len(str(len(pieces) - 1))
    return [Shard(f"shard-{number:0{digits}d}", elements) for number, elements in enumerate(pieces)]


def run_shard(
    points, elements, steps: int, device: str, dtype: str, on_round: Callable[[int], None] | None = None
) -> pd.DataFrame:
    """Run (point, replica) ``elements`` as one batched kernel; its table with a ``point`` column.

    ``points`` maps a point index to its (overrides, scenario): the sweep's list, or only the
    shard's own points (what a remote worker is sent).
    """
    scenarios = [points[index][1] for index, _ in elements]
    rollout = Rollout.create(scenarios, [replica for _, replica in elements], device, dtype)
    rollout.advance(steps, on_round)
    table = rollout.metrics()
    table.insert(0, "point", np.tile(np.asarray([index for index, _ in elements]), steps + 1))  # step 0 too
    return table


def assemble(points: list[tuple[dict, Scenario]], tables: list[pd.DataFrame]) -> pd.DataFrame:
    """The shards' tables as one sweep table: a column per swept key, sorted by point, replica, step."""
    table = pd.concat(tables, ignore_index=True)
    for position, key in enumerate(points[0][0]):
        table.insert(1 + position, key, [points[index][0][key] for index in table["point"]])
    return table.sort_values(["point", "replica", "step"], kind="stable").reset_index(drop=True)


def run_sweep(
    points: list[tuple[dict, Scenario]],
    replicas: int,
    steps: int,
    device: str,
    dtype: str,
    on_round: Callable[[int], None] | None = None,
    points_per_shard: int | None = None,
) -> pd.DataFrame:
    """Run every point x replica here, shard after shard; one long table with ``point`` and the swept keys."""
    shards = plan_shards(points, replicas, dtype, points_per_shard)
    return assemble(points, [run_shard(points, shard.elements, steps, device, dtype, on_round) for shard in shards])


def final_values(table: pd.DataFrame, keys: list[str], fraction: float = 0.1) -> pd.DataFrame:
    """Per point and replica, the metrics averaged over the last ``fraction`` of rounds."""
    last = table["step"].max()
    first = last - max(1, int(round(fraction * last))) + 1
    late = table[table["step"] >= first]
    numeric = [column for column in late.columns if column not in ("point", "replica", "step", *keys)]
    return late.groupby(["point", "replica", *keys], sort=False)[numeric].mean().reset_index()
