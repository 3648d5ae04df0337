"""Uniform choice in O(N) (econspin.uniform) against the reference and fused kernels."""

import dataclasses
from pathlib import Path

import networkx as nx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fused import assert_outcomes_close, economies, on_meta
from torch.utils._python_dispatch import TorchDispatchMode

from econspin import Scenario
from econspin.economy import utilities_vanish
from econspin.fused import fused_trade
from econspin.market import trade
from econspin.network import trade_edges_from_graph
from econspin.randomness import DRAW_CHOICE, round_draws
from econspin.round import market_step, step
from econspin.simulate import Rollout
from econspin.sparse import sparse_trade
from econspin.uniform import uniform_trade, uses_uniform

TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}


@st.composite
def uniform_economies(draw):
    """test_fused's random economies with every utility zeroed, in either mode.

    Shapes, flags, budgets, temperatures 0 and inf and empty purses as there; queries or keys
    silenced, no visibility premium, no network. Values stay random, so that what buyers
    receive and the moments are not trivially zero.
    """
    state, economy = draw(economies())
    silent = draw(st.sampled_from(["query", "key"]))
    changes = {silent: torch.zeros_like(getattr(economy, silent)), "visibility": torch.zeros_like(economy.visibility)}
    economy = dataclasses.replace(
        economy, trade_mask=None, mode=draw(st.sampled_from(["expected", "sampled"])), **changes
    )
    assert not economy.uniform_choice and utilities_vanish(economy.query, economy.key, economy.visibility)
    return state, dataclasses.replace(economy, uniform_choice=True)  # what compiling such projections records


@given(uniform_economies())
@settings(max_examples=80, deadline=None, derandomize=True)
def test_uniform_equals_reference_and_fused(drawn):
    """Every field of the outcome, both modes: the reference kernel (and the fused one, expected mode)."""
    state, economy = drawn
    assert uses_uniform(state, economy)
    tolerance = TOLERANCE[state.states.dtype]
    uniform = uniform_trade(state, economy)
    assert_outcomes_close(trade(state, economy), uniform, tolerance)
    if economy.mode == "expected":
        assert_outcomes_close(fused_trade(state, economy), uniform, tolerance)
    spent, earned = uniform.spending.sum(1), uniform.revenue.sum(1)
    assert torch.allclose(earned, spent, rtol=1e-12, atol=1e-300)  # money conserved, in float64


@given(uniform_economies(), st.floats(0.0, 1.0), st.integers(0, 2**31))
@settings(max_examples=60, deadline=None, derandomize=True)
def test_uniform_over_a_sparse_network_equals_the_sparse_and_dense_kernels(drawn, density, seed):
    """A buyer chooses uniformly among its out-edges: the sparse kernel's and the dense blocks' outcome."""
    state, economy = drawn
    agents = economy.agent_count
    generator = torch.Generator().manual_seed(seed)
    graph = nx.DiGraph()
    graph.add_nodes_from(range(agents))
    mask = torch.rand(agents, agents, generator=generator) < density  # some buyers end with no edge
    graph.add_edges_from(mask.nonzero().tolist())
    edges = trade_edges_from_graph(graph, agents, economy.seller)
    economy = dataclasses.replace(economy, trade_edges=edges)
    assert uses_uniform(state, economy)
    tolerance = TOLERANCE[state.states.dtype]
    uniform = uniform_trade(state, economy)
    assert_outcomes_close(sparse_trade(state, economy), uniform, tolerance)
    assert_outcomes_close(trade(state, economy), uniform, tolerance)  # reads the edges as a dense mask
    assert torch.allclose(uniform.revenue.sum(1), uniform.spending.sum(1), rtol=1e-12, atol=1e-300)


SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "boltzmann_wealth.yaml"


def boltzmann(agents: int, **overrides) -> Scenario:
    """scenarios/boltzmann_wealth.yaml with ``agents`` agents on the CPU."""
    scenario = Scenario.from_yaml(SCENARIO)
    return scenario.with_overrides({"populations.agents.count": agents, "run.device": "cpu", **overrides})


def test_boltzmann_rounds_take_the_uniform_path_and_replay_the_reference_draw_for_draw():
    """Ten sampled rounds of the tutorial model: the same money agent by agent as the reference kernel."""
    fast = Rollout.create([boltzmann(300)] * 2, [0, 1], "cpu", "float32")
    slow = Rollout.create([boltzmann(300, **{"run.kernel": "reference"})] * 2, [0, 1], "cpu", "float32")
    assert uses_uniform(fast.state, fast.economy) and not uses_uniform(slow.state, slow.economy)
    fast.advance(10)
    slow.advance(10)
    assert torch.equal(fast.state.money, slow.state.money)
    assert torch.equal(fast.state.money, fast.state.money.round())  # whole units, as the tutorial's
    assert float(fast.state.money.sum()) == 2 * 300


