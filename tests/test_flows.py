"""The money flows of a round, recomputed from the state before it, and the trade network they form."""

import dataclasses
import math

import networkx as nx
import pytest
import torch
from helpers import rollout, scenario
from kernel_cases import NEAR_TIES_BY_KEY_DIMENSION, near_tie

from econspin import simulate
from econspin.flows import MAX_DENSE_AGENTS, round_flows, trade_network
from econspin.market import trade
from econspin.network import trade_network as network_trade_network


def economy_with(mode, **market):
    """Three populations (one only sells), two markets, a visibility premium, unequal money."""
    populations = {
        "human": {"count": 9, "temperature": 1.0, "spend": 0.2, "money": {"distribution": "exponential"}},
        "ai": {"count": 6, "temperature": 0.1, "spend": 0.4, "money": {"distribution": "exponential"}},
        "shops": {"count": 4, "temperature": 0.5, "buys": False},
    }
    market.setdefault("run", {"seed": 3})
    return scenario(populations=populations, mode=mode, heads=2, visibility=0.4, **market)


def played(scenario_, rounds=3, replicas=2):
    run = rollout([scenario_] * replicas, list(range(replicas)))
    run.advance(rounds)
    return run


def edge_total(graph):
    return math.fsum(weight for _, _, weight in graph.edges(data="weight"))


@pytest.mark.parametrize("mode", ["expected", "sampled"])
@pytest.mark.parametrize("network", [None, {"generator": "erdos_renyi_graph", "params": {"p": 0.4}}])
def test_weights_sum_to_the_rounds_spending_and_revenue(mode, network):
    run = played(economy_with(mode, network=network))
    for replica in (0, 1):
        graph = trade_network(run, replica=replica)
        spending = run.state.spending[replica]
        assert edge_total(graph) == pytest.approx(math.fsum(spending.tolist()), rel=1e-12, abs=1e-12)
        assert graph.graph["total_flow"] == pytest.approx(float(spending.sum()), rel=1e-12)
        assert graph.graph["round"] == 3 and graph.graph["mode"] == mode
        for node, data in graph.nodes(data=True):
            # each node's revenue is what flows into it, and it is the engine's revenue of that round
            assert data["revenue"] == pytest.approx(graph.in_degree(node, weight="weight"), rel=1e-12, abs=1e-15)
            assert data["revenue"] == pytest.approx(float(run.state.revenue[replica, node]), rel=1e-12, abs=1e-15)
            assert data["spending"] == pytest.approx(graph.out_degree(node, weight="weight"), rel=1e-12, abs=1e-15)
            assert data["wealth"] == float(run.state.money[replica, node])
        assert not any(graph.has_edge(node, node) for node in graph)
        if network is not None:
            allowed = run.economy.trade_mask
            assert all(bool(allowed[buyer, seller]) for buyer, seller in graph.edges)


def test_sampled_buyers_pay_one_seller_per_market():
    run = played(economy_with("sampled"))
    flows = round_flows(run.previous, run.economy, replica=1)
    spending = run.state.spending[1]
    for head in range(2):
        paid = flows.per_head[head] > 0
        buyers = spending > 0
        assert torch.equal(paid.sum(1)[buyers], torch.ones(int(buyers.sum()), dtype=torch.long))
        assert not paid[~buyers].any()
        torch.testing.assert_close(flows.per_head[head].sum(1), spending / 2, rtol=0, atol=1e-15)
    graph = trade_network(run, replica=1)
    shops = [node for node, population in graph.nodes(data="population") if population == "shops"]
    assert shops and all(graph.out_degree(node) == 0 for node in shops)  # sellers that do not buy
    assert all(1 <= graph.out_degree(node) <= 2 for node in graph if node not in shops)


def test_a_state_and_its_economy_give_the_round_played_from_it():
    run = played(economy_with("sampled"), rounds=2)
    before_last = run.previous
    graph = trade_network(before_last, economy=run.economy)
    reference = trade_network(run)
    assert sorted(graph.edges(data="weight")) == sorted(reference.edges(data="weight"))
    money = [data["wealth"] for _, data in graph.nodes(data=True)]
    torch.testing.assert_close(torch.tensor(money, dtype=torch.float64), run.state.money[0], rtol=1e-13, atol=1e-15)


def test_simulation_results_and_mesa_models_keep_the_last_round():
    mesa_model = pytest.importorskip("econspin.mesa").EconSpinModel
    scenario_ = economy_with("expected", run={"seed": 3, "dtype": "float64"})
    result = simulate(scenario_, steps=2, replicas=1, seed=4)
    model = mesa_model(scenario_, seed=4, dtype="float64")
    with pytest.raises(ValueError, match="no round has been played"):
        trade_network(model)
    model.step()
    model.step()
    assert sorted(trade_network(result).edges(data="weight")) == sorted(trade_network(model).edges(data="weight"))
    assert network_trade_network(model, top_k=3).number_of_edges() == 3


