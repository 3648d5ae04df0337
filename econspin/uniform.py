"""Uniform choice: the market step when no utility depends on the seller, in O(N).

When every utility u_ij = q_i . k_j / sqrt(d_k) + gamma log(w_j / mean w) is zero (the queries
or the keys vanish and there is no visibility premium, as in scenarios/boltzmann_wealth.yaml:
projections of scale 0, visibility 0), the logit law is uniform over each buyer's allowed
sellers at every temperature, T = 0 (every seller ties) and T = inf included:

    alpha_ij = [j in A_i] / n_i,    A_i = {j : j sells, j != i},    n_i = S - [i sells],

with S the number of sellers. Every term of MODEL.md's steps 1-5 is then a sum, never a matrix:

    a_ih     = mean_{j in A_i} u_jh = (sum_{j sells} u_jh - [i sells] u_ih) / n_i    (u_j = v_j W_O^h),
    moments  = the same means of |u_jh|^2 and c_j |W_V W_O|_F^2,
    kappa_i  = 1 / n_i,    entropy_i = 1 (n_i > 1),    surplus_i = T_i ln n_i  (0 at T = 0),
    R_j      = [j sells] (sum_i s_i / n_i - s_j / n_j)                           (expected mode),
    c_ih     = the k-th seller of A_i in index order, k = floor(U_ih n_i)           (sampled mode),

where U_ih is buyer i's uniform of market h in the round's counter-based draws
(:mod:`econspin.randomness`). The reference kernel inverts the cumulative alpha at the same
U_ih (:func:`econspin.choice.sample_choice`): with equal weights 1 / n_i the first column whose
cumulative sum exceeds U_ih is the k-th allowed one, so both kernels pick the same seller draw for
draw (they could differ only where U_ih n_i lies within the cumulative sums' rounding, about
1e-16 relative, of an integer). Work and memory are O(B H N (d + 2)); nothing is N x N.

A sparse trade network (``network.TradeEdges``) makes A_i buyer i's out-edges, n_i its degree:
the means are then a sparse product with the adjacency and the revenue a sum over edges, O(E),
and the k-th seller is read from the buyer's run of edges. A dense network's mask stays on the
kernels that read it by blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from econspin.economy import Economy
from econspin.market import MarketOutcome, budgets, project, seller_moment_columns, through_output
from econspin.network import TradeEdges
from econspin.randomness import DRAW_CHOICE, Draws
from econspin.state import State


def uses_uniform(state: State, economy: Economy) -> bool:
    """Whether a round takes the uniform O(N) step: choice ignores utilities, no dense network, no gradients.

    Nothing here reads a tensor's values: whether the utilities vanish was settled when the
    economy was compiled (``economy.uniform_choice``).

    ``run.kernel: reference`` keeps the readable blocks; fixed couplings have no choice at all;
    a dense trade network keeps the blocks (a sparse one is uniform over its edges); a round
    whose projections or visibility require gradients takes the reference path, whose alpha
    depends on them away from zero.
    """
    if economy.kernel == "reference" or economy.couplings is not None:
        return False
    if economy.trade_mask is not None:  # a dense network: its rows are read on the blocks
        return False
    parameters = (economy.query, economy.key, economy.visibility)
    if torch.is_grad_enabled() and any(t.requires_grad for t in parameters):
        return False
    return economy.uniform_choice


@dataclass(frozen=True)
class SellerLayout:
    """What a uniform round needs of who may buy from whom, all fixed by the economy. Shapes (N,).

    Buyer i's allowed sellers, in index order, are ``in_order[first_i + r]`` for ranks r < n_i,
    where the rank r >= ``skip_at_i`` moves up one (the complete market lists every seller once
    and skips i itself; a network lists each buyer's out-edges, nothing to skip). A buyer
    without partners has rank 0 only (r <= n_i - 1 clamped at 0), never skips, and starts at
    the spare slot: its "seller" is read without a branch, and the caller leaves it out.

    Everything here that a round would otherwise recompute from the flags is kept, so that a
    round pays for its state only (each operation at N = 1000 is a fixed ~1.5 us).

    Attributes:
        partners_real: n_i in float64 (what the choice uniform scales).
        divisor: max(n_i, 1) in float64 (s_i / n_i).
        mean_divisor: max(n_i, 1) in the working precision, a column (N, 1) (the means over A_i).
        impact: kappa_i = [n_i > 0] / max(n_i, 1) of a buyer (0 for the others), the working precision.
        lone: n_i <= 1 (an empty or one-seller row: no entropy, no surplus beyond the maximum).
        log_partners: ln n_i (0 where n_i <= 1), the working precision.
        entropy: 1 where n_i > 1, else 0: the normalised entropy of a uniform row, the working precision.
        seller, buyer: the flags as 0/1 in the working precision.
        paying: buyer with a partner, 0/1 in float64: who spends its budget.
        receiving: buyer with a partner, 0/1 in the working precision, (N, 1): who receives a signal.
        in_order: the sellers' list, one spare slot (some agent) at its end.
        first: where buyer i's sellers start in ``in_order`` (the spare slot without partners).
        skip_at: the rank from which buyer i's ranks move up one (never: n_i, or past any rank without partners).
        last_rank: n_i - 1, at least 0.
        edges: the sparse network (None: every seller but oneself).
        adjacency: the network as an (N, N) sparse matrix of ones (None without one).
    """

    partners_real: torch.Tensor
    divisor: torch.Tensor
    mean_divisor: torch.Tensor
    impact: torch.Tensor
    lone: torch.Tensor
    log_partners: torch.Tensor
    entropy: torch.Tensor
    seller: torch.Tensor
    buyer: torch.Tensor
    paying: torch.Tensor
    receiving: torch.Tensor
    in_order: torch.Tensor
    first: torch.Tensor
    skip_at: torch.Tensor
    last_rank: torch.Tensor
    edges: TradeEdges | None
    adjacency: torch.Tensor | None


def seller_layout(economy: Economy, dtype: torch.dtype) -> SellerLayout:
    """The economy's :class:`SellerLayout`, built once per economy and precision and kept beside it.

    A round then costs what depends on the state only (its budgets, draws and goods); with
    N = 1000 a round is about a hundred small tensor operations, so each one saved shows.
    """
    cache = economy.__dict__.setdefault("_seller_layouts", {})  # a frozen dataclass: a cache, not a field
    if dtype in cache:
        return cache[dtype]
    seller, edges = economy.seller, economy.trade_edges
    agents, device = seller.shape[0], seller.device
    adjacency = None
    if edges is None:
        partners = seller.long().sum() - seller.long()  # every seller but oneself
        own_rank = seller.long().cumsum(0) - 1
        # each seller scattered to its rank, the others to the spare slot: no list read back to the host
        in_order = torch.zeros(agents + 1, dtype=torch.long, device=device)
        in_order.scatter_(0, torch.where(seller, own_rank, agents), torch.arange(agents, device=device))
        first = torch.zeros_like(partners)
        skip_at = torch.where(seller, own_rank, partners)
    else:
        partners = edges.degree
        in_order = torch.cat([edges.sellers, torch.zeros(1, dtype=torch.long, device=device)])
        first, skip_at = edges.offsets[:-1], partners
        ones = torch.ones(edges.sellers.shape[0], dtype=dtype, device=device)
        pairs = torch.stack([edges.buyers, edges.sellers])  # sorted and distinct: already coalesced
        adjacency = torch.sparse_coo_tensor(pairs, ones, (agents, agents), is_coalesced=True, check_invariants=True)
    has_partner, lone = partners > 0, partners <= 1
    receiving = economy.buyer & has_partner
    at_least_one = partners.clamp(min=1)
    cache[dtype] = SellerLayout(
        partners_real=partners.to(torch.float64),
        divisor=at_least_one.to(torch.float64),
        mean_divisor=at_least_one.to(dtype)[:, None],
        impact=has_partner.to(dtype) / at_least_one.to(dtype) * economy.buyer.to(dtype),
        lone=lone,
        log_partners=torch.log(at_least_one.to(dtype)),
        entropy=(~lone).to(dtype),
        seller=seller.to(dtype),
        buyer=economy.buyer.to(dtype),
        paying=receiving.to(torch.float64),
        receiving=receiving.to(dtype)[:, None],
        in_order=in_order,
        first=torch.where(has_partner, first, in_order.shape[0] - 1),  # the spare slot
        skip_at=torch.where(has_partner, skip_at, agents + 1),  # rank 0 < agents + 1: never skips
        last_rank=(partners - 1).clamp(min=0),
        edges=edges,
        adjacency=adjacency,
    )
    return cache[dtype]


def allowed_means(columns: torch.Tensor, layout: SellerLayout) -> torch.Tensor:
    """(B, H, N, F) mean over A_i of per-seller columns (B, H, N, F); 0 for a buyer without partners.

    Complete market: the sum over sellers minus one's own term. Network: the sparse product
    of its adjacency with the columns (O(E F) per batch-head).
    """
    if layout.adjacency is None:
        seller = layout.seller[:, None]
        total = (columns * seller).sum(-2, keepdim=True) - columns * seller
    else:
        batch, heads, agents, width = columns.shape
        flat = columns.permute(2, 0, 1, 3).reshape(agents, -1)  # (N, B H F)
        summed = torch.sparse.mm(layout.adjacency.to(columns.dtype), flat)
        total = summed.reshape(agents, batch, heads, width).permute(1, 2, 0, 3)
    return total / layout.mean_divisor


def allowed_revenue(per_partner: torch.Tensor, layout: SellerLayout) -> torch.Tensor:
    """(B, N) float64 R_j = sum of s_i / n_i over the buyers i that may buy from j."""
    if layout.edges is None:
        return (per_partner.sum(1, keepdim=True) - per_partner) * layout.seller
    edges = layout.edges
    return torch.zeros_like(per_partner).index_add_(1, edges.sellers, per_partner[:, edges.buyers])


def chosen_sellers(uniforms: torch.Tensor, layout: SellerLayout) -> torch.Tensor:
    """(..., N) the seller c_i = the k-th of A_i (index order), k = floor(U_i n_i).

    U_i < 1, but U_i n_i may round up to n_i: k stops at n_i - 1. A buyer without partners
    gets the spare slot's agent (rank 0 from its ``first``), and the caller leaves it out (it
    spends and receives nothing).
    """
    # truncation: the floor of U n >= 0
    rank = torch.minimum((uniforms * layout.partners_real).long(), layout.last_rank)
    rank += rank >= layout.skip_at  # the complete market's A_i leaves i out: ranks from i's own move up one
    return torch.take(layout.in_order, layout.first + rank)


def uniform_trade(state: State, economy: Economy, draws: Draws | None = None) -> MarketOutcome:
    """Steps 1-5 for every buyer when choice is uniform (module doc): what :func:`econspin.market.trade` returns."""
    x = state.states
    batch, agents, d = x.shape
    heads, dtype = economy.heads, x.dtype
    layout = seller_layout(economy, dtype)
    delivered = through_output(project(x, economy.value, economy.population), economy.output)
    spending = budgets(state, economy, layout.paying)
    # T ln n_i: 0 at T = 0; a row of at most one seller has ln n_i = 0 and adds nothing even at
    # T = inf (where the product is nan), nor does an empty row, which reports 0
    surplus = (state.temperature * layout.log_partners).masked_fill_(layout.lone, 0.0)
    entropy = layout.entropy.expand(batch, agents)

    if economy.mode == "sampled":
        draws = state.draws() if draws is None else draws
        uniforms = draws.uniform(DRAW_CHOICE, heads)  # (H, B, N)
        received, revenue = sampled_exchange(uniforms, delivered, spending, layout)
        field_variance = choice_variance = impact = torch.zeros(batch, agents, dtype=dtype, device=x.device)
    else:
        buyer = layout.buyer
        value_output = torch.einsum("bphde,bhef->bphdf", economy.value, economy.output)
        moments = seller_moment_columns(state, economy, delivered, value_output)
        means = allowed_means(torch.cat([delivered, moments], dim=-1), layout)  # (B, H, N, d + 2)
        per_head = means[..., :d]
        received = per_head.sum(1) * buyer[:, None]
        choice_per_head = means[..., d] - (per_head**2).sum(-1)
        choice_variance = choice_per_head.sum(1) * buyer
        field_variance = (choice_per_head + means[..., d + 1]).sum(1) / d * buyer
        impact = layout.impact.expand(batch, agents)
        per_partner = spending / layout.divisor  # s_i / n_i in float64: 0 for a buyer without partners
        revenue = allowed_revenue(per_partner, layout)
    return MarketOutcome(
        received=received,
        revenue=revenue,
        spending=spending,
        entropy=entropy,
        surplus=surplus,
        field_variance=field_variance,
        choice_variance=choice_variance,
        impact=impact,
    )


def sampled_exchange(
    uniforms: torch.Tensor, delivered: torch.Tensor, spending: torch.Tensor, layout: SellerLayout
) -> tuple[torch.Tensor, torch.Tensor]:
    """(a_i (B, N, d), R_j (B, N) float64) of sampled mode from the choice uniforms (H, B, N).

    Buyer i receives v_{c_ih} W_O^h from each market's seller c_ih and pays it s_i / H. One
    market (the tutorial's) skips the markets' axis: s_i / 1 is s_i, the same bits.
    """
    d = delivered.shape[-1]
    if uniforms.shape[0] == 1:
        chosen = chosen_sellers(uniforms[0], layout)  # (B, N)
        index = chosen.unsqueeze(-1)
        got = torch.gather(delivered[:, 0], 1, index if d == 1 else index.expand(-1, -1, d))
        revenue = torch.zeros_like(spending).scatter_add_(1, chosen, spending)
        return got * layout.receiving, revenue
    heads, batch, agents = uniforms.shape
    chosen = chosen_sellers(uniforms.transpose(0, 1), layout)  # (B, H, N)
    got = torch.gather(delivered, 2, chosen[..., None].expand(-1, -1, -1, d))
    market_revenue = torch.zeros(batch, heads, agents, dtype=torch.float64, device=spending.device)
    market_revenue.scatter_add_(2, chosen, (spending / heads)[:, None, :].expand(batch, heads, agents))
    revenue = market_revenue[:, 0]
    for head in range(1, heads):  # markets added in order, as the reference kernel adds them
        revenue = revenue + market_revenue[:, head]
    return got.sum(1) * layout.receiving, revenue
