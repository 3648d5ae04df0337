"""The fused expected-mode step (econspin.fused) against the reference market (econspin.market).

The sampled mode on the fused path: tests/test_fused_sampled.py.
"""

import dataclasses
import math

import pytest
import torch
from fused_cases import TOLERANCE, assert_equals_oracle, assert_outcomes_close, economies, on_meta, two_populations
from helpers import rollout, scenario
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_cases import NEAR_TIES_BY_KEY_DIMENSION, assert_near_tie_revenue, near_tie

from econspin import ScenarioError
from econspin.fused import fused_trade, uses_fused
from econspin.market import project, trade
from econspin.projections import project_all
from econspin.round import step


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_blocks_in_pieces_give_the_whole_blocks_numbers_and_each_element_its_bits_alone(monkeypatch, dtype):
    """A block's 1- and 2-row products cut into pieces of PIECE_ROWS rows (fused.block_products).

    The same round as the whole block's products to rounding, money conserved, and each batch
    element the bits it gets alone (the pieces' size does not depend on the batch).
    """
    name = str(dtype).removeprefix("torch.")
    run = rollout([two_populations(heads=2, visibility=-0.7)] * 3, dtype=name)
    state = run.state.replace(temperature=run.state.temperature.index_fill(1, torch.tensor([0, 5]), 0.0))
    whole = fused_trade(state, run.economy, rows=32)
    monkeypatch.setattr("econspin.fused.PIECE_ROWS", 8)  # blocks of 32 rows in 4 pieces, the last block of 32 too
    pieces = fused_trade(state, run.economy, rows=32)
    assert_outcomes_close(whole, pieces, 1e-13 if dtype == torch.float64 else TOLERANCE[dtype])
    uneven = fused_trade(state, run.economy, rows=20)  # 20 rows are no whole number of pieces: one product
    assert_outcomes_close(whole, uneven, 1e-13 if dtype == torch.float64 else TOLERANCE[dtype])
    assert torch.allclose(pieces.revenue.sum(1), pieces.spending.sum(1), rtol=1e-13, atol=0)
    alone = rollout(two_populations(heads=2, visibility=-0.7), dtype=name)
    first = alone.state.replace(temperature=state.temperature[:1])
    one = fused_trade(first, alone.economy, rows=32)
    for field in dataclasses.fields(one):
        assert torch.equal(getattr(pieces, field.name)[:1], getattr(one, field.name)), field.name


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
    assert rollout(two_populations(mode="sampled")).economy.kernel == "fused"
    assert rollout(two_populations(mode="sampled", run={"kernel": "reference"})).economy.kernel == "reference"
    with pytest.raises(ScenarioError, match="run.kernel"):
        two_populations(couplings={"curie_weiss": 1.0}, run={"kernel": "fused"})
    run = rollout(two_populations())
    assert uses_fused(run.state, run.economy)
    # asked for, the reference kernel runs (the two agree to rounding: only the switch tells them apart)
    reference = rollout(two_populations(run={"kernel": "reference"}))
    assert not uses_fused(reference.state, reference.economy)
    network = {"generator": "gnp_random_graph", "params": {"p": 0.2}, "layout": "sparse"}
    sparse = rollout(two_populations(network=network))
    assert sparse.economy.trade_edges is not None and not uses_fused(sparse.state, sparse.economy)  # its own kernel
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
    state, economy = drawn
    assert_equals_oracle(fused_trade(state, economy), state, economy)


def test_projections_by_population_slices_equal_the_per_population_product():
    populations = {f"p{index}": {"count": count} for index, count in enumerate((5, 1, 9))}
    run = rollout([scenario(populations=populations, heads=2, d_k=3)] * 2)
    x, economy = run.state.states, run.economy
    assert economy.population_counts == (5, 1, 9)
    want = project(x, economy.key, economy.population)
    for counts in (economy.population_counts, ()):  # slices, and the gather when the sizes are not known
        assert torch.allclose(project_all(x, economy.key, economy.population, counts), want, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("d", "d_k", "heads", "counts"), [(4, 3, 2, (5, 1, 9)), (8, 8, 1, (7,)), (16, 8, 3, (40, 24))])
