"""Trade networks: which buyer may buy from which seller, from networkx.

A scenario names a networkx generator with its parameters (``erdos_renyi_graph`` with
``p``, ``watts_strogatz_graph`` with ``k`` and ``p``, ...) or an edge-list file of integer
node labels 0..N-1. Agent i is node i, populations in scenario order. An undirected edge
lets both sides trade; a directed edge i -> j lets i buy from j.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass

import networkx as nx
import torch

from econspin.randomness import STREAM_NETWORK, derive_seed
from econspin.scenario import Network, ScenarioError, ScenarioWarning


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


def check_generator(spec: Network) -> None:
    """Refuse a generator networkx lacks, or a seed given to one that draws nothing at random."""
    if spec.edge_list is not None:
        return
    generator = getattr(nx, spec.generator, None)
    if generator is None or not callable(generator):
        raise ScenarioError(
            f"market.network.generator: networkx has no generator {spec.generator!r} "
            "(e.g. erdos_renyi_graph, watts_strogatz_graph, barabasi_albert_graph)"
        )
    if spec.seed is not None and network_seed(spec, 0) is None:
        raise ScenarioError(f"market.network.seed: {spec.generator} draws nothing at random; remove it")


def build_graph(spec: Network, agent_count: int, seed: int) -> nx.Graph:
    """The networkx graph a scenario describes, with nodes 0..agent_count-1.

    An edge list that leaves some agents out is read with them as nodes without edges (they
    neither buy nor sell), and says so with a :class:`ScenarioWarning`.
    """
    check_generator(spec)
    if spec.edge_list is not None:
        try:
            graph = nx.read_edgelist(
                spec.edge_list, nodetype=int, create_using=nx.DiGraph if spec.params.get("directed") else nx.Graph
            )
        except (OSError, TypeError, ValueError) as error:
            raise ScenarioError(f"market.network.edge_list: cannot read {spec.edge_list}: {error}") from None
        named = graph.number_of_nodes()
        graph.add_nodes_from(range(agent_count))
    else:
        parameters = dict(spec.params)
        used = network_seed(spec, seed)
        if used is not None:
            parameters["seed"] = used
        try:
            graph = getattr(nx, spec.generator)(agent_count, **parameters)
        except (TypeError, ValueError, nx.NetworkXError) as error:
            raise ScenarioError(f"market.network.params: {spec.generator} refused them: {error}") from None
    outside = [node for node in graph.nodes if not (isinstance(node, int) and 0 <= node < agent_count)]
    if outside:
        raise ScenarioError(f"market.network: node {outside[0]!r} is not an agent index 0..{agent_count - 1}")
    if spec.edge_list is not None and named < agent_count:
        _warn_of_isolated_agents(spec.edge_list, graph, agent_count)
    return graph


def _warn_of_isolated_agents(path: str, graph: nx.Graph, agent_count: int) -> None:
    """A warning naming the agents an edge-list file leaves without a single edge."""
    missing = [agent for agent in range(agent_count) if graph.degree(agent) == 0]
    named = agent_count - len(missing)
    warnings.warn(
        ScenarioWarning(
            f"market.network.edge_list: {path} names {named} of the {agent_count} agents; "
            f"{len(missing)} (agents {_ranges(missing)}) have no edge: they neither buy nor sell"
        ),
        stacklevel=2,
    )


def _ranges(indices: list[int], shown: int = 3) -> str:
    """Sorted indices as runs: [0, 1, 2, 7, 9, 10] -> '0-2, 7, 9-10' (the first ``shown`` runs, then '...')."""
    runs: list[list[int]] = []
    for index in indices:
        if runs and index == runs[-1][1] + 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    text = [f"{first}-{last}" if last > first else f"{first}" for first, last in runs[:shown]]
    return ", ".join(text) + (", ..." if len(runs) > shown else "")


# Edges (as networkx counts them: one per undirected pair) that a generator makes from its
# parameters, expected where it is random; the memory check reads them before the graph is drawn.
EXPECTED_EDGES = {
    **dict.fromkeys(
        ("erdos_renyi_graph", "gnp_random_graph", "fast_gnp_random_graph", "binomial_graph"),
        lambda n, p, directed=False, **_: p * n * (n - 1) / (1 if directed else 2),
    ),
    **dict.fromkeys(("gnm_random_graph", "dense_gnm_random_graph"), lambda n, m, **_: m),
    **dict.fromkeys(("watts_strogatz_graph", "connected_watts_strogatz_graph"), lambda n, k, **_: n * (k // 2)),
    "newman_watts_strogatz_graph": lambda n, k, p, **_: n * (k // 2) * (1 + p),
    **dict.fromkeys(("barabasi_albert_graph", "powerlaw_cluster_graph"), lambda n, m, **_: m * max(n - m, 0)),
    "complete_graph": lambda n, **_: n * (n - 1) / 2,
    **dict.fromkeys(("cycle_graph", "path_graph"), lambda n, **_: n),
}


def expected_directed_edges(spec: Network, agent_count: int) -> float | None:
    """Directed edges i -> j the network will have, before it is built; None where unknown.

    An edge-list file is counted by its lines (an undirected line is two directed edges); a
    generator of ``EXPECTED_EDGES`` by its formula; another generator is unknown.
    """
    directed = bool(spec.params.get("directed"))
    if spec.edge_list is not None:
        lines = _count_lines(spec.edge_list)
        return None if lines is None else lines * (1 if directed else 2)
    formula = EXPECTED_EDGES.get(spec.generator)
    try:
        edges = float(formula(agent_count, **spec.params)) if formula is not None else None
    except (TypeError, ValueError, ArithmeticError):  # parameters the generator itself will refuse
        return None
    return None if edges is None else edges * (1 if directed else 2)


def _count_lines(path: str) -> int | None:
    """Lines of a file, read in blocks (no line is held); None if it cannot be read."""
    lines, last = 0, b"\n"
    try:
        with open(path, "rb") as stream:
            while block := stream.read(2**20):
                lines += block.count(b"\n")
                last = block[-1:]
    except OSError:
        return None
    return lines + (last != b"\n")


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
