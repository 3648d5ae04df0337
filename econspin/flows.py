"""Money flows of one round, F_ij, and the trade network they form (a networkx.DiGraph).

A round does not keep its flows: the state after it holds only their sums, revenue R_j and
spending s_i. But a round is a pure function of the state it is played from (its random
streams travel inside the state), so the flows of a round are recomputed from the state
before it: the same utilities, the same logit rows (:func:`econspin.choice.logit_rows`),
and in sampled mode the same counter-based uniforms (functions of the state's keys, its
round and the buyer), hence the same sellers (:func:`econspin.choice.sample_choice`). For head (market) h,

    F^h_ij = (s_i / H) alpha^h_ij / sum_l alpha^h_il        (expected mode)
    F^h_ij = (s_i / H) [j = c^h_i]                          (sampled mode),

exactly as :func:`econspin.market.trade` pays them, so sum_i F_ij is the round's revenue R_j
and sum_ij F_ij its total spending. The matrix is dense, N x N per head, so this is for
economies of up to :data:`MAX_DENSE_AGENTS` agents (the dashboard, tests, small studies).

:class:`~econspin.simulate.Rollout` and :class:`~econspin.simulate.SimulationResult` keep the
state the last round was played from (``previous``); :func:`trade_network` reads it from
them or from an :class:`~econspin.mesa.EconSpinModel`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import networkx as nx
import torch

from econspin.choice import logit_rows, sample_choice
from econspin.economy import Economy
from econspin.market import allowed_sellers, budgets, network_mask, project, row_sizes, seller_bias, tie_widths
from econspin.randomness import DRAW_CHOICE
from econspin.state import State

MAX_DENSE_AGENTS = 5000
"""Largest economy whose flows are computed: H x N x N float64 numbers per replica."""


@dataclass(frozen=True)
class RoundFlows:
    """The money flows of one round in one batch element (float64).

    Attributes:
        per_head: (H, N, N), F^h_ij, what buyer i paid seller j in market h.
        spending: (N,), s_i (zero for a buyer with nobody to buy from).
        revenue: (N,), R_j = sum_h sum_i F^h_ij.
        round: the round these flows belong to (1 for the first round played).
    """

    per_head: torch.Tensor
    spending: torch.Tensor
    revenue: torch.Tensor
    round: int

    @property
    def flows(self) -> torch.Tensor:
        """(N, N), F_ij summed over heads."""
        return self.per_head.sum(0)

    @property
    def total(self) -> float:
        """All money that changed hands: sum_ij F_ij (= sum_i s_i)."""
        return float(self.per_head.sum())


def round_flows(before: State, economy: Economy, replica: int = 0) -> RoundFlows:
    """The flows of the round played from ``before`` (schedules and events already applied).

    ``before`` is the state a round starts from, e.g. ``rollout.previous``; the result is the
    round that took it to the next state. Batch element ``replica`` only.
    """
    batch, agents = before.money.shape
    if not 0 <= replica < batch:
        raise ValueError(f"replica {replica} is not a batch element 0..{batch - 1}")
    if agents > MAX_DENSE_AGENTS:
        raise ValueError(
            f"trade flows are computed as a dense N x N matrix, up to {MAX_DENSE_AGENTS} agents; "
            f"this economy has {agents}"
        )
    device, heads = before.states.device, economy.heads
    if economy.couplings is not None:  # the kinetic Ising case: fixed couplings, no money changes hands
        zeros = torch.zeros(agents, dtype=torch.float64, device=device)
        empty = torch.zeros(heads, agents, agents, dtype=torch.float64, device=device)
        return RoundFlows(empty, zeros, zeros.clone(), before.round + 1)

    x, population = before.states, economy.population
    query = project(x, economy.query, population)[replica]  # (H, N, e)
    key = project(x, economy.key, population)[replica]
    utilities = torch.einsum("hce,hne->hcn", query, key) / math.sqrt(query.shape[-1])
    bias = seller_bias(before, economy)[replica]
    utilities = utilities + bias  # the visibility premium, by seller
    allowed = allowed_sellers(economy, network_mask(economy), slice(None))
    ties = tie_widths(row_sizes(query / math.sqrt(query.shape[-1]), key, bias[None]), query.shape[-1])[..., None]
    alpha = logit_rows(utilities, allowed[None], before.temperature[replica][None, :, None], ties).probabilities

    spending = budgets(before, economy)[replica] * allowed.any(dim=-1)
    share = spending / heads  # what a buyer spends in each market
    if economy.mode == "sampled":
        # the round's own choice uniforms, functions of (element key, round, buyer, head): the same sellers
        uniforms = before.draws().uniform(DRAW_CHOICE, heads)[:, replica]  # (H, N)
        choice = sample_choice(alpha, uniforms)  # (H, N), -1 for nobody to buy from
        chosen = choice >= 0
        per_head = torch.zeros(heads, agents, agents, dtype=torch.float64, device=device)
        per_head.scatter_(2, choice.clamp(min=0)[..., None], (share * chosen)[..., None])
    else:
        rows = alpha.double()
        total = rows.sum(-1, keepdim=True)
        per_head = rows * (share[:, None] / torch.where(total > 0, total, torch.ones_like(total)))
    return RoundFlows(per_head, spending, per_head.sum((0, 1)), before.round + 1)


def _last_round(source: Any, economy: Economy | None):
    """(state before the round, money after it or None, economy) of a model, rollout, result or state."""
    from econspin.simulate import Rollout, SimulationResult

    rollout = getattr(source, "rollout", None)  # an EconSpinModel
    if isinstance(rollout, Rollout):
        source = rollout
    if isinstance(source, (Rollout, SimulationResult)):
        if source.previous is None:
            raise ValueError("no round has been played yet: step the model (or run the rollout) first")
        return source.previous, source.state.money, source.economy
    if isinstance(source, State):
        if economy is None:
            raise ValueError("trade_network(state): pass economy= as well (the state is the one before the round)")
        return source, None, economy
    raise TypeError(
        "trade_network takes an EconSpinModel, a Rollout, a SimulationResult, or a State with economy=; "
        f"got {type(source).__name__}"
    )


def trade_network(
    source: Any, replica: int = 0, top_k: int | None = None, *, economy: Economy | None = None
) -> nx.DiGraph:
    """The last round's money flows as a directed graph, buyer -> seller.

    Args:
        source: an :class:`~econspin.mesa.EconSpinModel`, a :class:`~econspin.simulate.Rollout`
            or a :class:`~econspin.simulate.SimulationResult` (their last round), or a
            :class:`~econspin.state.State` with ``economy=`` (the round played from that state).
        replica: the batch element.
        top_k: keep only the k largest flows (every agent stays a node); None keeps them all.
        economy: the compiled economy, only with a State.

    Returns:
        A networkx.DiGraph with a node per agent (attributes ``population``, ``wealth`` after the
        round, ``revenue`` R_j and ``spending`` s_i of the round) and an edge i -> j for every
        positive flow, ``weight`` F_ij summed over heads; its total weight is the round's total
        flow, sum_i s_i (with ``top_k``, the share kept). Graph attributes: ``round``,
        ``total_flow`` (all of it, whatever top_k keeps), ``mode``.
    """
    before, money_after, economy = _last_round(source, economy)
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be a positive number of edges, not {top_k}")
    flows = round_flows(before, economy, replica)
    if money_after is None:
        money_after = before.money[replica] - flows.spending + flows.revenue
    else:
        money_after = money_after[replica]
    matrix = flows.flows
    buyers, sellers = torch.nonzero(matrix > 0, as_tuple=True)
    weights = matrix[buyers, sellers]
    if top_k is not None and top_k < len(weights):
        kept = torch.topk(weights, top_k).indices
        buyers, sellers, weights = buyers[kept], sellers[kept], weights[kept]

    graph = nx.DiGraph(round=flows.round, total_flow=flows.total, mode=economy.mode)
    names = economy.population_names
    population = economy.population.tolist()
    wealth, revenue, spending = money_after.tolist(), flows.revenue.tolist(), flows.spending.tolist()
    graph.add_nodes_from(
        (
            agent,
            {
                "population": names[population[agent]],
                "wealth": wealth[agent],
                "revenue": revenue[agent],
                "spending": spending[agent],
            },
        )
        for agent in range(len(population))
    )
    graph.add_weighted_edges_from(zip(buyers.tolist(), sellers.tolist(), weights.tolist()))
    return graph


__all__ = ["MAX_DENSE_AGENTS", "RoundFlows", "round_flows", "trade_network"]
