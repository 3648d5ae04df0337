"""The Triton block pass (econspin.triton_blocks) against the reference market, the fused kernel and the oracle.

On a CPU the programs run under Triton's interpreter: the same bodies a CUDA GPU compiles
(econspin.triton_programs.programs), one program instance at a time, so the economies here are
small. The compiled programs (for sm_90 here, and on a CUDA GPU) are tests/test_triton_compiled.py's.
"""

import dataclasses
import functools
import math
import os
import sys

import pandas as pd
import pytest
import torch
from fused_cases import (
    TOLERANCE,
    assert_equals_oracle,
    assert_outcomes_close,
    economies,
    two_populations,
)
from helpers import COMPILED_ROUND_MODES, needs_triton, rollout, scenario
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_cases import (
    check_command_line_equals_fused,
    check_infinite_temperature_uniform,
    check_isolated_buyers,
    check_kernel_switch_and_rollout,
    check_several_populations_in_float32,
    check_zero_temperature_ties,
    scenario_text,
)
from test_compiled_round import compare_rounds, needs_compiler
from test_reduced_precision import assert_within_the_bf16_bound, triton_kernel
from typer.testing import CliRunner

from econspin.bench import relative_difference
from econspin.cli import app
from econspin.fused import fused_trade
from econspin.host_syncs import HostSyncRecorder
from econspin.market import MarketOutcome, trade
from econspin.round import step
from econspin.triton_blocks import Tiles, triton_trade, uses_triton

runner = CliRunner()
TILES = st.sampled_from([None, Tiles(16, 16), Tiles(16, 32), Tiles(32, 16)])


def triton_economy(economy):
    return dataclasses.replace(economy, kernel="triton")


def assert_money_conserved(outcome: MarketOutcome) -> None:
    """Revenue sums to the budgets spent, in float64, whatever the working precision."""
    assert outcome.revenue.dtype == outcome.spending.dtype == torch.float64
    assert torch.all(outcome.revenue >= 0)
    assert torch.allclose(outcome.revenue.sum(1), outcome.spending.sum(1), rtol=1e-13, atol=0)


@needs_triton
@given(economies(), TILES)
@settings(max_examples=40, deadline=None, derandomize=True)
def test_triton_equals_reference_and_fused(drawn, tiles):
    state, economy = drawn
    outcome = triton_trade(state, triton_economy(economy), tiles=tiles)
    tolerance = TOLERANCE[state.states.dtype]
    assert_outcomes_close(trade(state, economy), outcome, tolerance)
    assert_outcomes_close(fused_trade(state, economy), outcome, tolerance)
    assert_money_conserved(outcome)


@pytest.mark.slow
@needs_triton
@given(economies(), TILES)
@settings(max_examples=300, deadline=None)
def test_triton_equals_reference_and_fused_many(drawn, tiles):
    test_triton_equals_reference_and_fused.hypothesis.inner_test(drawn, tiles)


@needs_triton
@given(economies().filter(lambda drawn: drawn[0].states.dtype == torch.float64))
@settings(max_examples=8, deadline=None, derandomize=True)
def test_triton_equals_the_independent_oracle(drawn):
    """Against econspin.reference (plain float64 numpy, one buyer at a time), as the fused kernel is."""
    state, economy = drawn
    assert_equals_oracle(triton_trade(state, triton_economy(economy)), state, economy)


@needs_triton
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_tile_sizes_change_nothing_beyond_rounding(dtype):
    """N = 64 in tiles of 16 to 64 buyers and sellers (one tile, several, and partial ones), T = 0 rows, a network."""
    run = rollout([two_populations(heads=2, visibility=-0.7)] * 2, dtype=dtype)
    state = run.state.replace(temperature=run.state.temperature.index_fill(1, torch.tensor([0, 5, 41]), 0.0))
    mask = torch.rand(64, 64, generator=torch.Generator().manual_seed(5)) < 0.6
    for economy in (run.economy, dataclasses.replace(run.economy, trade_mask=mask)):
        economy = triton_economy(economy)
        whole = triton_trade(state, economy, tiles=Tiles(64, 64))
        assert_outcomes_close(fused_trade(state, economy), whole, TOLERANCE[state.states.dtype])
        for tiles in (Tiles(16, 16), Tiles(32, 16), Tiles(16, 64)):
            assert_outcomes_close(
                whole, triton_trade(state, economy, tiles=tiles), 1e-13 if dtype == "float64" else 1e-6
            )


