"""The FlexAttention market step (econspin.flex) against the fused kernel, the reference and the oracle.

On a CPU FlexAttention runs eagerly: the same passes, score_mods and masks a CUDA GPU compiles.
"""

import dataclasses
import math

import pandas as pd
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
from typer.testing import CliRunner

from econspin import ScenarioError
from econspin.cli import app
from econspin.flex import flex_trade, padded, uses_flex
from econspin.fused import fused_trade
from econspin.host_syncs import HostSyncRecorder
from econspin.market import MarketOutcome, trade
from econspin.round import step

runner = CliRunner()


def flex_economy(economy):
    return dataclasses.replace(economy, kernel="flex")


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
    """Exact ties at T = 0, with utilities far from 0 (z ~ 2^996: ln(ties) is lost beside it) and at 0."""
    populations = {"a": {"count": 40, "temperature": 0.0, "projections": {"init": "identity"}}}
    run = rollout(scenario(populations=populations, output="identity"))  # d = d_k = 4: U = x_i . x_j / 2
    states = torch.randint(-2, 3, (1, 40, 4), generator=torch.Generator().manual_seed(3)).double()
    states[0, :2] = 0.0  # two buyers to whom every seller is worth 0: all tie, and z = 0
    state = run.state.replace(states=states)
    flex = flex_trade(state, flex_economy(run.economy))
    assert_outcomes_close(fused_trade(state, run.economy), flex, 1e-14)
    utilities = states[0] @ states[0].T / 2
    utilities.fill_diagonal_(-math.inf)
    best = utilities.max(1, keepdim=True).values
    alpha = (utilities == best).double()
    ties = alpha.sum(1, keepdim=True)
    assert (ties > 1).sum() > 5 and (best != 0).sum() > 5 and (best == 0).sum() > 0
    alpha = alpha / ties
    assert torch.equal(flex.revenue[0] > 0, alpha.sum(0) > 0)  # nobody outside the argmax earns a cent
    assert torch.allclose(flex.received[0], alpha @ states[0], rtol=0, atol=1e-14)
    assert torch.allclose(flex.revenue[0], 0.1 * alpha.T @ state.money[0], rtol=1e-14, atol=0)
    assert torch.allclose(flex.impact[0], 1 / ties.squeeze(1), rtol=1e-15, atol=0)
    assert torch.allclose(flex.entropy[0], ties.squeeze(1).log() / math.log(39), rtol=1e-15, atol=0)


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
    populations = {
        "buyers": {"count": 5, "temperature": math.inf, "sells": False},
        "sellers": {"count": 7, "buys": False},
    }
    run = rollout(scenario(populations=populations, heads=2, visibility=1.0))
    outcome = flex_trade(run.state, flex_economy(run.economy))
    assert torch.allclose(outcome.entropy[0, :5], torch.ones(5, dtype=torch.float64), rtol=1e-15, atol=0)
    assert torch.all(torch.isinf(outcome.surplus[0, :5]))
    per_seller = outcome.revenue[0, 5:]
    assert torch.allclose(per_seller, per_seller.mean().expand(7), rtol=1e-15, atol=0)
    assert_outcomes_close(fused_trade(run.state, run.economy), outcome, 1e-14)


def test_buyers_with_nobody_to_buy_from_spend_and_receive_nothing():
    run = rollout(two_populations(heads=2))
    mask = torch.ones(64, 64, dtype=torch.bool)
    mask[:10] = False  # isolated buyers
    mask[10:20, 21:] = False  # buyers with a single seller
    economy = dataclasses.replace(run.economy, trade_mask=mask)
    state = run.state.replace(temperature=run.state.temperature.index_fill(1, torch.tensor([12, 15]), math.inf))
    state = state.replace(temperature=state.temperature.index_fill(1, torch.tensor([30, 31]), 0.0))
    outcome = flex_trade(state, flex_economy(economy))
    for name in ("received", "spending", "entropy", "surplus", "choice_variance", "impact"):
        assert torch.all(getattr(outcome, name)[0, :10] == 0), name
    assert_outcomes_close(fused_trade(state, economy), outcome, 1e-13)


