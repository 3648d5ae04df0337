"""The rollout a GPU can run without waiting: no host synchronisation inside a chunk, same bits.

On the CPU nothing waits, but the operations that would make a GPU's host wait are
dispatched all the same, and :class:`econspin.host_syncs.HostSyncRecorder` sees them:
reading a tensor as a Python number and sizing a result from a tensor's values (copies of
device tensors to the host can only occur with a device; experiments/gpu_check.py checks
those on a GPU). Every path a GPU rollout takes is recorded over a chunk of rounds here:
the fused expected and sampled kernels, the FlexAttention kernel (expected mode, as the CPU runs
it: eagerly), the uniform O(N) path, the sparse network, the
corrections none/tap/ffn, the responses, schedules and events, and the metrics.
"""

from __future__ import annotations

import json
import math
import os

import pandas as pd
import pytest
import torch
import yaml
from helpers import needs_triton, scenario
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.attention.flex_attention import flex_attention

from econspin import Scenario
from econspin.host_syncs import HostSyncRecorder
from econspin.randomness import round_draws
from econspin.response import RejectionBudget
from econspin.simulate import Rollout
from econspin.wood import _wood_component

# experiments/gpu_check.py runs this file with ECONSPIN_TEST_DEVICE=cuda, where the recorder
# also sees copies of device tensors to the host
DEVICE = os.environ.get("ECONSPIN_TEST_DEVICE", "cpu")
SCHEDULE = {"schedule": [[0, 0.5], [2, 0.0], [3, math.inf], [4, 0.3]]}
EVENT = [{"at": 3, "population": "ai", "temperature": 0.1, "field_shift": 0.7}]
ZERO = {"scale": 0.0}


def populations(correction="none", projections=None, buyers=True, ai_correction="tap") -> dict:
    """Two populations: a schedule of temperatures through T = 0 and T = inf, and a correction."""
    extra = {"projections": projections} if projections is not None else {}
    return {
        "human": {
            "count": 7,
            "temperature": 1.0,
            "spend": 0.2,
            "buys": buyers,
            "correction": {"form": correction},
            **extra,
        },
        "ai": {"count": 5, "temperature": SCHEDULE, "spend": 0.3, "correction": {"form": ai_correction}, **extra},
    }


CASES = {
    "expected fused": dict(populations=populations()),
    "expected tap": dict(populations=populations("tap")),
    "expected ffn": dict(populations=populations("ffn")),
    "expected large_d": dict(populations=populations(), response="large_d"),
    "expected flex": dict(populations=populations(), run={"kernel": "flex"}),  # FlexAttention's eager form
    "expected triton": dict(populations=populations(), run={"kernel": "triton"}),  # interpreted on a CPU
    "sampled triton": dict(mode="sampled", response="vmf", populations=populations(), run={"kernel": "triton"}),
    "expected without buyers in one population": dict(populations=populations(buyers=False)),
    "sampled vmf": dict(mode="sampled", response="vmf", populations=populations()),
    "sampled vmf d = 2": dict(mode="sampled", response="vmf", d=2, populations=populations()),
    "sampled large_d": dict(mode="sampled", response="large_d", populations=populations()),
    "sampled Glauber d = 1": dict(mode="sampled", response="vmf", d=1, populations=populations()),
    "sampled sphere": dict(mode="sampled", response="sphere", populations=populations(ai_correction="none")),
    "uniform sampled": dict(mode="sampled", visibility=0.0, populations=populations(projections=ZERO)),
    "uniform expected": dict(visibility=0.0, populations=populations(projections=ZERO)),
    "sparse network": dict(
        network={"generator": "erdos_renyi_graph", "params": {"p": 0.4}, "layout": "sparse"},
        populations=populations(),
    ),
    "sparse network sampled": dict(
        mode="sampled",
        network={"generator": "erdos_renyi_graph", "params": {"p": 0.4}, "layout": "sparse"},
        populations=populations(),
    ),
}


