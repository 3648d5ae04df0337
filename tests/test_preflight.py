"""Silent acceptance and file faults: a warning or one line with exit 2, never a traceback or a partial file."""

import errno
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from test_cli import TINY, write  # the command-line tests' scenario and writer
from typer.testing import CliRunner

import econspin.cli
from econspin import Scenario, simulate
from econspin.cli import app
from econspin.scenario import ScenarioWarning

runner = CliRunner()


def with_market(extra: str) -> str:
    return TINY.replace("market: {d: 4}", f"market: {{d: 4, {extra}}}")


def warnings_of(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("warning: ")]


# each: scenario text (files written beside it), the words of the one warning
WARNED = {
    "edge list naming some agents": (with_market("network: {edge_list: edges.txt}"),
                                     "market.network.edge_list: {dir}/edges.txt names 4 of the 16 agents; "
                                     "12 (agents 4-15) have no edge: they neither buy nor sell"),
    "event after the last round": (TINY + "events:\n  - {at: 8, population: ai, temperature: 0.5}\n",
                                   "events.0.at: round 8 is never reached (a run of run.steps = 8 plays rounds 0..7)"),
    "schedule after the last round": (TINY.replace("temperature: 0.1", "temperature: {schedule: [[0, 1], [20, 0.1]]}"),
                                      "populations.ai.temperature.schedule: round 20 is never reached"),
    "unit under a share budget": (with_market("unit: 0.5"), "market.unit: 0.5 is not read under spend_rule share"),
    "spend under a unit budget": (with_market("spend_rule: unit"),
                                  "populations.human.spend: 0.2 is not read under spend_rule unit"),
}


@pytest.mark.parametrize("command", ["check", "run"])
@pytest.mark.parametrize("case", sorted(WARNED))
def test_what_would_run_but_not_as_meant_is_one_warning_line(tmp_path, case, command):
    text, expected = WARNED[case]
    write(tmp_path, "0 1\n1 2\n2 3\n", "edges.txt")
    path = write(tmp_path, text)
    arguments = ["check", str(path)] if command == "check" else ["run", str(path), "--out", str(tmp_path / "o"),
                                                                  "--quiet"]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    lines = warnings_of(result.output)
    assert lines and any(expected.format(dir=tmp_path) in line for line in lines), result.output


def test_a_scenario_as_meant_warns_of_nothing(tmp_path):
    for path in [write(tmp_path, TINY), *sorted(Path("scenarios").glob("*.yaml"))]:
        result = runner.invoke(app, ["check", str(path)])
        assert result.exit_code == 0 and not warnings_of(result.output), (path, result.output)


def test_the_python_api_warns_too(tmp_path):
    scenario = Scenario.from_dict(yaml.safe_load(TINY + "events:\n  - {at: 30, population: ai, temperature: 0.5}\n"))
    with pytest.warns(ScenarioWarning, match="events.0.at: round 30 is never reached"):
        simulate(scenario)
    edges = write(tmp_path, "0 1\n5 6\n", "edges.txt")
    networked = scenario.with_overrides({"events": [], "market.network": {"edge_list": str(edges)}})
    with pytest.warns(ScenarioWarning, match="names 4 of the 16 agents; 12 \\(agents 2-4, 7-15\\)"):
        simulate(networked)


def _faulty_files(tmp_path: Path) -> dict:
    """Each case: scenario text, the words of the refusal."""
    (tmp_path / "garbage.npz").write_bytes(b"\x00not a zip archive at all")
    np.save(tmp_path / "plain.npy", np.zeros((16, 16)))
    os.replace(tmp_path / "plain.npy", tmp_path / "plain.npz")
    np.savez(tmp_path / "words.npz", J=np.array([["a"] * 16] * 16))
    np.savez(tmp_path / "small.npz", J=np.zeros((3, 3)), H=np.zeros(5))
    np.savez(tmp_path / "fields.npz", J=np.zeros((16, 16)), H=np.zeros(5))
    (tmp_path / "binary.txt").write_bytes(b"\x80\x81\xff\xfe\n")
    write(tmp_path, "0 1 2 3\n", "four.txt")
    write(tmp_path, "a b\n", "letters.txt")
    write(tmp_path, "0 99\n", "outside.txt")

    def couplings(name, extra=""):
        return with_market(f"couplings: {{file: {name}{extra}}}")

    def edges(name):
        return with_market(f"network: {{edge_list: {name}}}")

    return {
        "couplings not a zip": (couplings("garbage.npz"), "market.couplings.file: {dir}/garbage.npz: not an .npz"),
        "couplings an npy": (couplings("plain.npz"), "market.couplings.file: {dir}/plain.npz: not an .npz"),
        "couplings of text": (couplings("words.npz"), "market.couplings.file: {dir}/words.npz: not an .npz"),
        "couplings key missing": (couplings("small.npz", ", coupling_key: K"), "market.couplings.coupling_key"),
        "couplings wrong shape": (couplings("small.npz"), "J has shape (3, 3), the populations hold 16"),
        "fields wrong size": (couplings("fields.npz", ", field_key: H"), "market.couplings.field_key: H in"),
        "edge list binary": (edges("binary.txt"), "market.network.edge_list: cannot read {dir}/binary.txt"),
        "edge list four columns": (edges("four.txt"), "market.network.edge_list: {dir}/four.txt line 1: a line is"),
        "edge list letters": (edges("letters.txt"), "{dir}/letters.txt line 1: 'a' is not an agent index"),
        "edge list node outside": (edges("outside.txt"), "{dir}/outside.txt line 1: agent 99 does not exist"),
    }


