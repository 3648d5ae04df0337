"""Trade networks: which buyer may buy from which seller, from networkx.

A scenario names a networkx generator with its parameters (``erdos_renyi_graph`` with
``p``, ``watts_strogatz_graph`` with ``k`` and ``p``, ...) or an edge-list file of integer
node labels 0..N-1. Agent i is node i, populations in scenario order. An undirected edge
lets both sides trade; a directed edge i -> j lets i buy from j.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import networkx as nx
import torch

from econspin.randomness import STREAM_NETWORK, derive_seed
from econspin.scenario import Network, ScenarioError


def network_seed(spec: Network, seed: int) -> int | None:
    """The seed a run with seed ``seed`` draws its network with; None where the network takes none.

    Edge lists and generators without a ``seed`` argument give the same graph for every run
    seed; a random generator's graph depends on this number and on nothing else.
    """
    if spec.edge_list is not None:
        return None
    generator = getattr(nx, spec.generator, None)
    if generator is None or not callable(generator) or "seed" not in inspect.signature(generator).parameters:
        return None
    return spec.seed if spec.seed is not None else derive_seed(seed, STREAM_NETWORK) % 2**32


def build_graph(spec: Network, agent_count: int, seed: int) -> nx.Graph:
    """The networkx graph a scenario describes, with nodes 0..agent_count-1."""
    if spec.edge_list is not None:
        try:
            graph = nx.read_edgelist(
                spec.edge_list, nodetype=int, create_using=nx.DiGraph if spec.params.get("directed") else nx.Graph
            )
        except (OSError, TypeError, ValueError) as error:
            raise ScenarioError(f"market.network.edge_list: cannot read {spec.edge_list}: {error}") from None
        graph.add_nodes_from(range(agent_count))
    else:
        generator = getattr(nx, spec.generator, None)
        if generator is None or not callable(generator):
            raise ScenarioError(
                f"market.network.generator: networkx has no generator {spec.generator!r} "
                "(e.g. erdos_renyi_graph, watts_strogatz_graph, barabasi_albert_graph)"
            )
        parameters = dict(spec.params)
        used = network_seed(spec, seed)
        if used is not None:
            parameters["seed"] = used
        try:
            graph = generator(agent_count, **parameters)
        except (TypeError, ValueError, nx.NetworkXError) as error:
            raise ScenarioError(f"market.network.params: {spec.generator} refused them: {error}") from None
    outside = [node for node in graph.nodes if not (isinstance(node, int) and 0 <= node < agent_count)]
    if outside:
        raise ScenarioError(f"market.network: node {outside[0]!r} is not an agent index 0..{agent_count - 1}")
    return graph


def trade_mask_from_graph(graph: nx.Graph, agent_count: int) -> torch.Tensor:
    """(N, N) bool, True where i may buy from j."""
    mask = torch.zeros(agent_count, agent_count, dtype=torch.bool)
    edges = list(graph.edges())
    if edges:
        index = torch.tensor(edges, dtype=torch.long)
        mask[index[:, 0], index[:, 1]] = True
        if not graph.is_directed():
            mask[index[:, 1], index[:, 0]] = True
    return mask


def trade_mask_from_network(spec: Network, agent_count: int, seed: int) -> torch.Tensor:
    """The dense trade mask of a scenario's network."""
    return trade_mask_from_graph(build_graph(spec, agent_count, seed), agent_count)


SPARSE_DENSITY = 1 / 16  # auto layout: a network with fewer directed edges than N^2 / 16 is kept sparse


@dataclass(frozen=True)
class TradeEdges:
    """A trade network as compressed rows, for the sparse market.

    Buyer i may buy from ``sellers[offsets[i]:offsets[i + 1]]`` (ascending); ``buyers`` repeats i
    for each of its edges. Only edges a buyer can use are kept: to a population that sells,
    never to itself.
    """

    buyers: torch.Tensor
    sellers: torch.Tensor
    offsets: torch.Tensor

    @property
    def degree(self) -> torch.Tensor:
        """(N,) the number of sellers each buyer may choose."""
        return self.offsets[1:] - self.offsets[:-1]

    def to(self, device) -> "TradeEdges":
        return TradeEdges(self.buyers.to(device), self.sellers.to(device), self.offsets.to(device))

    def dense(self) -> torch.Tensor:
        """(N, N) bool, True where i may buy from j."""
        agents = self.offsets.shape[0] - 1
        mask = torch.zeros(agents, agents, dtype=torch.bool, device=self.buyers.device)
        mask[self.buyers, self.sellers] = True
        return mask


def trade_edges_from_graph(graph: nx.Graph, agent_count: int, seller: torch.Tensor) -> TradeEdges:
    """The usable directed edges i -> j of a graph (j sells, j != i) as compressed rows."""
    edges = torch.tensor(list(graph.edges()), dtype=torch.long).reshape(-1, 2)
    if not graph.is_directed():
        edges = torch.cat([edges, edges.flip(1)])
    buyers, sellers = edges[:, 0], edges[:, 1]
    usable = (buyers != sellers) & seller.cpu()[sellers]
    order = torch.argsort(buyers[usable] * agent_count + sellers[usable])
    buyers, sellers = buyers[usable][order], sellers[usable][order]
    offsets = torch.zeros(agent_count + 1, dtype=torch.long)
    offsets[1:] = torch.bincount(buyers, minlength=agent_count).cumsum(0)
    return TradeEdges(buyers, sellers, offsets)


def uses_sparse_layout(spec: Network, graph: nx.Graph, agent_count: int, memory_budget: float) -> bool:
    """Whether a network takes the sparse kernel.

    ``layout: sparse`` says so; ``auto`` does below N^2 / 16 directed edges, or where a dense mask
    (one byte a pair) would exceed the memory budget (bytes).
    """
    if spec.layout != "auto":
        return spec.layout == "sparse"
    directed_edges = graph.number_of_edges() * (1 if graph.is_directed() else 2)
    return directed_edges < SPARSE_DENSITY * agent_count**2 or agent_count**2 > memory_budget


def trade_network(source, replica: int = 0, top_k: int | None = None, *, economy=None) -> nx.DiGraph:
    """The last round's money flows as a networkx.DiGraph; see :func:`econspin.flows.trade_network`."""
    from econspin.flows import trade_network as flows_network  # flows builds on the market, which imports this module

    return flows_network(source, replica, top_k, economy=economy)