def test_one_copy_of_shared_weights_projects_every_element_bit_for_bit(dtype, d, d_k, heads, counts):
    """Elements with the same W_Q, W_K, W_V, W_O (a sweep's points) are projected by one copy of them."""
    populations = {f"p{index}": {"count": count, "temperature": 0.2 + index} for index, count in enumerate(counts)}
    run = rollout([scenario(populations=populations, heads=heads, d_k=d_k, d=d)] * 4, dtype=dtype)
    x, economy = run.state.states, run.economy
    assert economy.shared_projections
    for sizes in (economy.population_counts, ()):  # slices, and the gather
        every = project_all(x, economy.key, economy.population, sizes)
        assert torch.equal(project_all(x, economy.key[:1], economy.population, sizes), every)
    with torch.no_grad():
        shared = step(run.state, economy)
        apart = step(run.state, dataclasses.replace(economy, shared_projections=False))
    assert torch.equal(shared.states, apart.states) and torch.equal(shared.money, apart.money)


def test_other_weights_given_to_a_shared_economy_are_not_shared():
    """dataclasses.replace with weights that differ by element drops the flag: each element's own weights project it."""
    run = rollout([two_populations()] * 3, dtype="float64")
    economy = run.economy
    assert economy.shared_projections
    query = economy.query.clone()
    query[1] *= 2.0  # element 1 looks for other things
    changed = dataclasses.replace(economy, query=query)
    assert not changed.shared_projections
    alone = rollout([two_populations()], dtype="float64")
    element = dataclasses.replace(alone.economy, query=query[1:2])
    with torch.no_grad():
        together = step(run.state, changed)
        apart = step(dataclasses.replace(run.state, **{
            name: getattr(run.state, name)[1:2] for name in ("states", "fields", "money", "temperature", "random_keys")
        }), element)
    assert torch.allclose(together.states[1:2], apart.states, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("sellers", [4, 9, 17, 33, 70])
def test_identical_sellers_at_zero_temperature_split_the_market_equally(dtype, sellers):
    """Equal utilities are ties even where the matrix product rounds them differently.

    Sellers with one state and identity projections have identical keys, so every buyer's
    utilities for them are equal; BLAS kernels sum a block's last columns in another order and
    may round those products apart by an ulp, which the T = 0 limit must not read as a ranking.
    """
    populations = {
        "buyers": {"count": 5, "temperature": 0.0, "sells": False, "state": {"scale": 1.2}},
        "sellers": {
            "count": sellers,
            "buys": False,
            "state": {"distribution": "constant", "value": 0.7},
            "projections": {"init": "identity", "scale": 0.5},
        },
    }
    run = rollout(scenario(populations=populations, d=3, output="random"), dtype=dtype)
    outcome = fused_trade(run.state, run.economy)
    revenue = outcome.revenue[0, 5:].double()
    spent = outcome.spending[0, :5].double().sum()
    assert torch.allclose(revenue, (spent / sellers).expand(sellers), rtol=1e-6 if dtype == "float32" else 1e-13)
    assert_outcomes_close(trade(run.state, run.economy), outcome, TOLERANCE[run.state.states.dtype])
    stepped = step(run.state, run.economy)  # the whole round too: money to every tied seller
    assert torch.allclose(stepped.money[0, 5:].double(), stepped.money[0, 5].double().expand(sellers), rtol=1e-6)


def test_blocks_are_cache_sized_on_a_cpu_and_fill_half_the_memory_budget_on_a_gpu():
    """On CUDA four blocks (memory.py's count) take at most half of run.memory_budget_mb, within bounds."""
    from econspin.fused import BLOCK_ENTRIES, GPU_BLOCK_ENTRIES, block_entries, block_shape

    assert block_entries("cpu", 2**40, 4) == BLOCK_ENTRIES
    assert block_entries("cuda", 2**30, 4) == 2**25 and 4 * 2**25 * 4 == 2**30 / 2
    assert block_entries("cuda", 2**30, 8) == 2**24
    assert block_entries("cuda", 2**50, 4) == GPU_BLOCK_ENTRIES
    assert block_entries("cuda", 2**20, 8) == BLOCK_ENTRIES
    assert block_shape(1, 65536, None, 2**25) == (1, 512)
    assert block_shape(64, 256, None, 2**25) == (64, 256)  # a whole batch of small economies in one block


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_zero_temperature_ties_the_utilities_the_reference_kernel_ties(dtype):
    """Both kernels tie at T = 0 within market.tie_widths of the best utility, a bound on the row's own terms.

    Keys 100 times shorter than the queries: utilities 1e-4 apart (relative) are a ranking in
    either precision, not rounding (their tie width is 1.4e-6 of them in float32), so the two
    identical best sellers split the market and the one just below them gets nothing.
    """
    populations = {
        "buyers": {"count": 3, "temperature": 0.0, "sells": False},
        "sellers": {"count": 4, "buys": False},
    }
    run = rollout(scenario(populations=populations, d=3, output="random", visibility=0.0), dtype=dtype)
    identity = torch.eye(3, dtype=run.state.states.dtype).expand_as(run.economy.query)
    economy = dataclasses.replace(run.economy, query=identity, key=0.01 * identity)  # |k_j| <= 0.012 |q_i|
    seller_scale = torch.tensor([1.0, 1.0, 1.0 - 1e-4, 0.5])  # sellers 0 and 1 best, seller 2 just below them
    states = torch.zeros(1, 7, 3)
    states[0, :3, 0] = torch.tensor([1.0, 0.8, 1.2])
    states[0, 3:, 0] = seller_scale
    state = run.state.replace(states=states.to(run.state.states.dtype))
    reference, fused = trade(state, economy), fused_trade(state, economy)
    spent = fused.spending[0, :3].double().sum()
    want = torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=torch.float64) * spent
    for outcome in (reference, fused):
        assert torch.allclose(outcome.revenue[0, 3:].double(), want, rtol=1e-6, atol=0)
    assert_outcomes_close(reference, fused, TOLERANCE[state.states.dtype])


