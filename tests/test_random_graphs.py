"""econspin's O(E) torch graphs against the laws they draw from, and against networkx's own samples."""

import math
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from econspin import Scenario, simulate
from econspin import random_graphs as graphs
from econspin.network import TORCH_SAMPLER_AGENTS, Links, draw_links, network_seed, trade_edges_from_links

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
SIGMAS = 5  # counts must fall within 5 binomial standard deviations of their mean


def generator(seed):
    return torch.Generator().manual_seed(seed)


def degrees(pairs: torch.Tensor, agents: int, directed: bool) -> np.ndarray:
    """Out-degrees (directed) or degrees (undirected) of a pair list."""
    ends = pairs[:, 0] if directed else pairs.flatten()
    return torch.bincount(ends, minlength=agents).numpy()


def pooled(counts: np.ndarray, expected: np.ndarray, least: float = 5.0):
    """Adjacent bins merged until each expects at least ``least`` (the chi-square's condition)."""
    observed_bins, expected_bins, observed_sum, expected_sum = [], [], 0.0, 0.0
    for observed, mean in zip(counts, expected):
        observed_sum, expected_sum = observed_sum + observed, expected_sum + mean
        if expected_sum >= least:
            observed_bins.append(observed_sum)
            expected_bins.append(expected_sum)
            observed_sum = expected_sum = 0.0
    observed_bins[-1] += observed_sum
    expected_bins[-1] += expected_sum
    return np.array(observed_bins), np.array(expected_bins)


@pytest.mark.parametrize("directed", [True, False])
def test_gnp_degrees_follow_the_binomial_law(directed):
    """Every degree of G(n, p) is Binomial(n - 1, p): a chi-square over 10^4 agents."""
    agents, p = 10_000, 20 / 9_999
    pairs = graphs.gnp_pairs(agents, p, directed, generator(1))
    counts = np.bincount(degrees(pairs, agents, directed), minlength=200)[:200]
    law = stats.binom(agents - 1, p).pmf(np.arange(200)) * agents
    observed, expected = pooled(counts, law)
    assert stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue > 1e-3
    # the same test refuses degrees of the right mean but no spread (every agent 20 sellers)
    assert stats.chisquare(*pooled(np.bincount(np.full(agents, 20), minlength=200), law)).pvalue < 1e-6


@pytest.mark.parametrize("directed", [True, False])
def test_gnp_degrees_match_networkx_samples(directed):
    """The torch graph's degree histogram and networkx's fast_gnp_random_graph's: one law (chi-square)."""
    agents, p = 10_000, 20 / 9_999
    ours = degrees(graphs.gnp_pairs(agents, p, directed, generator(2)), agents, directed)
    graph = nx.fast_gnp_random_graph(agents, p, seed=3, directed=directed)
    theirs = np.array([degree for _, degree in (graph.out_degree() if directed else graph.degree())])
    top = max(ours.max(), theirs.max()) + 1
    table = np.stack([np.bincount(ours, minlength=top), np.bincount(theirs, minlength=top)])
    merged, current = [], np.zeros(2)
    for column in table.T:  # adjacent degrees merged until each bin holds 10 agents of each graph
        current = current + column
        if current.min() >= 10:
            merged.append(current)
            current = np.zeros(2)
    merged[-1] = merged[-1] + current
    assert stats.chi2_contingency(np.array(merged).T).pvalue > 1e-3
    assert stats.ks_2samp(ours, theirs).pvalue > 1e-3


@pytest.mark.parametrize("directed", [True, False])
def test_gnp_edge_count_is_binomial(directed):
    agents, p = 3_000, 0.004
    pairs = graphs.pair_count(agents, directed)
    counts = [graphs.gnp_pairs(agents, p, directed, generator(seed)).shape[0] for seed in range(20)]
    mean, spread = pairs * p, math.sqrt(pairs * p * (1 - p))
    assert all(abs(count - mean) < SIGMAS * spread for count in counts)
    assert abs(np.mean(counts) - mean) < SIGMAS * spread / math.sqrt(len(counts))
    assert len(set(counts)) > 10  # the count is drawn, not fixed


def simple_graph_checks(links: Links, seller=None):
    """No self-loops, no pair twice (either way round when undirected), the trade rows symmetric when undirected."""
    pairs, agents = links.pairs, links.agent_count
    assert (pairs[:, 0] != pairs[:, 1]).all()
    assert ((pairs >= 0) & (pairs < agents)).all()
    if not links.directed:
        pairs = pairs.sort(1).values
    keys = pairs[:, 0] * agents + pairs[:, 1]
    assert torch.unique(keys).numel() == keys.numel()
    edges = trade_edges_from_links(links, torch.ones(agents, dtype=torch.bool) if seller is None else seller)
    mask = edges.dense()
    assert int(mask.sum()) == links.directed_count
    if not links.directed:
        assert torch.equal(mask, mask.T)
    return mask


