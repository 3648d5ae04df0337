"""Sweeps on Ray: the same table as the local backend, retries, resume, refusals, a missing Ray.

The tests that need Ray share one local instance of 2 CPUs (started as ``econspin sweep``
starts one) and skip where Ray is not installed; the missing-Ray and option tests run anyway.
"""

import contextlib
import functools
import json
import os
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from econspin import allocator
from econspin.cli import app
from econspin.scenario import ScenarioError
from econspin.shard_record import SHARDS_FOLDER, ShardRecord, sweep_definition
from econspin.sweep import parse_grid, plan_shards, run_shard, run_sweep, sweep_points
from econspin.sweep_ray import INSTALL_HINT, RayOptions, ShardsFailed, shard_task, sweep_on_ray

runner = CliRunner()
GRID = "populations.ai.temperature=0.05:1:6"
TINY = """
name: tiny
populations:
  human: {count: 12, temperature: 1.0, spend: 0.2}
  ai: {count: 4, temperature: 0.1, spend: 0.2}
market: {d: 4, mode: MODE}
run: {steps: 6, replicas: 2, seed: 3, device: cpu}
"""


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance of 2 CPUs for the module, started the way the sweep starts one."""
    ray = pytest.importorskip("ray")
    from ray import cloudpickle

    from econspin.sweep_ray import start_local_ray

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers get this module's functions by value
    start_local_ray(ray, cpus=2)
    yield ray
    ray.shutdown()
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def sweep_parts(mode: str = "expected"):
    from helpers import scenario

    base = scenario(mode=mode, run={"seed": 3, "steps": 6, "replicas": 2})
    grids = [parse_grid(GRID)]
    return base, grids, sweep_points(base, grids)


def on_ray(folder: Path, mode: str = "expected", run=run_shard, **options) -> tuple[pd.DataFrame, dict]:
    """The sweep in shards of 2 points on Ray, with its record in ``folder`` (checked as the command checks it)."""
    base, grids, points = sweep_parts(mode)
    shards = plan_shards(points, base.run.replicas, base.run.dtype, 2)
    record = ShardRecord(folder, sweep_definition(base, grids, 2, shards))
    record.refuse_another()
    return sweep_on_ray(points, shards, record, base, RayOptions(**options), lambda rounds: _no_bar(), run=run)


def local_table(mode: str = "expected") -> pd.DataFrame:
    base, _, points = sweep_parts(mode)
    return run_sweep(points, base.run.replicas, base.run.steps, "cpu", base.run.dtype)


def _no_bar():
    import contextlib

    return contextlib.nullcontext(lambda round_number: None)


def log_call(log: Path, points, elements, steps, device, dtype):
    """run_shard, leaving a line per call in ``log`` (the points it ran)."""
    with open(log, "a") as stream:
        stream.write(" ".join(str(index) for index in sorted(points)) + "\n")
    return run_shard(points, elements, steps, device, dtype)


def fails_on_point(point: int, log: Path, points, elements, steps, device, dtype):
    """run_shard, except that a shard holding ``point`` raises every time."""
    if point in points:
        with open(log, "a") as stream:
            stream.write("try\n")
        raise RuntimeError("the disk is on fire")
    return run_shard(points, elements, steps, device, dtype)


def dies_once(marker: Path, points, elements, steps, device, dtype):
    """run_shard, except that the first shard holding point 0 kills its worker process."""
    if 0 in points and not marker.exists():
        marker.write_text("died\n")
        os._exit(1)
    return run_shard(points, elements, steps, device, dtype)


def waits_for_marker(marker: Path, log: Path, points, elements, steps, device, dtype):
    """run_shard; a shard without point 0 first waits for ``marker`` (two minutes at most), then logs its end."""
    if 0 not in points:
        deadline = time.time() + 120
        while not marker.exists() and time.time() < deadline:
            time.sleep(0.05)
    table = run_shard(points, elements, steps, device, dtype)
    if 0 not in points:
        with open(log, "a") as stream:
            stream.write(" ".join(str(index) for index in sorted(points)) + "\n")
    return table


def large_blocks_are_mapped() -> bool:
    """Whether glibc serves a 40 MiB block by mmap in this process, as it does unless freed memory is kept.

    Above glibc's largest adaptive threshold (32 MiB) a block is mapped afresh, until
    keep_freed_memory raises the threshold to 1 GiB and the block comes from the heap.
    """
    import ctypes

    class Counts(ctypes.Structure):  # glibc's struct mallinfo2
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                          "fsmblks", "uordblks", "fordblks", "keepcost")]

    library = ctypes.CDLL(None)
    library.mallinfo2.restype = Counts
    library.malloc.restype, library.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
    library.free.argtypes = (ctypes.c_void_p,)
    before = library.mallinfo2().hblks
    block = library.malloc(40 * 2**20)
    mapped = library.mallinfo2().hblks > before
    library.free(block)
    return mapped


def probes_the_allocator(log: Path, points, elements, steps, device, dtype):
    """run_shard, leaving a line in ``log``: whether the worker maps large blocks (keeps no freed memory)."""
    with open(log, "a") as stream:
        stream.write(f"mapped {large_blocks_are_mapped()}\n")
    return run_shard(points, elements, steps, device, dtype)


def records_the_request(run, *arguments):
    """shard_task, leaving in the log of ``run`` (a partial of probes_the_allocator) what it was asked."""
    with open(run.args[0], "a") as stream:
        stream.write(f"asked {arguments[-1]}\n")
    return shard_task(run, *arguments)


def listening_addresses(process) -> set[str]:
    """The addresses that ``process`` and its descendants listen on (TCP)."""
    import psutil

    found = set()
    for each in [process, *process.children(recursive=True)]:
        try:
            connections = each.net_connections(kind="tcp")
        except psutil.Error:
            continue
        found |= {connection.laddr.ip for connection in connections if connection.status == psutil.CONN_LISTEN}
    return found


def test_a_local_instance_listens_on_loopback_only_and_sends_no_usage_statistics(local_ray):
    import psutil

    assert local_ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    assert {node["NodeManagerAddress"] for node in local_ray.nodes()} == {"127.0.0.1"}
    addresses = listening_addresses(psutil.Process())
    assert addresses and all(address in ("127.0.0.1", "::ffff:127.0.0.1") for address in addresses), addresses
    raylets = [each for each in psutil.Process().children(recursive=True) if "raylet" in each.name()]
    assert raylets and all(each.environ().get("RAY_USAGE_STATS_ENABLED") == "0" for each in raylets)
    assert "RAY_USAGE_STATS_ENABLED" not in os.environ  # this process's environment is left as it was


@pytest.mark.parametrize("mode", ["expected", "sampled"])
def test_the_ray_table_equals_the_local_one_in_every_number(local_ray, tmp_path, mode):
    table, facts = on_ray(tmp_path, mode)
    assert facts["shards"] == 3 and facts["shards_skipped"] == 0 and facts["device"] == "cpu"
    pd.testing.assert_frame_equal(table, local_table(mode), check_exact=True)
    assert sorted(path.name for path in (tmp_path / SHARDS_FOLDER).iterdir()) == [
        "shard-0.parquet", "shard-1.parquet", "shard-2.parquet", "sweep.json"
    ]


def test_a_failing_shard_is_named_with_its_points_and_a_rerun_runs_only_it(local_ray, tmp_path):
    tries = tmp_path / "tries"
    with pytest.raises(ShardsFailed) as failure:
        on_ray(tmp_path / "out", run=functools.partial(fails_on_point, 3, tries))
    message = str(failure.value)
    assert "shard-1 (points 2 (populations.ai.temperature=0.43); 3 (populations.ai.temperature=0.62" in message
    assert "failed 3 times: RuntimeError: the disk is on fire" in message
    assert "1 of 3 shards failed; the 2 finished are kept in" in message
    assert tries.read_text().count("try") == 3  # the first try and Ray's two retries
    shards = tmp_path / "out" / SHARDS_FOLDER
    assert (shards / "shard-0.parquet").exists() and (shards / "shard-2.parquet").exists()
    assert not (shards / "shard-1.parquet").exists()

    log = tmp_path / "log"
    table, facts = on_ray(tmp_path / "out", run=functools.partial(log_call, log))
    assert log.read_text() == "2 3\n"  # the finished shards were skipped
    assert facts["shards_skipped"] == 2
    pd.testing.assert_frame_equal(table, local_table(), check_exact=True)


def test_a_worker_that_dies_is_retried(local_ray, tmp_path):
    marker = tmp_path / "died"
    table, _ = on_ray(tmp_path / "out", run=functools.partial(dies_once, marker))
    assert marker.read_text() == "died\n"
    pd.testing.assert_frame_equal(table, local_table(), check_exact=True)


@pytest.mark.skipif(allocator.glibc() is None or not hasattr(allocator.glibc(), "mallinfo2"),
                    reason="needs glibc 2.33 or later (mallinfo2)")
@pytest.mark.parametrize("asked", [False, True])
def test_workers_keep_freed_memory_as_the_process_that_submits_the_shards_does(local_ray, tmp_path, monkeypatch,
                                                                                asked):
    """Every shard task is asked what this process asked (the command's --no-keep-memory); asked, glibc took it.

    A worker asked not to keep may have kept since an earlier task (glibc cannot undo it), so
    its allocator is read only where the shards were asked to keep.
    """
    import econspin.sweep_ray

    monkeypatch.setattr(allocator, "_asked", asked)
    monkeypatch.setattr(econspin.sweep_ray, "shard_task", records_the_request)
    log = tmp_path / "log"
    table, _ = on_ray(tmp_path / "out", run=functools.partial(probes_the_allocator, log))
    lines = log.read_text().splitlines()
    assert sorted(line for line in lines if line.startswith("asked")) == [f"asked {asked}"] * 3
    if asked:
        assert [line for line in lines if line.startswith("mapped")] == ["mapped False"] * 3
    pd.testing.assert_frame_equal(table, local_table(), check_exact=True)


def test_a_shard_task_keeps_freed_memory_only_when_asked(monkeypatch):
    import torch

    import econspin.sweep_ray

    asked = []
    monkeypatch.setattr(econspin.sweep_ray, "keep_freed_memory", lambda: asked.append(True) or True)
    threads = torch.get_num_threads()
    for keep_memory in (False, True):
        table = shard_task(lambda *arguments: pd.DataFrame({"a": [1]}), {}, [], 1, "cpu", "float32", threads,
                           keep_memory)
        assert table.attrs["device"] == "cpu"
    assert asked == [True]


def test_an_interrupted_sweep_leaves_the_shards_still_running_on_a_connection_it_keeps(local_ray, tmp_path):
    """Ctrl-C cancels no shard: Ray 2.60 aborts the process that cancels a task whose result is arriving.

    (experiments/ray_cancel_race.py forces that interleaving.) On the connection the process
    had, which the sweep leaves open, the other shards run to their end, unrecorded; the
    command's own connection is shut down after the sweep, which stops them.
    """
    marker, log = tmp_path / "go on", tmp_path / "ended"
    base, grids, points = sweep_parts()
    shards = plan_shards(points, base.run.replicas, base.run.dtype, 2)
    record = ShardRecord(tmp_path / "out", sweep_definition(base, grids, 2, shards))

    def stop(_round):
        raise KeyboardInterrupt

    run = functools.partial(waits_for_marker, marker, log)
    with pytest.raises(KeyboardInterrupt):
        sweep_on_ray(points, shards, record, base, RayOptions(), lambda rounds: contextlib.nullcontext(stop), run=run)
    assert record.finished() == {"shard-0"}
    marker.write_text("go on\n")

    def ended() -> list[str]:
        return sorted(log.read_text().splitlines()) if log.exists() else []

    deadline = time.time() + 120
    while time.time() < deadline and len(ended()) < 2:
        time.sleep(0.05)
    assert ended() == ["2 3", "4 5"]  # neither was cancelled
    assert record.finished() == {"shard-0"}  # and neither was recorded


def test_shards_no_node_can_run_are_refused_before_any_starts(local_ray, tmp_path):
    with pytest.raises(ScenarioError, match=r"--gpus-per-shard 1: .* has no GPUs \(its nodes: 2 CPUs and 0 GPUs\)"):
        on_ray(tmp_path, gpus_per_shard=1)
    with pytest.raises(ScenarioError, match=r"--cpus-per-shard 3 --gpus-per-shard 0: no node"):
        on_ray(tmp_path, cpus_per_shard=3)
    assert not tmp_path.joinpath(SHARDS_FOLDER).exists()


def test_the_command_writes_the_local_sweep_folder_and_resumes(local_ray, tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY.replace("MODE", "expected"))
    arguments = ["sweep", str(path), "--grid", GRID, "--quiet"]
    local = runner.invoke(app, [*arguments, "--out", str(tmp_path / "local")])
    assert local.exit_code == 0, local.output
    on_cluster = runner.invoke(app, [*arguments, "--backend", "ray", "--points-per-shard", "4",
                                     "--out", str(tmp_path / "ray")])
    assert on_cluster.exit_code == 0, on_cluster.output
    for name in ("sweep.parquet", "phase.png", "concentration.png", "scenario.yaml", "manifest.json"):
        assert (tmp_path / "ray" / name).exists(), name
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "ray" / "sweep.parquet"), pd.read_parquet(tmp_path / "local" / "sweep.parquet")
    )
    again = runner.invoke(app, [*arguments, "--backend", "ray", "--points-per-shard", "4",
                                "--out", str(tmp_path / "ray")])
    assert again.exit_code == 0 and '"shards_skipped": 2' in (tmp_path / "ray" / "manifest.json").read_text()
    other = runner.invoke(app, [*arguments, "--backend", "ray", "--points-per-shard", "3",
                                "--out", str(tmp_path / "ray")])
    assert other.exit_code == 2
    assert other.output.strip().splitlines() == [
        f"error: --out {tmp_path / 'ray'}: holds this sweep cut into 2 shards of at most 4 points, not into 2 shards "
        f"of at most 3 points (--points-per-shard); continue it with econspin sweep --resume {tmp_path / 'ray'} "
        f"(which keeps its shards), or delete {tmp_path / 'ray' / SHARDS_FOLDER} to start over"
    ]


def test_without_ray_the_backend_is_one_line_saying_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY.replace("MODE", "expected"))
    result = runner.invoke(app, ["sweep", str(path), "--grid", GRID, "--backend", "ray", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: {INSTALL_HINT}"]
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--backend", "dask"], "--backend 'dask': local or ray"),
        (["--address", "auto"], "--address, --cpus-per-shard and --gpus-per-shard go with --backend ray"),
        (["--gpus-per-shard", "1"], "--address, --cpus-per-shard and --gpus-per-shard go with --backend ray"),
        (["--backend", "ray", "--device", "cuda"], "--device cuda: give --gpus-per-shard too"),
    ],
)
def test_backend_options_out_of_place_are_one_line(tmp_path, arguments, message):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY.replace("MODE", "expected"))
    result = runner.invoke(app, ["sweep", str(path), "--grid", GRID, *arguments, "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "x").exists()


def test_a_folder_holding_another_sweep_is_refused_naming_what_differs(tmp_path):
    def record(grid: str = GRID, seed: int = 3, points_per_shard: int | None = 2, folder=tmp_path) -> ShardRecord:
        base, _, _ = sweep_parts()
        base = base.with_run_settings(seed=seed)
        grids = [parse_grid(grid)]
        shards = plan_shards(sweep_points(base, grids), 2, None, points_per_shard)
        return ShardRecord(folder, sweep_definition(base, grids, points_per_shard, shards))

    record().refuse_another()  # an empty folder holds no sweep
    record().claim()
    record().refuse_another()  # the same sweep again: resumed, not refused
    record().claim()
    differences = {
        "run.seed: 3 there, 4 here": record(seed=4),
        "--grid populations.ai.temperature: [0.05, 0.24,": record(grid="populations.ai.temperature=0.05:1:5"),
        "--grid populations.ai.temperature: [0.05, 0.24, 0.43, 0.62, 0.81, 1.0] there, absent here": (
            record(grid="populations.ai.spend=0.1")
        ),
    }
    for difference, other in differences.items():
        with pytest.raises(ScenarioError, match=r"--out .*: holds a different sweep \((.*)\)") as refusal:
            other.refuse_another()
        assert difference in str(refusal.value)
    with pytest.raises(ScenarioError, match=r"holds this sweep cut into 3 shards of at most 2 points, not into 2 "):
        record(points_per_shard=3).refuse_another()
    # the plan decides, not the option: one batch of 6 points is one shard of whole batches or of at most 8
    record(points_per_shard=None, folder=tmp_path / "whole").claim()
    record(points_per_shard=8, folder=tmp_path / "whole").refuse_another()
    (tmp_path / SHARDS_FOLDER / "sweep.json").write_text("{not json")
    with pytest.raises(ScenarioError, match="sweep.json is not a sweep record"):
        record().refuse_another()


@pytest.mark.slow
def test_ctrl_c_keeps_the_finished_shards_and_the_same_command_goes_on(local_ray, tmp_path):
    import signal
    import subprocess
    import time

    path = tmp_path / "tiny.yaml"
    path.write_text(TINY.replace("MODE", "expected").replace("steps: 6", "steps: 400").replace("12", "60"))
    arguments = ["sweep", str(path), "--grid", "populations.ai.temperature=0.05:1:8", "--backend", "ray",
                 "--points-per-shard", "1", "--out", str(tmp_path / "out"), "--quiet"]
    # its own session, so that Ctrl-C reaches the command and the Ray processes it started, as in a terminal
    process = subprocess.Popen([sys.executable, "-m", "econspin.cli", *arguments], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    shards = tmp_path / "out" / SHARDS_FOLDER
    deadline = time.time() + 120
    while time.time() < deadline and not list(shards.glob("shard-*.parquet")):
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    finished = len(list(shards.glob("shard-*.parquet")))
    assert process.returncode == 130, output
    assert "sweep interrupted with" in output and "continue with econspin sweep --resume" in output
    assert 0 < finished < 8, "the sweep should have been interrupted between shards"
    again = runner.invoke(app, arguments)
    assert again.exit_code == 0, again.output
    manifest = (tmp_path / "out" / "manifest.json").read_text()
    assert f'"shards_skipped": {finished}' in manifest
    local = runner.invoke(app, [*arguments[:4], "--out", str(tmp_path / "local"), "--quiet"])
    assert local.exit_code == 0, local.output
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "out" / "sweep.parquet"), pd.read_parquet(tmp_path / "local" / "sweep.parquet")
    )


def interrupt_after_first_shard(monkeypatch, backend: str) -> None:
    """Make the next sweep command stop (as Ctrl-C stops it) once its first shard is recorded."""
    import contextlib

    import econspin.cli_sweep
    import econspin.sweep

    if backend == "local":  # the local backend runs econspin.sweep.run_shard itself, shard after shard
        calls = []

        def second_raises(*arguments, **options):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return run_shard(*arguments, **options)

        monkeypatch.setattr(econspin.sweep, "run_shard", second_raises)
    else:  # Ray advances the bar after each shard is recorded: the first advance stops the command

        def stop(_round):
            raise KeyboardInterrupt

        monkeypatch.setattr(econspin.cli_sweep, "progress_bar", lambda *_: contextlib.nullcontext(stop))


@pytest.mark.parametrize("first, then", [("local", "ray"), ("ray", "local")])
def test_a_sweep_one_backend_began_the_other_resumes_to_the_same_table(local_ray, tmp_path, monkeypatch, first, then):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY.replace("MODE", "sampled"))
    folder = tmp_path / "out"
    arguments = ["sweep", str(path), "--grid", GRID, "--points-per-shard", "2", "--quiet"]
    with monkeypatch.context() as patched:
        interrupt_after_first_shard(patched, first)
        stopped = runner.invoke(app, [*arguments, "--backend", first, "--out", str(folder)])
    assert stopped.exit_code == 130, stopped.output
    assert "continue with econspin sweep --resume" in stopped.output
    recorded = sorted(path.name for path in (folder / SHARDS_FOLDER).glob("*.parquet"))
    assert len(recorded) == 1, recorded  # the first to finish: on Ray, any of the three
    resumed = runner.invoke(app, ["sweep", "--resume", str(folder), "--backend", then, "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (manifest["status"], manifest["backend"], manifest["shards"], manifest["shards_skipped"]) == (
        "complete", then, 3, 1
    )
    assert manifest["points_per_shard"] == 2  # the resume kept the plan of the record
    straight = runner.invoke(app, [*arguments, "--out", str(tmp_path / "straight")])
    assert straight.exit_code == 0, straight.output
    pd.testing.assert_frame_equal(
        pd.read_parquet(folder / "sweep.parquet"), pd.read_parquet(tmp_path / "straight" / "sweep.parquet"),
        check_exact=True,
    )


def test_ray_resumes_a_local_sweep_of_whole_batches_in_its_own_plan(local_ray, tmp_path, monkeypatch):
    """Ray resumes a local sweep cut by the memory planner alone in that sweep's own plan.

    The record's "whole batches" (no --points-per-shard) is kept, not replaced by Ray's default
    of 8 points per shard, which would cut these 10 points otherwise and be refused.
    """
    import econspin.sweep

    path = tmp_path / "tiny.yaml"
    path.write_text(TINY.replace("MODE", "expected"))
    folder = tmp_path / "out"
    grid = "populations.ai.temperature=0.05:1:10"  # 10 points: one whole batch, two shards of Ray's default

    def stopped(*arguments, **options):
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(econspin.sweep, "run_shard", stopped)
        first = runner.invoke(app, ["sweep", str(path), "--grid", grid, "--quiet", "--out", str(folder)])
    assert first.exit_code == 130, first.output
    resumed = runner.invoke(app, ["sweep", "--resume", str(folder), "--backend", "ray", "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (manifest["backend"], manifest["shards"], manifest["points_per_shard"]) == ("ray", 1, None)
