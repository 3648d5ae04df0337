"""What a round reads of the economy alone, computed once per economy and kept beside it.

Eager torch pays a few microseconds to dispatch each tensor operation, whatever its size, and
a GPU waits for the host to dispatch them: on an H200 the fused round took 2.6 ms for every
shape from B N^2 = 6.6e4 to 1.7e7 pairs, most of it that dispatch (docs/performance_log.md, "On a
GPU: NVIDIA H200"). A good part of a round's operations made the same tensors every round
from the economy's parameters: the projections' weights side by side, W_V W_O and its norms,
the seller column of the utilities, the number of partners of each buyer and what follows
from it, the buyers' mask, the adaptation rates' factors. They are built here once per
economy, precision and batch, with the same operations on the same inputs as before (the same
bits), and a round pays only for what depends on its state.

An :class:`~econspin.economy.Economy` is frozen and its tensors are not changed in place: the
cache lives in its ``__dict__`` (as :func:`econspin.uniform.seller_layout`'s), and an economy
made by ``dataclasses.replace`` starts with none. Nothing is kept where a parameter requires a
gradient (the cached tensors would hold the graph), nor while torch.compile traces the round
(``run.compile``): the trace computes them itself, and Inductor fuses them into its loops.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch

from econspin.economy import Economy
from econspin.market import seller_gains
from econspin.state import State
from econspin.temperature_limits import precision_limits


@dataclass(frozen=True)
class FieldWeights:
    """The adaptation rates' factors of theta_i = h_i + (1 - eta_i) x_i + eta_i a_i and of sigma_i^2."""

    kept: torch.Tensor  # (B, N, 1): 1 - eta_i
    adapted: torch.Tensor  # (B, N, 1): eta_i
    kept_squared: torch.Tensor  # (B, N): (1 - eta_i)^2
    adapted_squared: torch.Tensor  # (B, N): eta_i^2


@dataclass(frozen=True)
class EconomyTerms:
    """The economy's part of :class:`econspin.fused.RoundTerms`, and of the per-row results after the blocks.

    groups = B H (batch element b, head h is group b H + h).
    """

    # (B, P, d, H (2 d_k + d)): [W_Q / sqrt(d_k), W_K, W_V W_O] per population, its heads side by side
    projection: torch.Tensor
    value_output: torch.Tensor  # (B or 1, P, H, d, d): W_V W_O per population and head
    gains: torch.Tensor  # (B or 1, H, N): |W_V W_O|_F^2 of seller j's population (market.seller_gains)
    seller_column: torch.Tensor  # (B, H, N): c_j = 0 (j sells) or -BIG
    ones: torch.Tensor  # (B, H, N, 1): the utilities' last query column
    network_bias: torch.Tensor | None  # (N, N): 0 on edges, -BIG elsewhere, or None (:func:`network_terms`)
    has_partner: torch.Tensor  # (N,) bool: n_i > 0 (the same for every element and head)
    several_partners: torch.Tensor  # (groups, N) bool: n_i > 1
    few_partners: torch.Tensor  # (groups, N) bool: n_i <= 1
    entropy_scale: torch.Tensor  # (groups, N): ln max(n_i, 2), the largest entropy of a row
    buyer: torch.Tensor  # (N,) the buyers' mask in the working precision


def cached(economy: Economy, key: tuple, build):
    """``build()``, kept in the economy's cache under ``key`` where that is safe (module doc)."""
    if torch.compiler.is_compiling() or parameters_require_gradients(economy):
        return build()
    cache = economy.__dict__.setdefault("_round_terms", {})  # a frozen dataclass: a cache, not a field
    if key not in cache:
        cache[key] = build()
    return cache[key]


def parameters_require_gradients(economy: Economy) -> bool:
    """Whether a parameter of the economy requires a gradient (its terms then follow it every round)."""
    parameters = (economy.query, economy.key, economy.value, economy.output, economy.eta, economy.spend)
    return any(t.requires_grad for t in parameters)


def field_weights(economy: Economy) -> FieldWeights:
    """The economy's :class:`FieldWeights`, built once per economy."""

    def build():
        eta = economy.eta
        return FieldWeights((1.0 - eta)[..., None], eta[..., None], (1.0 - eta) ** 2, eta**2)

    return cached(economy, ("field weights",), build)


