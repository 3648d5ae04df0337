"""Trade networks: which buyer may buy from which seller, drawn by networkx or torch.

A scenario names a networkx generator with its parameters (``erdos_renyi_graph`` with
``p``, ``watts_strogatz_graph`` with ``k`` and ``p``, ``stochastic_block_model`` with ``p``
between populations, ...) or an edge-list file (:mod:`econspin.edge_list`). Agent i is node i,
populations in scenario order. An undirected edge lets both sides trade; a directed edge i -> j
lets i buy from j.

A network is first drawn as :class:`Links`, node pairs as tensors. Graphs that econspin draws
itself (:mod:`econspin.random_graphs`: G(n, p), G(n, m), block models) are drawn by torch in
O(E) from ``TORCH_SAMPLER_AGENTS`` agents on (``sampler: auto``), where networkx would take
minutes and gigabytes; smaller ones, and every other generator, by networkx, so that a small
graph is the very graph networkx draws with the same seed. A networkx graph of torch-drawn
links is built only when asked for (:func:`build_graph`, for Mesa).
"""

from __future__ import annotations

import functools
import inspect
import os
import warnings
from dataclasses import dataclass

import networkx as nx
import torch

from econspin.edge_list import read_edge_list
from econspin.random_graphs import BLOCK_MODEL, TORCH_GENERATORS, block_probabilities, sample_pairs
from econspin.randomness import STREAM_NETWORK, derive_seed
from econspin.scenario import Network, ScenarioError, ScenarioWarning

TORCH_SAMPLER_AGENTS = 10_000  # sampler auto: torch from this many agents on, networkx below


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


def uses_torch_sampler(spec: Network, agent_count: int) -> bool:
    """Whether the network is drawn by econspin's own O(E) sampler rather than by networkx."""
    if spec.generator not in TORCH_GENERATORS or spec.sampler == "networkx":
        return False
    return spec.sampler == "torch" or agent_count >= TORCH_SAMPLER_AGENTS


@dataclass(frozen=True)
class Links:
    """A network's edges as drawn: node pairs, each undirected edge once.

    Attributes:
        pairs: (E, 2) long, node i and node j of each edge.
        directed: an edge i -> j lets only i buy from j; else both sides trade.
        agent_count: the nodes are 0..agent_count-1.
        weights: (E,) float64 from an edge list's weight field, or None.
    """

    pairs: torch.Tensor
    directed: bool
    agent_count: int
    weights: torch.Tensor | None = None

    @property
    def directed_count(self) -> int:
        """The directed edges i -> j the pairs stand for (an undirected pair is two)."""
        return self.pairs.shape[0] * (1 if self.directed else 2)

    def graph(self) -> nx.Graph:
        """The networkx graph of these edges (with ``weight`` where the edge list gave weights)."""
        graph = nx.DiGraph() if self.directed else nx.Graph()
        graph.add_nodes_from(range(self.agent_count))
        pairs = self.pairs.tolist()
        if self.weights is None:
            graph.add_edges_from(pairs)
        else:
            graph.add_weighted_edges_from((i, j, weight) for (i, j), weight in zip(pairs, self.weights.tolist()))
        return graph


def links_from_graph(graph: nx.Graph, agent_count: int) -> Links:
    """A networkx graph on nodes 0..agent_count-1 as links."""
    pairs = torch.tensor(list(graph.edges()), dtype=torch.long).reshape(-1, 2)
    return Links(pairs, graph.is_directed(), agent_count)


def draw_links(spec: Network, sizes: dict[str, int], seed: int) -> Links:
    """The edges of a scenario's network; ``sizes`` are the population counts in scenario order."""
    check_generator(spec)
    agent_count = sum(sizes.values())
    directed = bool(spec.params.get("directed", False))
    if spec.edge_list is not None:
        pairs, weights = read_edge_list(spec.edge_list, agent_count)
        links = Links(pairs, directed, agent_count, weights)
        _warn_of_isolated_agents(spec.edge_list, links)
        return links
    if uses_torch_sampler(spec, agent_count):
        generator = torch.Generator().manual_seed(network_seed(spec, seed))
        params = dict(spec.params)
        if spec.generator == BLOCK_MODEL:
            params["p"] = block_probabilities(params, list(sizes))
        return Links(sample_pairs(spec.generator, params, list(sizes.values()), generator), directed, agent_count)
    return links_from_graph(_networkx_graph(spec, sizes, seed), agent_count)


def build_graph(spec: Network, sizes: dict[str, int], seed: int) -> nx.Graph:
    """The networkx graph a scenario describes, nodes 0..N-1; ``sizes`` are the population counts."""
    if spec.edge_list is None and not uses_torch_sampler(spec, sum(sizes.values())):
        return _networkx_graph(spec, sizes, seed)
    return draw_links(spec, sizes, seed).graph()


