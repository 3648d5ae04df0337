"""The blocks' passes compiled into one kernel (econspin.block_pass) against the eager passes and the reference.

The compiled pass is meant for a GPU, where CI has none: here the CPU is listed in
``block_pass.COMPILED_DEVICES`` instead, and torch.compile writes the same equations as C++
loops. The two forms take their sums in other orders, so they agree to rounding, with the
exact zeros and ones of the T = 0 and T = inf limits in the same places.
"""

from __future__ import annotations

import contextlib
import json
import math

import pytest
import torch
from fused_cases import TOLERANCE, assert_equals_oracle, assert_outcomes_close, economies, two_populations
from helpers import rollout
from hypothesis import given, settings
from hypothesis import strategies as st

from econspin import block_pass
from econspin.fused import exp2_limits, fused_trade
from econspin.fused_sampled import fused_sampled_trade, sampled_choices
from econspin.host_syncs import HostSyncRecorder
from econspin.market import trade
from econspin.round import step


@contextlib.contextmanager
def compiled_on(*devices: str, calls: list | None = None, static: tuple[str, ...] = ()):
    """COMPILED_DEVICES set to ``devices``, STATIC_SELLERS to ``static``; each compiled pass appended to ``calls``."""
    kept = block_pass.COMPILED_DEVICES, block_pass.STATIC_SELLERS, block_pass.weigh_and_sum
    kept_pass = kept[2]

    def counted(*arguments):
        if calls is not None:
            calls.append(arguments[0].shape)
        return kept_pass(*arguments)

    block_pass.COMPILED_DEVICES, block_pass.STATIC_SELLERS, block_pass.weigh_and_sum = devices, static, counted
    try:
        yield
    finally:
        block_pass.COMPILED_DEVICES, block_pass.STATIC_SELLERS, block_pass.weigh_and_sum = kept


def test_the_default_compiles_on_no_device():
    """Until a GPU has measured it, every device takes the eager passes (the CPU gains nothing: module doc)."""
    assert block_pass.COMPILED_DEVICES == ()
    run = rollout(two_populations(heads=2), dtype="float32")
    assert not block_pass.compiles(run.state.states)


@given(economies(), st.integers(1, 12))
@settings(max_examples=40, deadline=None, derandomize=True)
def test_the_compiled_pass_gives_the_reference_numbers(drawn, rows):
    """Shapes, populations, heads, flags, masks, networks, budgets, temperatures 0, inf and ties, both dtypes."""
    state, economy = drawn
    eager = fused_trade(state, economy, rows)
    calls = []
    with compiled_on("cpu", calls=calls):
        compiled = fused_trade(state, economy, rows)
    assert calls, "the compiled pass was not taken"
    tolerance = TOLERANCE[state.states.dtype]
    assert_outcomes_close(trade(state, economy), compiled, tolerance)
    assert_outcomes_close(eager, compiled, tolerance)
    assert_equals_oracle(compiled, state, economy)


@given(economies(mode="sampled"), st.integers(1, 12))
@settings(max_examples=40, deadline=None, derandomize=True)
def test_the_sampled_blocks_draw_the_same_sellers_from_the_compiled_weights(drawn, rows):
    """block_pass.weigh compiled: y and e from one kernel, the inversion draws the eager blocks' sellers."""
    state, economy = drawn
    eager, _ = sampled_choices(state, economy, rows=rows)
    with compiled_on("cpu"):
        compiled, terms = sampled_choices(state, economy, rows=rows)
        outcome = fused_sampled_trade(state, economy, rows=rows)
    assert torch.equal(compiled, eager)
    assert_outcomes_close(trade(state, economy), outcome, TOLERANCE[state.states.dtype])


