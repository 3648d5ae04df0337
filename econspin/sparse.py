"""The market on a sparse trade network: every N x N quantity becomes a quantity per edge.

A buyer may only choose among its out-edges i -> j (compressed rows, network.TradeEdges),
so the round's pairwise work runs over the E edges instead of the N^2 pairs, and memory
grows with E: segment reductions over each buyer's edges replace the row reductions of the
dense market. For every edge e = (i, j) and market h, with the notation of market.py:

    U_e = q_i . k_j / sqrt(d_k) + b_j,             m_i = max_{e in i} U_e,
    alpha_e = exp((U_e - m_i) / T_i) / sum_{e' in i} exp((U_e' - m_i) / T_i)
              (T = 0: the sellers within market.tie_widths of m_i, the dense kernels'
              ties, share equally; T = inf: uniform over i's edges),
    a_i = sum_{e in i} alpha_e u_j,   R_j += sum_{e into j} (s_i / H) alpha_e   (expected),
    c_i = the edge at which i's cumulative alpha first exceeds U_i * total    (sampled),

with the entropy, inclusive value, choice and field variances and impact of each buyer taken
over its edges exactly as the dense market takes them over its row. Edges are processed in
chunks of whole rows (segment max by scatter_reduce, sums by index_add), so that a chunk's
working memory stays within the run's memory budget; sampled choices use the buyer's own
counter-based uniform, so they are the dense market's choices on the same network.
"""

from __future__ import annotations

import math

import torch

from econspin.economy import Economy
from econspin.market import (
    MarketOutcome,
    budgets,
    project,
    row_sizes,
    seller_bias,
    seller_moment_columns,
    through_output,
    tie_widths,
)
from econspin.randomness import DRAW_CHOICE, Draws
from econspin.state import State

BYTES_PER_EDGE_ENTRY = 64  # working memory per (batch, head, edge) of a chunk, with the d-vectors apart


def sparse_trade(state: State, economy: Economy, draws: Draws | None = None) -> MarketOutcome:
    """Steps 1-5 of a round over the trade network's edges; see the module docstring."""
    edges = economy.trade_edges
    x, population = state.states, economy.population
    batch, agents, d = x.shape
    heads, key_dimension = economy.heads, economy.query.shape[-1]
    query = project(x, economy.query, population) / math.sqrt(key_dimension)
    key = project(x, economy.key, population)
    delivered = through_output(project(x, economy.value, population), economy.output)
    value_output = torch.einsum("bphde,bhef->bphdf", economy.value, economy.output)
    moments = seller_moment_columns(state, economy, delivered, value_output)  # (B, H, N, 2)
    bias = seller_bias(state, economy)  # (B, N)
    # how far below a row's best a seller still ties at T = 0: the dense kernels' widths, over every agent's key
    ties = tie_widths(row_sizes(query, key, bias[:, None, :]), key_dimension)  # (B, H, N)
    degree = edges.degree
    spend = budgets(state, economy) * (degree > 0)
    share = spend / heads  # (B, N) what a buyer spends in each market
    sampled = economy.mode == "sampled"
    if sampled:
        draws = state.draws() if draws is None else draws
        uniforms = draws.uniform(DRAW_CHOICE, heads).transpose(0, 1)  # (B, H, N)

    received = torch.zeros(batch, heads, agents, d, dtype=x.dtype, device=x.device)
    second = torch.zeros(batch, heads, agents, 2, dtype=x.dtype, device=x.device)  # sum alpha [|u|^2, noise]
    impact = torch.zeros(batch, heads, agents, dtype=x.dtype, device=x.device)
    entropy = torch.zeros_like(impact)
    surplus = torch.zeros_like(impact)
    market_revenue = torch.zeros(batch, heads, agents, dtype=torch.float64, device=x.device)
    temperature = state.temperature
    chunks = _row_chunks(edges.host_offsets, batch * heads * (d + key_dimension), economy.memory_budget)
    for first, last, start, stop in chunks:
        if stop == start:  # no buyer of the chunk has a seller: it spends, receives and chooses nothing
            continue
        buyers, sellers = edges.buyers[start:stop], edges.sellers[start:stop]
        local = (buyers - first).expand(batch, heads, -1)  # each edge's row within the chunk
        rows = last - first
        utilities = (query[:, :, buyers] * key[:, :, sellers]).sum(-1) + bias[:, None, sellers]  # (B, H, E)
        row_max = utilities.new_full((batch, heads, rows), -math.inf)
        row_max = row_max.scatter_reduce(2, local, utilities, "amax", include_self=True)
        gap = utilities - row_max.gather(2, local)  # <= 0, 0 at each row's best sellers
        edge_temperature = temperature[:, buyers][:, None, :]
        cold, hot = edge_temperature == 0, torch.isinf(edge_temperature)
        scaled = gap / torch.where(cold | hot, torch.ones_like(edge_temperature), edge_temperature)
        best = gap >= -ties[:, :, buyers]
        scaled = torch.where(cold, torch.where(best, 0.0, -math.inf), scaled)
        scaled = torch.where(hot, torch.zeros_like(scaled), scaled)
        weights = torch.exp(scaled)
        total = weights.new_zeros(batch, heads, rows).index_add_(2, local[0, 0], weights)
        log_total = torch.log(total.clamp(min=torch.finfo(total.dtype).tiny))
        alpha = weights / total.gather(2, local)
        chunk_rows = slice(first, last)
        row_degree = degree[chunk_rows].to(x.dtype)
        plogp = torch.special.xlogy(alpha, alpha)
        row_entropy = -alpha.new_zeros(batch, heads, rows).index_add_(2, local[0, 0], plogp)
        entropy[:, :, chunk_rows] = torch.where(
            row_degree > 1, row_entropy / torch.log(row_degree.clamp(min=2.0)), torch.zeros_like(row_entropy)
        )
        row_temperature = temperature[:, None, chunk_rows]
        quiet = (row_temperature == 0) | (log_total == 0)
        spread = torch.where(quiet, torch.zeros_like(log_total), row_temperature * log_total)
        surplus[:, :, chunk_rows] = torch.where(row_degree > 0, row_max + spread, torch.zeros_like(row_max))
        if sampled:
            _sample_chunk(
                alpha,
                local,
                sellers,
                uniforms[:, :, chunk_rows],
                first,
                rows,
                share,
                delivered,
                received,
                market_revenue,
            )
            continue
        received[:, :, chunk_rows] = received[:, :, chunk_rows].index_add(
            2, local[0, 0], alpha[..., None] * delivered[:, :, sellers]
        )
        second[:, :, chunk_rows] = second[:, :, chunk_rows].index_add(
            2, local[0, 0], alpha[..., None] * moments[:, :, sellers]
        )
        impact[:, :, chunk_rows] = impact[:, :, chunk_rows].index_add(2, local[0, 0], alpha**2)
        # money in float64, each row renormalised to sum to one there: revenue equals spending to rounding
        exact = alpha.double()
        row_sum = exact.new_zeros(batch, heads, rows).index_add_(2, local[0, 0], exact)
        market_revenue.index_add_(2, sellers, exact * (share[:, None, buyers] / row_sum.gather(2, local)))

    buyer = economy.buyer.to(x.dtype)
    if sampled:
        zeros = torch.zeros(batch, agents, dtype=x.dtype, device=x.device)
        field_variance = choice_variance = impact_mean = zeros
    else:
        choice_per_head = second[..., 0] - (received**2).sum(-1)
        choice_variance = choice_per_head.sum(1) * buyer
        field_variance = (choice_per_head + second[..., 1]).sum(1) / d * buyer
        impact_mean = impact.mean(1) * buyer
    return MarketOutcome(
        received=received.sum(1) * buyer[None, :, None],
        revenue=market_revenue.sum(1),
        spending=spend,
        entropy=entropy.mean(1),
        surplus=surplus.mean(1),
        field_variance=field_variance,
        choice_variance=choice_variance,
        impact=impact_mean,
    )