@needs_triton
@pytest.mark.parametrize("agents", [47, 48, 49])
def test_interior_tiles_and_the_tiles_at_the_edges(agents):
    """N one below, at and one above a multiple of 16: the tiles the programs take as interior (no masks) and the rest.

    Two economies a batch, so that a tile read one agent past N would read the other's numbers.
    """
    populations = {"human": {"count": 30, "temperature": 0.7}, "ai": {"count": agents - 30, "temperature": 0.0}}
    run = rollout([scenario(populations=populations, heads=2, d=8, visibility=0.3)] * 2, dtype="float64")
    mask = torch.rand(agents, agents, generator=torch.Generator().manual_seed(3)) < 0.7
    for economy in (run.economy, dataclasses.replace(run.economy, trade_mask=mask)):
        economy = triton_economy(economy)
        want = fused_trade(run.state, economy)
        for tiles in (Tiles(16, 16), Tiles(16, 32), Tiles(32, 16)):
            assert_outcomes_close(want, triton_trade(run.state, economy, tiles=tiles), TOLERANCE[torch.float64])


@needs_triton
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_rows_pass_in_one_loop_equals_the_pass_in_two(dtype):
    """Tiles.one_pass: each row's maximum found as the seller tiles go by, the sums so far rescaled as it rises.

    Sellers' money rises with their index and visibility is high, so that the rows' best sellers lie in
    the last tiles (checked: the last 16 sellers take most of the revenue) and most maxima rise
    tile after tile, at T = 1, 0.05 and inf; T = 0 rows put a tile of buyers on the two loops.
    """
    populations = {"human": {"count": 40, "temperature": 1.0}, "ai": {"count": 40, "temperature": 0.05}}
    run = rollout([scenario(populations=populations, heads=2, d=8, visibility=4.0)] * 2, dtype=dtype)
    temperature = run.state.temperature.index_fill(1, torch.tensor([20, 21, 70]), math.inf)
    money = 1.1 ** torch.arange(80, dtype=run.state.money.dtype).expand(2, 80)  # the richer, the later
    state = run.state.replace(money=money.contiguous(), temperature=temperature)
    state = state.replace(temperature=state.temperature.index_fill(1, torch.tensor([3, 50]), 0.0))
    economy = triton_economy(run.economy)
    two_loops = triton_trade(state, economy, tiles=Tiles(16, 16, one_pass=False))
    assert float(two_loops.revenue[:, -16:].sum()) > 0.6 * float(two_loops.revenue.sum())
    tolerance = TOLERANCE[state.states.dtype]
    assert_outcomes_close(fused_trade(state, economy), two_loops, tolerance)
    for tiles in (Tiles(16, 16), Tiles(32, 16), Tiles(16, 32), Tiles(64, 16)):
        one_loop = triton_trade(state, economy, tiles=tiles)
        assert_outcomes_close(two_loops, one_loop, tolerance)
        assert_money_conserved(one_loop)
        if dtype == "float64":  # T = inf: every weight exactly 1 in either pass, the entropy exactly 1
            infinite = torch.tensor([20, 21, 70])
            assert torch.allclose(one_loop.entropy[:, infinite], torch.ones(2, 3, dtype=torch.float64), rtol=1e-15)
            assert torch.equal(one_loop.impact[:, infinite], two_loops.impact[:, infinite])


