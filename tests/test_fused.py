"""The fused expected-mode step (econspin.fused) against the reference market (econspin.market)."""

import dataclasses
import math

import pytest
import torch
from helpers import rollout, scenario
from hypothesis import given, settings
from hypothesis import strategies as st

from econspin import ScenarioError
from econspin.fused import fused_trade, uses_fused
from econspin.market import MarketOutcome, trade
from econspin.round import step

FIELDS = [field.name for field in dataclasses.fields(MarketOutcome)]
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}


def assert_outcomes_close(reference: MarketOutcome, fused: MarketOutcome, tolerance: float) -> None:
    """Every field equal to ``tolerance`` relative to its own scale; infinities in the same places."""
    for name in FIELDS:
        want, got = getattr(reference, name), getattr(fused, name)
        assert want.shape == got.shape and want.dtype == got.dtype, name
        assert torch.equal(torch.isinf(want), torch.isinf(got)), name
        assert torch.equal(want[torch.isinf(want)], got[torch.isinf(got)]), name
        finite = torch.isfinite(want)
        assert torch.isfinite(got[finite]).all(), name
        want, got = want[finite].double(), got[finite].double()
        scale = want.abs().max() if want.numel() else 0.0
        error = (want - got).abs() / (want.abs() + scale + 1.0)
        assert error.numel() == 0 or float(error.max()) <= tolerance, f"{name}: {float(error.max()):.3g}"


@st.composite
def economies(draw):
    """A random small economy and state: shapes, flags, budgets, masks, temperatures, ties.

    In half of the draws (``lattice``) states are integers and projections powers of two
    times the identity, with d = d_k in {1, 4}: every utility is then exact in floating
    point, so sellers that tie, tie bitwise in both paths whatever the order of the sums.
    (With general floats a matrix product may round equal columns differently by position,
    in either path, and a T = 0 row then has no well-defined set of ties to compare.)
    """
    dtype = draw(st.sampled_from(["float64", "float32"]))
    lattice = draw(st.booleans())
    count = draw(st.integers(1, 3))
    sells = [draw(st.booleans()) for _ in range(count)]
    sells[draw(st.integers(0, count - 1))] = True
    populations = {
        f"p{index}": {
            "count": draw(st.integers(1, 9)),
            "buys": draw(st.booleans()) or index == 0,
            "sells": sells[index],
            "spend": draw(st.floats(0.05, 1.0)),
            "money": {"distribution": draw(st.sampled_from(["equal", "exponential", "pareto"]))},
            "state": {"scale": draw(st.floats(0.2, 2.0))},
            "projections": {"init": "identity", "scale": draw(st.sampled_from([0.5, 1.0, 2.0]))} if lattice else {},
        }
        for index in range(count)
    }
    d = draw(st.sampled_from([1, 4])) if lattice else draw(st.integers(1, 6))
    market = {
        "d": d,
        "heads": draw(st.integers(1, 3)),
        "d_k": d if lattice else draw(st.integers(1, 5)),
        "d_v": d if lattice else draw(st.integers(1, 5)),
        "visibility": 0.0 if lattice else draw(st.floats(-2.0, 2.0)),
        "spend_rule": draw(st.sampled_from(["share", "unit"])),
        "unit": draw(st.floats(0.2, 2.0)),
    }
    seed = draw(st.integers(0, 2**31))
    batch = draw(st.integers(1, 3))
    built = rollout([scenario(populations=populations, run={"seed": seed}, **market)] * batch, dtype=dtype)
    state, economy = built.state, built.economy
    batch, agents, d = state.states.shape
    generator = torch.Generator().manual_seed(seed)
    lowest = 0.05 if dtype == "float64" else 0.25
    temperature = lowest + (5.0 - lowest) * torch.rand(batch, agents, generator=generator, dtype=torch.float64)
    kind = torch.rand(batch, agents, generator=generator)
    temperature = torch.where(kind < draw(st.floats(0, 0.6 if lattice else 0.3)), 0.0, temperature)
    temperature = torch.where(kind > 1 - draw(st.floats(0, 0.3)), math.inf, temperature)
    money = torch.where(torch.rand(batch, agents, generator=generator, dtype=torch.float64) < 0.15, 0.0, state.money)
    states = state.states
    if lattice:
        states = torch.randint(-2, 3, (batch, agents, d), generator=generator).to(states.dtype)
    state = state.replace(states=states, money=money, temperature=temperature.to(state.temperature.dtype))
    if draw(st.booleans()):  # a trade network, with agents who have nobody to buy from
        mask = torch.rand(agents, agents, generator=generator) < draw(st.floats(0.1, 0.9))
        mask[torch.rand(agents, generator=generator) < 0.2] = False
        economy = dataclasses.replace(economy, trade_mask=mask)
    return state, economy


