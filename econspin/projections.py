"""x_i W^{p(i)} for every agent: the fused kernels' projections, one product per population.

The queries, keys and delivered values of a round (MODEL.md step 1) for the fused, flex and
Triton kernels, from the weights of every population side by side
(:func:`econspin.economy_terms.side_by_side`, built once per economy). The reference kernel
projects head by head in econspin.market (``project``); tests hold the two equal. The
populations' rows are joined by :func:`rows_together`: torch.cat eagerly, under torch.compile
a choice by row that Inductor reads in place instead of copying the products into a buffer.
"""

from __future__ import annotations

import itertools

import torch

from econspin.economy import Economy
from econspin.economy_terms import EconomyTerms, fixed_terms, side_by_side
from econspin.state import State


def project_all(
    states: torch.Tensor, weights: torch.Tensor, population: torch.Tensor, counts: tuple[int, ...] = ()
) -> torch.Tensor:
    """x_i W^{p(i)} for every agent: (B, N, d) with (B, P, H, d, F) -> (B, H, N, F).

    With ``counts`` (the populations' sizes, agents of population p next to each other, as
    :func:`econspin.economy.build_economy` orders them): one product per population on its
    own rows. Without: one product against every population's weights side by side, then
    each agent keeps its own population's columns (P times the multiply-adds, and a gather:
    at B = 128, N = 64, d = 32, P = 2 that took 2.5 ms against 0.7 ms for the slices).
    ``weights`` with a batch of 1 serve every element (the same products, each element's
    against one copy of the weights).
    """
    return project_side_by_side(states, side_by_side(weights, states.shape[0]), weights.shape[2], population, counts)


def project_side_by_side(
    states: torch.Tensor, arranged: torch.Tensor, heads: int, population: torch.Tensor, counts: tuple[int, ...] = ()
) -> torch.Tensor:
    """:func:`project_all` from its weights already side by side (economy_terms.side_by_side, (B, P, d, H F))."""
    batch = states.shape[0]
    _, populations, d, columns = arranged.shape
    if populations == 1:
        own = torch.bmm(states, arranged[:, 0])
    elif len(counts) == populations and sum(counts) == states.shape[1]:
        starts = [0, *itertools.accumulate(counts)]
        own = rows_together(
            [torch.bmm(states[:, starts[p] : starts[p + 1]], arranged[:, p]) for p in range(populations)]
        )
    else:
        every = torch.bmm(states, arranged.transpose(1, 2).reshape(batch, d, populations * columns))
        every = every.view(batch, -1, populations, columns)
        own = every[:, torch.arange(population.shape[0]), population]
    return own.view(batch, -1, heads, columns // heads).transpose(1, 2)


def rows_together(pieces: list[torch.Tensor]) -> torch.Tensor:
    """``torch.cat(pieces, dim=1)``; under torch.compile the same values as a choice by row, which Inductor inlines.

    Inductor writes every concatenation on the CPU into memory of its own (its cat lowering
    always makes a ConcatKernel there), and the products' results cannot be written into it
    in place: a copy of the (B, N, H (2 d_k + d)) projections every round (3 MiB at B = 128,
    N = 64, d = 32), most of it in pages fresh from the system. Each piece padded with zeros
    to every row and the rows chosen by their index are pointwise operations instead, read
    where the round reads the projections.
    """
    if not torch.compiler.is_compiling():
        return torch.cat(pieces, dim=1)
    rows = sum(piece.shape[1] for piece in pieces)
    index = torch.arange(rows, device=pieces[0].device)[None, :, None]
    together, start = None, 0
    for piece in pieces:
        padded = torch.nn.functional.pad(piece, (0, 0, start, rows - start - piece.shape[1]))
        together = padded if together is None else torch.where(index < start, together, padded)
        start += piece.shape[1]
    return together


def projections(state: State, economy: Economy):
    """(q_i / sqrt(d_k), k_i, u_i = x_i W_V W_O, W_V W_O), each (B, H, N, .), from one product per population."""
    return projections_from(state, economy, fixed_terms(state, economy))


def projections_from(state: State, economy: Economy, fixed: EconomyTerms):
    """:func:`projections` with the weights side by side from ``fixed`` (economy_terms.economy_terms)."""
    key_dimension = economy.query.shape[-1]
    projected = project_side_by_side(
        state.states, fixed.projection, economy.heads, economy.population, economy.population_counts
    )
    query, key = projected[..., :key_dimension], projected[..., key_dimension : 2 * key_dimension]
    return query, key, projected[..., 2 * key_dimension :], fixed.value_output