def test_top_k_keeps_the_largest_flows_and_every_agent():
    run = played(economy_with("expected"))
    full = trade_network(run)
    top = trade_network(run, top_k=5)
    assert top.number_of_nodes() == full.number_of_nodes() == 19
    largest = sorted((weight for _, _, weight in full.edges(data="weight")), reverse=True)[:5]
    assert sorted((weight for _, _, weight in top.edges(data="weight")), reverse=True) == largest
    assert top.graph["total_flow"] == full.graph["total_flow"]
    assert isinstance(top, nx.DiGraph)
    (only,) = trade_network(run, top_k=1).edges(data="weight")  # one flow is a network too: the largest
    assert only[2] == largest[0]
    with pytest.raises(ValueError, match="top_k"):
        trade_network(run, top_k=0)


def test_schedules_and_events_are_applied_to_the_state_kept():
    # an event before round 2 makes the AI agents indifferent: the kept state must carry it
    event = {"at": 1, "population": "ai", "temperature": 50.0}
    scenario_ = economy_with("expected").with_overrides({"events": [event]})
    run = played(scenario_, rounds=2, replicas=1)
    assert float(run.previous.temperature[0, 9]) == 50.0
    graph = trade_network(run)
    for node, revenue in graph.nodes(data="revenue"):
        assert revenue == pytest.approx(float(run.state.revenue[0, node]), rel=1e-12, abs=1e-15)


def test_refuses_what_it_cannot_compute():
    run = played(economy_with("expected"), rounds=1, replicas=1)
    with pytest.raises(ValueError, match="replica 1"):
        trade_network(run, replica=1)
    with pytest.raises(TypeError, match="EconSpinModel, a Rollout"):
        trade_network("runs/demo")
    with pytest.raises(ValueError, match="economy="):
        trade_network(run.state)
    big = scenario(populations={"agents": {"count": MAX_DENSE_AGENTS + 1}}, d=2)
    big_run = rollout(big)
    with pytest.raises(ValueError, match=f"up to {MAX_DENSE_AGENTS} agents; this economy has {MAX_DENSE_AGENTS + 1}"):
        round_flows(big_run.state, big_run.economy)


@pytest.mark.parametrize("key_dimension, gap, shares", NEAR_TIES_BY_KEY_DIMENSION)
def test_zero_temperature_flows_tie_what_the_kernels_tie(key_dimension, gap, shares):
    """kernel_cases.near_tie: sellers within the tie width split a T = 0 buyer's market, beyond it they do not.

    d_k = 1: 2 eps apart tie, 6 do not; d_k = 4 (width 8 eps, the query scaled by 1 / sqrt(d_k)):
    7 tie, 10 do not.
    """
    state, economy = near_tie("float64", gap, key_dimension=key_dimension)
    flows = round_flows(state, economy)
    spent = flows.spending[:3].sum()
    assert spent > 0
    torch.testing.assert_close(flows.revenue[3:], torch.tensor(shares, dtype=torch.float64) * spent, rtol=1e-15, atol=0)
    torch.testing.assert_close(flows.revenue, trade(state, economy).revenue[0], rtol=1e-15, atol=0)


@pytest.mark.parametrize("mode", ["expected", "sampled"])
def test_buyers_with_nobody_to_buy_from_pay_nothing(mode):
    """Buyers 0-4 with no seller on the network: no flow out of them; the others' flows are the round's."""
    run = rollout(economy_with(mode))
    mask = torch.ones(19, 19, dtype=torch.bool)
    mask[:5] = False
    economy = dataclasses.replace(run.economy, trade_mask=mask)
    flows = round_flows(run.state, economy)
    outcome = trade(run.state, economy)
    assert torch.all(flows.flows[:5] == 0) and torch.all(flows.spending[:5] == 0)
    torch.testing.assert_close(flows.spending, outcome.spending[0], rtol=1e-15, atol=0)
    torch.testing.assert_close(flows.revenue, outcome.revenue[0], rtol=1e-12, atol=1e-15)


def test_fixed_couplings_move_no_money():
    """The kinetic Ising case: no choice, no flows, and the round they belong to is still the next one."""
    run = rollout(scenario(couplings={"curie_weiss": 1.0}, response="sphere", d=1))
    flows = round_flows(run.state, run.economy)
    assert flows.round == run.state.round + 1
    assert flows.per_head.shape == (1, 12, 12) and flows.per_head.dtype == torch.float64
    assert not flows.per_head.any() and not flows.spending.any() and not flows.revenue.any()