@given(economies(), st.integers(1, 12))
@settings(max_examples=60, deadline=None, derandomize=True)
def test_fused_equals_reference(drawn, rows):
    state, economy = drawn
    reference = trade(state, economy)
    for block in (None, rows):
        assert_outcomes_close(reference, fused_trade(state, economy, block), TOLERANCE[state.states.dtype])


@pytest.mark.slow
@given(economies(), st.integers(1, 12))
@settings(max_examples=1000, deadline=None)
def test_fused_equals_reference_many(drawn, rows):
    test_fused_equals_reference.hypothesis.inner_test(drawn, rows)


def two_populations(**market):
    populations = {
        "human": {"count": 40, "temperature": 1.0, "spend": 0.3, "money": {"distribution": "pareto"}},
        "ai": {"count": 24, "temperature": 0.1, "spend": 0.9, "money": {"distribution": "exponential"}},
    }
    return scenario(populations=populations, **market)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_money_is_conserved_whatever_the_precision(dtype):
    run = rollout(two_populations(heads=3, visibility=1.5), dtype=dtype)
    outcome = fused_trade(run.state, run.economy, rows=5)
    assert outcome.revenue.dtype == outcome.spending.dtype == torch.float64
    assert torch.all(outcome.revenue >= 0)
    spent, earned = outcome.spending.sum(1), outcome.revenue.sum(1)
    assert torch.allclose(earned, spent, rtol=1e-13, atol=0)
    start = run.state.money.sum(1)
    with torch.no_grad():
        for _ in range(50):
            run.state = step(run.state, run.economy)
    assert float((run.state.money.sum(1) / start - 1).abs().max()) < 1e-12


def test_block_size_and_batch_grouping_do_not_change_the_result(monkeypatch):
    run = rollout([two_populations(heads=2, visibility=-0.7)] * 3)
    state = run.state.replace(temperature=run.state.temperature.index_fill(1, torch.tensor([0, 5]), 0.0))
    whole = fused_trade(state, run.economy, rows=64)
    for rows in (1, 7, 33):
        assert_outcomes_close(whole, fused_trade(state, run.economy, rows=rows), 1e-13)
    monkeypatch.setattr("econspin.fused.BLOCK_ENTRIES", 64 * 16)  # one batch-head at a time, MIN_ROWS rows
    assert_outcomes_close(whole, fused_trade(state, run.economy), 1e-13)


def test_zero_temperature_is_the_argmax_with_ties_split_equally():
    populations = {"a": {"count": 40, "temperature": 0.0, "projections": {"init": "identity"}}}
    run = rollout(scenario(populations=populations, output="identity"))  # d = d_k = 4: U = x_i . x_j / 2
    states = torch.randint(-2, 3, (1, 40, 4), generator=torch.Generator().manual_seed(3)).double()
    state = run.state.replace(states=states)
    fused = fused_trade(state, run.economy, rows=16)
    assert_outcomes_close(trade(state, run.economy), fused, 1e-14)
    utilities = states[0] @ states[0].T / 2  # exact: integers
    utilities.fill_diagonal_(-math.inf)
    alpha = (utilities == utilities.max(1, keepdim=True).values).double()
    ties = alpha.sum(1, keepdim=True)
    assert (ties > 1).sum() > 5  # many rows with ties
    alpha = alpha / ties
    assert torch.equal(fused.revenue[0] > 0, alpha.sum(0) > 0)  # nobody outside the argmax earns a cent
    assert torch.allclose(fused.received[0], alpha @ states[0], rtol=0, atol=1e-14)
    assert torch.allclose(fused.revenue[0], 0.1 * alpha.T @ state.money[0], rtol=1e-14, atol=0)
    assert torch.allclose(fused.impact[0], 1 / ties.squeeze(1), rtol=1e-15, atol=0)