# (dtype, factor on the states): utilities of about 1e-24 and 1e-40, normal floats in both precisions
@pytest.mark.parametrize("dtype, shrink", [("float64", 1e-12), ("float64", 1e-20), ("float32", 1e-12)])
def test_decisive_agents_with_tiny_states_trade_as_on_the_reference(dtype, shrink):
    """T = 0 rows whose utilities are all below 2^-27: beta at its upper limit, finite, and the reference's economy.

    In float64 such rows once got beta = 2^1024 (precision_limits read float64's largest exponent
    as 1025 through math.log2), and the round's revenue was NaN: money lost to every later round.
    (In float32 the states times 1e-20 give subnormal utilities, which the reference rounds to a
    few multiples of 2^-149: it then sees ties that the fused kernel's scaled products do not.)
    """
    populations = {"human": {"count": 7, "temperature": 0.0, "spend": 0.2},
                   "ai": {"count": 5, "temperature": 0.0, "spend": 0.3}}  # fmt: skip
    run = rollout(scenario(populations=populations), dtype=dtype)
    state = dataclasses.replace(run.state, states=run.state.states * shrink)
    want, got = trade(state, run.economy), fused_trade(state, run.economy)
    assert bool(torch.isfinite(got.revenue).all()) and bool(torch.isfinite(got.received).all())
    assert_outcomes_close(want, got, TOLERANCE[state.states.dtype])
    assert_equals_oracle(got, state, run.economy)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("key_dimension, gap, shares", NEAR_TIES_BY_KEY_DIMENSION)
def test_the_tie_width_at_zero_temperature_counts_the_key_dimension(dtype, key_dimension, gap, shares):
    """A T = 0 tie is (d_k + 4) eps of the row's size, d_k the utilities' dot product length, not d nor P.

    kernel_cases.near_tie: two sellers 6 eps apart are a ranking for both kernels (width 5 eps),
    2 eps apart a tie; a width counted with d (12 eps) or with the four populations (8 eps) would
    split the market at 6 too. With d_k = 4 (NEAR_TIES_WIDE) the row's size is q_i / sqrt(d_k).
    """
    state, economy = near_tie(dtype, gap, key_dimension=key_dimension)
    reference, fused = trade(state, economy), fused_trade(state, economy)
    for outcome in (reference, fused):
        assert_near_tie_revenue(outcome, shares)
    assert_outcomes_close(reference, fused, TOLERANCE[state.states.dtype])
