"""Logit choice: whom a buyer buys from.

A buyer i facing utilities u_ij over the sellers it may trade with chooses by McFadden's
multinomial logit at its own temperature T_i, which is the Boltzmann distribution and the
softmax of attention:

    alpha_ij = exp(u_ij / T_i) / sum_l exp(u_il / T_i).

Both limits are exact here, with no NaN: T_i = 0 is the argmax (ties share equally) and
T_i = inf is uniform over the allowed partners. The expected (mean-field) mode uses the row
alpha_i. as it is; the sampled (agent-level) mode draws one seller per buyer per market.

Every function takes a block of rows: utilities of shape (..., rows, N) with disallowed
pairs marked by ``allowed`` (broadcastable, bool) and temperatures broadcastable to
(..., rows, 1). Nothing here knows about agents, money or chunks.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

EULER_GAMMA = 0.5772156649015329


class LogitRows(NamedTuple):
    """A block of choice rows: alpha (..., rows, N); inclusive value and entropy (..., rows)."""

    probabilities: torch.Tensor
    inclusive_value: torch.Tensor
    entropy: torch.Tensor


def _scaled_utilities(utilities: torch.Tensor, allowed: torch.Tensor, temperature: torch.Tensor, tie_width=None):
    """z_ij = (u_ij - max_l u_il) / T_i on allowed pairs, -inf elsewhere; also the row maximum.

    Subtracting the maximum first makes T -> 0 finite: the best partners get 0 and every
    other one -inf, the best being those within ``tie_width`` (broadcastable to the rows; 0
    when None) of the maximum: utilities computed by a matrix product carry its rounding, which
    can tell equal utilities apart. T = inf gives 0 on every allowed pair. A row with no allowed
    partner has maximum 0 and is all -inf. The exact limits are patched in only where such rows exist.
    """
    masked = utilities.masked_fill(~allowed, -math.inf)
    row_max = masked.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    cold = temperature == 0
    hot = torch.isinf(temperature)
    safe_temperature = torch.where(cold | hot, torch.ones_like(temperature), temperature)
    # masked after the division: a disallowed pair's -inf divided by T would give the
    # temperature's gradient inf * 0 = NaN (a susceptibility with respect to T)
    scaled = ((utilities - row_max) / safe_temperature).masked_fill(~allowed, -math.inf)
    if bool(cold.any()):
        best = scaled >= (0.0 if tie_width is None else -tie_width)
        scaled = torch.where(cold, torch.where(best, 0.0, -math.inf), scaled)
    if bool(hot.any()):
        scaled = torch.where(hot & allowed, 0.0, torch.where(hot, -math.inf, scaled))
    return scaled, row_max


def logit_rows(utilities: torch.Tensor, allowed: torch.Tensor, temperature: torch.Tensor, tie_width=None) -> LogitRows:
    """Logit choice of a block of rows, in one pass over the block.

    Returns alpha_ij = softmax_j(u_ij / T_i) over allowed j (all zero for a row with no
    allowed j); the inclusive value (consumer surplus) T_i log sum_j exp(u_ij / T_i), which
    is max_j u_ij at T = 0 and equals E[max_j u_ij + T_i g_ij] - T_i * Euler's constant for
    Gumbel g (0 for a row with no partner); and the entropy of alpha_i. divided by
    log(number of allowed partners), in [0, 1] (0 for rows with at most one partner).
    """
    scaled, row_max = _scaled_utilities(utilities, allowed, temperature, tie_width)
    has_partner = allowed.any(dim=-1)
    log_normaliser = torch.logsumexp(scaled, dim=-1)
    if not bool(has_partner.all()):
        log_normaliser = torch.where(has_partner, log_normaliser, torch.zeros_like(log_normaliser))
        scaled = scaled.masked_fill(~has_partner.unsqueeze(-1), -math.inf)
    probabilities = torch.exp(scaled - log_normaliser.unsqueeze(-1))
    # 0 log 0 = 0, written with log 1 where alpha = 0: xlogy(0, 0)'s gradient would be 0/0
    entropy = -torch.special.xlogy(probabilities, torch.where(probabilities > 0, probabilities, 1.0)).sum(dim=-1)
    partners = allowed.sum(dim=-1).to(probabilities.dtype).expand_as(entropy)
    entropy = torch.where(partners > 1, entropy / torch.log(partners.clamp(min=2.0)), torch.zeros_like(entropy))
    temperature = temperature.squeeze(-1)
    # T = 0 contributes nothing; so does a row with one partner at T = inf (inf * log 1)
    quiet = (temperature == 0) | (log_normaliser == 0)
    spread = torch.where(quiet, torch.zeros_like(log_normaliser), temperature * log_normaliser)
    value = torch.where(has_partner, row_max.squeeze(-1) + spread, torch.zeros_like(log_normaliser))
    return LogitRows(probabilities, value, entropy)


def sample_choice(probabilities: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Draw one column per row from alpha by inversion of its cumulative sum.

    ``uniforms`` has the shape of the rows (probabilities without the last axis), U(0, 1).
    Inversion draws from exactly the law of the Gumbel-max rule argmax_j u_ij / T_i + g_ij,
    with one number per row, so that the draw of a row does not depend on how rows are
    grouped into chunks. The cumulative sum is taken in float64 and the threshold u * total
    is kept strictly below the row's total, so the first column whose cumulative sum exceeds
    it always has positive weight, even where rounding makes u * total == total. Rows with
    no allowed partner return -1.
    """
    cumulative = probabilities.double().cumsum(dim=-1)
    total = cumulative[..., -1:]
    below_total = torch.nextafter(total, torch.zeros_like(total))
    threshold = torch.minimum(uniforms.double().unsqueeze(-1) * total, below_total)
    index = torch.searchsorted(cumulative, threshold, right=True).squeeze(-1)
    return torch.where(total.squeeze(-1) > 0, index, torch.full_like(index, -1))


def gumbel_max_choice(
    utilities: torch.Tensor,
    allowed: torch.Tensor,
    temperature: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The random-utility model itself: argmax_j u_ij / T_i + g_ij with g ~ Gumbel(0, 1).

    Used to check that inversion sampling and the logit law agree; the round uses
    :func:`sample_choice`, whose draws do not depend on chunking.
    """
    scaled, _ = _scaled_utilities(utilities, allowed, temperature)
    uniform = torch.rand(scaled.shape, generator=generator, dtype=torch.float64, device=scaled.device)
    gumbel = -torch.log(-torch.log(uniform.clamp(min=1e-300)))
    return (scaled.double() + gumbel).argmax(dim=-1)