def test_infinite_temperature_is_uniform_over_allowed_partners():
    populations = {
        "buyers": {"count": 5, "temperature": math.inf, "sells": False},
        "sellers": {"count": 7, "buys": False},
    }
    run = rollout(scenario(populations=populations, heads=2, visibility=1.0))
    outcome = fused_trade(run.state, run.economy)
    assert torch.equal(outcome.entropy[0, :5], torch.ones(5, dtype=torch.float64))
    per_seller = outcome.revenue[0, 5:]
    assert torch.allclose(per_seller, per_seller.mean().expand(7), rtol=1e-15, atol=0)
    assert_outcomes_close(trade(run.state, run.economy), outcome, 1e-14)


def test_buyers_with_nobody_to_buy_from_spend_and_receive_nothing():
    run = rollout(two_populations())
    mask = torch.ones(64, 64, dtype=torch.bool)
    mask[:10] = False  # isolated buyers
    mask[10:20, 21:] = False  # buyers with a single seller
    economy = dataclasses.replace(run.economy, trade_mask=mask)
    state = run.state.replace(temperature=run.state.temperature.index_fill(1, torch.tensor([12, 15]), math.inf))
    outcome = fused_trade(state, economy, rows=16)
    for name in ("received", "spending", "entropy", "surplus", "choice_variance", "impact"):
        assert torch.all(getattr(outcome, name)[0, :10] == 0), name
    assert_outcomes_close(trade(state, economy), outcome, 1e-13)
    # a budget too small to keep the network as a float bias: each block masks from the boolean mask
    tight = dataclasses.replace(economy, memory_budget=64 * 64 * 8 * 4 - 1)
    assert_outcomes_close(outcome, fused_trade(state, tight, rows=16), 1e-15)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_unit_budget_spends_the_unit_exactly(dtype):
    """torch.where on two Python floats rounded the unit to float32 (0.2 spent 0.20000000298)."""
    run = rollout(two_populations(spend_rule="unit", unit=0.2), dtype=dtype)
    state = run.state.replace(money=run.state.money.index_fill(1, torch.tensor([3]), 0.1))
    affords = state.money[0] >= 0.2
    assert not affords[3] and affords.sum() > 10
    for outcome in (trade(state, run.economy), fused_trade(state, run.economy)):
        assert outcome.spending[0][affords].tolist() == [0.2] * int(affords.sum())
        assert torch.all(outcome.spending[0][~affords] == 0)


def on_meta(frozen):
    """The same dataclass with every tensor moved to the meta device (shapes only, no data)."""
    moved = {
        field.name: getattr(frozen, field.name).to("meta")
        for field in dataclasses.fields(frozen)
        if isinstance(getattr(frozen, field.name), torch.Tensor)
    }
    return dataclasses.replace(frozen, **moved)


@pytest.mark.parametrize("network", [False, True])
def test_fused_step_never_waits_on_the_host(network):
    """Meta tensors hold no data: any .item(), bool(tensor) or branch on data would raise."""
    run = rollout(two_populations(heads=2, visibility=0.5), dtype="float32")
    economy = run.economy
    if network:
        economy = dataclasses.replace(economy, trade_mask=torch.rand(64, 64) < 0.5)
    state, economy = on_meta(run.state), on_meta(economy)
    outcome = fused_trade(state, economy, rows=16)
    assert outcome.received.device.type == "meta" and outcome.received.shape == (1, 64, 4)
    with pytest.raises((RuntimeError, NotImplementedError)):
        trade(state, economy)  # the reference path does synchronise