def test_choice_that_depends_on_utilities_keeps_its_kernel():
    """Projections, a visibility premium, a network, fixed couplings or gradients: not uniform."""
    built = Rollout.create([boltzmann(40)], [0], "cpu", "float64")
    state, economy = built.state, built.economy
    assert economy.uniform_choice and uses_uniform(state, economy)
    query, key, visibility = economy.query, economy.key, economy.visibility
    assert utilities_vanish(query, torch.ones_like(key), visibility)  # the queries still vanish
    assert not utilities_vanish(torch.ones_like(query), torch.ones_like(key), visibility)
    assert not utilities_vanish(query, key, torch.ones_like(visibility))
    mixed = torch.stack([torch.zeros_like(query[0]), torch.ones_like(query[0])])  # element 1 has a match
    assert not utilities_vanish(mixed, mixed, torch.zeros(2))
    for overrides in ({"populations.agents.projections.scale": 1.0}, {"market.visibility": 0.5}):
        assert not Rollout.create([boltzmann(40, **overrides)], [0], "cpu", "float64").economy.uniform_choice
    assert not uses_uniform(state, dataclasses.replace(economy, trade_mask=torch.ones(40, 40, dtype=torch.bool)))
    assert uses_uniform(
        state, dataclasses.replace(economy, trade_edges=trade_edges_from_graph(nx.cycle_graph(40), 40, economy.seller))
    )
    assert not uses_uniform(state, dataclasses.replace(economy, kernel="reference"))
    watched = dataclasses.replace(economy, query=economy.query.clone().requires_grad_(True))
    assert not uses_uniform(state, watched)
    with torch.no_grad():
        assert uses_uniform(state, watched)


@pytest.mark.parametrize("mode", ["expected", "sampled"])
def test_a_uniform_round_never_waits_on_the_host(mode):
    """Meta tensors hold no data: any .item(), bool(tensor) or branch on data would raise."""
    built = Rollout.create([boltzmann(30, **{"market.mode": mode, "market.heads": 2})] * 2, [0, 1], "cpu", "float32")
    state = step(on_meta(built.state), on_meta(built.economy))
    assert state.money.device.type == "meta" and state.money.shape == (2, 30)


class LargestTensor(TorchDispatchMode):
    """Records the most entries of any tensor an operation returns."""

    largest = 0

    def __torch_dispatch__(self, function, types, args=(), kwargs=None):
        result = function(*args, **(kwargs or {}))
        for value in result if isinstance(result, (tuple, list)) else (result,):
            if isinstance(value, torch.Tensor):
                self.largest = max(self.largest, value.numel())
        return result


def test_no_tensor_grows_with_n_squared():
    """A round of 2000 agents, 2 markets, d = 3, both modes: no tensor beyond O(B H N (d + 2)) entries."""
    for mode in ("expected", "sampled"):
        economy_scenario = boltzmann(2000, **{"market.mode": mode, "market.heads": 2, "market.d": 3})
        built = Rollout.create([economy_scenario] * 2, [0, 1], "cpu", "float64")
        # the draws of a block of rounds, made once for many rounds, have a size bounded whatever N
        # (econspin.randomness.RoundBlock, tests/test_randomness.py): made before the round is watched
        built.state.draws().uniform(DRAW_CHOICE, 2)
        with LargestTensor() as watch:
            market_step(built.state, built.economy)
            step(built.state, built.economy)
        assert 2000 <= watch.largest <= 2 * 2 * 2000 * (3 + 2)


def test_a_million_agents_in_one_round():
    """N = 10^6 (10^12 pairs on the dense kernels) is one O(N) round: money conserved, whole units."""
    built = Rollout.create([boltzmann(10**6)], [0], "cpu", "float32")
    after = step(built.state, built.economy)
    assert float(after.money.sum()) == 10**6 and torch.equal(after.money, after.money.round())
    assert float(after.spending.sum()) == 10**6  # everyone held its unit and gave it
    assert int((after.revenue > 0).sum()) > 0.6 * 10**6  # Poisson(1) receipts: 1 - 1/e of agents get some


def test_the_draws_given_are_the_draws_used():
    """Sampled mode given another round's draws: the reference kernel's sellers at those draws, not its own round's."""
    run = Rollout.create([boltzmann(200)], [0], "cpu", "float64")
    state, economy = run.state, run.economy
    assert economy.mode == "sampled" and uses_uniform(state, economy)
    later = round_draws(state.random_keys, state.round + 1, 200)
    given_draws = uniform_trade(state, economy, later)
    assert torch.equal(given_draws.revenue, trade(state, economy, later).revenue)
    assert not torch.equal(uniform_trade(state, economy).revenue, given_draws.revenue)  # other sellers drawn
