"""Random graphs drawn with torch in O(E): Erdos-Renyi G(n, p) and G(n, m), stochastic block models.

networkx builds a graph edge by edge in Python dictionaries; at 10^6 nodes and 2 x 10^7 edges
that takes minutes and gigabytes. Here a graph is drawn as tensors of node pairs. The pairs a
graph may hold are numbered 0..M-1 (i != j; i < j when undirected), block by block:

    G(n, p):  every pair is an edge independently with probability p. Equivalently the number
              of edges is K ~ Binomial(M, p) and, given K, the edges are a uniform K-subset of
              the M pairs; that is how it is drawn, in O(K) expected time.
    G(n, m):  a uniform m-subset of the M pairs.
    stochastic block model: blocks of consecutive nodes (here the populations); a pair with
              one end in block a and the other in block b is an edge with probability p_ab,
              each pair of blocks drawn as its own G(n, p).

A uniform K-subset of M numbers is drawn by rejection (draw uniform numbers, keep the distinct
ones, draw again for the missing): the first K distinct values of an i.i.d. uniform sequence
are a uniform K-subset, and while K <= M / 4 fewer than a third of the draws are repeats
(at 10^6 nodes and 2 x 10^7 edges, about 200 of them). A
larger K is cheaper as a random permutation of all M pairs, which is then O(K) too.
Every draw reads the torch.Generator passed in: the same seed gives the same graph.
"""

from __future__ import annotations

import torch

from econspin.scenario_messages import suggest

GNP_GENERATORS = ("gnp_random_graph", "fast_gnp_random_graph", "erdos_renyi_graph", "binomial_graph")
GNM_GENERATORS = ("gnm_random_graph", "dense_gnm_random_graph")
BLOCK_MODEL = "stochastic_block_model"
# networkx's names for the graphs drawn here, with the parameters each reads (the node count and
# the seed come from the scenario)
TORCH_GENERATORS = {
    **{name: ("p", "directed") for name in GNP_GENERATORS},
    **{name: ("m", "directed") for name in GNM_GENERATORS},
    BLOCK_MODEL: ("p", "directed"),
}
PERMUTATION_PAIRS = 2**16  # up to this many candidate pairs a permutation is as cheap as rejection


