"""The sparse market (econspin.sparse) against the dense one on the same networks."""

import dataclasses
import math

import networkx as nx
import pytest
import torch
from helpers import rollout
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernel_cases import NEAR_TIES_BY_KEY_DIMENSION, assert_near_tie_revenue, near_tie

from econspin import Scenario, ScenarioError, simulate
from econspin.market import trade
from econspin.network import trade_edges_from_graph
from econspin.random_graphs import TORCH_GENERATORS
from econspin.randomness import round_draws
from econspin.round import step
from econspin.sparse import BYTES_PER_EDGE_ENTRY, _row_chunks, sparse_trade

FIELDS = ("received", "revenue", "spending", "entropy", "surplus", "field_variance", "choice_variance", "impact")


def with_layout(spec, layout):
    market = dict(spec["market"], network=dict(spec["market"]["network"], layout=layout))
    return {**spec, "market": market}


@st.composite
def networked(draw):
    response = draw(st.sampled_from(["sphere", "large_d", "vmf"]))
    forms = ["none", "tap", "ffn"] if response != "sphere" else ["none", "ffn"]
    populations = {}
    for index in range(draw(st.integers(1, 3))):
        form = draw(st.sampled_from(forms))
        correction = {"form": form, **({"scale": 0.5} if form == "ffn" else {})}
        populations[f"p{index}"] = {
            "count": draw(st.integers(1, 8)),
            "temperature": draw(st.sampled_from([0.0, math.inf, 0.2, 1.0])),
            "buys": draw(st.booleans()),
            "sells": draw(st.booleans()),
            "eta": draw(st.sampled_from([1.0, 0.5])),
            "money": {"distribution": "exponential"},
            "correction": correction,
        }
    populations["p0"]["sells"] = True
    generator = draw(st.sampled_from(
        ["gnp_random_graph", "barabasi_albert_graph", "watts_strogatz_graph", "stochastic_block_model"]
    ))
    agents = sum(population["count"] for population in populations.values())
    directed = draw(st.booleans())
    within, between = draw(st.sampled_from([0.1, 0.6])), draw(st.sampled_from([0.0, 0.2]))
    blocks = {a: {b: within if a == b else between for b in populations} for a in populations}
    params = {
        "gnp_random_graph": {"p": draw(st.sampled_from([0.1, 0.3])), "directed": directed},
        "barabasi_albert_graph": {"m": 1},
        "watts_strogatz_graph": {"k": 2, "p": 0.2},
        "stochastic_block_model": {"p": blocks, "directed": directed},
    }[generator]
    if agents < 3 and generator in ("barabasi_albert_graph", "watts_strogatz_graph"):
        generator, params = "gnp_random_graph", {"p": 0.5}
    # who draws G(n, p) and block models: the layout must not change the graph, whichever it is
    sampler = draw(st.sampled_from(["networkx", "torch"])) if generator in TORCH_GENERATORS else "auto"
    return {
        "populations": populations,
        "market": {
            "d": draw(st.integers(1, 4)),
            "heads": draw(st.integers(1, 3)),
            "mode": draw(st.sampled_from(["expected", "sampled"])),
            "response": response,
            "visibility": draw(st.sampled_from([0.0, 0.8, -0.5])),
            "spend_rule": draw(st.sampled_from(["share", "unit"])),
            "network": {"generator": generator, "params": params, "sampler": sampler},
        },
        "run": {"device": "cpu", "seed": draw(st.integers(0, 1000))},
    }


