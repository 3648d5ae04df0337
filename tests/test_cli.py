"""The command line: errors, the run folder, resume, sweeps."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from econspin.cli import app
from econspin.output import write_atomically

runner = CliRunner()

TINY = """
name: tiny
populations:
  human: {count: 12, temperature: 1.0, spend: 0.2}
  ai: {count: 4, temperature: 0.1, spend: 0.2}
market: {d: 4}
run: {steps: 8, replicas: 2, seed: 3, device: cpu}
"""


def write(tmp_path: Path, text: str, name: str = "scenario.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


BAD_SCENARIOS = {
    "malformed": ("populations: [unclosed", "not valid YAML"),
    "not a mapping": ("- just\n- a list\n", "a scenario is a mapping"),
    "wrong type": (TINY.replace("count: 12", "count: many"), "populations.human.count"),
    "zero count": (TINY.replace("count: 12", "count: 0"), "populations.human.count"),
    "negative count": (TINY.replace("count: 12", "count: -3"), "populations.human.count"),
    "negative temperature": (TINY.replace("temperature: 1.0", "temperature: -1"), "populations.human.temperature"),
    "spend zero": (TINY.replace("spend: 0.2}\n  ai", "spend: 0}\n  ai"), "populations.human.spend"),
    "spend above one": (TINY.replace("spend: 0.2}\n  ai", "spend: 1.5}\n  ai"), "populations.human.spend"),
    "misspelt key": (TINY.replace("temperature: 1.0", "temprature: 1.0"), "did you mean 'temperature'"),
    "misspelt market key": (TINY.replace("market: {d: 4}", "market: {d: 4, respons: vmf}"), "did you mean 'response'"),
    "unknown population in event": (TINY + "events:\n  - {at: 3, population: robots, temperature: 0.1}\n",
                                    "unknown population 'robots'"),
    "missing graph file": (TINY.replace("market: {d: 4}", "market: {d: 4, network: {edge_list: nowhere.txt}}"),
                           "market.network.edge_list"),
    "too large for memory": (TINY.replace("count: 12", "count: 2000000"), "run.memory_budget_mb"),
    "bad response": (TINY.replace("market: {d: 4}", "market: {d: 4, response: cubic}"), "market.response"),
    "option the variant ignores": (TINY.replace("temperature: 1.0", "temperature: {distribution: uniform, mean: 0.5}"),
                                   "populations.human.temperature.mean"),
    # nested values: the nested key and what is wrong with it, in the scenario's words
    "temperature neither number nor form": (TINY.replace("temperature: 1.0", "temperature: hot"),
                                            "populations.human.temperature: a temperature is a number >= 0, {schedule"),
    "temperature as a bare list": (TINY.replace("temperature: 1.0", "temperature: [[0, 1.0], [5, 0.1]]"),
                                   "populations.human.temperature: a temperature is a number"),
    "schedule temperature not a number": (TINY.replace("temperature: 1.0", "temperature: {schedule: [[0, x]]}"),
                                          "populations.human.temperature.schedule.0.1: should be a number"),
    "schedule entry of three": (TINY.replace("temperature: 1.0", "temperature: {schedule: [[0, 1, 2]]}"),
                                "schedule.0: each schedule entry is a [round, temperature] pair"),
    "distribution without a kind": (TINY.replace("temperature: 1.0", "temperature: {mean: 2}"),
                                    "populations.human.temperature.distribution: required key missing"),
    "distribution sigma not a number": (
        TINY.replace("temperature: 1.0", "temperature: {distribution: lognormal, sigma: wide}"),
        "populations.human.temperature.sigma: should be a number"),
    "uniform low above high": (
        TINY.replace("temperature: 1.0", "temperature: {distribution: uniform, low: 2, high: 1}"),
        "populations.human.temperature: distribution uniform needs low <= high"),
    "event round not a number": (TINY + "events:\n  - {at: soon, population: ai}\n",
                                 "events.0.at: should be a whole number"),
    "event not a mapping": (TINY + "events:\n  - 5\n", "events.0: should be a mapping of keys (at, population"),
    "network not a mapping": (TINY.replace("market: {d: 4}", "market: {d: 4, network: ring}"),
                              "market.network: should be a mapping of keys (generator, params, edge_list"),
    "network params not a mapping": (
        TINY.replace("market: {d: 4}", "market: {d: 4, network: {generator: cycle_graph, params: 5}}"),
        "market.network.params: should be a mapping of keys"),
    # fixed couplings replace the trade market: a network beside them would be read and ignored
    "couplings beside a network": (
        TINY.replace("market: {d: 4}", "market: {d: 4, couplings: {curie_weiss: 1}, network: {generator: path_graph}}"),
        "market.network: market.couplings replaces the trade market with fixed couplings, so no trade network is "
        "read; remove one of market.network and market.couplings"),
}


@pytest.mark.parametrize("case", sorted(BAD_SCENARIOS))
def test_bad_scenarios_give_one_line_and_status_2_and_write_nothing(tmp_path, case):
    text, expected = BAD_SCENARIOS[case]
    path = write(tmp_path, text)
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(path), "--out", str(out), "--quiet"])
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert "Traceback" not in message and len(message.splitlines()) == 1, message
    assert expected in message and "error:" in message
    assert str(path) in message or "scenario.yaml" in message
    assert "Input should be a valid" not in message and "(top level)" not in message
    assert not out.exists()


NETWORK = TINY.replace("market: {d: 4}", "market: {d: 4, network: NETWORK}")
BLOCKS = "{generator: stochastic_block_model, params: {p: {human: {human: 0.1, ai: 0.2}, ai: P_AI}}}"
BAD_NETWORKS = {  # the network, what the one line says
    "unknown generator": ("{generator: no_such_graph}",
                          "market.network.generator: networkx has no generator 'no_such_graph'"),
    "edge list given a generator's parameter": ("{edge_list: edges.txt, params: {p: 0.1}}",
                                                "market.network.params.p: an edge list reads only params.directed"),
    "edge list directed neither true nor false": ("{edge_list: edges.txt, params: {directed: sometimes}}",
                                                  "market.network.params.directed: should be true or false"),
    "probability above one": ("{generator: gnp_random_graph, params: {p: 2}}",
                              "market.network.params.p: should be a probability from 0 to 1 (got 2)"),
    "parameter G(n, p) does not read": ("{generator: erdos_renyi_graph, params: {p: 0.1, k: 2}}",
                                        "market.network.params.k: erdos_renyi_graph does not read it"),
    "torch sampler for a graph it cannot draw": ("{generator: watts_strogatz_graph, params: {k: 2}, sampler: torch}",
                                                 "market.network.sampler: torch draws only"),
    "block model naming no population": (BLOCKS.replace("P_AI", "{human: 0.2, ai: 0.1}, robots: {ai: 0.1}"),
                                         "market.network.params.p.robots: no population 'robots'"),
    "block model missing a pair": (BLOCKS.replace("P_AI", "{ai: 0.1}"),
                                   "market.network.params.p.ai.human: required key missing"),
    "block model asymmetric": (BLOCKS.replace("P_AI", "{human: 0.3, ai: 0.1}"),
                               "market.network.params.p.human.ai: 0.2 differs from market.network.params.p.ai.human"),
}
BAD_EDGE_LISTS = {  # the file's text, what the one line says after "market.network.edge_list: <file> "
    "agent that does not exist": ("0 1\n1 16\n", "line 2: agent 16 does not exist; the populations hold agents 0..15"),
    "negative agent": ("-1 2\n", "line 1: agent -1 does not exist"),
    "one field": ("0 1\n\n# a comment\n3\n", "line 4: a line is 'i j' or 'i j weight', got 1 field"),
    "four fields": ("0 1 2 3\n", "line 1: a line is 'i j' or 'i j weight', got 4 fields"),
    "agent not a whole number": ("0 1\n1 2.5\n", "line 2: '2.5' is not an agent index"),
    "weight not a number": ("0 1 heavy\n", "line 1: weight 'heavy' is not a number"),
    "weight zero": ("0 1 1\n1 2 0\n", "line 2: weight 0.0 should be a finite number > 0"),
    "weight infinite": ("0 1 inf\n", "line 1: weight inf should be a finite number > 0"),
    "edge data other than weight": ("0 1 {'colour': 2}\n", "line 1: edge data 'colour' is not read"),
    "edge data not a dictionary": ("0 1 {weight\n", "line 1: '{weight' is not a data dictionary"),
}


def one_line_error(tmp_path, network: str, edges: str) -> str:
    """Run a scenario with this network (and edges.txt beside it): status 2, one line, nothing written."""
    path = write(tmp_path, NETWORK.replace("NETWORK", network))
    write(tmp_path, edges, "edges.txt")
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(path), "--out", str(out), "--quiet"])
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert "Traceback" not in message and len(message.splitlines()) == 1, message
    assert message.startswith(f"error: {path}: "), message
    assert not out.exists()
    return message


@pytest.mark.parametrize("case", sorted(BAD_NETWORKS))
def test_bad_networks_give_one_line_naming_the_key(tmp_path, case):
    network, expected = BAD_NETWORKS[case]
    message = one_line_error(tmp_path, network, "0 1\n")
    assert expected in message, message


@pytest.mark.parametrize("case", sorted(BAD_EDGE_LISTS))
def test_bad_edge_lists_give_one_line_naming_file_line_and_key(tmp_path, case):
    edges, expected = BAD_EDGE_LISTS[case]
    message = one_line_error(tmp_path, "{edge_list: edges.txt}", edges)
    assert f"market.network.edge_list: {tmp_path / 'edges.txt'} {expected}" in message, message


def test_check_reads_the_edge_list_as_a_run_would(tmp_path):
    path = write(tmp_path, NETWORK.replace("NETWORK", "{edge_list: edges.txt}"))
    write(tmp_path, "0 1\n1 2 heavy\n", "edges.txt")
    result = runner.invoke(app, ["check", str(path)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert f"market.network.edge_list: {tmp_path / 'edges.txt'} line 2: weight 'heavy'" in result.output
    write(tmp_path, "0 1\n1 2 2.5\n", "edges.txt")
    assert runner.invoke(app, ["check", str(path)]).exit_code == 0


def test_bad_override_names_the_key(tmp_path):
    path = write(tmp_path, TINY)
    result = runner.invoke(app, ["check", str(path), "--set", "populations.ai.temprature=0.5"])
    assert result.exit_code == 2
    assert "did you mean 'temperature'" in result.output
    result = runner.invoke(app, ["check", str(path), "--set", "populations.ai.spend=2"])
    assert result.exit_code == 2 and "populations.ai.spend" in result.output


@pytest.mark.parametrize("pair, expected", [("=3", "--set '=3': the key is empty"),
                                            (" =3", "the key is empty"),
                                            ("run.steps=0", "scenario.yaml: run.steps: Input should be greater than 0"),
                                            ("run.seed=x", "scenario.yaml: run.seed: should be a whole number")])
def test_bad_override_is_one_line_without_internal_prefixes(tmp_path, pair, expected):
    path = write(tmp_path, TINY)
    result = runner.invoke(app, ["check", str(path), "--set", pair])
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and expected in message and "override:" not in message, message


def test_check_prints_the_resolved_scenario(tmp_path):
    path = write(tmp_path, TINY)
    result = runner.invoke(app, ["check", str(path), "--set", "populations.ai.temperature=0.05"])
    assert result.exit_code == 0, result.output
    assert "temperature: 0.05" in result.output and "memory_budget_mb" in result.output


def test_check_says_when_run_chunk_takes_a_round_over_the_budget(tmp_path):
    """run.chunk sets the blocks whatever run.memory_budget_mb: check says the round is over it, not within."""
    path = write(tmp_path, TINY.replace("count: 12", "count: 2048"))
    sized = runner.invoke(app, ["check", str(path), "--set", "run.memory_budget_mb=16"])
    assert sized.exit_code == 0, sized.output
    assert "a round within run.memory_budget_mb = 16 (16 MiB)" in sized.output
    chunked = runner.invoke(app, ["check", str(path), "--set", "run.memory_budget_mb=16", "--set", "run.chunk=2048"])
    assert chunked.exit_code == 0, chunked.output
    assert "a round over, in blocks of run.chunk = 2048 rows, run.memory_budget_mb = 16 (16 MiB)" in chunked.output
    small = runner.invoke(app, ["check", str(path), "--set", "run.memory_budget_mb=16", "--set", "run.chunk=8"])
    assert "a round within run.memory_budget_mb = 16" in small.output


def test_run_writes_the_whole_folder(tmp_path):
    path = write(tmp_path, TINY)
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(path), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    for name in ("scenario.yaml", "metrics.parquet", "wealth.parquet", "manifest.json", "checkpoint.pt",
                 "concentration.png", "wealth.png"):
        assert (out / name).exists(), name
    metrics = pd.read_parquet(out / "metrics.parquet")
    assert len(metrics) == (8 + 1) * 2  # step 0, the initial state, then every round
    assert list(metrics.columns) == ["step", "replica", "hhi", "cr4", "gini", "attention_entropy", "surplus",
                                     "total_wealth", "order", "wealth_share_human", "wealth_share_ai"]
    assert not list(out.glob(".*.tmp"))
    assert runner.invoke(app, ["plot", str(out)]).exit_code == 0


@pytest.mark.parametrize("kernel", ["fused", "reference"])
def test_resume_continues_to_the_same_numbers(tmp_path, kernel):
    """A sampled run split at round 12 and resumed ends bit-identical to the straight run, on either kernel."""
    sampled = f"device: cpu, kernel: {kernel}}}\nmarket: {{d: 4, mode: sampled}}"
    path = write(tmp_path, TINY.replace("device: cpu}", sampled).replace("market: {d: 4}\n", ""))
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert runner.invoke(app, ["run", str(path), "--out", str(straight), "--steps", "30", "--quiet"]).exit_code == 0
    assert runner.invoke(app, ["run", str(path), "--out", str(split), "--steps", "12", "--quiet"]).exit_code == 0
    result = runner.invoke(app, ["run", "--resume", str(split), "--steps", "30", "--quiet"])
    assert result.exit_code == 0, result.output
    assert pd.read_parquet(straight / "metrics.parquet").equals(pd.read_parquet(split / "metrics.parquet"))
    one = torch.load(straight / "checkpoint.pt", weights_only=True)["tensors"]
    other = torch.load(split / "checkpoint.pt", weights_only=True)["tensors"]
    assert all(torch.equal(one[key], other[key]) for key in one)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "table.bin"
    target.write_bytes(b"old")

    def broken(stream):
        stream.write(b"half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_atomically(target, broken)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["table.bin"]


def test_sweep_over_ai_temperature(tmp_path):
    text = TINY.replace("count: 12", "count: 80").replace("count: 4", "count: 20").replace("d: 4", "d: 16")
    path = write(tmp_path, text)
    out = tmp_path / "sweep"
    result = runner.invoke(app, ["sweep", str(path), "--grid", "populations.ai.temperature=0.02,2",
                                 "--grid", "populations.human.spend=0.1:0.2:2", "--steps", "40", "--device", "auto",
                                 "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(out / "sweep.parquet")
    assert len(table) == 2 * 2 * 2 * (40 + 1)
    assert {"populations.ai.temperature", "populations.human.spend", "point", "replica", "step"} <= set(table.columns)
    for name in ("phase.png", "concentration.png", "manifest.json", "scenario.yaml"):
        assert (out / name).exists()
    late = table[table.step > 30].groupby("populations.ai.temperature")[["hhi", "wealth_share_ai"]].mean()
    assert late.loc[0.02, "hhi"] > 2 * late.loc[2.0, "hhi"]  # decisive AI agents concentrate the market
    assert late.loc[0.02, "wealth_share_ai"] > late.loc[2.0, "wealth_share_ai"] + 0.1  # and earn more


def test_sweep_bad_grid_is_one_line(tmp_path):
    path = write(tmp_path, TINY)
    for grid, expected in [("populations.ai.temperature=log:0:1:3", "a > 0"),
                           ("populations.ai.temperatur=0.1,0.2", "did you mean"),
                           ("populations.ai.temperature", "key.path=SPEC"),
                           ("run.steps=1,2", "run settings")]:
        result = runner.invoke(app, ["sweep", str(path), "--grid", grid, "--out", str(tmp_path / "x"), "--quiet"])
        assert result.exit_code == 2, (grid, result.output)
        assert expected in result.output and len(result.output.strip().splitlines()) == 1
        assert not (tmp_path / "x").exists()


def test_resume_refuses_new_settings(tmp_path):
    path = write(tmp_path, TINY)
    out = tmp_path / "run"
    assert runner.invoke(app, ["run", str(path), "--out", str(out), "--quiet"]).exit_code == 0
    result = runner.invoke(app, ["run", "--resume", str(out), "--seed", "9", "--quiet"])
    assert result.exit_code == 2 and "--resume continues a run as it was" in result.output
    result = runner.invoke(app, ["run", "--resume", str(tmp_path / "nowhere"), "--quiet"])
    assert result.exit_code == 2 and "not a run folder" in result.output


def test_resume_refuses_a_checkpoint_made_on_another_device(tmp_path):
    import json

    path = write(tmp_path, TINY)
    out = tmp_path / "run"
    assert runner.invoke(app, ["run", str(path), "--out", str(out), "--steps", "4", "--quiet"]).exit_code == 0
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["device"] == "cpu"
    written = {name: (out / name).read_bytes() for name in ("scenario.yaml", "metrics.parquet", "manifest.json")}

    def resume_on_cpu(checkpoint_device, manifest_device):
        saved = dict(checkpoint)
        saved.pop("device")
        if checkpoint_device is not None:
            saved["device"] = checkpoint_device
        torch.save(saved, out / "checkpoint.pt")
        manifest = json.loads(written["manifest.json"])
        (out / "manifest.json").write_text(json.dumps({**manifest, "device": manifest_device}))
        return runner.invoke(app, ["run", "--resume", str(out), "--device", "cpu", "--steps", "8", "--quiet"])

    # the checkpoint's own record decides; a checkpoint without one falls back on the manifest
    for checkpoint_device, manifest_device in (("cuda", "cpu"), (None, "cuda:0")):
        result = resume_on_cpu(checkpoint_device, manifest_device)
        assert result.exit_code == 2, result.output
        message = result.output.strip()
        assert len(message.splitlines()) == 1 and "Traceback" not in message
        assert "checkpoint.pt" in message and "made on cuda" in message and "--device cuda" in message
        assert all((out / name).read_bytes() == written[name] for name in ("scenario.yaml", "metrics.parquet"))
    result = resume_on_cpu(None, "cpu")
    assert result.exit_code == 0, result.output
    assert len(pd.read_parquet(out / "metrics.parquet")) == (8 + 1) * 2


BAD_OPTIONS = {
    "zero steps": (["run", "{scenario}", "--steps", "0"], "--steps"),
    "negative steps": (["run", "{scenario}", "--steps", "-3"], "--steps"),
    "zero replicas": (["run", "{scenario}", "--replicas", "0"], "--replicas"),
    "zero checkpoint interval": (["run", "{scenario}", "--checkpoint-every", "0"], "--checkpoint-every"),
    "negative checkpoint interval": (["run", "{scenario}", "--checkpoint-every", "-2"], "--checkpoint-every"),
    "seed not a number": (["run", "{scenario}", "--seed", "three"], "--seed"),
    "sweep zero steps": (["sweep", "{scenario}", "--grid", "populations.ai.spend=0.1,0.2", "--steps", "0"], "--steps"),
    "sweep zero replicas": (["sweep", "{scenario}", "--grid", "populations.ai.spend=0.1", "--replicas", "0"],
                            "--replicas"),
    "port zero": (["viz", "{scenario}", "--port", "0"], "--port"),
    "port too high": (["viz", "{scenario}", "--port", "70000"], "--port"),
    "zero bench threads": (["bench", "--threads", "0", "--json", "{out}"], "--threads"),
    "zero bench repeats": (["bench", "--repeats", "0", "--json", "{out}"], "--repeats"),
    "bench size one": (["bench", "--sizes", "1", "--json", "{out}"], "--sizes"),
    "memory budget zero": (["run", "{scenario}", "--set", "run.memory_budget_mb=0"], "run.memory_budget_mb"),
    "unknown command": (["rn", "{scenario}"], "No such command 'rn'"),
    "missing scenario": (["sweep"], "Missing argument"),
}


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_options_out_of_range_give_one_line_and_status_2_and_write_nothing(tmp_path, case):
    arguments, expected = BAD_OPTIONS[case]
    path, out = write(tmp_path, TINY), tmp_path / "out"
    arguments = [part.format(scenario=path, out=out) for part in arguments]
    if arguments[0] in ("run", "sweep"):
        arguments += ["--out", str(out), "--quiet"]
    result = runner.invoke(app, arguments)
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert "Traceback" not in message and len(message.splitlines()) == 1, message
    assert message.startswith("error:") and expected in message, message
    assert not out.exists()


def test_a_negative_seed_is_a_seed(tmp_path):
    path = write(tmp_path, TINY)
    result = runner.invoke(app, ["run", str(path), "--seed", "-5", "--steps", "2", "--out", str(tmp_path / "r"),
                                 "--quiet"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("typed", [":smile:", "[bold]x[/bold]", "-1:", "a:b:n"])
def test_what_the_user_typed_is_echoed_literally_not_as_markup(tmp_path, typed):
    path = write(tmp_path, TINY)
    for arguments in (["sweep", str(path), "--grid", f"populations.ai.temperature={typed}", "--out",
                       str(tmp_path / "x"), "--quiet"],
                      ["check", str(path), "--set", f"populations.{typed}=1"]):
        result = runner.invoke(app, arguments)
        assert result.exit_code == 2, result.output
        message = result.output.strip()
        assert len(message.splitlines()) == 1 and typed in message, message
    help_text = runner.invoke(app, ["sweep", "--help"]).output
    assert "a:b:n, log:a:b:n" in help_text


def _file_system_faults(tmp_path: Path) -> dict:
    """Each case: command-line arguments, the expected words, and the paths that must not appear."""
    path = write(tmp_path, TINY)
    a_file = write(tmp_path, "not a folder\n", "notes.txt")
    torch.save({"w1": torch.zeros(2, 2)}, tmp_path / "short.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"not a torch file")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")

    def with_weights(name):
        text = TINY.replace("spend: 0.2}\n  ai", f"spend: 0.2, correction: {{form: ffn, weights: {name}}}}}\n  ai")
        return str(write(tmp_path, text, f"ffn-{name}.yaml"))

    out = str(tmp_path / "out")
    return {
        "out is a file": (["run", str(path), "--out", str(a_file)], "--out", "is a file, not a folder"),
        "out under a file": (["run", str(path), "--out", f"{a_file}/sub/run"], "--out", "is a file, not a folder"),
        "sweep out is a file": (["sweep", str(path), "--grid", "populations.ai.spend=0.1", "--out", str(a_file)],
                                "--out", "is a file, not a folder"),
        "sweep out under a file": (["sweep", str(path), "--grid", "populations.ai.spend=0.1", "--out",
                                    f"{a_file}/sub"], "--out", "is a file, not a folder"),
        "bench json is a folder": (["bench", "--quick", "--json", str(tmp_path)], "--json", "is a folder, not a file"),
        "bench json under a file": (["bench", "--quick", "--json", f"{a_file}/b.json"], "--json", "is a file"),
        "folder as scenario": (["run", str(tmp_path), "--out", out], str(tmp_path), "is a folder, not a scenario"),
        "check a folder": (["check", str(tmp_path)], str(tmp_path), "is a folder, not a scenario"),
        "missing scenario": (["run", str(tmp_path / "nowhere.yaml"), "--out", out], "nowhere.yaml", "cannot read"),
        "missing weights": (["run", with_weights("gone.pt"), "--out", out], "correction.weights", "does not exist"),
        "corrupt weights": (["run", with_weights("corrupt.pt"), "--out", out], "correction.weights",
                            "not a torch weights file"),
        "weights not a dict": (["run", with_weights("tensor.pt"), "--out", out], "correction.weights",
                               "not a dict of w1, b1, w2, b2"),
        "weights missing tensors": (["run", with_weights("short.pt"), "--out", out], "correction.weights",
                                    "needs w1 of shape"),
    }


FILE_SYSTEM_FAULTS = [  # the keys of _file_system_faults (it writes its files into each test's tmp_path)
    "out is a file", "out under a file", "sweep out is a file", "sweep out under a file", "bench json is a folder",
    "bench json under a file", "folder as scenario", "check a folder", "missing scenario", "missing weights",
    "corrupt weights", "weights not a dict", "weights missing tensors",
]


def test_the_file_system_fault_table_is_complete(tmp_path):
    assert sorted(_file_system_faults(tmp_path)) == sorted(FILE_SYSTEM_FAULTS)


@pytest.mark.parametrize("case", FILE_SYSTEM_FAULTS)
def test_file_system_faults_give_one_line_and_status_2_and_write_nothing(tmp_path, case):
    arguments, names, expected = _file_system_faults(tmp_path)[case]
    before = sorted(tmp_path.rglob("*"))
    result = runner.invoke(app, [*arguments, "--quiet"] if arguments[0] in ("run", "sweep") else arguments)
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert "Traceback" not in message and len(message.splitlines()) == 1, message
    assert message.startswith("error:") and names in message and expected in message, message
    assert sorted(tmp_path.rglob("*")) == before


def test_python_dash_m_econspin_is_the_command_line():
    """``python -m econspin`` (what experiments/gpu_check.py runs) is the ``econspin`` script."""
    result = subprocess.run([sys.executable, "-m", "econspin", "bench", "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "Usage: econspin bench" in result.stdout
