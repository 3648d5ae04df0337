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

A trade network restricts A_i pair by pair: those markets stay on the kernels that read the
network (the sparse kernel, which already costs O(E), or the dense blocks).
"""

from __future__ import annotations

import torch

from econspin.economy import Economy
from econspin.market import MarketOutcome, budgets, project, seller_moment_columns
from econspin.randomness import DRAW_CHOICE, Draws
from econspin.state import State


def uses_uniform(state: State, economy: Economy) -> bool:
    """Whether a round takes the uniform O(N) step: choice ignores utilities, no network, no gradients.

    Nothing here reads a tensor's values: whether the utilities vanish was settled when the
    economy was compiled (``economy.uniform_choice``).

    ``run.kernel: reference`` keeps the readable blocks; fixed couplings have no choice at all;
    a trade network keeps its own kernel; a round whose projections or visibility require
    gradients takes the reference path, whose alpha depends on them away from zero.
    """
    if economy.kernel == "reference" or economy.couplings is not None:
        return False
    if economy.trade_mask is not None or economy.trade_edges is not None:
        return False
    parameters = (economy.query, economy.key, economy.visibility)
    if torch.is_grad_enabled() and any(t.requires_grad for t in parameters):
        return False
    return economy.uniform_choice


def partner_counts(economy: Economy) -> torch.Tensor:
    """(N,) n_i: the sellers buyer i may choose, every seller but itself."""
    seller = economy.seller.long()
    return seller.sum() - seller


def allowed_means(columns: torch.Tensor, economy: Economy, partners: torch.Tensor) -> torch.Tensor:
    """(..., N, F) mean over A_i of per-seller columns (..., N, F); 0 for a buyer without partners."""
    seller = economy.seller.to(columns.dtype)[:, None]
    total = (columns * seller).sum(-2, keepdim=True)
    return (total - columns * seller) / partners.clamp(min=1).to(columns.dtype)[:, None]


def chosen_sellers(uniforms: torch.Tensor, economy: Economy, partners: torch.Tensor) -> torch.Tensor:
    """(..., N) the seller c_i = the k-th of A_i (index order), k = floor(U_i n_i); -1 without partners.

    Sellers are counted by a cumulative sum over agents, so no list of them is read back to
    the host: seller rank r is the first agent whose count of sellers up to itself reaches r + 1.
    """
    count_upto = economy.seller.long().cumsum(0)  # sellers among agents 0..j
    rank = torch.floor(uniforms * partners).long().clamp(max=(partners - 1).clamp(min=0))
    own_rank = count_upto - 1  # agent i's rank among the sellers, where it sells
    skips_self = economy.seller & (rank >= own_rank)  # A_i leaves i out: ranks from i's on move up one
    index = torch.searchsorted(count_upto, (rank + skips_self.long() + 1).contiguous())
    return torch.where(partners > 0, index, torch.full_like(index, -1))


def uniform_trade(state: State, economy: Economy, draws: Draws | None = None) -> MarketOutcome:
    """Steps 1-5 for every buyer when choice is uniform (module doc): what :func:`econspin.market.trade` returns."""
    x = state.states
    batch, agents, d = x.shape
    heads, dtype = economy.heads, x.dtype
    partners = partner_counts(economy)
    has_partner = partners > 0
    delivered = torch.einsum("bhne,bhed->bhnd", project(x, economy.value, economy.population), economy.output)
    spending = budgets(state, economy) * has_partner
    buyer = economy.buyer.to(dtype)

    temperature = state.temperature
    log_partners = torch.log(partners.clamp(min=1).to(dtype))
    quiet = (temperature == 0) | (partners <= 1)  # T = 0 adds nothing, nor does a lone partner at T = inf
    surplus = torch.where(quiet, torch.zeros_like(temperature), temperature * log_partners)
    entropy = (partners > 1).to(dtype).expand(batch, agents)

    if economy.mode == "sampled":
        draws = state.draws() if draws is None else draws
        uniforms = draws.uniform(DRAW_CHOICE, heads).transpose(0, 1)  # (B, H, N)
        choice = chosen_sellers(uniforms, economy, partners)
        index = choice.clamp(min=0)
        got = torch.gather(delivered, 2, index[..., None].expand(-1, -1, -1, d))
        received = (got * (choice >= 0)[..., None]).sum(1)
        share = (spending / heads)[:, None, :].expand(batch, heads, agents)
        market_revenue = torch.zeros(batch, heads, agents, dtype=torch.float64, device=x.device)
        market_revenue.scatter_add_(2, index, share)  # a buyer without partners spends 0
        revenue = market_revenue[:, 0]
        for head in range(1, heads):  # markets added in order, as the reference kernel adds them
            revenue = revenue + market_revenue[:, head]
        zeros = torch.zeros(batch, agents, dtype=dtype, device=x.device)
        field_variance = choice_variance = impact = zeros
    else:
        value_output = torch.einsum("bphde,bhef->bphdf", economy.value, economy.output)
        moments = seller_moment_columns(state, economy, delivered, value_output)
        means = allowed_means(torch.cat([delivered, moments], dim=-1), economy, partners)  # (B, H, N, d + 2)
        per_head = means[..., :d]
        received = per_head.sum(1)
        choice_per_head = means[..., d] - (per_head**2).sum(-1)
        choice_variance = choice_per_head.sum(1) * buyer
        field_variance = (choice_per_head + means[..., d + 1]).sum(1) / d * buyer
        impact = (has_partner.to(dtype) / partners.clamp(min=1).to(dtype)).expand(batch, agents) * buyer
        per_partner = spending / partners.clamp(min=1)  # s_i / n_i in float64: 0 for a buyer without partners
        revenue = (per_partner.sum(1, keepdim=True) - per_partner) * economy.seller
    return MarketOutcome(
        received=received * buyer[None, :, None],
        revenue=revenue,
        spending=spending,
        entropy=entropy.contiguous(),
        surplus=torch.where(has_partner, surplus, torch.zeros_like(surplus)),
        field_variance=field_variance,
        choice_variance=choice_variance,
        impact=impact,
    )
