"""Sweep shards as Ray tasks: ``econspin sweep --backend ray`` (a rim: the engine never imports Ray).

The sweep is cut into the shards of :func:`econspin.sweep.plan_shards` (the memory planner's
batches, at most ``points_per_shard`` points each, ``DEFAULT_POINTS_PER_SHARD`` unless the
command or the folder's record says otherwise); every shard is one Ray task asking for
``cpus_per_shard`` CPUs and ``gpus_per_shard`` GPUs, and runs
:func:`econspin.sweep.run_shard` on a worker, as the local backend runs it here (the worker
keeping freed memory if this process does: :mod:`econspin.allocator`). Tables come back as
shards finish: each is recorded in the output folder's ``shards/``
(:mod:`econspin.shard_record`, the record both backends keep) and advances the progress bar;
the sweep table is assembled from the record, so a re-run after a crash or Ctrl-C, on either
backend, runs only the shards not recorded. Ctrl-C cancels no task (see _run_shards): the
connection's end stops them.

A failing shard is retried by Ray (``SHARD_RETRIES`` more tries, for exceptions and for dead
workers alike); one that fails every try is reported with its points while the others finish.
Without an address a local Ray instance is started for the sweep and stopped after it: it
listens on 127.0.0.1 only, without dashboard, and sends no usage statistics.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from econspin.allocator import keep_freed_memory, keeps_freed_memory
from econspin.scenario import Scenario, ScenarioError
from econspin.shard_record import ShardRecord, mark_device, shard_facts
from econspin.sweep import Shard, assemble, run_shard

DEFAULT_POINTS_PER_SHARD = 8  # a shard is a task: small enough to spread and to retry, large enough to batch
SHARD_RETRIES = 2  # tries after the first, for a raised exception or a worker that died
INSTALL_HINT = "--backend ray needs Ray, which is not installed: pip install 'econspin[ray]'"
# A local instance is this machine's alone. Ray otherwise takes the address other hosts reach
# this one at (Linux counts as a possible cluster node) and listens there; Ray reads the first
# variable when it is imported, and the processes it starts inherit both.
LOCAL_ENVIRONMENT = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class RayOptions:
    """Where the shards run and what each asks for.

    Attributes:
        address: a running cluster (``auto``: the one this machine joined with ``ray start``;
            ``HOST:PORT``: its head), or None for a local instance started for the sweep.
        cpus_per_shard: CPUs a shard reserves (and its torch threads, at least one).
        gpus_per_shard: GPUs a shard reserves (fractions share a GPU); 0 runs on CPUs.
        local_cpus: CPUs of a local instance (default: every CPU of this machine).
    """

    address: str | None = None
    cpus_per_shard: float = 1
    gpus_per_shard: float = 0
    local_cpus: int | None = None


class ShardsFailed(Exception):
    """Shards that failed on every try, one line each naming the shard and its points."""

    def __init__(self, lines: list[str], finished: int, total: int, folder: Path):
        self.lines = lines
        message = [
            *lines,
            f"{len(lines)} of {total} shards failed; the {finished} finished are kept in "
            f"{folder}: run the same command again to retry the others",
        ]
        super().__init__("\n".join(message))


def import_ray():
    """Ray, or a ScenarioError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ScenarioError(INSTALL_HINT) from None
    return ray


def start_local_ray(ray, cpus: int | None = None) -> None:
    """Start a Ray instance on this machine: 127.0.0.1 only, no dashboard, no usage statistics."""
    from ray._private import ray_constants  # the import-time copy of the first LOCAL_ENVIRONMENT variable

    saved_environment = {name: os.environ.get(name) for name in LOCAL_ENVIRONMENT}
    saved_cluster = ray_constants.ENABLE_RAY_CLUSTER
    os.environ.update(LOCAL_ENVIRONMENT)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(
            address="local",
            num_cpus=cpus,
            include_dashboard=False,
            _node_ip_address=LOOPBACK,
            log_to_driver=False,
            logging_level=logging.ERROR,
        )
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_cluster
        for name, value in saved_environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    gcs = ray.get_runtime_context().gcs_address
    if not gcs.startswith(f"{LOOPBACK}:"):  # a Ray that no longer honours the variable: refuse, do not expose
        ray.shutdown()
        raise ScenarioError(
            f"--backend ray: this Ray ({ray.__version__}) would listen on {gcs}, not on {LOOPBACK} only; "
            "start a cluster yourself (docs/sweeps.md) and give its --address"
        )


