"""The FlexAttention market step (econspin.flex) against the fused kernel, the reference and the oracle.

On a CPU FlexAttention runs eagerly: the same passes, score_mods and masks a CUDA GPU compiles.
"""

import dataclasses

import pytest
import torch
from fused_cases import (
    FIELDS,
    TOLERANCE,
    assert_equals_oracle,
    assert_outcomes_close,
    economies,
    on_device,
    two_populations,
)
from helpers import rollout, scenario
from hypothesis import given, settings
from kernel_cases import (
    check_command_line_equals_fused,
    check_infinite_temperature_uniform,
    check_isolated_buyers,
    check_kernel_switch_and_rollout,
    check_several_populations_in_float32,
    check_zero_temperature_ties,
    few_hundred_agents,
    scenario_text,
)
from typer.testing import CliRunner

from econspin.cli import app
from econspin.flex import flex_trade, padded, uses_flex
from econspin.fused import fused_trade
from econspin.host_syncs import HostSyncRecorder
from econspin.market import MarketOutcome, trade
from econspin.round import step

runner = CliRunner()


def flex_economy(economy):
    return dataclasses.replace(economy, kernel="flex")


def flex_outcome(state, economy):
    """The flex kernel's market step on an economy built for the fused one."""
    return flex_trade(state, flex_economy(economy))


@given(economies())
@settings(max_examples=25, deadline=None, derandomize=True)
def test_flex_equals_fused_and_reference(drawn):
    state, economy = drawn
    flex = flex_trade(state, flex_economy(economy))
    tolerance = TOLERANCE[state.states.dtype]
    assert_outcomes_close(fused_trade(state, economy), flex, tolerance)
    assert_outcomes_close(trade(state, economy), flex, tolerance)
    spent, earned = flex.spending.sum(1), flex.revenue.sum(1)
    assert torch.allclose(earned, spent, rtol=1e-13, atol=0)


@pytest.mark.slow
@given(economies())
@settings(max_examples=400, deadline=None)
def test_flex_equals_fused_and_reference_many(drawn):
    test_flex_equals_fused_and_reference.hypothesis.inner_test(drawn)


@given(economies().filter(lambda drawn: drawn[0].states.dtype == torch.float64))
@settings(max_examples=10, deadline=None, derandomize=True)
def test_flex_equals_the_independent_oracle(drawn):
    """Against econspin.reference (plain float64 numpy, one buyer at a time), as the fused kernel is."""
    state, economy = drawn
    assert_equals_oracle(flex_trade(state, flex_economy(economy)), state, economy)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_money_is_conserved_whatever_the_precision(dtype):
    run = rollout(two_populations(heads=3, visibility=1.5, run={"kernel": "flex"}), dtype=dtype)
    assert run.economy.kernel == "flex"
    outcome = flex_trade(run.state, run.economy)
    assert outcome.revenue.dtype == outcome.spending.dtype == torch.float64
    assert torch.all(outcome.revenue >= 0)
    assert torch.allclose(outcome.revenue.sum(1), outcome.spending.sum(1), rtol=1e-13, atol=0)
    start = run.state.money.sum(1)
    with torch.no_grad():
        for _ in range(10):
            run.state = step(run.state, run.economy)
    assert float((run.state.money.sum(1) / start - 1).abs().max()) < 1e-12


def test_zero_temperature_is_the_argmax_with_ties_split_equally():
    """Exact ties at T = 0, with utilities far from 0 (z ~ 2^996: ln(ties) is lost beside it) and at 0.

    And near ties at d_k = 1 and 4: the flex kernel once tied only within a margin of its row LSE's
    rounding (about 4 eps of |z|), and ranked sellers 7 eps apart at d_k = 4 that the other kernels
    and the oracle tie (docs/model.md's width, (d_k + 4) eps of the row's size).
    """
    check_zero_temperature_ties(flex_outcome)


@pytest.mark.parametrize(
    "dtype, temperature",
    [("float64", t) for t in (1e-2, 1e-3, 1e-6, 1e-10, 1e-20)] + [("float32", t) for t in (1e-2, 1e-6, 1e-20)],
)
def test_low_temperatures_are_as_exact_as_on_the_fused_kernel(dtype, temperature):
    """|z| up to 55 / T: the row LSE's own rounding (eps |z|) must not reach alpha, the entropy or the impact.

    float32 at T = 1e-3 is left out: there the utilities' own rounding over T moves every
    kernel's alpha by 1e-4 (reference against fused as much as flex against fused).
    """
    populations = {
        "human": {"count": 40, "temperature": temperature, "spend": 0.3, "money": {"distribution": "pareto"}},
        "ai": {"count": 24, "temperature": temperature, "spend": 0.9, "money": {"distribution": "exponential"}},
    }
    run = rollout(scenario(populations=populations, visibility=2.0, heads=2), dtype=dtype)
    state = run.state.replace(money=run.state.money.index_fill(1, torch.arange(5), 0.0))  # premiums of -55
    flex = flex_trade(state, flex_economy(run.economy))
    assert_outcomes_close(fused_trade(state, run.economy), flex, TOLERANCE[state.states.dtype])
    assert torch.allclose(flex.revenue.sum(1), flex.spending.sum(1), rtol=1e-13, atol=0)