@given(
    sizes=st.lists(st.integers(1, 25), min_size=1, max_size=3),
    p=st.sampled_from([0.0, 0.05, 0.3, 1.0]),
    directed=st.booleans(),
    name=st.sampled_from(["gnp_random_graph", "gnm_random_graph", "stochastic_block_model"]),
    seed=st.integers(0, 2**31),
)
@settings(max_examples=80, deadline=None)
def test_torch_graphs_are_simple(sizes, p, directed, name, seed):
    agents = sum(sizes)
    matrix = [[p if a == b else p / 2 for b in range(len(sizes))] for a in range(len(sizes))]
    params = {
        "gnp_random_graph": {"p": p},
        "gnm_random_graph": {"m": int(p * graphs.pair_count(agents, directed))},
        "stochastic_block_model": {"p": matrix},
    }[name]
    pairs = graphs.sample_pairs(name, {**params, "directed": directed}, sizes, generator(seed))
    mask = simple_graph_checks(Links(pairs, directed, agents))
    if name == "gnm_random_graph":
        assert pairs.shape[0] == params["m"]
    if p == 1.0 and name == "gnp_random_graph":
        assert torch.equal(mask, ~torch.eye(agents, dtype=torch.bool))


@pytest.mark.parametrize("directed", [True, False])
def test_pair_numbering_covers_every_pair_once(directed):
    size = 37
    pairs = graphs.within_block(torch.arange(graphs.pair_count(size, directed)), size, 5, directed)
    expected = {(i + 5, j + 5) for i in range(size) for j in range(size) if i != j and (directed or i < j)}
    assert {tuple(pair) for pair in pairs.tolist()} == expected and len(pairs) == len(expected)
    rectangle = graphs.between_blocks(torch.arange(6 * 4), 4, 10, 20)
    assert {tuple(pair) for pair in rectangle.tolist()} == {(10 + i, 20 + j) for i in range(6) for j in range(4)}