def block(dtype: torch.dtype, generator: torch.Generator):
    """Scores of 3 groups x 6 rows x 17 sellers with every case of a block, and their tie widths and moment rows.

    Row 0 of group 0 has no seller (all -BIG); row 1 ties three sellers exactly and row 2 within
    its tie width (a T = 0 row); row 3 is a T = inf row (scores within 2^-(p + 6) of 0, p the mantissa's bits); row 4
    has scores far below the exp2 floor beside its best; the rest are ordinary.
    """
    big, floor = exp2_limits(dtype)
    scores = torch.randn(3, 6, 17, dtype=dtype, generator=generator) * 8
    scores[:, :, 5] = -big  # a non-seller in every row
    scores[0, 0] = -big
    scores[0, 1, [2, 7, 11]] = 30.0
    tie_width = torch.zeros(3, 6, dtype=dtype)
    scores[0, 2, [3, 4]] = torch.tensor([50.0, 50.0 - 2.0**-20], dtype=dtype)
    tie_width[0, 2] = 2.0**-18
    scores[1, 3] = torch.rand(17, dtype=dtype, generator=generator) * 2.0 ** (math.log2(torch.finfo(dtype).eps) - 6)
    scores[1, 4] = torch.tensor([0.0] + [-1000.0] * 16, dtype=dtype)
    moment_rows = torch.rand(3, 2, 17, dtype=dtype, generator=generator)
    return scores, tie_width, moment_rows, big, floor


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_block_either_way(dtype):
    """The compiled kernel's (m, s, |e|, sum e y, moments) and weights against the eager passes, every kind of row."""
    scores, tie_width, moment_rows, big, floor = block(dtype, torch.Generator().manual_seed(5))
    eager_scores, eager_weights, row_max = scores.clone(), torch.empty_like(scores), torch.empty(3, 6, 1, dtype=dtype)
    block_pass.weigh(eager_scores, eager_weights, row_max, tie_width, big, floor)
    shifted = eager_scores.clone()
    want = (
        row_max.squeeze(-1),
        eager_weights.sum(-1),
        torch.linalg.vector_norm(eager_weights, dim=-1),
        (shifted * eager_weights).sum(-1),
        torch.bmm(moment_rows, eager_weights.transpose(1, 2)).transpose(1, 2),
    )
    weights, weighed_weights = torch.full_like(scores, math.nan), torch.full_like(scores, math.nan)
    weighed, weighed_max = scores.clone(), torch.full_like(row_max, math.nan)
    with compiled_on("cpu"):
        assert block_pass.compiles(scores)
        got = tuple(torch.full_like(wanted, math.nan) for wanted in want)
        block_pass.weigh_and_sum(scores.clone(), weights, tie_width, moment_rows, big, floor, got)
        block_pass.weigh(weighed, weighed_weights, weighed_max, tie_width, big, floor)  # the sampled blocks' kernel
    assert torch.equal(weighed_max, row_max) and torch.equal(weighed, shifted)  # y: the same operations, exactly
    assert torch.allclose(weighed_weights, eager_weights, rtol=4 * torch.finfo(dtype).eps, atol=0)
    for exact in (0.0, 1.0):
        assert torch.equal(weighed_weights == exact, eager_weights == exact), exact
    assert torch.equal(got[0], want[0])  # a maximum, exactly; 0 on the row without a seller
    assert got[0][0, 0] == 0 and torch.all(weights[0, 0] == 0)
    # exact zeros (non-sellers, below the floor) and exact ones (the best sellers, ties) where the eager pass has them
    for exact in (0.0, 1.0):
        assert torch.equal(weights == exact, eager_weights == exact), exact
    assert torch.equal(weights[0, 1] == 1, torch.isin(torch.arange(17), torch.tensor([2, 7, 11])))
    assert torch.all(weights[0, 2, [3, 4]] == 1) and torch.all(weights[1, 3] == 1)
    assert torch.allclose(weights, eager_weights, rtol=4 * torch.finfo(dtype).eps, atol=0)
    tolerance = TOLERANCE[dtype] / 10
    for name, wanted, result in zip(("max", "sum", "norm", "dot", "moments"), want, got):
        assert wanted.shape == result.shape and wanted.dtype == result.dtype, name
        assert torch.allclose(result, wanted, rtol=tolerance, atol=tolerance * float(wanted.abs().max())), name


@pytest.mark.parametrize("precision", ["bfloat16", "tf32"])
def test_reduced_precision_utilities_take_the_compiled_pass_too(precision):
    """run.utility_precision: the scores come from bf16 (or TF32) products; the pass over them is the same."""
    import dataclasses

    run = rollout([two_populations(heads=2, visibility=0.5)] * 2, dtype="float32")
    economy = dataclasses.replace(run.economy, utility_precision=precision)
    eager = fused_trade(run.state, economy, rows=16)
    calls = []
    with compiled_on("cpu", calls=calls):
        compiled = fused_trade(run.state, economy, rows=16)
    assert len(calls) == 16  # 2 elements x 2 heads, 64 agents in blocks of 16 rows
    assert_outcomes_close(eager, compiled, TOLERANCE[torch.float32])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_money_is_conserved_with_the_compiled_pass(dtype):
    run = rollout(two_populations(heads=3, visibility=1.5), dtype=dtype)
    start = run.state.money.sum(1)
    with compiled_on("cpu"), torch.no_grad():
        outcome = fused_trade(run.state, run.economy, rows=5)
        assert torch.allclose(outcome.revenue.sum(1), outcome.spending.sum(1), rtol=1e-13, atol=0)
        for _ in range(20):
            run.state = step(run.state, run.economy)
    assert float((run.state.money.sum(1) / start - 1).abs().max()) < 1e-12


