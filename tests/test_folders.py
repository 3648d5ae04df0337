"""Output folders are never mixed, through the real command line (issue 11, items 3 and 4).

Every output records a fingerprint; a command whose fingerprint differs from its folder's is
refused in one line naming what differs (or replaces the folder's econspin outputs with
--force); a resume continues only the computation its checkpoint belongs to; grid points are
validated together before anything is written, and points of different shapes run as
separate batches.
"""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from folder_checks import assert_run_folder_consistent, assert_sweep_folder_consistent, read_json, written
from hypothesis import given, settings
from hypothesis import strategies as st
from test_cli import TINY, write  # the tiny scenario of the command-line tests
from typer.testing import CliRunner

from econspin import Scenario, simulate
from econspin.cli import app
from econspin.fingerprint import differences, fingerprint, scenario_digest

runner = CliRunner()

GRID = ["--grid", "populations.ai.temperature=0.1,1"]


def invoke(*arguments) -> object:
    return runner.invoke(app, [str(argument) for argument in arguments])


def refused(result, *words) -> str:
    """The one-line refusal, checked: exit status 2, no traceback, the words in it."""
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and message.startswith("error:") and "Traceback" not in message, message
    assert all(word in message for word in words), message
    return message


def snapshot(folder: Path) -> dict:
    return {path.relative_to(folder): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture
def tiny(tmp_path) -> Path:
    return write(tmp_path, TINY)


@pytest.fixture(scope="module")
def complete_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("complete")
    out = folder / "run"
    assert invoke("run", write(folder, TINY), "--out", out, "--quiet").exit_code == 0
    return out


@pytest.fixture
def done(tmp_path, complete_run) -> Path:
    """A complete run folder of the tiny scenario (a copy: run once for the module)."""
    return Path(shutil.copytree(complete_run, tmp_path / "run"))


def test_the_digest_is_of_the_computation_not_of_how_it_was_typed(tiny):
    scenario = Scenario.from_yaml(tiny)
    edited = Scenario.from_dict({**scenario.model_dump(), "populations": {
        **scenario.model_dump()["populations"], "ai": {**scenario.model_dump()["populations"]["ai"], "spend": 0.3}}})
    assert scenario_digest(scenario.with_overrides({"populations.ai.spend": 0.3})) == scenario_digest(edited)
    assert scenario_digest(scenario) != scenario_digest(edited)
    # the steps and the device name belong to one invocation (a resume asks for more rounds)
    assert scenario_digest(scenario.with_run_settings(steps=99, device="auto")) == scenario_digest(scenario)
    assert scenario_digest(scenario.with_run_settings(seed=4)) != scenario_digest(scenario)
    record = fingerprint("run", scenario, {"populations.ai.spend": 0.3})
    assert record["steps"] == 8 and record["torch"] == str(torch.__version__) and record["overrides"]


CHANGES = {  # keys a user changes, with values to choose from
    "populations.ai.temperature": [0.1, 0.2, float("inf"), 0.0],
    "populations.human.spend": [0.2, 0.3],
    "market.mode": ["expected", "sampled"],
    "market.d": [4, 6],
    "run.seed": [3, -1],
    "run.steps": [8, 20],
    "run.device": ["cpu", "auto"],
}


@settings(max_examples=40, deadline=None)
@given(st.fixed_dictionaries({key: st.sampled_from(values) for key, values in CHANGES.items()}),
       st.fixed_dictionaries({key: st.sampled_from(values) for key, values in CHANGES.items()}))
def test_fingerprints_differ_exactly_where_the_computations_do(first, second):
    base = Scenario.from_dict(yaml.safe_load(TINY))
    one, other = base.with_overrides(first), base.with_overrides(second)
    changed = {key for key in CHANGES if first[key] != second[key]}
    computed = changed - {"run.steps", "run.device"}  # one invocation's settings
    assert (scenario_digest(one) == scenario_digest(other)) == (not computed)
    found = differences(fingerprint("run", one), fingerprint("run", other), one.model_dump(), other)
    named = {text.split(" ")[0] for text in found}
    assert named == computed | ({"steps"} if "run.steps" in changed else set())


def test_every_output_records_its_fingerprint(tmp_path, tiny, done):
    manifest = json.loads((done / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["fingerprint"] == fingerprint("run", Scenario.from_yaml(tiny))
    checkpoint = torch.load(done / "checkpoint.pt", weights_only=True)
    assert checkpoint["fingerprint"] == manifest["fingerprint"]
    assert invoke("sweep", tiny, *GRID, "--out", tmp_path / "sweep", "--quiet").exit_code == 0
    recorded = json.loads((tmp_path / "sweep" / "manifest.json").read_text())["fingerprint"]
    assert recorded["kind"] == "sweep" and recorded["grid"] == {"populations.ai.temperature": [0.1, 1]}
    assert assert_sweep_folder_consistent(tmp_path / "sweep") == "complete"


def test_the_same_command_again_starts_over_in_its_own_folder(tiny, done):
    note = write(done, "mine\n", "notes.txt")
    before = pd.read_parquet(done / "metrics.parquet")
    assert invoke("run", tiny, "--out", done, "--quiet").exit_code == 0
    assert pd.read_parquet(done / "metrics.parquet").equals(before) and note.read_text() == "mine\n"


@pytest.mark.parametrize("change, words", [
    (["--set", "populations.ai.temperature=0.5"], ["populations.ai.temperature 0.1 there, 0.5 here"]),
    (["--seed", "4"], ["run.seed 3 there, 4 here"]),
    (["--replicas", "3"], ["run.replicas 2 there, 3 here"]),
    (["--steps", "5"], ["steps 8 there, 5 here"]),
    (["--steps", "12"], ["steps 8 there, 12 here", "continue it with --resume"]),
])
def test_a_run_into_another_runs_folder_is_refused_naming_what_differs(tiny, done, change, words):
    before = snapshot(done)
    refused(invoke("run", tiny, "--out", done, *change, "--quiet"), "--out", "holds a run that differs", "--force",
            *words)
    assert snapshot(done) == before


def test_force_replaces_the_econspin_outputs_and_keeps_the_rest(tmp_path, tiny, done):
    note = write(done, "mine\n", "notes.txt")
    (done / ".metrics.parquet.abc.tmp").write_bytes(b"half")  # what a killed write leaves
    result = invoke("run", tiny, "--out", done, "--steps", "5", "--seed", "7", "--force", "--quiet")
    assert result.exit_code == 0, result.output
    fresh = tmp_path / "fresh"
    assert invoke("run", tiny, "--out", fresh, "--steps", "5", "--seed", "7", "--quiet").exit_code == 0
    assert pd.read_parquet(done / "metrics.parquet").equals(pd.read_parquet(fresh / "metrics.parquet"))
    assert note.read_text() == "mine\n" and written(done) == sorted([*written(fresh), "notes.txt"])
    assert not list(done.glob(".*.tmp")) and assert_run_folder_consistent(done) == "complete"


def test_a_sweep_never_mixes_with_a_run_or_foreign_files(tmp_path, tiny, done):
    before = snapshot(done)
    refused(invoke("sweep", tiny, *GRID, "--out", done, "--quiet"), "holds a run that differs", "kind run there")
    refused(invoke("run", tiny, "--out", done, "--quiet", "--set", "market.d=6"), "market.d 4 there, 6 here")
    assert snapshot(done) == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    write(foreign, "x\n", "data.csv")
    for command in (["sweep", tiny, *GRID], ["run", tiny]):
        refused(invoke(*command, "--out", foreign, "--quiet"), "is not empty (data.csv)", "no econspin output")
        assert written(foreign) == ["data.csv"]
    assert invoke("sweep", tiny, *GRID, "--out", done, "--force", "--quiet").exit_code == 0
    assert "metrics.parquet" not in written(done) and "checkpoint.pt" not in written(done)
    assert assert_sweep_folder_consistent(done) == "complete"
    sweep = tmp_path / "sweep"
    assert invoke("sweep", tiny, *GRID, "--out", sweep, "--quiet").exit_code == 0
    refused(invoke("sweep", tiny, "--grid", "populations.ai.temperature=0.1,2", "--out", sweep, "--quiet"),
            "holds a sweep that differs", "grid")


def test_old_folders_without_a_fingerprint_are_named_as_such(tmp_path, tiny, done):
    manifest = json.loads((done / "manifest.json").read_text())
    (done / "manifest.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "fingerprint"}))
    before = snapshot(done)
    refused(invoke("run", tiny, "--out", done, "--quiet"), "without a fingerprint", "--force")
    refused(invoke("run", "--resume", done, "--steps", "12", "--quiet"), "without a fingerprint")
    (done / "manifest.json").unlink()
    refused(invoke("run", tiny, "--out", done, "--quiet"), "without a fingerprint")
    refused(invoke("run", "--resume", done, "--quiet"), "not a run folder (no readable manifest.json)")
    assert snapshot(done) == {name: data for name, data in before.items() if str(name) != "manifest.json"}
    assert invoke("run", tiny, "--out", done, "--force", "--quiet").exit_code == 0


def test_resume_refuses_a_checkpoint_of_another_computation(tmp_path, tiny, done):
    other = tmp_path / "other"
    assert invoke("run", tiny, "--out", other, "--set", "populations.ai.temperature=0.3", "--quiet").exit_code == 0
    (done / "checkpoint.pt").write_bytes((other / "checkpoint.pt").read_bytes())  # a checkpoint moved by hand
    before = snapshot(done)
    refused(invoke("run", "--resume", done, "--steps", "12", "--quiet"), "checkpoint.pt was made by another",
            "populations.ai.temperature 0.3 in the checkpoint, 0.1 now")
    checkpoint = torch.load(other / "checkpoint.pt", weights_only=True)
    checkpoint["fingerprint"] = {**json.loads((done / "manifest.json").read_text())["fingerprint"], "torch": "1.0"}
    checkpoint["scenario"] = None
    torch.save(checkpoint, done / "checkpoint.pt")
    refused(invoke("run", "--resume", done, "--steps", "12", "--quiet"), "torch 1.0 in the checkpoint")
    (done / "checkpoint.pt").write_bytes(b"garbage")
    refused(invoke("run", "--resume", done, "--steps", "12", "--quiet"), "checkpoint.pt: not a readable checkpoint")
    assert {name for name in snapshot(done)} == {name for name in before}


def ring_network(folder: Path) -> tuple[Path, Path]:
    """An edge-list file (a ring of the tiny scenario's 16 agents) and a scenario trading on it."""
    edges = write(folder, "\n".join(f"{i} {(i + 1) % 16}" for i in range(16)) + "\n", "ring.txt")
    text = TINY.replace("market: {d: 4}", f"market: {{d: 4, network: {{edge_list: {edges}}}}}")
    return edges, write(folder, text, "networked.yaml")


def test_a_file_the_scenario_reads_is_part_of_the_fingerprint(tmp_path):
    edges, networked = ring_network(tmp_path)
    out = tmp_path / "run"
    assert invoke("run", networked, "--out", out, "--steps", "4", "--quiet").exit_code == 0
    edges.write_text(edges.read_text() + "0 8\n")  # the same path, another network
    refused(invoke("run", networked, "--out", out, "--steps", "4", "--quiet"),
            "the contents of market.network.edge_list")
    refused(invoke("run", "--resume", out, "--steps", "8", "--quiet"), "the contents of market.network.edge_list")


def test_resume_below_the_rounds_done_is_refused_and_at_them_does_nothing(tiny, done):
    before = snapshot(done)
    refused(invoke("run", "--resume", done, "--steps", "5", "--quiet"), "--steps 5", "holds 8 rounds already",
            "new total")
    result = invoke("run", "--resume", done, "--steps", "8")
    assert result.exit_code == 0 and "nothing to do" in result.output
    assert invoke("run", "--resume", done, "--quiet").exit_code == 0
    assert snapshot(done) == before


def test_every_file_describes_the_last_round_after_a_resume(tmp_path, tiny, done):
    assert invoke("run", "--resume", done, "--steps", "12", "--quiet").exit_code == 0
    assert assert_run_folder_consistent(done) == "complete"
    manifest = json.loads((done / "manifest.json").read_text())
    assert manifest["fingerprint"]["steps"] == 12 and manifest["resumed_from_round"] == 8
    assert Scenario.from_yaml(done / "scenario.yaml").run.steps == 12
    straight = tmp_path / "straight"
    assert invoke("run", tiny, "--out", straight, "--steps", "12", "--quiet").exit_code == 0
    for name in ("metrics.parquet", "wealth.parquet"):
        assert pd.read_parquet(done / name).equals(pd.read_parquet(straight / name))


def test_an_interrupted_run_is_consistent_and_resumes(tmp_path, tiny, done):
    # a run killed after its checkpoint at round 4 of 12 (rows after the checkpoint were written)
    killed = tmp_path / "killed"
    assert invoke("run", tiny, "--out", killed, "--steps", "6", "--checkpoint-every", "4", "--quiet").exit_code == 0
    checkpoint = torch.load(killed / "checkpoint.pt", weights_only=True)
    assert checkpoint["round"] == 6
    manifest = json.loads((killed / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    for name in ("wealth.parquet", "wealth.png", "concentration.png"):
        (killed / name).unlink()
    (killed / "manifest.json").write_text(json.dumps({**manifest, "status": "incomplete"}))
    assert assert_run_folder_consistent(killed) == "incomplete"
    refused(invoke("plot", killed), "has not finished", f"econspin run --resume {killed}")
    assert invoke("run", "--resume", killed, "--quiet").exit_code == 0  # the last round was played: finish
    assert assert_run_folder_consistent(killed) == "complete"


def test_sweep_resume_refuses_new_settings_and_another_version(tmp_path, tiny):
    sweep = tmp_path / "sweep"
    assert invoke("sweep", tiny, *GRID, "--out", sweep, "--quiet").exit_code == 0
    refused(invoke("sweep", "--resume", sweep, "--steps", "3", "--quiet"), "--resume continues a sweep as it was")
    refused(invoke("sweep", "--resume", tmp_path / "nowhere", "--quiet"), "not a sweep folder (no readable")
    result = invoke("sweep", "--resume", sweep)
    assert result.exit_code == 0 and "nothing to do" in result.output
    manifest = json.loads((sweep / "manifest.json").read_text())
    manifest["status"], manifest["fingerprint"]["econspin"] = "incomplete", "0.0.1"
    (sweep / "manifest.json").write_text(json.dumps(manifest))
    refused(invoke("sweep", "--resume", sweep, "--quiet"), "econspin 0.0.1 in its manifest")
    (sweep / "manifest.json").write_text(json.dumps({**manifest, "device": "cuda:0"}))
    refused(invoke("sweep", "--resume", sweep, "--device", "cpu", "--quiet"), "run on cuda", "--device cuda")
    refused(invoke("run", "--resume", sweep, "--quiet"), "is a sweep folder", "econspin sweep --resume")


# item 4: grid points validated together; points of other shapes run as separate batches


def test_a_sweep_over_the_market_mode_runs_each_mode_as_its_own_batch(tmp_path, tiny):
    out = tmp_path / "modes"
    result = invoke("sweep", tiny, "--grid", "market.mode=expected,sampled", "--grid",
                    "populations.ai.temperature=0.1,inf", "--steps", "5", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(out / "sweep.parquet")
    assert table["populations.ai.temperature"].dtype == float  # "inf" read back from the validated scenario
    assert sorted(table["market.mode"].unique()) == ["expected", "sampled"]
    assert {"phase.png", "concentration.png"} <= set(written(out))
    base = Scenario.from_yaml(tiny)
    for (mode, temperature), rows in table.groupby(["market.mode", "populations.ai.temperature"]):
        point = base.with_overrides({"market.mode": mode, "populations.ai.temperature": temperature})
        alone = simulate(point, steps=5).metrics.sort_values(["replica", "step"], kind="stable")
        assert rows[alone.columns].reset_index(drop=True).equals(alone.reset_index(drop=True)), (mode, temperature)
    assert invoke("plot", out).exit_code == 0


def _weights(tmp_path: Path, d: int) -> Path:
    path = tmp_path / f"ffn-{d}.pt"
    torch.save({"w1": torch.zeros(d + 2, 16), "b1": torch.zeros(16), "w2": torch.zeros(16, d), "b2": torch.zeros(d)},
               path)
    return path


def _couplings(tmp_path: Path, agents: int) -> Path:
    import numpy as np

    path = tmp_path / f"couplings-{agents}.npz"
    np.savez(path, J=np.full((agents, agents), 0.1), H=np.zeros(agents))
    return path


def test_grid_points_valid_alone_but_not_together_are_refused_before_anything_is_written(tmp_path, tiny):
    _, networked = ring_network(tmp_path)
    coupled = f"market: {{d: 4, couplings: {{file: {_couplings(tmp_path, 16)}}}}}"
    couplings = write(tmp_path, TINY.replace("market: {d: 4}", coupled), "couplings.yaml")
    with_weights = write(tmp_path, TINY.replace(
        "spend: 0.2}\n  ai", f"spend: 0.2, correction: {{form: ffn, weights: {_weights(tmp_path, 4)}}}}}\n  ai"),
        "weights.yaml")
    cases = [
        (tiny, ["--set", "market.d_v=4", "--grid", "market.output=random,identity", "--grid", "market.d=4,6"],
         ["market.output=identity", "market.d=6", "d_v = d"]),
        (tiny, ["--grid", "populations.ai.count=4,0"], ["--grid populations.ai.count=0", "populations.ai.count"]),
        (networked, ["--grid", "populations.human.count=12,8"],
         ["--grid populations.human.count=8", "market.network.edge_list", "does not exist"]),
        (with_weights, ["--grid", "market.d=4,6"], ["--grid market.d=6", "correction.weights", "shape"]),
        # points of one shape whose files differ: each set of compile inputs is compiled (econspin.economy)
        (with_weights, ["--grid", f"populations.human.correction.weights={_weights(tmp_path, 4)},"
                        f"{_weights(tmp_path, 6)}"], ["ffn-6.pt", "needs w1 of shape (6, 16)"]),
        (tiny, ["--set", "market.d_v=2", "--grid", "populations.ai.projections.tied=false,true"],
         ["--grid populations.ai.projections.tied=True", "needs market.d_v == market.d_k"]),
        (couplings, ["--grid", f"market.couplings.file={_couplings(tmp_path, 16)},{_couplings(tmp_path, 12)}"],
         ["couplings-12.npz", "J has shape (12, 12), the populations hold 16"]),
        (couplings, ["--grid", "market.couplings.field_key=H,K"], ["field_key=K", "has no array 'K'"]),
    ]
    for scenario, arguments, words in cases:
        out = tmp_path / "out"
        refused(invoke("sweep", scenario, *arguments, "--out", out, "--quiet"), *words)
        assert not out.exists()


def interrupted_local_sweep(tmp_path, tiny, monkeypatch, *options) -> Path:
    """A local sweep of 4 points in shards of 1 point, stopped (as by Ctrl-C) after its first shard."""
    import econspin.sweep

    calls = []
    run_shard = econspin.sweep.run_shard

    def second_raises(*arguments, **keywords):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return run_shard(*arguments, **keywords)

    out = tmp_path / "stopped"
    with monkeypatch.context() as patched:
        patched.setattr(econspin.sweep, "run_shard", second_raises)
        result = invoke("sweep", tiny, "--grid", "populations.ai.temperature=0.1:1:4", "--points-per-shard", "1",
                        "--out", out, "--quiet", *options)
    assert result.exit_code == 130, result.output
    assert sorted(path.name for path in (out / "shards").glob("*.parquet")) == ["shard-0.parquet"]
    return out


def test_a_sweep_cut_into_other_shards_is_refused_and_a_resume_keeps_the_recorded_cut(tmp_path, tiny, monkeypatch):
    out = interrupted_local_sweep(tmp_path, tiny, monkeypatch)
    before = snapshot(out)
    refused(invoke("sweep", "--resume", out, "--points-per-shard", "2", "--quiet"),
            f"error: --resume {out}: holds this sweep cut into 4 shards of at most 1 point, not into 2 shards of at "
            "most 2 points (--points-per-shard); resume without --points-per-shard to go on with its shards")
    # the same command on Ray (8 points a shard unless told) would cut other shards: refused before Ray is needed
    refused(invoke("sweep", tiny, "--grid", "populations.ai.temperature=0.1:1:4", "--backend", "ray", "--out", out,
                   "--quiet"),
            "not into 1 shard of at most 8 points", f"continue it with econspin sweep --resume {out}")
    assert snapshot(out) == before
    result = invoke("sweep", "--resume", out)
    assert result.exit_code == 0, result.output
    assert "1 of 4 shards are finished" in result.output and "1 of 4 shards kept from before" in result.output
    assert assert_sweep_folder_consistent(out) == "complete"
    again = invoke("sweep", tiny, "--grid", "populations.ai.temperature=0.1:1:4", "--points-per-shard", "1",
                   "--out", out)
    assert again.exit_code == 0 and "4 of 4 shards kept from before" in again.output  # the record outlives the sweep


def test_two_cuts_that_give_the_same_shards_keep_the_first_cut_in_the_record_and_the_manifest(tmp_path, tiny):
    """4 points are one batch: at most 4 or at most 5 points a shard is the same single shard."""
    grid = ("--grid", "populations.ai.temperature=0.1:1:4")
    out = tmp_path / "cut"
    first = invoke("sweep", tiny, *grid, "--points-per-shard", "4", "--out", out, "--quiet")
    assert first.exit_code == 0, first.output
    again = invoke("sweep", tiny, *grid, "--points-per-shard", "5", "--out", out)
    assert again.exit_code == 0 and "1 of 1 shards kept from before" in again.output, again.output
    assert assert_sweep_folder_consistent(out) == "complete"  # the manifest's cut is the record's
    assert read_json(out / "manifest.json")["points_per_shard"] == 4
    assert read_json(out / "shards" / "sweep.json")["points_per_shard"] == 4


def test_a_folder_of_the_older_batches_record_is_refused_in_one_line_and_force_replaces_it(tmp_path, tiny, monkeypatch):
    out = interrupted_local_sweep(tmp_path, tiny, monkeypatch)
    (out / "shards").rename(out / "batches")  # what an older econspin left: batches/batch-00000.parquet
    (out / "batches" / "sweep.json").unlink()
    (out / "batches" / "shard-0.parquet").rename(out / "batches" / "batch-00000.parquet")
    before = snapshot(out)
    refused(invoke("sweep", "--resume", out, "--quiet"),
            f"error: --resume {out}: keeps its finished batches in batches/, the record of an older econspin",
            f"delete {out / 'batches'} to run them again")
    refused(invoke("sweep", tiny, "--grid", "populations.ai.temperature=0.1:1:4", "--points-per-shard", "1",
                   "--out", out, "--quiet"), f"--out {out}: keeps its finished batches in batches/")
    assert snapshot(out) == before
    result = invoke("sweep", tiny, "--grid", "populations.ai.temperature=0.1:1:4", "--points-per-shard", "1",
                    "--out", out, "--quiet", "--force")
    assert result.exit_code == 0, result.output
    assert "batches" not in written(out) and assert_sweep_folder_consistent(out) == "complete"