def _sample_chunk(alpha, local, sellers, uniforms, first, rows, share, delivered, received, market_revenue):
    """One seller per buyer and market by inversion of the cumulative alpha along its edges."""
    batch, heads, _ = alpha.shape
    cumulative = alpha.double().cumsum(-1)  # rows follow each other: a row's sums start at the rows' before
    ends = cumulative.new_zeros(batch, heads, rows).scatter_reduce(2, local, cumulative, "amax", include_self=False)
    row_total = alpha.double().new_zeros(batch, heads, rows).index_add_(2, local[0, 0], alpha.double())
    starts = ends - row_total
    below_total = torch.nextafter(row_total, torch.zeros_like(row_total))
    threshold = starts + torch.minimum(uniforms.double() * row_total, below_total)
    index = torch.searchsorted(cumulative.contiguous(), threshold.contiguous(), right=True)
    index = index.clamp(max=cumulative.shape[-1] - 1)
    chosen = row_total > 0
    seller = sellers[index]  # (B, H, rows)
    got = torch.gather(delivered, 2, seller[..., None].expand(-1, -1, -1, delivered.shape[-1]))
    received[:, :, first : first + rows] = got * chosen[..., None]
    pay = (share[:, None, first : first + rows] * chosen).expand(batch, heads, rows)
    market_revenue.scatter_add_(2, seller, pay)


def _row_chunks(bounds: tuple[int, ...], entry_width: int, memory_budget: float):
    """(first row, last row, first edge, last edge) of chunks covering all rows.

    Each chunk's edges fit a quarter of the budget. ``bounds`` are the row offsets on the
    host (:attr:`~econspin.network.TradeEdges.host_offsets`, read from the device once per
    network, not once a round).
    """
    agents = len(bounds) - 1
    per_edge = max(1, entry_width) * BYTES_PER_EDGE_ENTRY // 16
    limit = max(1, int(memory_budget // 4 // per_edge))
    first = 0
    while first < agents:
        last = first + 1
        while last < agents and bounds[last + 1] - bounds[first] <= limit:
            last += 1
        yield first, last, bounds[first], bounds[last]
        first = last