@needs_triton
def test_tie_widths_in_any_layout_give_the_same_round():
    """The programs index t_i as (groups, N) contiguous: a transposed layout of the same values changes nothing."""
    from econspin.triton_blocks import triton_blocks

    run = rollout([two_populations(heads=2)] * 2)
    state = run.state.replace(temperature=run.state.temperature.index_fill(1, torch.tensor([0, 5, 41]), 0.0))
    economy = triton_economy(run.economy)

    def transposed_ties(terms, economy, moment_rows):
        ties = terms.tie_width.T.contiguous().T  # the same values, column-major
        assert not ties.is_contiguous() and bool((ties > 0).any())
        return triton_blocks(dataclasses.replace(terms, tie_width=ties), economy, moment_rows)

    assert_outcomes_close(triton_trade(state, economy), fused_trade(state, economy, blocks=transposed_ties), 0.0)


def test_tiles_are_powers_of_two_of_at_least_16():
    for rows, columns in ((8, 16), (16, 24), (48, 64)):
        with pytest.raises(ValueError, match="power of two >= 16"):
            Tiles(rows, columns)


@needs_triton
@given(economies(), TILES)
@settings(max_examples=30, deadline=None, derandomize=True)
def test_bf16_utilities_keep_within_the_bound_from_bf16_rounding(drawn, tiles):
    """run.utility_precision: bfloat16 on the Triton kernel, held to the fused kernel's bound against float64.

    The limits (T = inf uniform, T = 0 the argmax of the rounded utilities, ties split) are
    tests/test_reduced_precision.py's, run on both kernels there.
    """
    assert_within_the_bf16_bound(drawn, functools.partial(triton_kernel, tiles=tiles))


@needs_triton
def test_bf16_utilities_on_the_triton_kernel_conserve_money_over_rounds():
    low = {"kernel": "triton", "utility_precision": "bfloat16"}
    run = rollout(two_populations(heads=2, visibility=0.5, run=low), dtype="float32")
    state, economy = run.state, run.economy
    assert uses_triton(state, economy) and economy.utility_precision == "bfloat16"
    full = triton_trade(state, dataclasses.replace(economy, utility_precision="full"))
    rounded = triton_trade(state, economy)
    assert_money_conserved(rounded)
    assert torch.equal(rounded.spending, full.spending)  # budgets do not depend on the utilities
    assert 1e-4 < relative_difference(full.received, rounded.received) < 0.1  # rounded, not lost
    start = state.money.sum(1)
    with torch.no_grad():
        for _ in range(5):
            state = step(state, economy)
    assert float((state.money.sum(1) / start - 1).abs().max()) < 1e-12
    assert bool(torch.all(state.money >= 0))


@needs_triton
def test_zero_temperature_is_the_argmax_with_ties_split_equally():
    check_zero_temperature_ties(triton_kernel)


@needs_triton
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_utilities_within_the_tie_width_are_ties_at_zero_temperature(dtype):
    """Sellers a unit in the last place apart: a T = 0 buyer splits the market between them, as on the other kernels.

    Their utilities differ by less than the tie width t_i (market.tie_widths), which allows for
    the rounding of any order of the utilities' sums; so tl.dot may round them either way.
    """
    populations = {
        "buyers": {"count": 5, "temperature": 0.0, "sells": False, "state": {"scale": 1.2}},
        "sellers": {"count": 4, "buys": False, "projections": {"init": "identity", "scale": 0.5}},
    }
    run = rollout(scenario(populations=populations, d=3, output="random"), dtype=dtype)
    value = torch.tensor(0.7, dtype=run.state.states.dtype)
    for seller in range(4):
        run.state.states[0, 5 + seller] = value
        value = torch.nextafter(value, torch.tensor(1.0, dtype=value.dtype))  # one unit in the last place up
    outcome = triton_trade(run.state, triton_economy(run.economy))
    spent = outcome.spending[0, :5].sum()
    assert torch.allclose(outcome.revenue[0, 5:], (spent / 4).expand(4), rtol=1e-6 if dtype == "float32" else 1e-13)
    assert_outcomes_close(trade(run.state, run.economy), outcome, TOLERANCE[run.state.states.dtype])
    assert_outcomes_close(fused_trade(run.state, run.economy), outcome, TOLERANCE[run.state.states.dtype])