def rollout(scenarios, replicas=None, dtype="float64") -> Rollout:
    """A rollout of the given scenarios (one batch element each) on the device under test."""
    scenarios = scenarios if isinstance(scenarios, list) else [scenarios]
    return Rollout.create(scenarios, replicas or list(range(len(scenarios))), DEVICE, dtype)


def case_scenario(case: str) -> Scenario:
    """The case's economy of :func:`helpers.scenario`, with an event at round 3 (temperature and field)."""
    built = scenario(**CASES[case])
    return Scenario.from_dict({**yaml.safe_load(built.to_yaml()), "events": EVENT})


@pytest.mark.parametrize("case", [pytest.param(name, marks=[needs_triton] * ("triton" in name)) for name in CASES])
def test_no_host_synchronisation_inside_a_chunk(case):
    run = rollout([case_scenario(case)] * 2, dtype="float32")
    run.sync_free = True
    run.advance(1)  # round 0's metrics and the first round, outside the recorded chunk
    budget = RejectionBudget.on(run.economy.device, 24) if run.economy.mode == "sampled" else None
    with HostSyncRecorder() as recorder:
        rows = run._play(4, budget, None)  # rounds 2-5: the schedule's T = 0, inf and its last change
        torch.stack(rows)
    assert recorder.events == [], "\n".join(recorder.summary())


def test_the_recorder_sees_what_a_gpu_waits_for():
    values = torch.tensor([0.0, 1.0, 2.0])
    with HostSyncRecorder() as recorder:
        bool(values.any())
        values.sum().item()
        values[values > 0]
        values.nonzero()
        values.tolist()
        torch.tensor([1.0, 2.0])
        torch.where(values > 0, values, 0.0)  # waits for nothing
        values.index_select(0, torch.arange(2))  # nor this
    kinds = [event.kind for event in recorder.events]
    assert kinds.count("scalar read") == 2
    assert kinds.count("data-dependent shape") == 2
    assert kinds.count("copy to host") == 1 and kinds.count("copy from host") == 1
    assert len(kinds) == 6
    assert all(event.where == "outside econspin" for event in recorder.events)


def test_the_recorder_watches_inside_flex_attention():
    """FlexAttention's operator is a higher-order one: run by its eager form, what it calls is recorded."""
    keep, offsets = torch.tensor([True, False, True]), torch.tensor([1.0, 2.0, 3.0])
    inputs = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with HostSyncRecorder() as recorder:
        flex_attention(inputs, inputs, inputs)  # waits for nothing
    assert recorder.events == []
    with HostSyncRecorder() as recorder:  # a score_mod sized by data: one bool index per call
        flex_attention(inputs, inputs, inputs, score_mod=lambda score, b, h, i, j: score + offsets[keep].sum())
    assert [event.kind for event in recorder.events] == ["data-dependent shape"]


def test_the_exact_loop_synchronises_and_the_budget_does_not():
    """The detector against the one loop that remains by default on the CPU (Wood's, its loop over the agents left)."""
    run = rollout(scenario(mode="sampled", response="vmf"), dtype="float32")
    run.advance(1)
    with HostSyncRecorder() as recorder:
        run._play(2, None, None)
    assert any("_wood_rest" in event.where for event in recorder.events)


def _played(case_scenario, rounds=9, **settings):
    run = rollout([case_scenario] * 2, replicas=[0, 1], dtype="float32")
    for name, value in settings.items():
        setattr(run, name, value)
    run.advance(rounds)
    return run


def _assert_same(first: Rollout, second: Rollout):
    assert torch.equal(first.state.states, second.state.states)
    assert torch.equal(first.state.money, second.state.money)
    pd.testing.assert_frame_equal(first.metrics(), second.metrics(), check_exact=True)


@pytest.mark.parametrize("case", ["expected fused", "sampled vmf", "sampled vmf d = 2", "uniform sampled"])
def test_chunks_give_the_bits_of_round_by_round(case):
    by_round = _played(case_scenario(case), chunk_rounds=1, sync_free=False)
    for chunk in (2, 4, 32):
        _assert_same(by_round, _played(case_scenario(case), chunk_rounds=chunk, sync_free=True))