def test_several_populations_heads_and_batch_elements_in_float32():
    populations = {
        "human": {"count": 30, "temperature": 0.8, "spend": 0.2},
        "ai": {"count": 10, "temperature": 0.0, "spend": 0.5},
        "firm": {"count": 8, "temperature": math.inf, "buys": False},
    }
    run = rollout([scenario(populations=populations, heads=3, d=5, d_k=3, d_v=2, visibility=0.4)] * 3, dtype="float32")
    flex = flex_trade(run.state, flex_economy(run.economy))
    assert_outcomes_close(fused_trade(run.state, run.economy), flex, TOLERANCE[torch.float32])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the compiled Triton passes")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_passes_on_a_gpu_equal_the_fused_kernel(dtype):
    """float32 runs compiled (Triton), float64 eagerly: both against the fused kernel on the CPU."""
    populations = {
        "human": {"count": 300, "temperature": 0.8, "spend": 0.2},
        "ai": {"count": 100, "temperature": 0.0, "spend": 0.5},
        "firm": {"count": 60, "temperature": math.inf, "buys": False},
    }
    run = rollout([scenario(populations=populations, heads=2, d=8, visibility=0.4)] * 3, dtype=dtype)
    state, economy = (on_device(frozen, "cuda") for frozen in (run.state, flex_economy(run.economy)))
    outcome = flex_trade(state, economy)
    moved = MarketOutcome(**{name: getattr(outcome, name).cpu() for name in FIELDS})
    assert_outcomes_close(fused_trade(run.state, run.economy), moved, TOLERANCE[run.state.states.dtype])


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
    assert rollout(two_populations(run={"kernel": "flex"})).economy.kernel == "flex"
    assert rollout(two_populations(mode="sampled", run={"kernel": "flex"})).economy.kernel == "fused"
    with pytest.raises(ScenarioError, match="run.kernel: flex"):
        two_populations(couplings={"curie_weiss": 1.0}, run={"kernel": "flex"})
    run = rollout(two_populations(run={"kernel": "flex"}))
    assert uses_flex(run.state, run.economy)
    fields = run.state.fields.clone().requires_grad_(True)
    assert not uses_flex(run.state.replace(fields=fields), run.economy)  # gradients take the reference path
    populations = {
        "human": {"count": 20, "temperature": 0.8, "spend": 0.2, "correction": {"form": "tap"}},
        "ai": {"count": 8, "temperature": 0.0, "spend": 0.5, "eta": 0.5},
        "firm": {"count": 6, "temperature": math.inf, "buys": False},
    }
    runs = [
        rollout(scenario(populations=populations, heads=2, visibility=0.4, response="vmf", run={"kernel": kernel}))
        for kernel in ("fused", "flex")
    ]
    for run in runs:
        run.advance(8)
    fused, flex = (run.state for run in runs)
    assert torch.allclose(fused.states, flex.states, rtol=0, atol=1e-10)
    assert torch.allclose(fused.money, flex.money, rtol=1e-10, atol=0)


def test_block_masks_follow_the_network():
    """A second network on the same sellers builds its own masks (the cache keys on both)."""
    run = rollout(two_populations())
    generator = torch.Generator().manual_seed(0)
    for density in (0.3, 0.7):
        economy = dataclasses.replace(run.economy, trade_mask=torch.rand(64, 64, generator=generator) < density)
        assert_outcomes_close(fused_trade(run.state, economy), flex_trade(run.state, flex_economy(economy)), 1e-13)


SCENARIO = """
name: flex
populations:
  human: {count: 12, temperature: 1.0, spend: 0.2}
  ai: {count: 4, temperature: 0.0, spend: 0.3}
market: {d: 4, heads: 2, visibility: 0.5}
run: {steps: 6, replicas: 2, seed: 3, device: cpu, dtype: float64, kernel: KERNEL}
"""


def test_a_flex_scenario_runs_from_the_command_line_as_the_fused_one(tmp_path):
    tables = {}
    for kernel in ("fused", "flex"):
        path = tmp_path / f"{kernel}.yaml"
        path.write_text(SCENARIO.replace("KERNEL", kernel))
        result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / kernel), "--quiet"])
        assert result.exit_code == 0, result.output
        assert "Warning" not in result.output
        tables[kernel] = pd.read_parquet(tmp_path / kernel / "metrics.parquet")
    assert tables["fused"].columns.tolist() == tables["flex"].columns.tolist()
    assert (tables["fused"] - tables["flex"]).abs().max().max() < 1e-9
    path = tmp_path / "couplings.yaml"
    path.write_text(SCENARIO.replace("KERNEL", "flex").replace("visibility: 0.5", "couplings: {curie_weiss: 1}"))
    result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / "refused"), "--quiet"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "run.kernel: flex covers the attention market" in result.output and str(path) in result.output
    assert not (tmp_path / "refused").exists()