@needs_triton
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_ties_within_the_tie_width_in_different_seller_tiles_stay_ties(dtype):
    """T = 0 buyers whose best sellers lie in three seller tiles, each a unit in the last place above the one before.

    The row maximum rises by less than the tie width from tile to tile, so every one of the
    three is tied with the final maximum; a rows' pass that rescaled the earlier tiles' weights
    (flash attention's online maximum) would give all to the last. Tiles of rows with a T = 0
    row take the maximum first (econspin.triton_kernels.row_sums_program), in one pass or two.
    """
    populations = {
        "buyers": {"count": 5, "temperature": 0.0, "sells": False, "projections": {"init": "identity", "scale": 0.5}},
        "sellers": {"count": 40, "buys": False, "projections": {"init": "identity", "scale": 0.5}},
    }
    run = rollout(scenario(populations=populations, d=3, output="random"), dtype=dtype)
    states = torch.zeros_like(run.state.states)  # the other sellers' utilities 0
    states[0, :5] = 0.5
    value = torch.tensor(0.7, dtype=states.dtype)
    tied = (10, 20, 40)  # seller tiles 0, 1 and 2 of 16
    for seller in tied:
        states[0, seller] = value
        value = torch.nextafter(value, torch.tensor(1.0, dtype=value.dtype))
    state = run.state.replace(states=states)
    for tiles in (Tiles(16, 16), Tiles(16, 16, one_pass=False)):
        outcome = triton_trade(state, triton_economy(run.economy), tiles=tiles)
        spent = outcome.spending[0, :5].sum()
        revenue = outcome.revenue[0, list(tied)]
        assert torch.allclose(revenue, (spent / 3).expand(3), rtol=1e-6 if dtype == "float32" else 1e-13)
        assert_outcomes_close(fused_trade(state, run.economy), outcome, TOLERANCE[states.dtype])


@needs_triton
def test_infinite_temperature_is_uniform_over_allowed_partners():
    check_infinite_temperature_uniform(triton_kernel)


@needs_triton
@pytest.mark.parametrize("bias", [True, False])
def test_buyers_with_nobody_to_buy_from_spend_and_receive_nothing(bias):
    """A network as the additive bias, and (a budget too small to keep the bias) as the mask itself."""
    assert_money_conserved(check_isolated_buyers(triton_kernel, memory_budget_scale=float(bias)))


@needs_triton
def test_several_populations_heads_and_batch_elements_in_float32():
    assert_money_conserved(check_several_populations_in_float32(triton_kernel))


@needs_triton
def test_the_programs_leave_the_environment_and_triton_as_they_were():
    """Interpreted and compiled programs from one body, without TRITON_INTERPRET; triton.language unpatched after.

    The interpreter leaves patches of the functions a program calls behind unless the launch
    restores them; a compiled program traced afterwards would fail on them.
    """
    from econspin.triton_programs import language_holders, programs

    environment = dict(os.environ)
    language = [(holder, dict(vars(holder))) for holder in language_holders()]
    run = rollout(two_populations())
    triton_trade(run.state, triton_economy(run.economy))
    compiled, interpreted = programs(False), programs(True)
    assert type(compiled.row_sums_program).__name__ == "JITFunction"
    assert type(interpreted.row_sums_program.program).__name__ == "InterpretedFunction"
    assert dict(os.environ) == environment
    for holder, before in language:
        now = vars(holder)
        changed = [name for name in before.keys() | now.keys() if now.get(name, before) is not before.get(name, now)]
        assert [name for name in changed if not isinstance(now.get(name), type(os))] == [], holder