def test_the_kernel_switch():
    assert rollout(two_populations()).economy.kernel == "fused"
    assert rollout(two_populations(run={"kernel": "reference"})).economy.kernel == "reference"
    sampled = rollout(two_populations(mode="sampled"))  # fast paths allowed (uniform choice), fused not
    assert sampled.economy.kernel == "fused" and not uses_fused(sampled.state, sampled.economy)
    with pytest.raises(ScenarioError, match="run.kernel"):
        two_populations(mode="sampled", run={"kernel": "fused"})
    run = rollout(two_populations())
    assert uses_fused(run.state, run.economy)
    fields = run.state.fields.clone().requires_grad_(True)
    assert not uses_fused(run.state.replace(fields=fields), run.economy)  # gradients take the reference path
    with torch.no_grad():
        assert uses_fused(run.state.replace(fields=fields), run.economy)


@pytest.mark.parametrize("correction", ["none", "tap"])
def test_a_whole_rollout_is_the_same_on_either_kernel(correction):
    populations = {
        "human": {"count": 30, "temperature": 0.8, "spend": 0.2, "correction": {"form": correction}},
        "ai": {"count": 10, "temperature": 0.0, "spend": 0.5, "eta": 0.5},
        "firm": {"count": 8, "temperature": math.inf, "buys": False},
    }
    runs = [
        rollout(scenario(populations=populations, heads=2, visibility=0.4, response="vmf", run={"kernel": kernel}))
        for kernel in ("reference", "fused")
    ]
    assert [run.economy.kernel for run in runs] == ["reference", "fused"]
    for run in runs:
        run.advance(20)
    reference, fused = (run.state for run in runs)
    assert torch.allclose(reference.states, fused.states, rtol=0, atol=1e-10)
    assert torch.allclose(reference.money, fused.money, rtol=1e-10, atol=0)
    table_reference, table_fused = runs[0].metrics(), runs[1].metrics()
    assert table_reference.columns.tolist() == table_fused.columns.tolist()
    assert (table_reference - table_fused).abs().max().max() < 1e-9


@pytest.mark.parametrize("response, correction", [("large_d", "none"), ("vmf", "tap"), ("sphere", "none")])
def test_a_whole_expected_round_never_waits_on_the_host(response, correction):
    populations = {"a": {"count": 9, "correction": {"form": correction}}, "b": {"count": 4, "temperature": 0.0}}
    run = rollout(scenario(populations=populations, heads=2, response=response), dtype="float32")
    with torch.no_grad():
        state = step(on_meta(run.state), on_meta(run.economy))
    assert state.states.device.type == "meta" and state.money.shape == (1, 13)


@given(economies())
@settings(max_examples=40, deadline=None, derandomize=True)
def test_fused_equals_the_independent_oracle(drawn):
    """Against econspin.reference (plain float64 numpy, one buyer at a time), where it exists."""
    oracle = pytest.importorskip("econspin.reference")
    state, economy = drawn
    if state.states.dtype != torch.float64:
        return
    fused = fused_trade(state, economy)
    buyer = economy.buyer
    for element in range(state.states.shape[0]):
        expected = oracle.reference_round(*oracle.from_engine(economy, state, element))
        for name in FIELDS:
            got = getattr(fused, name)[element]
            want = torch.as_tensor(getattr(expected, name), dtype=torch.float64)
            if name in ("entropy", "surplus"):  # the oracle reports these for buyers
                got, want = got[buyer], want[buyer]
            assert torch.equal(torch.isinf(got), torch.isinf(want)), name
            finite = torch.isfinite(want)
            scale = float(want[finite].abs().max()) if finite.any() else 0.0
            error = (got[finite] - want[finite]).abs() / (want[finite].abs() + scale + 1.0)
            assert error.numel() == 0 or float(error.max()) <= 1e-12, f"{name}: {float(error.max()):.3g}"
