"""Who buys, who sells, who belongs to each population: sets of agents, selected without a host read.

The metrics select these agents' columns every round (econspin.metrics). Selecting by a bool
mask (``money[:, mask]``) sizes its result from the mask's values, which on a GPU makes the
host wait for the device; an index tensor, found once per economy, does not. Populations are
placed side by side (econspin.economy.build_economy), so most sets are one run of consecutive
agents: those are selected as a view of that range, with no copy (at N = 10^5 the copies of
the agents' columns by index took 1.2 ms of a 9.8 ms Boltzmann round; docs/performance.md).
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class AgentSet(NamedTuple):
    """Agents of one kind: their ascending indices, and the range they fill where they are consecutive."""

    indices: torch.Tensor
    span: tuple[int, int] | None  # (start, stop) where indices == arange(start, stop); (0, 0) for nobody

    @classmethod
    def of_mask(cls, mask: torch.Tensor) -> "AgentSet":
        """The agents where the (N,) bool ``mask`` is True (reads the mask on the host, once)."""
        indices = mask.nonzero().squeeze(1)
        if indices.numel() == 0:
            return cls(indices, (0, 0))
        first, last = int(indices[0]), int(indices[-1])
        return cls(indices, (first, last + 1) if last - first + 1 == indices.numel() else None)

    def of(self, values: torch.Tensor) -> torch.Tensor:
        """``values[:, these agents]`` (their dimension 1): a view of their range where they are consecutive."""
        if self.span is not None:
            return values[:, self.span[0] : self.span[1]]
        return values.index_select(1, self.indices)


class Members(NamedTuple):
    """The buyers, the sellers and each population of an economy, as agent sets."""

    buyers: AgentSet
    sellers: AgentSet
    populations: tuple[AgentSet, ...]