@needs_triton
def test_a_helper_patches_the_language_once_a_launch_whatever_the_tiles(monkeypatch):
    """Helpers patch triton.language at their first call in a launch only: not once a call, as many as the tiles.

    The library's call of an interpreted helper patches the language every time (1.2 ms); the
    patches it leaves stay until the launch ends, so later calls in the launch find nothing to patch.
    Four tilings of N = 64, each launch's patches counted: the same count, and the same outcome.
    """
    import triton.runtime.interpreter as interpreter

    from econspin.triton_programs import InterpretedHelper

    library_patch, patched = interpreter._patch_lang, []

    def counted_patch(function):
        patched.append(function)
        return library_patch(function)

    monkeypatch.setattr(interpreter, "_patch_lang", counted_patch)
    run = rollout(two_populations(heads=2, visibility=0.5))
    economy, counts, outcomes = triton_economy(run.economy), [], []
    for tiles in (Tiles(64, 64), Tiles(32, 32), Tiles(16, 32), Tiles(16, 16)):
        launches, before = InterpretedHelper.launch, len(patched)
        outcomes.append(triton_trade(run.state, economy, tiles=tiles))
        counts.append((InterpretedHelper.launch - launches, len(patched) - before))
    launches = counts[0][0]
    assert launches >= 2 and all(count == counts[0] for count in counts), counts
    # each launch: the program's own patch and each helper's first call (17 in the two launches here);
    # a patch at every helper call made 46 at tiles of 64 x 64 and 610 at 16 x 16
    assert counts[0][1] <= launches * 16, counts
    for outcome in outcomes[1:]:
        assert_outcomes_close(outcomes[0], outcome, 1e-12)


@needs_triton
@pytest.mark.parametrize("network", [False, True])
def test_the_triton_step_never_waits_on_the_host(network):
    """The launches size their grids from shapes alone: no value read, no data-dependent shape, in the whole step."""
    run = rollout(two_populations(heads=2, visibility=0.5), dtype="float32")
    economy = triton_economy(run.economy)
    if network:
        mask = torch.rand(64, 64, generator=torch.Generator().manual_seed(4)) < 0.5
        economy = dataclasses.replace(economy, trade_mask=mask)
    state = run.state.replace(temperature=run.state.temperature.index_fill(1, torch.tensor([0, 3]), 0.0))
    first = triton_trade(state, economy)  # the network's bias is built once per economy, here
    with torch.no_grad(), HostSyncRecorder() as recorder:
        again = triton_trade(state, economy)
    assert recorder.events == [], "\n".join(recorder.summary())
    assert_outcomes_close(first, again, 0.0)


@needs_triton
def test_the_kernel_switch_and_a_whole_rollout():
    check_kernel_switch_and_rollout("triton", uses_triton, rounds=6, tolerance=1e-12, sampled="triton")


def test_the_memory_estimate_holds_nothing_n_by_n():
    """The round's working memory grows as N (tiles live in registers), not as the fused kernel's N-wide blocks."""
    from econspin.memory import estimate_memory

    def round_bytes(agents: int, kernel: str) -> float:
        economy = scenario(populations={"a": {"count": agents}}, run={"kernel": kernel})
        return estimate_memory(economy, 2, torch.float32).device["round"]

    assert round_bytes(20000, "triton") == pytest.approx(2 * round_bytes(10000, "triton"), rel=1e-12)
    assert round_bytes(20000, "triton") < round_bytes(20000, "fused") / 2