@given(
    dimension=st.sampled_from([2, 3, 4, 8]),
    chunk=st.integers(1, 5),
    temperature=st.sampled_from([0.0, 0.05, 1.0, math.inf]),
)
@settings(max_examples=6, deadline=None)
def test_a_forced_replay_gives_the_same_bits(dimension, chunk, temperature):
    """One attempt per agent: nearly every chunk runs out and is played again with the exact loop."""
    pops = populations()
    pops["human"]["temperature"] = temperature
    case = scenario(mode="sampled", response="vmf", d=dimension, populations=pops)
    exact = _played(case, rounds=6, sync_free=False)
    replayed = _played(case, rounds=6, sync_free=True, rejection_attempts=1, chunk_rounds=chunk)
    _assert_same(exact, replayed)


def test_one_attempt_forces_replays_and_changes_nothing():
    case = case_scenario("sampled vmf")
    replayed = _played(case, rounds=6, sync_free=True, rejection_attempts=1, chunk_rounds=2)
    assert replayed.replayed_chunks > 0
    _assert_same(_played(case, rounds=6, sync_free=False), replayed)


def test_a_budget_large_enough_needs_no_replay():
    case = scenario(mode="sampled", response="vmf", populations=populations())
    run = _played(case, rounds=8, sync_free=True, chunk_rounds=4)
    assert run.replayed_chunks == 0
    _assert_same(_played(case, rounds=8, sync_free=False), run)


@pytest.mark.parametrize("dimension", [2, 5, 33])
def test_budgeted_draws_are_the_loops_for_every_agent_accepted_within_the_budget(dimension):
    """Attempts are counter-based: K attempts at once give each agent its first accepted one, as the loop."""
    agents = 4000
    kappa = torch.logspace(-3, 5, agents, dtype=torch.float64)[None]
    kappa[0, :7] = math.inf  # T = 0: w = 1 without any attempt
    draws = round_draws(torch.tensor([7], dtype=torch.int64), 3, agents)
    exact = _wood_component(kappa.clone(), dimension, draws)
    for attempts in (1, 3, 8, 9, 24):
        budget = RejectionBudget.on(torch.device("cpu"), attempts)
        budgeted = _wood_component(kappa.clone(), dimension, draws, budget=budget)
        unresolved = int(budget.unresolved)
        differ = int((budgeted != exact).sum())
        assert differ <= unresolved  # only agents without an accepted attempt may differ
        if attempts == 1:
            assert unresolved > 0  # at acceptance ~0.66-1 a single attempt leaves some out
        if attempts == 24:
            assert unresolved == 0 and differ == 0


def test_metrics_reach_the_host_once_a_chunk_and_equal_the_eager_rows():
    case = scenario(mode="sampled", response="vmf", populations=populations())
    run = _played(case, rounds=5, chunk_rounds=2, sync_free=True)
    assert len(run.rows) == 6 and all(row.device.type == "cpu" for row in run.rows)
    assert run.metrics()["step"].tolist() == [step for step in range(6) for _ in range(2)]


def test_progress_is_reported_every_round_and_zero_rounds_record_the_initial_state():
    run = rollout(scenario(), dtype="float32")
    run.chunk_rounds = 4
    seen = []
    run.advance(0)
    assert len(run.rows) == 1
    run.advance(6, seen.append)
    assert seen == [1, 2, 3, 4, 5, 6] and len(run.rows) == 7


def test_a_chunk_of_no_rounds_is_refused():
    run = rollout(scenario())
    with pytest.raises(ValueError, match="chunk_rounds"):
        Rollout(run.scenarios, run.replicas, run.economy, run.state, chunk_rounds=0)


