"""One round: invariants of money, limits of choice, equivalences between paths."""

import math

import numpy as np
import pytest
import torch
from helpers import rollout, scenario
from hypothesis import given, settings
from hypothesis import strategies as st

from econspin import simulate
from econspin.market import budgets, trade
from econspin.round import step


@given(
    seed=st.integers(0, 2**31),
    mode=st.sampled_from(["expected", "sampled"]),
    rule=st.sampled_from(["share", "unit"]),
    visibility=st.floats(0, 2),
    money=st.sampled_from(["equal", "exponential", "lognormal", "pareto"]),
)
@settings(max_examples=25, deadline=None)
def test_money_is_conserved_and_never_negative(seed, mode, rule, visibility, money):
    populations = {
        "human": {"count": 6, "temperature": 1.0, "spend": 0.5, "money": {"distribution": money}},
        "ai": {"count": 4, "temperature": 0.1, "spend": 1.0, "money": {"distribution": money}},
    }
    run = rollout(scenario(populations=populations, mode=mode, spend_rule=rule, visibility=visibility,
                           run={"seed": seed}), dtype="float32")
    start = run.state.money.sum()
    for _ in range(30):
        run.state = step(run.state, run.economy)
        assert torch.all(run.state.money >= 0)
    assert abs(float(run.state.money.sum() / start) - 1) < 1e-12


def test_money_conserved_to_1e9_over_10000_rounds():
    run = rollout(scenario(populations={"a": {"count": 12, "temperature": 0.5, "spend": 0.3,
                                              "money": {"distribution": "pareto"}}}), dtype="float32")
    start = float(run.state.money.sum())
    with torch.no_grad():
        for _ in range(10_000):
            run.state = step(run.state, run.economy)
    assert abs(float(run.state.money.sum()) / start - 1) < 1e-9


def test_each_buyer_spends_exactly_its_budget():
    populations = {
        "shoppers": {"count": 6, "spend": 0.25, "sells": False, "money": {"distribution": "exponential"}},
        "firms": {"count": 5, "spend": 0.5, "buys": False},
        "traders": {"count": 4, "spend": 0.1, "money": {"distribution": "lognormal"}},
    }
    run = rollout(scenario(populations=populations, heads=3))
    state, economy = run.state, run.economy
    outcome = trade(state, economy)
    expected = torch.cat([0.25 * state.money[0, :6], torch.zeros(5), 0.1 * state.money[0, 11:]])
    assert torch.allclose(outcome.spending[0], expected.double(), rtol=1e-15, atol=0)
    assert torch.allclose(budgets(state, economy), outcome.spending)
    assert abs(float(outcome.revenue.sum() - outcome.spending.sum())) < 1e-13
    # only sellers earn; shoppers do not sell
    assert torch.all(outcome.revenue[0, :6] == 0)
    assert torch.all(outcome.received[0, 6:11] == 0)  # firms do not buy


def test_zero_temperature_expected_equals_sampled_argmax():
    populations = {"a": {"count": 9, "temperature": 0.0}, "b": {"count": 6, "temperature": 0.0}}
    expected = rollout(scenario(populations=populations, response="sphere"))
    sampled = rollout(scenario(populations=populations, response="sphere", mode="sampled"))
    for _ in range(5):
        expected.state = step(expected.state, expected.economy)
        sampled.state = step(sampled.state, sampled.economy)
        assert not torch.isnan(expected.state.states).any()
        assert torch.allclose(expected.state.revenue, sampled.state.revenue, rtol=0, atol=1e-12)
        assert torch.allclose(expected.state.states, sampled.state.states, atol=1e-12)


def test_infinite_temperature_spreads_revenue_evenly():
    populations = {"a": {"count": 20, "temperature": math.inf, "spend": 0.2}}
    run = rollout(scenario(populations=populations))
    run.state = step(run.state, run.economy)
    # equal money, uniform choice over the 19 others: every seller earns the same
    assert torch.allclose(run.state.revenue, torch.full_like(run.state.revenue, 0.2), atol=1e-15)
    assert torch.allclose(run.state.entropy, torch.ones_like(run.state.entropy))