@needs_triton
def test_auto_takes_the_triton_kernel_on_cuda_in_expected_mode_where_triton_imports(monkeypatch):
    """run.kernel: auto on CUDA, expected mode: the Triton kernel; elsewhere the fused one.

    Elsewhere: sampled mode, the CPU, a card older than Ampere (compute capability 8.0), no triton.
    """
    from econspin.memory import estimate_memory
    from econspin.scenario import resolved_kernel

    assert resolved_kernel("auto", "expected", False, "cuda") == "triton"
    for mode, device in (("sampled", "cuda"), ("expected", "cpu"), ("expected", None)):
        assert resolved_kernel("auto", mode, False, device) == "fused"
    assert resolved_kernel("fused", "expected", False, "cuda") == "fused"  # asked for by name
    assert resolved_kernel("auto", "expected", True, "cuda") == "reference"  # fixed couplings

    def round_bytes(kernel: str, machine: str) -> float:
        economy = scenario(populations={"a": {"count": 5000}}, run={"kernel": kernel})
        return estimate_memory(economy, 2, torch.float32, machine=machine).device["round"]

    assert round_bytes("auto", "cuda") == round_bytes("triton", "cuda") < round_bytes("fused", "cuda")
    assert round_bytes("auto", "cpu") == round_bytes("fused", "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a card here: its compute capability decides
    for capability, kernel in (((7, 5), "fused"), ((8, 0), "triton"), ((9, 0), "triton")):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert resolved_kernel("auto", "expected", False, "cuda") == kernel
    monkeypatch.setitem(sys.modules, "triton", None)  # importlib then finds no triton
    assert resolved_kernel("auto", "expected", False, "cuda") == "fused"


@needs_triton
@needs_compiler
@pytest.mark.parametrize("case", COMPILED_ROUND_MODES)
def test_the_compiled_round_on_the_triton_kernel_equals_the_eager_one(case):
    """run.compile on a CPU: the round traced around the interpreted programs (an eager break), equal each round."""
    mode, dimension = case
    torch._dynamo.reset()
    economy = two_populations(heads=2, mode=mode, d=dimension, run={"kernel": "triton"})
    compare_rounds(rollout(economy), rounds=2)
    torch._dynamo.reset()


@pytest.mark.parametrize("precision, operands", [("ieee", torch.float32), ("bf16", torch.bfloat16)])
def test_the_registered_operator_returns_fresh_outputs_of_the_right_shapes(precision, operands):
    """econspin::triton_blocks traced with fake CUDA tensors (no GPU: its programs are not run, their outputs made).

    With bf16 products the operands are bf16, and the outputs in the working precision all the same.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    import econspin.triton_blocks as blocks

    if not blocks.REGISTERED:
        pytest.skip("needs triton and torch.library.triton_op")
    groups, agents, keys, dimension = 3, 50, 6, 4
    with FakeTensorMode():
        left = torch.empty(groups, agents, keys, device="cuda", dtype=operands)
        right = torch.empty(groups, agents, keys, device="cuda", dtype=operands).transpose(1, 2)
        network, per_row, delivered, moment_rows = (
            torch.empty(agents, agents, device="cuda"),
            torch.empty(groups, agents, device="cuda"),
            torch.empty(groups, agents, dimension, device="cuda", dtype=operands),
            torch.empty(groups, 2, agents, device="cuda"),
        )
        arguments = (left, right, network, 1, per_row, delivered, moment_rows, per_row)
        outputs = torch.ops.econspin.triton_blocks(*arguments, 32, 16, 4, precision, precision, True)
    shapes = [(tuple(output.shape), output.dtype, output.device.type) for output in outputs]
    assert shapes == [((groups, agents), torch.float32, "cuda")] * 4 + [
        ((groups, agents, dimension + 2), torch.float32, "cuda"),
        ((groups, agents), torch.float64, "cuda"),
    ]


@needs_triton
def test_a_triton_scenario_runs_from_the_command_line_as_the_fused_one(tmp_path):
    check_command_line_equals_fused("triton", tmp_path, steps=4)


@needs_triton
def test_a_triton_scenario_with_bf16_utilities_runs_from_the_command_line(tmp_path):
    """run.utility_precision: bfloat16 on run.kernel: triton runs from a scenario file, near the fused run."""
    tables = {}
    for name in ("fused", "triton"):
        text = scenario_text(name, steps=4).replace("dtype: float64", "dtype: float32, utility_precision: bfloat16")
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / name), "--quiet"])
        assert result.exit_code == 0, result.output
        tables[name] = pd.read_parquet(tmp_path / name / "metrics.parquet")
    assert tables["fused"].columns.tolist() == tables["triton"].columns.tolist()
    difference = float((tables["fused"] - tables["triton"]).abs().max().max())
    assert difference < 1e-3, difference  # the same bf16 round, its sums in another order


def test_without_triton_the_kernel_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "triton", None)  # importlib then finds no triton
    path = tmp_path / "triton.yaml"
    path.write_text(scenario_text("triton", steps=4))
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "refused"), "--quiet"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "run.kernel: triton needs the triton package" in result.output
    assert not (tmp_path / "refused").exists()
    sampled = scenario_text("triton", steps=4).replace("visibility: 0.5", "visibility: 0.5, mode: sampled")
    path.write_text(sampled)  # sampled mode runs the Triton draw: refused alike
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "sampled"), "--quiet"])
    assert result.exit_code == 2 and "run.kernel: triton needs the triton package" in result.output
    assert not (tmp_path / "sampled").exists()
    path.write_text(sampled.replace("kernel: triton", "kernel: fused"))  # the fused kernel needs no triton
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "fused"), "--quiet"])
    assert result.exit_code == 0, result.output


@needs_triton
def test_the_gpu_checks_triton_timing_runs_on_the_cpu():
    """experiments/gpu_check.py's triton and triton_sampled steps at a tiny shape, so that a GPU finds them whole."""
    from experiments import gpu_check, gpu_measures

    tiles = ((16, 16, 1), (8, 16, 1))
    rows = gpu_measures.triton_timing(torch.device("cpu"), shapes=((2, 20),), tiles=tiles, repeats=1)
    rounds = rows[0]
    errors, tiles = [row for row in rows if "error" in row], [row for row in rows if "market ms" in row]
    assert rounds["triton ms"] > 0 and rounds["triton difference from fused"] < 1e-5
    assert rounds["agents differing from fused"] == 0
    assert [row["tiles"] for row in tiles] == [[16, 16, 1]] and tiles[0]["difference from fused"] < 1e-5
    assert [row["tiles"] for row in errors] == [[8, 16, 1]] and "power of two" in errors[0]["error"]
    sampled = gpu_measures.triton_timing(torch.device("cpu"), ((2, 20),), ((16, 16, 1),), repeats=1, mode="sampled")
    assert sampled[0]["mode"] == "sampled" and sampled[0]["triton difference from fused"] < 1e-5  # the same sellers
    assert sampled[0]["agents differing from fused"] == 0
    assert sampled[0]["agents differing, fused from the cpu"] == 0  # the rounding baseline: here the cpu itself
    assert sampled[1]["difference from fused"] < 1e-5
    assert "triton_sampled" in gpu_check.STEPS and "triton_sampled" in gpu_measures.MEASURES


@needs_triton
def test_the_gpu_checks_reduced_precision_timing_runs_on_the_cpu():
    """gpu_check's triton_precision step (bf16 products) at a tiny shape: its rows, beside bf16 SDPA."""
    from experiments import gpu_check, gpu_measures

    rows = gpu_measures.triton_timing(
        torch.device("cpu"), shapes=((2, 20),), tiles=((16, 16, 1),), repeats=1, precision="bfloat16"
    )
    rounds, tiles = rows
    assert rounds["precision"] == "bfloat16" and rounds["sdpa forward bfloat16 ms"] > 0
    assert rounds["triton ratio to sdpa bfloat16"] > 0 and rounds["triton pairs per s"] > 0
    # the error of bf16 utilities against the full-precision fused round: rounded, and small
    assert 1e-6 < rounds["triton difference from fused"] < 0.05
    assert tiles["tiles"] == [16, 16, 1] and 1e-6 < tiles["difference from fused"] < 0.1
    assert "triton_precision" in gpu_check.STEPS and "triton_precision" in gpu_measures.MEASURES