def economy_terms(economy: Economy, dtype: torch.dtype, batch: int, big: float) -> EconomyTerms:
    """The economy's :class:`EconomyTerms` for ``batch`` elements in ``dtype``, -BIG = -``big``, built once."""
    return cached(economy, ("fused", dtype, batch), lambda: _build(economy, dtype, batch, big))


def _build(economy: Economy, dtype: torch.dtype, batch: int, big: float) -> EconomyTerms:
    heads, agents = economy.heads, economy.agent_count
    groups = batch * heads
    query, key, value, output = economy.query, economy.key, economy.value, economy.output
    if economy.shared_projections and not any(t.requires_grad for t in (query, key, value, output)):
        # one set of weights serves every element (W_V W_O then (1, P, H, d, d)): a sweep's
        # points of one seed need not combine and apply B copies of the same weights
        query, key, value, output = query[:1], key[:1], value[:1], output[:1]
    value_output = torch.einsum("bphde,bhef->bphdf", value, output)
    projection = torch.cat([query / math.sqrt(query.shape[-1]), key, value_output], dim=-1)
    seller = economy.seller
    if economy.trade_mask is None:
        network_bias, partners = None, seller.sum() - seller.long()  # every seller but oneself
    else:
        network_bias, partners = network_terms(economy, dtype, big)
    partners = partners.expand(groups, agents)
    seller_column = (~seller).to(dtype).mul_(-big).expand(batch, heads, agents)
    return EconomyTerms(
        projection=side_by_side(projection, batch),
        value_output=value_output,
        gains=seller_gains(economy, value_output),
        seller_column=seller_column,
        ones=torch.ones(batch, heads, agents, 1, dtype=dtype, device=seller.device),
        network_bias=network_bias,
        has_partner=partners[0] > 0,
        several_partners=partners > 1,
        few_partners=partners <= 1,
        entropy_scale=torch.log(partners.clamp(min=2).to(dtype)),
        buyer=economy.buyer.to(dtype),
    )


def side_by_side(weights: torch.Tensor, batch: int) -> torch.Tensor:
    """(B or 1, P, H, d, F) weights as (B, P, d, H F): each population's heads side by side, for one product.

    Weights with a batch of 1 serve every element (expanded: no copy).
    """
    _, populations, heads, d, width = weights.shape
    arranged = weights.permute(0, 1, 3, 2, 4).reshape(-1, populations, d, heads * width)
    return arranged if arranged.shape[0] == batch else arranged.expand(batch, -1, -1, -1)


_NETWORKS: dict[int, tuple[weakref.ref, dict]] = {}  # id(mask) -> (the mask, {dtype: terms}), while it lives


def network_terms(economy: Economy, dtype: torch.dtype, big: float):
    """The trade network as an additive bias (0 on edges, -BIG elsewhere) and n_i, cached per mask.

    Adding a float block costs a tenth of a masked fill with a boolean one on the CPU
    (docs/performance.md); the network does not change between rounds, so its bias (N^2
    entries of the working precision) is built once per mask tensor and kept while it lives,
    where it takes at most a quarter of run.memory_budget_mb (else the bias is None and each
    block is masked from the boolean mask).
    """
    trade_mask, seller = economy.trade_mask, economy.seller
    if trade_mask.numel() * torch.finfo(dtype).bits // 8 > economy.memory_budget / 4:
        allowed = trade_mask & seller
        return None, allowed.sum(-1) - allowed.diagonal().long()
    key = id(trade_mask)
    entry = _NETWORKS.get(key)
    if entry is None or entry[0]() is not trade_mask:
        entry = _NETWORKS[key] = (weakref.ref(trade_mask, lambda _: _NETWORKS.pop(key, None)), {})
    cached_terms = entry[1].get(dtype)
    if cached_terms is not None and cached_terms[0] is seller:
        return cached_terms[1], cached_terms[2]
    allowed = trade_mask & seller
    allowed.fill_diagonal_(False)
    bias = torch.zeros(trade_mask.shape, dtype=dtype, device=trade_mask.device).masked_fill_(~trade_mask, -big)
    entry[1][dtype] = (seller, bias, allowed.sum(-1))
    return bias, entry[1][dtype][2]


def fixed_terms(state: State, economy: Economy) -> EconomyTerms:
    """The economy's part of a round in the state's precision and batch (:func:`economy_terms`)."""
    dtype = state.states.dtype
    return economy_terms(economy, dtype, state.states.shape[0], 2.0 ** precision_limits(dtype)[2])