@pytest.mark.parametrize("mode", ["expected", "sampled"])
def test_chunked_equals_dense(mode):
    """Blocks of 5 buyer rows give the dense round to 1e-5 in float32, round after round.

    Whole float32 trajectories are compared in float64 only: at low temperature the
    dynamics amplify rounding differences (about 2e-7 a round) from one round to the next.
    """
    base = dict(mode=mode, heads=2, visibility=0.5, network={"generator": "erdos_renyi_graph", "params": {"p": 0.6}})
    dense = rollout(scenario(run={"chunk": 1000}, **base), dtype="float32")
    chunked = rollout(scenario(run={"chunk": 5}, **base), dtype="float32")
    state = dense.state
    for _ in range(20):
        one, other = step(state, dense.economy), step(state, chunked.economy)
        assert (one.states - other.states).abs().max() < 1e-5
        assert (one.money - other.money).abs().max() < 1e-5
        if mode == "sampled":
            assert torch.allclose(one.revenue, other.revenue, rtol=0, atol=1e-12)  # same sellers chosen
        state = one
    dense = rollout(scenario(run={"chunk": 1000}, **base), dtype="float64")
    chunked = rollout(scenario(run={"chunk": 5}, **base), dtype="float64")
    dense.advance(20)
    chunked.advance(20)
    assert (dense.state.states - chunked.state.states).abs().max() < 1e-9
    assert (dense.state.money - chunked.state.money).abs().max() < 1e-9


@pytest.mark.parametrize("mode", ["expected", "sampled"])
def test_batch_equals_separate_runs(mode):
    temperatures = [0.3, 1.5, 0.3]
    replicas = [0, 0, 1]
    scenarios = [
        scenario(mode=mode, populations={"h": {"count": 8, "temperature": 1.0},
                                         "ai": {"count": 4, "temperature": t, "spend": 0.2}})
        for t in temperatures
    ]
    batched = rollout(scenarios, replicas)
    batched.advance(15)
    for index, (single_scenario, replica) in enumerate(zip(scenarios, replicas)):
        alone = rollout(single_scenario, [replica])
        alone.advance(15)
        assert torch.allclose(batched.state.states[index], alone.state.states[0], atol=1e-12)
        assert torch.allclose(batched.state.money[index], alone.state.money[0], atol=1e-12)


def test_same_seed_same_numbers_other_seed_other_numbers():
    base = scenario(mode="sampled")
    first = simulate(base, steps=12, replicas=2, seed=5).metrics
    second = simulate(base, steps=12, replicas=2, seed=5).metrics
    other = simulate(base, steps=12, replicas=2, seed=6).metrics
    assert first.equals(second)
    assert not first.equals(other)
    # replicas are different draws
    assert not np.allclose(first[first.replica == 0].gini.values, first[first.replica == 1].gini.values)


@pytest.mark.parametrize("response,correction", [("large_d", "none"), ("vmf", "tap"), ("large_d", "tap"),
                                                 ("vmf", "ffn")])
def test_round_gradcheck_float64(response, correction):
    spec = {"form": correction, **({"scale": 0.5} if correction == "ffn" else {})}
    populations = {
        "h": {"count": 3, "temperature": 0.9, "correction": spec, "eta": 0.7},
        "ai": {"count": 2, "temperature": 0.4, "correction": spec},
    }
    run = rollout(scenario(populations=populations, d=3, heads=2, response=response, visibility=0.3))
    state = step(run.state, run.economy)  # leave the uniform initial money

    def new_states(fields, states):
        return step(state.replace(fields=fields, states=states), run.economy).states

    fields = state.fields.clone().requires_grad_(True)
    states = state.states.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(new_states, (fields, states))


@pytest.mark.parametrize("response,correction", [("large_d", "none"), ("large_d", "tap"), ("vmf", "tap")])
def test_susceptibility_matches_central_differences(response, correction):
    """d(order after 3 rounds)/dh by autograd equals central finite differences in float64."""
    populations = {
        "human": {"count": 5, "temperature": 0.8, "correction": {"form": correction}},
        "ai": {"count": 3, "temperature": 0.3, "correction": {"form": correction}},
    }
    run = rollout(scenario(populations=populations, response=response, visibility=0.3))

    def order(fields):
        state = run.state.replace(fields=fields)
        for _ in range(3):
            state = step(state, run.economy)
        return state.states.mean(1).norm(dim=-1)

    fields = run.state.fields.clone().requires_grad_(True)
    assert fields.dtype == torch.float64
    assert torch.autograd.gradcheck(order, (fields,), atol=1e-8, rtol=1e-6, fast_mode=True)
    (susceptibility,) = torch.autograd.grad(order(fields).sum(), fields)
    assert susceptibility.abs().sum() > 0