@contextlib.contextmanager
def connected(options: RayOptions) -> Iterator[str]:
    """This process connected to Ray for the block; yields where the shards run, for messages.

    A connection this process already has is used as it is (and left open: the tasks of an
    interrupted sweep run on); otherwise the cluster at ``options.address``, or a local
    instance, which is shut down afterwards, also after Ctrl-C: that stops the tasks.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield "the Ray instance this process is connected to"
        return
    if options.address is None:
        start_local_ray(ray, options.local_cpus)
        where = f"a local Ray instance ({ray.cluster_resources().get('CPU', 0):g} CPUs)"
    else:
        try:
            ray.init(address=options.address, log_to_driver=False, logging_level=logging.ERROR)
        except (ConnectionError, RuntimeError, ValueError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ScenarioError(
                f"--address {options.address}: no Ray cluster to join ({reason}; a cluster with token "
                "authentication also needs RAY_AUTH_MODE=token and its token: docs/sweeps.md)"
            ) from None
        where = f"the Ray cluster at {options.address}"
    try:
        yield where
    finally:
        ray.shutdown()


def check_resources(ray, options: RayOptions, where: str) -> None:
    """Refuse shards that no node can run: Ray would leave them pending without a word."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    cpus, gpus = options.cpus_per_shard, options.gpus_per_shard
    if any(node.get("CPU", 0) >= cpus and node.get("GPU", 0) >= gpus for node in nodes):
        return
    largest = ", ".join(f"{node.get('CPU', 0):g} CPUs and {node.get('GPU', 0):g} GPUs" for node in nodes) or "none"
    if gpus > 0 and not any(node.get("GPU", 0) for node in nodes):
        raise ScenarioError(f"--gpus-per-shard {gpus:g}: {where} has no GPUs (its nodes: {largest})")
    raise ScenarioError(
        f"--cpus-per-shard {cpus:g} --gpus-per-shard {gpus:g}: no node of {where} has that much (its nodes: {largest})"
    )


def shard_task(
    run, points: dict, elements, steps: int, device: str, dtype: str, threads: int, keep_memory: bool = False
) -> pd.DataFrame:
    """What a Ray worker runs for one shard: its table, with the device it ran on in ``attrs``.

    ``keep_memory``: the worker keeps freed memory (:func:`econspin.allocator.keep_freed_memory`),
    as the process that submitted the shard does. A worker that once did keeps doing so for
    later tasks (glibc cannot undo it); the results are the same bit for bit either way.
    """
    import torch

    if keep_memory:
        keep_freed_memory()
    torch.set_num_threads(threads)  # the shard's reserved CPUs, whatever the worker inherited
    return mark_device(run(points, elements, steps, device, dtype), device)


def describe(shard: Shard, points: list[tuple[dict, Scenario]]) -> str:
    """A shard's name and its points, each with its swept values."""
    described = []
    for index in shard.points:
        values = ", ".join(f"{key}={value}" for key, value in points[index][0].items())
        described.append(f"{index} ({values})" if values else str(index))
    return f"{shard.name} (points {'; '.join(described)})"