def test_where_the_pass_is_not_compiled():
    """Off the listed devices, while torch.compile traces, under a dispatch mode, without a compiler: eager passes."""
    scores = torch.zeros(1, 2, 3)
    with compiled_on("cuda"):
        assert not block_pass.compiles(scores)
    with compiled_on("cpu"):
        assert block_pass.compiles(scores)
        traced = torch.compile(lambda x: x + block_pass.compiles(x), backend="eager", fullgraph=True)
        assert torch.equal(traced(scores), scores)  # False inside the trace
        with HostSyncRecorder():
            assert not block_pass.compiles(scores)
    with compiled_on("cpu"), pytest.MonkeyPatch.context() as patch:  # no C++ compiler here: the eager passes
        block_pass._can_compile.cache_clear()
        patch.setattr(block_pass, "missing_compiler", lambda device: "no compiler")
        assert not block_pass.compiles(scores)
    block_pass._can_compile.cache_clear()


def test_a_round_under_the_host_sync_recorder_runs_eagerly_and_leaves_the_pass_compilable():
    """The recorder is a dispatch mode: torch.compile must not run under it (econspin.flex.compiles)."""
    run = rollout(two_populations(heads=2, visibility=0.5), dtype="float32")
    state = run.state.replace(temperature=run.state.temperature.index_fill(1, torch.tensor([0, 3]), 0.0))
    calls = []
    with compiled_on("cpu", calls=calls):
        with torch.no_grad(), HostSyncRecorder() as recorder:
            watched = fused_trade(state, run.economy, rows=16)
        assert recorder.events == [], "\n".join(recorder.summary())
        assert calls == []
        compiled = fused_trade(state, run.economy, rows=16)
        assert calls
    assert_outcomes_close(watched, compiled, TOLERANCE[torch.float32])


def compiled_graph_calls(function) -> int:
    """How many compiled graphs (Inductor's) ``function()`` called, by torch.profiler."""
    from torch.profiler import profile

    with profile() as profiler:
        function()
    return sum("CompiledFxGraph" in event.name for event in profiler.events())


@pytest.mark.slow
@pytest.mark.parametrize("operator_devices", [("cpu",), ()], ids=["operator", "graph break"])
def test_a_compiled_round_takes_the_compiled_pass_in_its_blocks(monkeypatch, operator_devices):
    """run.compile on the CPU, the blocks as the graph's operator or (CUDA's route) as a graph break.

    Either way the blocks run eagerly and take the compiled pass listed, as a compiled graph of its
    own (one more a round than without it), not its Python run eagerly. (The first round, which
    compiles the round, runs the operator under a torch dispatch mode: the eager passes there.)
    """
    import dataclasses

    monkeypatch.setattr("econspin.compiled.OPERATOR_DEVICES", operator_devices)
    monkeypatch.setattr("econspin.traced_blocks.TRACED_DEVICES", ())  # one block: else traced into the round's graph
    torch._dynamo.reset()  # the switches are read when the round is traced
    run = rollout([two_populations(heads=2, visibility=0.5)] * 2, dtype="float32")
    eager = step(run.state, run.economy)
    economy = dataclasses.replace(run.economy, compile="default")
    calls = []
    with torch.no_grad():
        step(run.state, economy)
        without = compiled_graph_calls(lambda: step(run.state, economy))
        with compiled_on("cpu", calls=calls):
            step(run.state, economy)
            with_pass = compiled_graph_calls(lambda: step(run.state, economy))
            compiled = step(run.state, economy)
    assert calls and with_pass == without + 1
    assert torch.allclose(compiled.states, eager.states, rtol=0, atol=1e-5)
    assert torch.allclose(compiled.money, eager.money, rtol=1e-6, atol=0)
    torch._dynamo.reset()