def test_undirected_numbering_is_exact_at_a_million_nodes():
    """The undirected pair number k = j (j - 1) / 2 + i, inverted by a float square root, is exact to the end."""
    size = 1_000_000
    last = graphs.pair_count(size, False) - 1
    index = torch.tensor([0, 1, 2, last - 1, last, last - 999_998, 2**38 + 12_345, 123_456_789_012])
    pairs = graphs.within_block(index, size, 0, False)
    assert pairs[:5].tolist() == [[0, 1], [0, 2], [1, 2], [size - 3, size - 1], [size - 2, size - 1]]
    row, column = pairs[:, 0], pairs[:, 1]
    assert ((row >= 0) & (row < column) & (column < size)).all()
    assert torch.equal(column * (column - 1) // 2 + row, index)


def test_rejection_draws_every_subset_equally_often(monkeypatch):
    """The rejection path (large, sparse candidate sets) forced on 10 numbers: 45 pairs, uniform."""
    monkeypatch.setattr(graphs, "PERMUTATION_PAIRS", 0)
    random = generator(4)
    counts = {}
    for _ in range(9_000):
        chosen = tuple(graphs.uniform_subset(10, 2, random).tolist())
        counts[chosen] = counts.get(chosen, 0) + 1
    assert len(counts) == 45 and all(a < b for a, b in counts)
    assert stats.chisquare(list(counts.values())).pvalue > 1e-3


def spec_of(generator_name, params, count=600, sampler="torch", **network):
    populations = {"human": {"count": count}, "ai": {"count": count // 3}}
    market = {"d": 2, "network": {"generator": generator_name, "params": params, "sampler": sampler, **network}}
    return Scenario.from_dict({"populations": populations, "market": market, "run": {"device": "cpu"}})


def test_same_seed_same_graph_and_the_seed_matters():
    scenario = spec_of("erdos_renyi_graph", {"p": 0.01, "directed": True})
    network, sizes = scenario.market.network, scenario.population_sizes
    first, again = draw_links(network, sizes, 1), draw_links(network, sizes, 1)
    assert torch.equal(first.pairs, again.pairs)
    assert not torch.equal(first.pairs, draw_links(network, sizes, 2).pairs)  # the run seed draws the graph
    seeded = spec_of("erdos_renyi_graph", {"p": 0.01, "directed": True}, seed=7).market.network
    assert torch.equal(draw_links(seeded, sizes, 1).pairs, draw_links(seeded, sizes, 2).pairs)  # its own seed
    assert network_seed(seeded, 1) == 7


def test_auto_sampler_is_networkx_below_ten_thousand_agents_and_torch_from_there():
    small = spec_of("fast_gnp_random_graph", {"p": 0.01}, sampler="auto")
    links = draw_links(small.market.network, small.population_sizes, 3)
    expected = nx.fast_gnp_random_graph(800, 0.01, seed=network_seed(small.market.network, 3))
    assert sorted(map(tuple, links.pairs.tolist())) == sorted(tuple(sorted(edge)) for edge in expected.edges())
    count = TORCH_SAMPLER_AGENTS * 3 // 4  # the two populations hold 4/3 of it: exactly the threshold
    large = spec_of("fast_gnp_random_graph", {"p": 20 / TORCH_SAMPLER_AGENTS, "directed": True}, count, "auto")
    links = draw_links(large.market.network, large.population_sizes, 3)
    seed = network_seed(large.market.network, 3)
    drawn = graphs.gnp_pairs(TORCH_SAMPLER_AGENTS, 20 / TORCH_SAMPLER_AGENTS, True, generator(seed))
    assert torch.equal(links.pairs, drawn)


def test_ten_thousand_agents_trade_on_a_torch_graph():
    """The fast version of the million-agent scenario: same file, 10^4 agents, two rounds."""
    scenario = Scenario.from_yaml(SCENARIOS / "million_agents.yaml").with_overrides(
        {"populations.human.count": 8_000, "populations.ai.count": 2_000, "market.network.params.p": 20 / 9_999}
    )
    result = simulate(scenario, steps=2, dtype="float32")
    edges = result.economy.trade_edges
    assert edges is not None and result.economy.trade_mask is None
    assert abs(edges.buyers.numel() - 200_000) < SIGMAS * math.sqrt(200_000)
    assert float(result.state.money.sum()) == pytest.approx(10_000, rel=1e-9)
    assert torch.isfinite(result.state.states).all()


@pytest.mark.slow
def test_a_million_agents_trade_on_twenty_million_edges():
    """scenarios/million_agents.yaml as written: 10^6 agents, mean out-degree 20, one round."""
    scenario = Scenario.from_yaml(SCENARIOS / "million_agents.yaml")
    result = simulate(scenario, steps=1, dtype="float32")
    edges = result.economy.trade_edges
    assert abs(edges.buyers.numel() - 2 * 10**7) < SIGMAS * math.sqrt(2 * 10**7)
    assert float(result.state.money.sum()) == pytest.approx(10**6, rel=1e-9)
    assert torch.isfinite(result.state.states).all()


BLOCKS = {"human": 900, "ai": 300, "shop": 120}
P = {"human": {"human": 0.004, "ai": 0.02, "shop": 0.05},
     "ai": {"human": 0.02, "ai": 0.03, "shop": 0.1},
     "shop": {"human": 0.05, "ai": 0.1, "shop": 0.0}}


def block_scenario(directed, sampler, p=P):
    populations = {name: {"count": count} for name, count in BLOCKS.items()}
    network = {"generator": "stochastic_block_model", "params": {"p": p, "directed": directed}, "sampler": sampler}
    return Scenario.from_dict({"populations": populations, "market": {"d": 2, "network": network}})


@pytest.mark.parametrize("sampler", ["torch", "networkx"])
@pytest.mark.parametrize("directed", [True, False])
def test_block_model_densities_follow_p_between_populations(directed, sampler):
    """Edges between populations a and b number p_ab n_a n_b (n_a (n_a - 1) within), within 5 sd."""
    asymmetric = {**P, "ai": {**P["ai"], "human": 0.01}} if directed else P
    scenario = block_scenario(directed, sampler, asymmetric)
    links = draw_links(scenario.market.network, scenario.population_sizes, 4)
    simple_graph_checks(links)
    block = torch.repeat_interleave(torch.arange(3), torch.tensor(list(BLOCKS.values())))
    ends = block[links.pairs]
    names = list(BLOCKS)
    for a, row in enumerate(names):
        for b, column in enumerate(names):
            if not directed and a > b:
                continue
            observed = int(((ends[:, 0] == a) & (ends[:, 1] == b)).sum())
            if not directed:
                observed += int(((ends[:, 0] == b) & (ends[:, 1] == a)).sum()) if a != b else 0
            pairs = graphs.pair_count(BLOCKS[row], directed) if a == b else BLOCKS[row] * BLOCKS[column]
            p = asymmetric[row][column]
            assert abs(observed - p * pairs) <= SIGMAS * math.sqrt(pairs * p * (1 - p)) + 1e-9, (row, column)


def test_block_model_without_edges_between_populations_keeps_them_apart():
    apart = {name: {other: (0.05 if other == name else 0.0) for other in BLOCKS} for name in BLOCKS}
    scenario = block_scenario(False, "torch", apart)
    links = draw_links(scenario.market.network, scenario.population_sizes, 0)
    block = torch.repeat_interleave(torch.arange(3), torch.tensor(list(BLOCKS.values())))
    assert torch.equal(block[links.pairs[:, 0]], block[links.pairs[:, 1]]) and links.pairs.shape[0] > 0


@given(first=st.sets(st.integers(0, 200)), second=st.sets(st.integers(0, 200)))
def test_merging_sorted_numbers(first, second):
    second = second - first
    merged = graphs.merge_sorted(torch.tensor(sorted(first), dtype=torch.long),
                                 torch.tensor(sorted(second), dtype=torch.long))
    assert merged.tolist() == sorted(first | second)
