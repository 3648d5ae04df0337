"""The market: MODEL.md steps 1-5, computed in blocks of buyer rows.

For every head (market) h, buyer i and seller j:

    q_i = W_Q^{p(i)} x_i,  k_j = W_K^{p(j)} x_j,  v_j = W_V^{p(j)} x_j,
    u_ij = q_i . k_j / sqrt(d_k) + gamma log(w_j / mean w),  u_ij = -inf unless i may buy from j,
    alpha_ij = softmax_j(u_ij / T_i)                                   (logit choice),
    F_ij = (s_i / H) alpha_ij   (expected)   or   (s_i / H) [j = c_i]  (sampled),
    R_j = sum_i F_ij,           a_i = sum_h sum_j alpha_ij v_j W_O^h   (or v_{c_i} W_O^h).

Buyer i may buy from j when j's population sells, j != i, and the trade network (if any)
has the edge i -> j. Rows are processed in blocks of ``rows_per_block`` buyers, so memory is
O(B H rows N); the full N x N matrix is formed only where one block of all N rows fits the
memory budget (the dense path, with no separate code). Money flows are accumulated in
float64 from rows renormalised to sum to one, so that sum_j R_j = sum_i s_i to rounding in
float64 whatever the state's precision.

With fixed couplings (the kinetic Ising special case) there is no trade: a_i = sum_j J_ij x_j.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from econspin.choice import logit_rows, sample_choice
from econspin.economy import Economy, rows_per_block
from econspin.randomness import DRAW_CHOICE, Draws
from econspin.state import State


@dataclass(frozen=True)
class MarketOutcome:
    """One round of trade. Shapes (B, N) unless noted.

    Attributes:
        received: (B, N, d) what each buyer receives, a_i, heads mapped back by W_O and summed.
        revenue: float64 R_j.
        spending: float64 s_i (zero for buyers with nobody to buy from).
        entropy: normalised entropy of each buyer's row, mean over heads.
        surplus: inclusive value of each buyer's row, mean over heads.
        field_variance: per-component variance of a_i under sampled choice and sellers'
            spin fluctuations, sum_h [V_ih + sum_j alpha_ij c_j |W_V W_O|_F^2] / d
            (with couplings: sum_j J_ij^2 c_j), c_j = (R^2 - |x_j|^2) / d.
        choice_variance: V_i = sum_h sum_j alpha_ij |u_j|^2 - |a_ih|^2 (u_j = v_j W_O^h).
        impact: kappa_i = sum_j alpha_ij^2, mean over heads.
    """

    received: torch.Tensor
    revenue: torch.Tensor
    spending: torch.Tensor
    entropy: torch.Tensor
    surplus: torch.Tensor
    field_variance: torch.Tensor
    choice_variance: torch.Tensor
    impact: torch.Tensor


def spin_variance(states: torch.Tensor, radius: float) -> torch.Tensor:
    """c_j = (R^2 - |x_j|^2) / d, the per-component variance of a spin of mean x_j (isotropic)."""
    d = states.shape[-1]
    return ((radius**2 - (states**2).sum(-1)) / d).clamp(min=0.0)


def project(states: torch.Tensor, weights: torch.Tensor, population: torch.Tensor) -> torch.Tensor:
    """Per-population projection: (B, N, d) with weights (B, P, H, d, e) -> (B, H, N, e)."""
    if weights.shape[1] == 1:  # one population: its mask is all ones, and the product by 1 changes no bit
        return _projected(states, weights[:, 0])
    projected = None
    for index in range(weights.shape[1]):
        mask = (population == index).to(states.dtype)[None, None, :, None]
        term = _projected(states, weights[:, index]) * mask
        projected = term if projected is None else projected + term
    return projected


# A contraction over one term (d = 1, or d_v = 1 below) is a product, which is what einsum
# computes then too (it multiplies where no summed axis is longer than one); written out, it
# skips einsum's views: a round of the O(N) path at N = 1000 pays each (econspin.uniform).
def _projected(states: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The projection x W by one population's weights: (B, N, d) with (B, H, d, e) -> (B, H, N, e)."""
    if states.shape[-1] == 1:
        return states[:, None] * weights  # (B, 1, N, 1) (B, H, 1, e)
    return torch.einsum("bnd,bhde->bhne", states, weights)