def test_infinite_temperature_is_uniform_over_allowed_partners():
    check_infinite_temperature_uniform(flex_outcome)


def test_buyers_with_nobody_to_buy_from_spend_and_receive_nothing():
    check_isolated_buyers(flex_outcome)


def test_several_populations_heads_and_batch_elements_in_float32():
    check_several_populations_in_float32(flex_outcome)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the compiled Triton passes")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_passes_on_a_gpu_equal_the_fused_kernel(dtype):
    """float32 runs compiled (Triton), float64 eagerly: both against the fused kernel on the CPU."""
    run = few_hundred_agents(dtype)
    state, economy = (on_device(frozen, "cuda") for frozen in (run.state, flex_economy(run.economy)))
    outcome = flex_trade(state, economy)
    moved = MarketOutcome(**{name: getattr(outcome, name).cpu() for name in FIELDS})
    assert_outcomes_close(fused_trade(run.state, run.economy), moved, TOLERANCE[run.state.states.dtype])


def test_a_pass_under_a_dispatch_mode_runs_eagerly_and_leaves_flex_usable(monkeypatch):
    """Where the passes run compiled, a pass under HostSyncRecorder runs the eager form instead.

    A compiled FlexAttention called under a torch dispatch mode leaves Dynamo unable to trace
    FlexAttention's operator for the rest of the process: on an H100 the GPU test above then
    failed after tests/test_device_rollout.py's flex case. The CPU stands in for CUDA here.
    """
    import econspin.flex as flex_module

    monkeypatch.setattr(flex_module, "COMPILED_DEVICES", ("cpu", "cuda"))
    run = rollout(two_populations(heads=2), dtype="float32")
    torch._dynamo.reset()
    try:
        with HostSyncRecorder() as recorder:
            assert not flex_module.compiles(run.state.states)
            watched = flex_outcome(run.state, run.economy)
        assert recorder.events == []
        assert flex_module.compiles(run.state.states)  # outside the mode, float32 on a listed device compiles
        assert_outcomes_close(fused_trade(run.state, run.economy), watched, TOLERANCE[torch.float32])
        float64 = rollout(two_populations(heads=2))  # eager, after: FlexAttention still traces
        got = flex_outcome(float64.state, float64.economy)
        assert_outcomes_close(fused_trade(float64.state, float64.economy), got, TOLERANCE[torch.float64])
    finally:
        torch._dynamo.reset()  # a failure here must not leave the process unable to run FlexAttention


def test_head_dimensions_are_padded_to_a_power_of_two_of_at_least_16():
    for width, want in ((1, 16), (16, 16), (17, 32), (40, 64)):
        columns = padded(torch.ones(2, width))
        assert columns.shape == (2, want) and columns.sum() == 2 * width


@pytest.mark.parametrize("network", [False, True])
def test_the_flex_step_never_waits_on_the_host(network):
    """FlexAttention refuses meta tensors: econspin.host_syncs' recorder watches for value reads instead.

    The block masks are built once per economy (the first call); the round itself reads no value.
    The recorder runs FlexAttention's operator by its eager form, the operators inside it watched.
    """
    run = rollout(two_populations(heads=2, visibility=0.5), dtype="float32")
    economy = flex_economy(run.economy)
    if network:
        economy = dataclasses.replace(economy, trade_mask=torch.rand(64, 64) < 0.5)
    state = run.state.replace(temperature=run.state.temperature.index_fill(1, torch.tensor([0, 3]), 0.0))
    first = flex_trade(state, economy)
    with torch.no_grad(), HostSyncRecorder() as recorder:
        again = flex_trade(state, economy)
    assert recorder.events == [], "\n".join(recorder.summary())
    assert_outcomes_close(first, again, 0.0)
    with HostSyncRecorder() as recorder:
        trade(state, economy)  # the reference path does synchronise: the recorder sees it
    assert any(event.kind == "scalar read" and "choice.py" in event.where for event in recorder.events)


def test_the_kernel_switch_and_a_whole_rollout():
    check_kernel_switch_and_rollout("flex", uses_flex, rounds=8, tolerance=1e-10)


def test_block_masks_follow_the_network():
    """A second network on the same sellers builds its own masks (the cache keys on both)."""
    run = rollout(two_populations())
    generator = torch.Generator().manual_seed(0)
    for density in (0.3, 0.7):
        economy = dataclasses.replace(run.economy, trade_mask=torch.rand(64, 64, generator=generator) < density)
        assert_outcomes_close(fused_trade(run.state, economy), flex_trade(run.state, flex_economy(economy)), 1e-13)


def test_a_flex_scenario_runs_from_the_command_line_as_the_fused_one(tmp_path):
    check_command_line_equals_fused("flex", tmp_path)
    path = tmp_path / "couplings.yaml"
    path.write_text(scenario_text("flex").replace("visibility: 0.5", "couplings: {curie_weiss: 1}"))
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "refused"), "--quiet"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "run.kernel: flex covers the attention market" in result.output and str(path) in result.output
    assert not (tmp_path / "refused").exists()