@given(spec=networked())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_sparse_equals_dense_round_after_round(spec):
    sparse = rollout(Scenario.from_dict(with_layout(spec, "sparse")))
    dense = rollout(Scenario.from_dict(with_layout(spec, "dense")))
    assert sparse.economy.trade_edges is not None and sparse.economy.trade_mask is None
    assert dense.economy.trade_mask is not None and dense.economy.trade_edges is None
    for _ in range(3):
        one, other = sparse_trade(sparse.state, sparse.economy), trade(dense.state, dense.economy)
        for name in FIELDS:
            torch.testing.assert_close(getattr(one, name), getattr(other, name), rtol=1e-12, atol=1e-12, msg=name)
        sparse.state, dense.state = step(sparse.state, sparse.economy), step(dense.state, dense.economy)
        torch.testing.assert_close(sparse.state.states, dense.state.states, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(sparse.state.money, dense.state.money, rtol=1e-12, atol=1e-12)


def test_float32_sparse_equals_dense():
    spec = {
        "populations": {"a": {"count": 40, "temperature": 0.3}, "b": {"count": 20, "temperature": 1.0}},
        "market": {"d": 8, "heads": 2, "network": {"generator": "watts_strogatz_graph", "params": {"k": 4, "p": 0.1}}},
        "run": {"device": "cpu", "seed": 1, "dtype": "float32"},
    }
    sparse = rollout(Scenario.from_dict(with_layout(spec, "sparse")), dtype="float32")
    dense = rollout(Scenario.from_dict(with_layout(spec, "dense")), dtype="float32")
    one, other = sparse_trade(sparse.state, sparse.economy), trade(dense.state, dense.economy)
    for name in FIELDS:
        torch.testing.assert_close(getattr(one, name), getattr(other, name), rtol=1e-5, atol=1e-6, msg=name)
    for _ in range(20):
        sparse.state = step(sparse.state, sparse.economy)
    assert float(sparse.state.money.sum()) == pytest.approx(60.0, rel=1e-12)


def test_edges_keep_what_a_buyer_can_use():
    graph = nx.DiGraph([(0, 1), (0, 2), (1, 1), (2, 0), (3, 0), (0, 3)])
    graph.add_nodes_from(range(5))
    seller = torch.tensor([True, True, False, True, True])
    edges = trade_edges_from_graph(graph, 5, seller)
    # 0 -> 2 goes (2 does not sell); 1 -> 1 goes (no self-trade); rows ascending by seller
    assert edges.sellers.tolist() == [1, 3, 0, 0] and edges.buyers.tolist() == [0, 0, 2, 3]
    assert edges.degree.tolist() == [2, 0, 1, 1, 0]
    undirected = trade_edges_from_graph(nx.path_graph(3), 3, torch.ones(3, dtype=torch.bool))
    assert undirected.dense().tolist() == [[False, True, False], [True, False, True], [False, True, False]]


def test_auto_layout_follows_density():
    base = {"populations": {"a": {"count": 200}}, "market": {"d": 2}, "run": {"device": "cpu"}}
    sparse = {"generator": "watts_strogatz_graph", "params": {"k": 4, "p": 0.0}}
    dense = {"generator": "gnp_random_graph", "params": {"p": 0.5}}
    economy = rollout(Scenario.from_dict({**base, "market": {"d": 2, "network": sparse}})).economy
    assert economy.trade_edges is not None and economy.trade_edges.buyers.numel() == 800
    assert rollout(Scenario.from_dict({**base, "market": {"d": 2, "network": dense}})).economy.trade_mask is not None


def test_a_large_sparse_market_costs_its_edges_not_n_squared():
    """20 000 agents with 5 out-edges each on average: a dense mask alone would take 400 MB, over the budget."""
    agents = 20_000
    spec = {
        "populations": {"a": {"count": agents, "temperature": 0.5}},
        "market": {"d": 4, "network": {"generator": "fast_gnp_random_graph",
                                       "params": {"p": 5 / agents, "directed": True}}},
        "run": {"device": "cpu", "memory_budget_mb": 256, "seed": 2},
    }
    result = simulate(Scenario.from_dict(spec), steps=2, dtype="float32")
    assert result.economy.trade_edges is not None
    assert float(result.state.money.sum()) == pytest.approx(agents, rel=1e-12)
    with pytest.raises(ScenarioError, match="layout: sparse"):
        simulate(Scenario.from_dict(with_layout(spec, "dense")), steps=1)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("key_dimension, gap, shares", NEAR_TIES_BY_KEY_DIMENSION)
def test_zero_temperature_ties_are_the_dense_kernels_ties(dtype, key_dimension, gap, shares):
    """At T = 0 sellers within market.tie_widths of the best tie on the sparse network as on the dense one.

    kernel_cases.near_tie on a complete network: utilities 2 eps apart are a tie (width 5 eps),
    6 eps apart a ranking. The sparse kernel once tied only exactly equal utilities, and gave
    the whole market to the best of two the dense kernels split it between.
    """
    state, economy = near_tie(dtype, gap, {"generator": "complete_graph", "layout": "sparse"}, key_dimension)
    sparse, dense = sparse_trade(state, economy), trade(state, economy)
    for outcome in (sparse, dense):
        assert_near_tie_revenue(outcome, shares)
    for field in FIELDS:
        assert torch.allclose(getattr(sparse, field).double(), getattr(dense, field).double(), rtol=1e-6, atol=1e-12)


def test_the_draws_given_are_the_draws_used():
    """Sampled mode given another round's draws: the dense kernel's sellers at those draws, not the state's own round's.

    One market (the other sampled tests have two or more).
    """
    spec = {
        "populations": {"a": {"count": 40, "temperature": 0.5}, "b": {"count": 20, "temperature": 2.0}},
        "market": {"d": 4, "heads": 1, "mode": "sampled",
                   "network": {"generator": "watts_strogatz_graph", "params": {"k": 6, "p": 0.2}}},
        "run": {"device": "cpu", "seed": 3},
    }
    sparse = rollout(Scenario.from_dict(with_layout(spec, "sparse")))
    dense = rollout(Scenario.from_dict(with_layout(spec, "dense")))
    later = round_draws(sparse.state.random_keys, sparse.state.round + 1, 60)
    given_draws = sparse_trade(sparse.state, sparse.economy, later)
    dense_draws = trade(dense.state, dense.economy, later)
    torch.testing.assert_close(given_draws.revenue, dense_draws.revenue, rtol=1e-12, atol=0)
    own = sparse_trade(sparse.state, sparse.economy)
    assert not torch.allclose(own.revenue, given_draws.revenue)  # other sellers drawn: other revenue


@pytest.mark.parametrize("mode", ["expected", "sampled"])
def test_sparse_equals_dense_across_row_chunks(mode):
    """A memory budget of five edges a chunk, buyers 14-19 and 44-46 with no seller: every chunk's rows in place.

    Many chunks, among them chunks with no edge at all (skipped, not the end of the loop),
    over three rounds of both modes, two economies, two markets, T = 0 and T = inf buyers:
    the tests above run one chunk, where a row's place in its chunk is its place in the economy.
    """
    spec = {
        "populations": {"a": {"count": 30, "temperature": 0.4}, "b": {"count": 25, "temperature": 1.5},
                        "cold": {"count": 3, "temperature": 0.0}, "hot": {"count": 2, "temperature": math.inf}},
        "market": {"d": 4, "heads": 2, "mode": mode,
                   "network": {"generator": "watts_strogatz_graph", "params": {"k": 6, "p": 0.3}, "layout": "sparse"}},
        "run": {"device": "cpu", "seed": 4},
    }
    run = rollout([Scenario.from_dict(spec)] * 2, replicas=[0, 1])
    graph = nx.DiGraph()
    graph.add_nodes_from(range(60))
    edges = run.economy.trade_edges
    idle = set(range(14, 20)) | set(range(44, 47))
    graph.add_edges_from((b, s) for b, s in zip(edges.buyers.tolist(), edges.sellers.tolist()) if b not in idle)
    edges = trade_edges_from_graph(graph, 60, run.economy.seller)
    entry_width = 2 * 2 * (4 + run.economy.query.shape[-1])  # batch * heads * (d + d_k), sparse_trade's
    # 5 edges a chunk, a buyer has 4-10: rows 13 and 43 (7 edges each) are chunks of their own, and
    # the empty rows after each one too, since the row after them (6 and 7 edges) does not fit
    budget = 4 * 5 * entry_width * BYTES_PER_EDGE_ENTRY // 16
    chunks = list(_row_chunks(edges.host_offsets, entry_width, budget))
    assert len(chunks) >= 30 and sum(start == stop for _, _, start, stop in chunks) == 2
    sparse = dataclasses.replace(run.economy, trade_edges=edges, memory_budget=budget)
    dense = dataclasses.replace(run.economy, trade_edges=None, trade_mask=edges.dense())
    state = run.state
    for _ in range(3):
        one, other = sparse_trade(state, sparse), trade(state, dense)
        for name in FIELDS:
            torch.testing.assert_close(getattr(one, name), getattr(other, name), rtol=1e-12, atol=1e-12, msg=name)
        assert torch.all(one.spending[:, sorted(idle)] == 0) and torch.all(one.revenue.sum(1) > 0)
        after_sparse, state = step(state, sparse), step(state, dense)
        torch.testing.assert_close(after_sparse.states, state.states, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(after_sparse.money, state.money, rtol=1e-12, atol=1e-12)