def through_output(value: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
    """u_j = v_j W_O^h: (B, H, N, d_v) with W_O (B, H, d_v, d) -> (B, H, N, d)."""
    if value.shape[-1] == 1:
        return value * output  # (B, H, N, 1) (B, H, 1, d)
    return torch.einsum("bhne,bhed->bhnd", value, output)


def budgets(state: State, economy: Economy, payers: torch.Tensor | None = None) -> torch.Tensor:
    """s_i: sigma_i w_i (share rule) or the unit where w_i allows (unit rule); buyers only.

    ``payers``: who may spend, 1 or 0 in float64 (the buyers unless given: the uniform step
    passes its buyers with a partner, which is the buyers' budgets masked by that).
    """
    payers = economy.buyer.to(torch.float64) if payers is None else payers
    if economy.spend_rule == "unit":
        return (state.money >= economy.unit) * (economy.unit * payers)  # the unit exactly or 0, in float64
    return economy.spend.to(torch.float64) * state.money * payers


def seller_moment_columns(state: State, economy: Economy, delivered, value_output) -> torch.Tensor:
    """(B, H, N, 2): [|u_j|^2, c_j |W_V W_O|_F^2] from u_j (B, H, N, d) and W_V W_O (B, P, H, d, d)."""
    return torch.stack(seller_moments(state, economy, delivered, seller_gains(economy, value_output)), dim=-1)


def seller_gains(economy: Economy, value_output: torch.Tensor) -> torch.Tensor:
    """|W_V W_O|_F^2 of seller j's population and each head, (B or 1, H, N), from W_V W_O (B or 1, P, H, d, d)."""
    return value_output.pow(2).sum((-1, -2))[:, economy.population].transpose(1, 2)


def seller_moments(
    state: State, economy: Economy, delivered, gains, variances: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(|u_j|^2, c_j |W_V W_O|_F^2), each (B, H, N), from u_j (B, H, N, d) and :func:`seller_gains`.

    ``variances``: c_j (:func:`spin_variance` of the state), where the caller has them already.
    """
    if variances is None:
        variances = spin_variance(state.states, economy.radius)
    return (delivered**2).sum(-1), variances[:, None, :] * gains


def seller_bias(state: State, economy: Economy) -> torch.Tensor:
    """(B, N): the visibility premium gamma log(w_j / mean w), floored at gamma log 1e-12."""
    mean_money = state.money.mean(dim=1, keepdim=True).clamp(min=1e-300)
    premium = torch.log((state.money / mean_money).clamp(min=1e-12)).to(state.states.dtype)
    return economy.visibility[:, None] * premium


def row_sizes(query: torch.Tensor, key: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(|q_i| (..., N), max_j |k_j| (..., 1), max_j |b_j| (..., 1)): the sizes that bound row i's utilities.

    ``query`` is q_i / sqrt(d_k) (..., N, d_k), ``key`` k_j (..., N, d_k), ``bias`` b_j (..., N):
    |u_ij| <= |q_i| max_j |k_j| + max_j |b_j| (Cauchy-Schwarz). The tie width
    (:func:`tie_widths`) and the fused kernel's row scale (temperature_limits.row_scales) are made of them.
    """
    key_norm = torch.linalg.vector_norm(key, dim=-1).amax(-1, keepdim=True)
    return torch.linalg.vector_norm(query, dim=-1), key_norm, bias.abs().amax(-1, keepdim=True)


def tie_widths(sizes: tuple[torch.Tensor, ...], key_dimension: int) -> torch.Tensor:
    """How far below a row's best utility a seller still ties with it at T = 0, (..., N), from :func:`row_sizes`.

    u_ij = q_i . k_j / sqrt(d_k) + b_j computed by a matrix product is off by at most about
    (d_k + 2) eps (sum_k |q_ik k_jk| / sqrt(d_k) + |b_j|) <= (d_k + 2) eps (|q_i| max_j |k_j| /
    sqrt(d_k) + max_j |b_j|), and BLAS kernels round the same products differently in
    different columns of a block: two sellers with one key would not tie. (d_k + 4) eps of that
    bound, for the division and the bias's addition too. The one definition of a tie for the
    reference and fused kernels: the reference's blocks (choice.logit_rows) compare utilities
    with it, the fused kernel compares its scores beta_i U_ij with beta_i times it
    (temperature_limits.inverse_temperatures_and_ties), beta_i a power of two: the same utilities tie.
    """
    query_norm, key_norm, bias_norm = sizes
    return (key_dimension + 4) * torch.finfo(query_norm.dtype).eps * (query_norm * key_norm + bias_norm)


def network_mask(economy: Economy) -> torch.Tensor | None:
    """(N, N) bool, True where the trade network lets i buy from j; None without a network.

    The readable kernel reads a sparse network as its dense mask (the sparse kernel is
    :mod:`econspin.sparse`).
    """
    return economy.trade_mask if economy.trade_edges is None else economy.trade_edges.dense()


def allowed_sellers(economy: Economy, network: torch.Tensor | None, rows: slice) -> torch.Tensor:
    """(rows, N) bool: buyer i may buy from j (j sells, j != i, the network has i -> j)."""
    agents = economy.agent_count
    columns = torch.arange(agents, device=economy.seller.device)
    allowed = economy.seller[None, :] & (columns[rows, None] != columns[None, :])
    return allowed if network is None else allowed & network[rows]


def trade(state: State, economy: Economy, draws: Draws | None = None) -> MarketOutcome:
    """Steps 1-5 of a round for every buyer, block by block; see the module docstring.

    In sampled mode buyer i's choice in market h inverts alpha_ih. at the uniform h of its
    choice stream in ``draws`` (by default ``state.draws()``, the round's counter-based
    numbers), so that the sellers chosen do not depend on the block size or the batch.
    """
    if economy.couplings is not None:
        return _fixed_couplings(state, economy)
    x, population = state.states, economy.population
    batch, agents, d = x.shape
    heads, key_dimension = economy.heads, economy.query.shape[-1]
    query = project(x, economy.query, population)
    key = project(x, economy.key, population)
    value = project(x, economy.value, population)
    delivered = through_output(value, economy.output)  # v_j W_O^h, (B, H, N, d)
    sampled = economy.mode == "sampled"
    if sampled:
        draws = state.draws() if draws is None else draws
        uniforms = draws.uniform(DRAW_CHOICE, heads).transpose(0, 1).contiguous()  # (B, H, N)
    else:  # the sellers' moments feed the expected mode's field variance only
        value_output = torch.einsum("bphde,bhef->bphdf", economy.value, economy.output)
        seller_moments = seller_moment_columns(state, economy, delivered, value_output)  # (B, H, N, 2)
    column_bias = seller_bias(state, economy)[:, None, None, :]
    sizes = row_sizes(query / math.sqrt(key_dimension), key, column_bias[:, :, 0])
    ties = tie_widths(sizes, key_dimension)[..., None]  # (B, H, N, 1)
    spend = budgets(state, economy)
    network = network_mask(economy)
    revenue = torch.zeros(batch, agents, dtype=torch.float64, device=x.device)
    if sampled:
        market_revenue = torch.zeros(batch, heads, agents, dtype=torch.float64, device=x.device)
    # each block's rows written into the round's outputs: blocks' results kept as pieces until a final cat
    # held small tensors inside the space a block's temporaries freed, and the C allocator (keeping freed
    # memory, as the econspin command does) could then not serve the next block there (tests/test_memory.py)
    outputs: dict[str, torch.Tensor] = {}

    def write(name: str, rows: slice, values: torch.Tensor) -> None:  # (B, rows, ...) into (B, N, ...), its dtype
        if name not in outputs:
            outputs[name] = values.new_empty((batch, agents, *values.shape[2:]))
        outputs[name][:, rows] = values

    block = rows_per_block(economy)
    for start in range(0, agents, block):
        rows = slice(start, min(start + block, agents))
        allowed = allowed_sellers(economy, network, rows)[None, None]  # (1, 1, rows, N)
        utilities = torch.einsum("bhce,bhne->bhcn", query[:, :, rows], key) / math.sqrt(key_dimension)
        utilities = utilities + column_bias
        temperature = state.temperature[:, None, rows, None]
        choice_rows = logit_rows(utilities, allowed, temperature, ties[:, :, rows])
        alpha = choice_rows.probabilities
        has_partner = allowed.any(dim=-1)[0, 0]
        row_spend = spend[:, rows] * has_partner
        share = (row_spend / heads)[:, None, :]  # (B, 1, rows)
        if sampled:
            choice = sample_choice(alpha, uniforms[:, :, rows])
            chosen = choice >= 0
            index = choice.clamp(min=0)
            got = torch.gather(delivered, 2, index[..., None].expand(-1, -1, -1, d))
            received = (got * chosen[..., None]).sum(1)
            # each market's revenue in row order, block after block: the same sums whatever the blocks
            market_revenue.scatter_add_(2, index, share * chosen)
            zeros = torch.zeros_like(row_spend, dtype=x.dtype)
            field_variance = choice_variance = impact = zeros
        else:
            per_head = torch.einsum("bhcn,bhnd->bhcd", alpha, delivered)
            received = per_head.sum(1)
            moments = torch.einsum("bhcn,bhnk->bhck", alpha, seller_moments)
            choice_per_head = moments[..., 0] - (per_head**2).sum(-1)
            choice_variance = choice_per_head.sum(1)
            field_variance = (choice_per_head + moments[..., 1]).sum(1) / d
            impact = (alpha**2).sum(-1).mean(1)
            flows = alpha.double()
            total = flows.sum(-1)
            weight = share / torch.where(total > 0, total, torch.ones_like(total))
            revenue = revenue + torch.einsum("bhcn,bhc->bn", flows, weight)
        buyer = economy.buyer[rows].to(x.dtype)
        write("received", rows, received * buyer[None, :, None])
        write("spending", rows, row_spend)
        write("entropy", rows, choice_rows.entropy.mean(1))
        write("surplus", rows, choice_rows.inclusive_value.mean(1))
        write("field_variance", rows, field_variance * buyer)
        write("choice_variance", rows, choice_variance * buyer)
        write("impact", rows, impact * buyer)
    if sampled:
        for head in range(heads):  # markets added in order (a reduction over heads may regroup them)
            revenue = revenue + market_revenue[:, head]
    return MarketOutcome(revenue=revenue, **outputs)


def _fixed_couplings(state: State, economy: Economy) -> MarketOutcome:
    x = state.states
    couplings = economy.couplings
    zero_rows = torch.zeros_like(state.temperature)
    if couplings.shape[0] == 1:
        # one matrix serves every element: a single (B d, N) x (N, N) product, J never copied
        matrix = couplings[0]
        received = (x.transpose(1, 2) @ matrix.T).transpose(1, 2)
        square = lambda values: values @ (matrix**2).T  # noqa: E731
    else:
        received = torch.bmm(couplings, x)
        square = lambda values: torch.bmm(couplings**2, values.unsqueeze(-1)).squeeze(-1)  # noqa: E731
    # the field variance feeds only the expected mode's TAP term
    field_variance = zero_rows if economy.mode == "sampled" else square(spin_variance(x, economy.radius))
    zeros = torch.zeros_like(state.money)
    return MarketOutcome(
        received=received,
        revenue=zeros,
        spending=zeros,
        entropy=zero_rows,
        surplus=zero_rows,
        field_variance=field_variance,
        choice_variance=zero_rows,
        impact=zero_rows,
    )