def test_the_gpu_check_prints_its_plan_and_runs_nothing_without_a_gpu(tmp_path, capsys):
    from experiments import gpu_check

    assert gpu_check.main(["--dry-run", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "dry run: nothing run" in printed
    planned = [line.split(" (<= ")[0] for line in printed.splitlines() if " (<= " in line]
    assert planned == list(gpu_check.STEPS)
    assert "bench --device cuda" in printed and "tests/test_device_rollout.py" in printed
    assert "tests/test_cuda.py" in printed
    assert gpu_check.BUDGET <= 8 * 60  # one call of a device session
    assert list(tmp_path.iterdir()) == []
    assert gpu_check.main(["--dry-run", "--steps", "tests,nonsense"]) == 2


def test_the_gpu_check_packs_each_finished_step_and_skips_what_the_budget_cannot_hold(tmp_path, monkeypatch):
    import sys
    import tarfile

    from experiments import gpu_check

    commands = {"tests": [sys.executable, "-c", "print('passed')"], "bench": [sys.executable, "-c", "exit(3)"]}
    monkeypatch.setattr(gpu_check, "step_commands", lambda out: commands)
    monkeypatch.setattr(gpu_check, "STEPS", {"tests": 20, "bench": 20})
    archive = tmp_path / "all.tgz"
    assert gpu_check.run_steps(tmp_path / "out", ("tests", "bench"), budget=60, archive=archive) == 1
    assert sorted(tarfile.open(archive).getnames()) == ["out", "out/bench.log", "out/tests.log"]
    assert (tmp_path / "out" / "tests.log").read_text().strip() == "passed"
    assert gpu_check.run_steps(tmp_path / "out", ("tests",), budget=9, archive=archive) == 1  # 9 < 20 / 2


def test_the_gpu_checks_large_rollout_plays_known_ways():
    """gpu_check's large_rollout step: ways of gpu_measures.WAYS, the Triton kernel's eager and in CUDA graphs."""
    from experiments import gpu_check, gpu_measures

    assert set(gpu_measures.LARGE_ROLLOUT_WAYS) <= set(gpu_measures.WAYS)
    kernels = {gpu_measures.WAYS[name][4].get("kernel", "fused") for name in gpu_measures.LARGE_ROLLOUT_WAYS}
    assert kernels == {"fused", "triton"}
    assert gpu_measures.MEASURES["large_rollout"] is gpu_measures.large_rollout_timing
    assert "large_rollout" in gpu_check.STEPS


def test_the_gpu_checks_count_of_differing_agents():
    """gpu_measures.differing_agents: the share of (economy, agent) whose state or money moved beyond the tolerance."""
    from types import SimpleNamespace

    from experiments.gpu_measures import differing_agents

    generator = torch.Generator().manual_seed(3)
    want = SimpleNamespace(states=torch.randn(2, 5, 3, generator=generator),
                           money=torch.rand(2, 5, generator=generator, dtype=torch.float64))  # fmt: skip
    got = SimpleNamespace(states=want.states.clone(), money=want.money.clone())
    got.states[0, 0] += 1e-6  # within 1e-3 of the scale: not counted
    assert differing_agents(want, got) == 0.0
    got.states[0, 1, 2] += 1.0
    got.money[1, 4] += 1.0
    got.states[1, 4, 0] += 1.0  # the same agent as the money: counted once
    assert differing_agents(want, got) == pytest.approx(2 / 10)


def test_the_gpu_checks_rollout_timing_runs_on_the_cpu(monkeypatch):
    """Its code, at a tiny shape and without compiling, so that the GPU session does not find it broken.

    A way on the Triton kernel (here eager, its programs interpreted) plays expected mode alone.
    """
    from experiments import gpu_measures

    triton = {"kernel": "triton", "utility_precision": "bfloat16"}
    monkeypatch.setitem(gpu_measures.WAYS, "Triton kernel, eager", (None, True, "off", {}, triton))
    ways = ("round by round, Wood's loop", "sync-free chunks, eager")
    rows = gpu_measures.rollout_timing(
        torch.device("cpu"), shape=(2, 16), rounds=3, ways=(*ways, "Triton kernel, eager"), repeats=1
    )
    assert [row for row in rows if "error" in row] == []
    timed_ways = [row for row in rows if row["way"] in ways]
    assert len(timed_ways) == 4 and all(row["ms"] > 0 and row["same bits as the first way"] for row in timed_ways)
    on_triton = [row for row in rows if row["way"] == "Triton kernel, eager"]
    assert [row["mode"] for row in on_triton] == ["expected"] and on_triton[0]["ms"] > 0
    assert not on_triton[0]["same bits as the first way"]  # bf16 products: other numbers


def test_the_gpu_checks_stored_values_way_plays_sampled_mode_only(monkeypatch):
    """The way that stores the sampled round's values on CUDA too (gpu_measures.STORED_WAY): sampled rows alone.

    Eagerly here (its switch set, nothing compiled): the stores change no number, so its rollout
    has the first way's bits.
    """
    from econspin import compiled
    from experiments import gpu_measures

    switches = gpu_measures.WAYS[gpu_measures.STORED_WAY][3]
    assert switches["STORED_DEVICES"] == ("cpu", "cuda")
    seen = []
    play = gpu_measures.with_switches(switches, lambda: seen.append(compiled.STORED_DEVICES))
    play()
    assert seen == [("cpu", "cuda")] and compiled.STORED_DEVICES == ("cpu",)
    monkeypatch.setitem(gpu_measures.WAYS, gpu_measures.STORED_WAY, (None, True, "off", switches, {}))
    ways = ("sync-free chunks, eager", gpu_measures.STORED_WAY)
    rows = gpu_measures.rollout_timing(torch.device("cpu"), shape=(2, 16), rounds=3, ways=ways, repeats=1)
    assert [row for row in rows if "error" in row] == []
    stored = [row for row in rows if row["way"] == gpu_measures.STORED_WAY]
    assert [row["mode"] for row in stored] == ["sampled"] and stored[0]["same bits as the first way"]


def test_the_gpu_checks_switches_hold_only_for_the_call():
    """The rollout ways' switches (the blocks traced on CUDA, the operator's devices) set for a call, then restored.

    Restored after a call that raises too (a failed graph capture).
    """
    from econspin import compiled, traced_blocks
    from experiments import gpu_measures

    seen = []
    play = gpu_measures.with_switches(
        {"OPERATOR_DEVICES": ("cpu", "cuda")}, lambda: seen.append(compiled.OPERATOR_DEVICES)
    )
    play()
    assert seen == [("cpu", "cuda")] and compiled.OPERATOR_DEVICES == ("cpu",)

    def failing():
        raise RuntimeError("capture failed")

    with pytest.raises(RuntimeError):
        gpu_measures.with_switches({"OPERATOR_DEVICES": ("cuda",)}, failing)()
    assert compiled.OPERATOR_DEVICES == ("cpu",)

    seen.clear()
    switches = {"TRACED_DEVICES": ("cpu", "cuda"), "OPERATOR_DEVICES": ("cuda",)}
    play = gpu_measures.with_switches(
        switches, lambda: seen.append((traced_blocks.TRACED_DEVICES, compiled.OPERATOR_DEVICES))
    )
    play()
    assert seen == [(("cpu", "cuda"), ("cuda",))]
    assert (traced_blocks.TRACED_DEVICES, compiled.OPERATOR_DEVICES) == (("cpu", "cuda"), ("cpu",))
    assert "blocks traced" in " ".join(gpu_measures.WAYS)


def test_the_gpu_checks_million_step_runs_on_the_cpu(tmp_path):
    """experiments.gpu_million at a tiny N on the CPU: a row per kernel, money kept, the JSON written."""
    from experiments import gpu_million

    assert gpu_million.main(["--agents", "48", "--device", "cpu", "--kernels", "fused,reference",
                             "--json", str(tmp_path / "rows.json")]) == 0  # fmt: skip
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [row["kernel"] for row in rows] == ["fused", "reference"]
    assert all(row["round s"] > 0 and row["money drift"] < 1e-12 and row["estimated round bytes"] > 0 for row in rows)


def test_the_million_step_asks_for_a_budget_that_holds_a_million_agents():
    """run.memory_budget_mb's default (1 GiB) refuses N = 10^6 on a GPU: the million step sets the target's 80 GiB.

    The third H200 session's step stopped at the default ("2.24 GiB even in one-row blocks").
    """
    from econspin.memory import estimate_memory
    from experiments import gpu_million

    for budget_mb, fits in ((1024, False), (gpu_million.TARGET_MEMORY_MB, True)):
        scenario = gpu_million.million_scenario(10**6, budget_mb)
        estimate = estimate_memory(scenario, 1, torch.float32, machine="cuda")
        assert (estimate.smallest_round <= budget_mb * 2**20) is fits
    assert gpu_million.million_scenario().run.memory_budget_mb == gpu_million.TARGET_MEMORY_MB


def test_the_gpu_profile_runs_on_the_cpu(tmp_path):
    """experiments.gpu_profile at a tiny shape on the CPU: one row per kernel, its operators ranked by time."""
    from experiments import gpu_profile

    for top in (4, 1000):  # the first few; every operator (whether bmm is among the first four is a matter of timing)
        assert gpu_profile.main(["--device", "cpu", "--shapes", "2x32", "--kernels", "fused,reference", "--rounds",
                                 "1", "--top", str(top), "--json", str(tmp_path / "profile.json")]) == 0  # fmt: skip
        rows = json.loads((tmp_path / "profile.json").read_text())["rows"]
        shapes = [(row["kernel"], row["batch"], row["agents"]) for row in rows]
        assert shapes == [("fused", 2, 32), ("reference", 2, 32)]
        for row in rows:
            times = [entry["ms per round"] for entry in row["top"]]
            assert (len(times) == 4 if top == 4 else 4 < len(times) < top) and times == sorted(times, reverse=True)
            assert times[3] > 0 and row["wall ms per round"] > 0
    assert any(entry["name"] == "aten::bmm" for entry in rows[0]["top"])  # the fused round's work: the blocks' products
    assert rows[0]["kernels launched alone from"] == {} and rows[0]["graphs launched from"] == {}  # no CUDA here
    assert rows[0]["kernel launches per round"] == rows[0]["graph launches per round"] == 0
    assert rows[0]["graph breaks"] == {} and rows[0]["graphs compiled"] == 0  # eager: Dynamo compiled nothing


def test_the_gpu_profile_says_where_the_launches_come_from():
    """gpu_profile.launch_sources: each kernel or graph launch by its enclosing events, innermost first, a round."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    from experiments.gpu_profile import launch_sources

    def event(name, parent=None, device_type=DeviceType.CPU):
        return SimpleNamespace(name=name, cpu_parent=parent, device_type=device_type)

    frame = event("Torch-Compiled Region")
    copy = event("aten::copy_", event("aten::to", frame))
    graph = event("CUDAGraphNode.run", frame)
    events = [
        event("cudaLaunchKernel", copy), event("cudaLaunchKernel", copy), event("cuLaunchKernel", frame),
        event("cudaGraphLaunch", graph), event("cudaGraphLaunch", graph), event("cudaGraphLaunch"),
        event("void copy_kernel", device_type=DeviceType.CUDA), event("aten::mul", frame),
    ]  # fmt: skip
    sources = launch_sources(events, rounds=2, depth=2)
    assert sources["kernels"] == {"aten::copy_ < aten::to": 1.0, "Torch-Compiled Region": 0.5}
    assert sources["graphs"] == {"CUDAGraphNode.run < Torch-Compiled Region": 1.0, "(no enclosing event)": 0.5}


def test_the_compiled_rounds_tag_is_made_on_the_device_with_the_same_value():
    """run.compile's sampled round takes its round as a tag tensor: filled in place, no copy from the host."""
    from econspin.randomness import round_tag
    from econspin.round import round_tag_tensor

    state = rollout(case_scenario("sampled vmf")).state.replace(round=12345)
    with HostSyncRecorder() as recorder:
        tag = round_tag_tensor(state)
    assert recorder.events == []
    assert tag.dtype == torch.int64 and tag.shape == () and int(tag) == round_tag(12345)