def test_each_population_gets_its_own_correction():
    def economy(first, second):
        return rollout(scenario(response="vmf", populations={
            "h": {"count": 6, "temperature": 0.8, "correction": {"form": first}},
            "ai": {"count": 4, "temperature": 0.3, "correction": {"form": second}},
        }))

    mixed, all_tap, all_none = economy("tap", "none"), economy("tap", "tap"), economy("none", "none")
    new = step(mixed.state, mixed.economy).states
    assert torch.allclose(new[:, :6], step(all_tap.state, all_tap.economy).states[:, :6], atol=1e-14)
    assert torch.allclose(new[:, 6:], step(all_none.state, all_none.economy).states[:, 6:], atol=1e-14)
    assert not torch.allclose(new[:, :6], step(all_none.state, all_none.economy).states[:, :6], atol=1e-6)


def test_sampled_draws_do_not_depend_on_blocks_or_batch_layout():
    """Counter-based draws: from one state, the same sellers and spins, bit for bit, in any layout.

    Blocks of 3 buyers or one block; an element alone or beside others.
    """
    base = dict(mode="sampled", heads=2, response="vmf", visibility=0.5)
    scenarios = [scenario(run={"chunk": 1000, "seed": seed}, **base) for seed in (1, 2, 2)]
    batch = rollout(scenarios, [0, 0, 1])
    batch.advance(3)  # a state with unequal money
    dense = step(batch.state, batch.economy)
    chunked_run = rollout([scenario(run={"chunk": 3, "seed": seed}, **base) for seed in (1, 2, 2)], [0, 0, 1])
    chunked = step(batch.state, chunked_run.economy)
    assert torch.equal(dense.revenue, chunked.revenue)
    assert torch.equal(dense.states, chunked.states)
    for element in range(3):
        alone_run = rollout(scenarios[element], [[0, 0, 1][element]])
        one = slice(element, element + 1)
        state = batch.state
        alone_state = alone_run.state.replace(
            states=state.states[one], fields=state.fields[one], money=state.money[one],
            temperature=state.temperature[one], round=state.round,
        )
        assert torch.equal(alone_state.random_keys, state.random_keys[one])
        alone = step(alone_state, alone_run.economy)
        assert torch.equal(alone.revenue[0], dense.revenue[element])  # the same sellers, the same sums
        assert torch.allclose(alone.states[0], dense.states[element], rtol=0, atol=1e-13)


def test_sampled_round_is_a_pure_function_of_the_state():
    run = rollout(scenario(mode="sampled", response="vmf", run={"seed": 9}))
    first, again = step(run.state, run.economy), step(run.state, run.economy)
    assert torch.equal(first.states, again.states) and torch.equal(first.money, again.money)
    assert torch.equal(first.random_keys, run.state.random_keys) and first.round == run.state.round + 1
    # the next round draws other numbers: the same state played as another round differs
    later = step(run.state.replace(round=run.state.round + 1), run.economy)
    assert not torch.equal(first.states, later.states)


@pytest.mark.parametrize("d", [1, 4])
def test_sampled_round_can_be_differentiated(d):
    """Pathwise gradients through the sampler: the draws are fixed, the spin moves with the field."""
    run = rollout(scenario(mode="sampled", response="vmf", d=d))
    fields = run.state.fields.clone().requires_grad_(True)
    new = step(run.state.replace(fields=fields), run.economy)
    (gradient,) = torch.autograd.grad(new.states.sum(), fields)
    assert torch.isfinite(gradient).all()
    assert new.states.is_contiguous()


def test_a_rollout_reads_schedules_and_events_only_where_a_scenario_has_them():
    from econspin.simulate import has_plan

    plain = scenario()
    scheduled = plain.with_overrides({"populations.ai.temperature": {"schedule": [[0, 0.2], [3, 2.0]]}})
    shifted = plain.with_overrides({"events": [{"at": 2, "population": "ai", "temperature": 0.7}]})
    assert not has_plan([plain, plain])
    assert has_plan([plain, scheduled]) and has_plan([shifted, plain])
    run = rollout([plain, scheduled, shifted])
    run.advance(4)
    ai = run.economy.population_mask(1)
    assert torch.all(run.state.temperature[:, ai] == torch.tensor([[0.2], [2.0], [0.7]], dtype=torch.float64))
    assert torch.all(run.state.temperature[:, ~ai] == 1.0)