def test_the_pass_with_the_sellers_static_compiles_for_each_n_and_gives_the_eager_numbers():
    """block_pass.STATIC_SELLERS: a new N compiles anew (N stays static), a new row count does not; eager numbers.

    Without it (the default) N goes dynamic on its first change and later sizes reuse that graph.
    """
    from torch._dynamo.utils import counters

    def graphs_after(shapes, reset: bool = True) -> list[int]:
        if reset:
            torch._dynamo.reset()
        counts, before = [], counters["stats"]["unique_graphs"]  # the counter runs on across resets
        for groups, rows, agents in shapes:
            generator = torch.Generator().manual_seed(agents + rows)
            scores = 8 * torch.randn(groups, rows, agents, generator=generator)
            moment_rows = torch.randn(groups, 2, agents, generator=generator)
            tie_width = torch.zeros(groups, rows).index_fill_(1, torch.tensor([0]), 0.5)
            outputs = [torch.empty(groups, rows) for _ in range(4)] + [torch.empty(groups, rows, 2)]
            weights = torch.empty_like(scores)
            block_pass.weigh_and_sum(scores.clone(), weights, tie_width, moment_rows, 1e30, -60.0, outputs)
            eager_weights, row_max = torch.empty_like(scores), torch.empty(groups, rows, 1)
            with compiled_on():
                block_pass.weigh(scores.clone(), eager_weights, row_max, tie_width, 1e30, -60.0)
            assert torch.allclose(weights, eager_weights, rtol=1e-6, atol=0)
            assert torch.allclose(outputs[0], row_max.squeeze(-1)) and torch.allclose(outputs[1], eager_weights.sum(-1))
            assert torch.allclose(outputs[4], torch.einsum("grn,gkn->grk", eager_weights, moment_rows), atol=1e-5)
            counts.append(counters["stats"]["unique_graphs"] - before)
        return counts

    shapes = [(2, 8, 24), (2, 6, 24), (2, 8, 40), (2, 8, 56), (2, 5, 56), (2, 8, 24)]
    with compiled_on("cpu"):
        dynamic = graphs_after(shapes)
    with compiled_on("cpu", static=("cpu",)):
        static = graphs_after(shapes, reset=False)  # the dynamic graphs still held: not taken
    torch._dynamo.reset()
    assert dynamic == [1, 2, 3, 3, 3, 3]  # N = 56 takes the graph in which N = 40 made N dynamic
    assert static == [1, 2, 3, 4, 4, 4]  # N = 56 a graph of its own; 5 rows and N = 24 again reuse theirs

    # a round of 2 x 2 x 4 blocks (elements, heads, rows) at their offsets in the round's tensors: one graph
    run = rollout(two_populations(heads=2), dtype="float32")
    eager = fused_trade(run.state, run.economy, rows=16)
    before = counters["stats"]["unique_graphs"]
    with compiled_on("cpu", static=("cpu",)):
        static_round = fused_trade(run.state, run.economy, rows=16)
    assert counters["stats"]["unique_graphs"] - before == 1
    assert_outcomes_close(eager, static_round, TOLERANCE[torch.float32])
    torch._dynamo.reset()


def test_the_gpu_experiment_runs_end_to_end_on_the_cpu(tmp_path):
    from experiments import gpu_block_pass

    out = tmp_path / "block_pass.json"
    assert gpu_block_pass.main(["--device", "cpu", "--shapes", "2x48", "--rows", "default,16", "--repeats", "1",
                                "--modes", "expected,sampled", "--json", str(out)]) == 0  # fmt: skip
    rows = json.loads(out.read_text())["rows"]
    ways = [(row.get("rows per block"), row["way"]) for row in rows]
    each = ["eager passes", "compiled pass", "compiled pass, sellers static"]
    assert ways == 2 * [(None, "sdpa forward"), *[("default", way) for way in each], *[(16, way) for way in each]]
    assert [row["mode"] for row in rows] == 7 * ["expected"] + 7 * ["sampled"]
    timed = [row for row in rows if row["way"] != "sdpa forward"]
    assert all(row["difference from the eager passes"] < 1e-5 and row["ratio to sdpa"] > 0 for row in timed)
    assert block_pass.COMPILED_DEVICES == () and block_pass.STATIC_SELLERS == ()  # restored
    line = gpu_block_pass.summary(rows)
    assert line.startswith("compiled pass / eager passes") and line.count(":") == 9
    assert "sampled 2x48 rows 16:" in line and "sampled 2x48 rows 16 N static:" in line


def test_the_gpu_profile_lists_the_compiled_pass(tmp_path):
    """experiments.gpu_profile --block-pass off,on on the CPU: the second round's blocks call the compiled graph."""
    from experiments import gpu_profile

    torch._dynamo.reset()  # compiled graphs from the tests before (a pass past its recompile limit runs eagerly)
    out = tmp_path / "profile.json"
    assert gpu_profile.main(["--device", "cpu", "--shapes", "1x256", "--kernels", "fused", "--block-pass", "off,on",
                             "--rounds", "1", "--top", "40", "--json", str(out)]) == 0  # fmt: skip
    rows = json.loads(out.read_text())["rows"]
    assert [row["compiled block pass"] for row in rows] == [False, True]
    compiled = [any("Compiled" in entry["name"] for entry in row["top"]) for row in rows]
    assert compiled == [False, True]
    assert block_pass.COMPILED_DEVICES == ()