FAULTY_FILES = ["couplings not a zip", "couplings an npy", "couplings of text", "couplings key missing",
                "couplings wrong shape", "fields wrong size", "edge list binary", "edge list four columns",
                "edge list letters", "edge list node outside"]


def test_the_faulty_file_table_is_complete(tmp_path):
    assert sorted(_faulty_files(tmp_path)) == sorted(FAULTY_FILES)


@pytest.mark.parametrize("command", ["check", "run"])
@pytest.mark.parametrize("case", FAULTY_FILES)
def test_a_corrupt_file_is_one_line_naming_it_and_status_2(tmp_path, case, command):
    text, expected = _faulty_files(tmp_path)[case]
    path, out = write(tmp_path, text), tmp_path / "out"
    arguments = ["check", str(path)] if command == "check" else ["run", str(path), "--out", str(out), "--quiet"]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message, message
    assert message.startswith(f"error: {path}: ") and expected.format(dir=tmp_path) in message, message
    assert not out.exists()


IGNORED_OPTIONS = {
    "seed with an edge list": ("network: {edge_list: edges.txt, seed: 4}", "market.network.seed: an edge list is read"),
    "params with an edge list": ("network: {edge_list: edges.txt, params: {p: 0.1}}",
                                 "market.network.params.p: an edge list reads only params.directed"),
    "seed for a generator that draws nothing": ("network: {generator: cycle_graph, seed: 4}",
                                                "market.network.seed: cycle_graph draws nothing at random"),
    "coupling key with curie_weiss": ("couplings: {curie_weiss: 1.0, coupling_key: K}",
                                      "market.couplings.coupling_key: curie_weiss couplings are made"),
    "field key with curie_weiss": ("couplings: {curie_weiss: 1.0, field_key: H}",
                                   "market.couplings.field_key: curie_weiss couplings are made"),
}


@pytest.mark.parametrize("command", ["check", "run"])
@pytest.mark.parametrize("case", sorted(IGNORED_OPTIONS))
def test_an_option_that_would_be_ignored_is_refused_naming_its_key(tmp_path, case, command):
    extra, expected = IGNORED_OPTIONS[case]
    write(tmp_path, "0 1\n", "edges.txt")
    path, out = write(tmp_path, with_market(extra)), tmp_path / "out"
    arguments = ["check", str(path)] if command == "check" else ["run", str(path), "--out", str(out), "--quiet"]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and expected in message and "remove it" in message, message
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with a GPU runs device: cuda")
@pytest.mark.parametrize("command", ["check", "run", "sweep"])
def test_cuda_without_a_gpu_is_one_line(tmp_path, command):
    path, out = write(tmp_path, TINY.replace("device: cpu", "device: cuda")), tmp_path / "out"
    arguments = {"check": ["check", str(path)], "run": ["run", str(path), "--out", str(out), "--quiet"],
                 "sweep": ["sweep", str(path), "--grid", "populations.ai.spend=0.1,0.2", "--out", str(out)]}[command]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and "run.device: cuda was asked for but no CUDA device" in message
    assert not out.exists()


def _fail_on_call(number: int, real, error: OSError):
    calls = []

    def writer(*arguments, **keywords):
        calls.append(1)
        if len(calls) == number:
            raise error
        return real(*arguments, **keywords)

    return writer


def test_a_disk_that_fills_mid_run_is_one_line_and_leaves_complete_files(tmp_path, monkeypatch):
    from econspin import output

    path, out = write(tmp_path, TINY), tmp_path / "out"
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def filling(path, write):  # the real atomic writer, on a disk that fills during the third table written
        def partial(stream):
            stream.write(b"PAR1 half a table")
            raise full

        return output.write_atomically(path, partial)

    calls = []

    def write_table(path, table):
        calls.append(path)
        if len(calls) == 3:
            return filling(path, None)
        return output.write_table(path, table)

    monkeypatch.setattr(econspin.cli, "write_table", write_table)
    result = runner.invoke(app, ["run", str(path), "--out", str(out), "--quiet", "--checkpoint-every", "2"])
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message, message
    assert message == f"error: {out}/metrics.parquet: No space left on device", message
    assert not list(out.glob(".*.tmp"))
    metrics = pd.read_parquet(out / "metrics.parquet")  # the last complete table: step 0 and 2 writes of 2 rounds
    assert len(metrics) == 5 * 2
    assert torch.load(out / "checkpoint.pt", weights_only=True)["metrics_rows"] == len(metrics)


def test_a_folder_made_read_only_mid_run_is_one_line(tmp_path, monkeypatch):
    from econspin import output

    path, out = write(tmp_path, TINY), tmp_path / "out"
    real = econspin.cli.save_checkpoint

    def refused(*arguments, **keywords):  # what creating a file in a read-only folder does (root is not refused)
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), keywords.get("dir"))

    saved = []

    def then_read_only(*arguments, **keywords):  # after the checkpoint of round 2 (round 0's is the first)
        real(*arguments, **keywords)
        saved.append(True)
        if len(saved) == 2:
            out.chmod(0o500)
            monkeypatch.setattr(output.tempfile, "mkstemp", refused)

    monkeypatch.setattr(econspin.cli, "save_checkpoint", then_read_only)
    try:
        result = runner.invoke(app, ["run", str(path), "--out", str(out), "--quiet", "--checkpoint-every", "2"])
    finally:
        out.chmod(0o700)
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert message == f"error: {out}/metrics.parquet: Permission denied", message
    assert not list(out.glob(".*.tmp"))
    assert len(pd.read_parquet(out / "metrics.parquet")) == 3 * 2  # steps 0..2, two replicas