def uniform_subset(pairs: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` distinct numbers of 0..pairs-1, every such subset equally likely, ascending."""
    if count > pairs:
        raise ValueError(f"cannot choose {count} of {pairs}")
    if pairs <= max(PERMUTATION_PAIRS, 4 * count):
        return torch.randperm(pairs, generator=generator)[:count].sort().values
    chosen = torch.unique(torch.randint(0, pairs, (count,), generator=generator))  # sorted
    while chosen.numel() < count:  # the few repeats drawn again; never more than count in all
        extra = torch.unique(torch.randint(0, pairs, (count - chosen.numel(),), generator=generator))
        place = torch.searchsorted(chosen, extra).clamp(max=chosen.numel() - 1)
        chosen = merge_sorted(chosen, extra[chosen[place] != extra])
    return chosen


def merge_sorted(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Two ascending tensors without common values merged into one, in O(len) (no second sort)."""
    merged = torch.empty(first.numel() + second.numel(), dtype=first.dtype)
    place = torch.searchsorted(first, second) + torch.arange(second.numel())  # each value's final position
    from_first = torch.ones(merged.numel(), dtype=torch.bool)
    from_first[place] = False
    merged[place] = second
    merged[from_first] = first
    return merged


def bernoulli_subset(pairs: int, p: float, generator: torch.Generator) -> torch.Tensor:
    """The numbers of 0..pairs-1 each kept independently with probability p, ascending."""
    if pairs == 0 or p <= 0:
        return torch.empty(0, dtype=torch.long)
    if p >= 1:
        return torch.arange(pairs)
    total = torch.tensor(float(pairs), dtype=torch.float64)
    count = int(torch.binomial(total, torch.tensor(p, dtype=torch.float64), generator=generator))
    return uniform_subset(pairs, count, generator)


def pair_count(size: int, directed: bool) -> int:
    """M: the pairs i != j of ``size`` nodes (ordered when directed)."""
    return size * (size - 1) if directed else size * (size - 1) // 2


def within_block(index: torch.Tensor, size: int, offset: int, directed: bool) -> torch.Tensor:
    """(K, 2) the node pairs numbered ``index`` within a block of ``size`` nodes from ``offset``.

    Directed: k = i (n - 1) + r, j = r, skipping i (ascending k is ascending (i, j)).
    Undirected: k = j (j - 1) / 2 + i with i < j.
    """
    if directed:
        row, rest = index // (size - 1), index % (size - 1)
        column = rest + (rest >= row).long()
    else:
        column = ((1 + torch.sqrt(1 + 8 * index.double())) / 2).floor().long()  # exact up to a rounding
        column = column - (column * (column - 1) // 2 > index).long()
        column = column + ((column + 1) * column // 2 <= index).long()
        row = index - column * (column - 1) // 2
    return torch.stack([row, column], 1) + offset


def between_blocks(index: torch.Tensor, columns: int, row_offset: int, column_offset: int) -> torch.Tensor:
    """(K, 2) the pairs numbered ``index`` of a rows x columns rectangle: k = i columns + j."""
    return torch.stack([index // columns + row_offset, index % columns + column_offset], 1)


def gnp_pairs(size: int, p: float, directed: bool, generator: torch.Generator) -> torch.Tensor:
    """(K, 2) the edges of G(n, p) on nodes 0..size-1 (i < j when undirected)."""
    return within_block(bernoulli_subset(pair_count(size, directed), p, generator), size, 0, directed)


def gnm_pairs(size: int, edges: int, directed: bool, generator: torch.Generator) -> torch.Tensor:
    """(m, 2) the edges of G(n, m): m distinct pairs, uniformly."""
    pairs = pair_count(size, directed)
    if edges > pairs:
        raise ValueError(f"m = {edges} is more than the {pairs} pairs of {size} nodes")
    return within_block(uniform_subset(pairs, edges, generator), size, 0, directed)


def block_model_pairs(sizes: list[int], probabilities: list[list[float]], directed: bool, generator) -> torch.Tensor:
    """(K, 2) the edges of a stochastic block model: blocks of consecutive nodes, p_ab between blocks."""
    offsets = [0]
    for size in sizes:
        offsets.append(offsets[-1] + size)
    parts = [torch.empty(0, 2, dtype=torch.long)]
    for a, rows in enumerate(sizes):
        for b, columns in enumerate(sizes):
            if a == b:
                index = bernoulli_subset(pair_count(rows, directed), probabilities[a][a], generator)
                parts.append(within_block(index, rows, offsets[a], directed))
            elif directed or a < b:
                index = bernoulli_subset(rows * columns, probabilities[a][b], generator)
                parts.append(between_blocks(index, columns, offsets[a], offsets[b]))
    return torch.cat(parts)


def sample_pairs(name: str, params: dict, sizes: list[int], generator: torch.Generator) -> torch.Tensor:
    """(K, 2) the edges of the graph networkx calls ``name``, on blocks of ``sizes`` nodes.

    ``params`` are the scenario's, already checked (:data:`TORCH_GENERATORS`); a block model's
    ``p`` is the matrix of edge probabilities in block order.
    """
    directed = bool(params.get("directed", False))
    agents = sum(sizes)
    if name in GNP_GENERATORS:
        return gnp_pairs(agents, float(params["p"]), directed, generator)
    if name in GNM_GENERATORS:
        return gnm_pairs(agents, int(params["m"]), directed, generator)
    if name == BLOCK_MODEL:
        return block_model_pairs(sizes, params["p"], directed, generator)
    raise KeyError(name)


def check_parameters(generator: str, params: dict, populations: dict[str, int]) -> None:
    """Refuse, naming the key, parameters the graph ``generator`` draws with torch cannot use.

    Both samplers read the same parameters, so a scenario valid for one is valid for the other.
    """
    where = "market.network.params"
    reads = TORCH_GENERATORS[generator]
    for key in params:
        if key not in reads:
            raise ValueError(f"{where}.{key}: {generator} does not read it (it reads {', '.join(reads)})")
    directed = params.get("directed", False)
    if not isinstance(directed, bool):
        raise ValueError(f"{where}.directed: should be true or false (got {directed!r})")
    for key in reads[:1]:
        if key not in params:
            raise ValueError(f"{where}.{key}: required key missing for {generator}")
    if generator in GNP_GENERATORS:
        _check_probability(f"{where}.p", params["p"])
    elif generator in GNM_GENERATORS:
        edges, pairs = params["m"], pair_count(sum(populations.values()), directed)
        if isinstance(edges, bool) or not isinstance(edges, int) or not 0 <= edges <= pairs:
            raise ValueError(f"{where}.m: should be a whole number of edges from 0 to {pairs} (got {edges!r})")
    else:
        _check_block_probabilities(f"{where}.p", params["p"], list(populations), directed)


def block_probabilities(params: dict, names: list[str]) -> list[list[float]]:
    """A block model's ``p``, given by population names, as a matrix in population order."""
    return [[float(params["p"][row][column]) for column in names] for row in names]


def _check_probability(key: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{key}: should be a probability from 0 to 1 (got {value!r})")


def _check_block_probabilities(key: str, matrix, names: list[str], directed: bool) -> None:
    """p_ab for every ordered pair of populations a, b; symmetric when the graph is undirected."""
    shape = f"a mapping from each population ({', '.join(names)}) to a mapping of probabilities by population"
    if not isinstance(matrix, dict):
        raise ValueError(f"{key}: should be {shape} (got {matrix!r})")
    for row in (*matrix, *names):
        if row not in names:
            raise ValueError(f"{key}.{row}: no population {row!r}{suggest(str(row), names)}")
        if row not in matrix:
            raise ValueError(f"{key}.{row}: required key missing; give p for every pair of populations")
        if not isinstance(matrix[row], dict):
            raise ValueError(f"{key}.{row}: should be a mapping of probabilities by population (got {matrix[row]!r})")
        for column in (*matrix[row], *names):
            if column not in names:
                raise ValueError(f"{key}.{row}.{column}: no population {column!r}{suggest(str(column), names)}")
            if column not in matrix[row]:
                raise ValueError(f"{key}.{row}.{column}: required key missing; give p for every pair of populations")
            _check_probability(f"{key}.{row}.{column}", matrix[row][column])
    for row in names:
        for column in names:
            if not directed and matrix[row][column] != matrix[column][row]:
                raise ValueError(
                    f"{key}.{row}.{column}: {matrix[row][column]} differs from {key}.{column}.{row} "
                    f"{matrix[column][row]}; an undirected block model needs them equal (or directed: true)"
                )