def _networkx_graph(spec: Network, sizes: dict[str, int], seed: int) -> nx.Graph:
    """The graph networkx's generator draws; a block model's blocks are the populations."""
    agent_count = sum(sizes.values())
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
    nodes = agent_count
    if spec.generator == BLOCK_MODEL:
        nodes, parameters["p"] = list(sizes.values()), block_probabilities(parameters, list(sizes))
    try:
        graph = generator(nodes, **parameters)
    except (TypeError, ValueError, nx.NetworkXError) as error:
        raise ScenarioError(f"market.network.params: {spec.generator} refused them: {error}") from None
    outside = [node for node in graph.nodes if not (isinstance(node, int) and 0 <= node < agent_count)]
    if outside:
        raise ScenarioError(f"market.network: node {outside[0]!r} is not an agent index 0..{agent_count - 1}")
    graph.add_nodes_from(range(agent_count))
    return graph


def _warn_of_isolated_agents(path: str, links: Links) -> None:
    """A :class:`ScenarioWarning` naming the agents an edge-list file leaves without a single edge.

    They are kept as nodes without edges: they neither buy nor sell.
    """
    degree = torch.bincount(links.pairs.reshape(-1), minlength=links.agent_count)
    missing = torch.nonzero(degree == 0).reshape(-1).tolist()
    if not missing:
        return
    named = links.agent_count - len(missing)
    warnings.warn(
        ScenarioWarning(
            f"market.network.edge_list: {path} names {named} of the {links.agent_count} agents; "
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
        lines = edge_list_lines(spec.edge_list)
        return None if lines is None else lines * (1 if directed else 2)
    formula = EXPECTED_EDGES.get(spec.generator)
    try:
        edges = float(formula(agent_count, **spec.params)) if formula is not None else None
    except (TypeError, ValueError, ArithmeticError):  # parameters the generator itself will refuse
        return None
    return None if edges is None else edges * (1 if directed else 2)


def edge_list_lines(path: str) -> int | None:
    """Lines of an edge-list file, counted once per file (None if it cannot be read).

    Every memory check reads the count (each sweep point, each batch, the economy's own check
    before its links are drawn); the file is read again only when its size or modification time
    changes.
    """
    try:
        status = os.stat(path)
    except OSError:
        return None
    return _counted_lines(os.path.realpath(path), status.st_size, status.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _counted_lines(path: str, size: int, modified: int) -> int | None:
    """_count_lines of one version of a file (the cache key holds its size and modification time)."""
    return _count_lines(path)


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


def trade_mask_from_links(links: Links) -> torch.Tensor:
    """(N, N) bool, True where i may buy from j."""
    agent_count = links.agent_count
    mask = torch.zeros(agent_count, agent_count, dtype=torch.bool)
    buyers, sellers = links.pairs[:, 0], links.pairs[:, 1]
    mask[buyers, sellers] = True
    if not links.directed:
        mask[sellers, buyers] = True
    return mask


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

    @functools.cached_property
    def host_offsets(self) -> tuple[int, ...]:
        """``offsets`` as Python integers, copied from the device once (the sparse kernel plans its chunks on them)."""
        return tuple(self.offsets.cpu().tolist())

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


def trade_edges_from_links(links: Links, seller: torch.Tensor) -> TradeEdges:
    """The usable directed edges i -> j (j sells, j != i), each once, as compressed rows."""
    agent_count = links.agent_count
    pairs = links.pairs if links.directed else torch.cat([links.pairs, links.pairs.flip(1)])
    buyers, sellers = pairs[:, 0], pairs[:, 1]
    usable = (buyers != sellers) & seller.cpu()[sellers]
    keys = buyers[usable] * agent_count + sellers[usable]
    if keys.numel() > 1 and not bool((keys[1:] > keys[:-1]).all()):  # torch's G(n, p) comes sorted already
        keys = torch.unique(keys)  # sorted by buyer, then seller; each edge once
    buyers, sellers = keys // agent_count, keys % agent_count
    offsets = torch.zeros(agent_count + 1, dtype=torch.long)
    offsets[1:] = torch.bincount(buyers, minlength=agent_count).cumsum(0)
    return TradeEdges(buyers, sellers, offsets)


def trade_edges_from_graph(graph: nx.Graph, agent_count: int, seller: torch.Tensor) -> TradeEdges:
    """The usable directed edges i -> j of a graph (j sells, j != i) as compressed rows."""
    return trade_edges_from_links(links_from_graph(graph, agent_count), seller)


def uses_sparse_layout(spec: Network, links: Links, memory_budget: float) -> bool:
    """Whether a network takes the sparse kernel.

    ``layout: sparse`` says so; ``auto`` does below N^2 / 16 directed edges, or where a dense mask
    (one byte a pair) would exceed the memory budget (bytes).
    """
    if spec.layout != "auto":
        return spec.layout == "sparse"
    agent_count = links.agent_count
    return links.directed_count < SPARSE_DENSITY * agent_count**2 or agent_count**2 > memory_budget


def trade_network(source, replica: int = 0, top_k: int | None = None, *, economy=None) -> nx.DiGraph:
    """The last round's money flows as a networkx.DiGraph; see :func:`econspin.flows.trade_network`."""
    from econspin.flows import trade_network as flows_network  # flows builds on the market, which imports this module

    return flows_network(source, replica, top_k, economy=economy)