def failure_reason(error: Exception) -> str:
    """One line: the exception a task raised, or why its worker died."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        text = str(cause).strip()
        return f"{type(cause).__name__}: {text.splitlines()[0]}" if text else type(cause).__name__
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[0].strip() if lines else type(error).__name__


def check_ray_device(device: str, options: RayOptions) -> None:
    """Refuse CUDA shards that ask for no GPU (ScenarioError): before the machine's own device is checked."""
    if device == "cuda" and options.gpus_per_shard == 0:
        raise ScenarioError("--device cuda: give --gpus-per-shard too (Ray hides GPUs from tasks that ask for none)")


def sweep_on_ray(
    points: list[tuple[dict, Scenario]],
    shards: list[Shard],
    record: ShardRecord,
    scenario: Scenario,
    options: RayOptions,
    progress: Callable[[int], contextlib.AbstractContextManager[Callable[[int], None]]],
    say: Callable[[str], None] = lambda line: None,
    run: Callable[..., pd.DataFrame] = run_shard,
) -> tuple[pd.DataFrame, dict]:
    """Run the shards the record lacks as Ray tasks; the assembled table and the manifest's facts.

    ``record`` holds this plan of ``shards`` (checked against the folder by the caller);
    ``progress(total)`` opens a progress bar of ``total`` rounds and yields its advance
    function; ``say`` prints a line; ``run`` is what each task calls (run_shard; tests pass
    one that fails). Raises ScenarioError for a missing Ray or shards no node can run, before
    any shard starts; ShardsFailed when shards fail.
    """
    import_ray()
    todo = record.to_run(shards, say)
    failures = []
    where = "nowhere (every shard was finished)"
    if todo:
        with connected(options) as where:
            failures = _run_shards(todo, points, scenario, record, options, where, progress, run)
    if failures:
        raise ShardsFailed(failures, len(shards) - len(failures), len(shards), record.folder)
    tables = [record.load(shard.name) for shard in shards]
    facts = {
        "backend": "ray",
        "ray": where,
        **shard_facts(tables, record, len(shards) - len(todo)),
        "cpus_per_shard": options.cpus_per_shard,
        "gpus_per_shard": options.gpus_per_shard,
    }
    return assemble(points, tables), facts


def _run_shards(todo, points, scenario, record, options, where, progress, run) -> list[str]:
    """Submit every shard, record each as it finishes; the failure lines."""
    ray = import_ray()
    check_resources(ray, options, where)
    record.claim()
    settings = scenario.run
    task = ray.remote(shard_task)
    threads = max(1, int(options.cpus_per_shard))
    keep_memory = keeps_freed_memory()  # the workers do as this process (the command's --no-keep-memory)
    pending = {}
    for shard in todo:
        own_points = {index: points[index] for index in shard.points}  # a worker is sent its points only
        reference = task.options(
            name=shard.name,
            num_cpus=options.cpus_per_shard,
            num_gpus=options.gpus_per_shard,
            max_retries=SHARD_RETRIES,
            retry_exceptions=True,
        ).remote(run, own_points, shard.elements, settings.steps, settings.device, settings.dtype, threads, keep_memory)
        pending[reference] = shard
    failures = []
    # Interrupted (Ctrl-C), the shards still pending are not cancelled: in Ray 2.60 ray.cancel
    # of a task whose result is arriving fails the task while its reply is being handled, and
    # Ray then aborts this process (RAY_CHECK "Tried to complete task that was not pending";
    # force or not, experiments/ray_cancel_race.py). Leaving the connection stops them instead:
    # connected() shuts down the local instance, or disconnects from the cluster, whose
    # raylets then end this job's tasks. On a connection the caller keeps they run to their
    # end, and their tables are dropped.
    with progress(settings.steps * len(todo)) as advance:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            shard = pending.pop(ready[0])
            try:
                table = ray.get(ready[0])
            except ray.exceptions.RayError as error:
                tries = SHARD_RETRIES + 1
                failures.append(f"{describe(shard, points)} failed {tries} times: {failure_reason(error)}")
                continue
            record.save(shard.name, table)
            for round_number in range(1, settings.steps + 1):
                advance(round_number)
    return failures
