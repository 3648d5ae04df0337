"""Observables by name: each a function (state, economy) -> one value per batch element.

The round does not compute them; a run asks for them after each round, by the names below
(the columns of the metrics table). ``wealth_share_<population>`` exists for each
population of the economy.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from econspin.compiled import compiled_function, replays_cuda_graphs
from econspin.economy import Economy
from econspin.host_syncs import reads_on_host
from econspin.state import State

Metric = Callable[[State, Economy], torch.Tensor]
METRICS: dict[str, Metric] = {}


def register_metric(name: str) -> Callable[[Metric], Metric]:
    """Decorator: add an observable under ``name``."""

    def decorate(function: Metric) -> Metric:
        METRICS[name] = function
        return function

    return decorate


def revenue_shares(state: State, economy: Economy) -> torch.Tensor:
    """R_j / sum R over sellers, (B, S); NaN where nothing was sold."""
    revenue = economy.members.sellers.of(state.revenue)
    total = revenue.sum(dim=1, keepdim=True)
    return revenue / torch.where(total > 0, total, torch.full_like(total, float("nan")))


def herfindahl_hirschman_index(state: State, economy: Economy) -> torch.Tensor:
    """sum_j (R_j / sum R)^2 over sellers: 1/S for equal shares, 1 for a monopoly."""
    return (revenue_shares(state, economy) ** 2).sum(dim=1)


def four_firm_concentration(state: State, economy: Economy) -> torch.Tensor:
    """Revenue share of the four largest sellers."""
    shares = revenue_shares(state, economy)
    return shares.topk(min(4, shares.shape[1]), dim=1).values.sum(dim=1)


# compiled on the CPU, rows at least this long and this many values in all are sorted as integer keys
# (sorted_by_integer_keys): below either, the keys' few extra operations (about 0.05 ms) cost more than they save
RADIX_ROW_LENGTH, RADIX_VALUES = 256, 2**14

# what numpy sorts on the CPU: its vectorised sort (x86-simd-sort) takes these dtypes
NUMPY_SORTED = (torch.float32, torch.float64)


def _ordered_bits(bits: torch.Tensor) -> torch.Tensor:
    """A float's bits (as the signed integer of its width) made to order as the floats do; its own inverse."""
    return bits ^ ((bits >> (bits.element_size() * 8 - 1)) & torch.iinfo(bits.dtype).max)


def sorted_rows(values: torch.Tensor) -> torch.Tensor:
    """``values.sort(dim=1).values`` for (B, N) floats without NaN; on the CPU by numpy, or by integer keys compiled.

    torch sorts rows on the CPU element by element: (64, 128) float32 in 0.17 ms, (64, 4096)
    float64 in 12.5 ms. numpy's sort is vectorised on x86 (x86-simd-sort): 0.007 and 0.63 ms,
    2-46x faster at every shape measured, one row of 128 to 10^5 values and 64 rows of 128 to
    4096 (docs/performance_log.md, "Gini's sort by numpy"). So an eager round's Gini sorts float32
    and float64 money on the CPU with numpy, on a view of the same memory (no copy in). Under
    torch.compile (the metrics compiled with ``run.compile``) the graph cannot call numpy, and
    long rows take :func:`sorted_by_integer_keys`; other devices and dtypes take torch's sort, and
    so do values autograd follows (a susceptibility of Gini, econspin.susceptibilities): torch's
    sort is differentiable, numpy's and the keys' are not. While econspin.host_syncs records (its
    CPU tensors standing in for a GPU's), torch's sort too: the path a GPU takes.
    The values are torch's, bit for bit but for the zeros' signs: numpy's vectorised sort may give
    back -0.0 for 0.0 and 0.0 for -0.0 (equal values; Gini's sum cannot tell them apart).
    """
    follows = values.requires_grad and torch.is_grad_enabled()
    if values.device.type == "cpu" and values.dtype in NUMPY_SORTED and not follows:
        if torch.compiler.is_compiling():
            return sorted_by_integer_keys(values)
        if reads_on_host(values):  # (not while econspin.host_syncs records: there the CPU stands in for a GPU)
            return torch.from_numpy(np.sort(values.detach().numpy(), axis=1))
    return values.sort(dim=1).values


def sorted_by_integer_keys(values: torch.Tensor) -> torch.Tensor:
    """``values.sort(dim=1).values`` on the CPU, long rows sorted as integers: what a compiled round's Gini sorts by.

    torch sorts a one-dimensional integer tensor on the CPU by radix, several times faster than
    floats or rows: 10^5 float32 in 1.8 against 7.9 ms (docs/performance_log.md, "The metrics
    compiled"). So every row at once becomes one int64 key, the row in the high 32 bits and the
    float32's bits, made to order as integers, in the low ones (float64: a single row only,
    its bits the key). The values come back bit for bit, -0.0 before 0.0. Short rows and few
    values, where the key's extra operations cost more than the sort, take torch's sort.
    """
    batch, count = values.shape
    if count < RADIX_ROW_LENGTH or values.numel() < RADIX_VALUES:
        return values.sort(dim=1).values
    if values.dtype == torch.float32:
        low = _ordered_bits(values.view(torch.int32)).long() + 2**31  # in [0, 2^32), as the floats order
        rows = torch.arange(batch, device=values.device)[:, None] << 32
        keys = (low | rows).view(-1).sort().values.view(batch, count)
        return _ordered_bits(((keys & 0xFFFFFFFF) - 2**31).int()).view(torch.float32)
    if values.dtype == torch.float64 and batch == 1:
        keys = _ordered_bits(values.view(torch.int64)).view(-1).sort().values
        return _ordered_bits(keys).view(torch.float64).view(1, count)
    return values.sort(dim=1).values


def gini(state: State, economy: Economy) -> torch.Tensor:
    """Gini coefficient of money, sum_i (2i - N - 1) w_(i) / (N sum w) over sorted w."""
    money = sorted_rows(state.money)
    count = money.shape[1]
    rank = torch.arange(1, count + 1, dtype=money.dtype, device=money.device)
    total = money.sum(dim=1)
    safe = torch.where(total > 0, total, torch.ones_like(total))
    # the centred weights summed by torch (pairwise): as one product with the ranks (BLAS's dot), or as
    # 2 sum i w - (N + 1) sum w, 10-100x further from float64 in float32 at N = 10^5 (docs/performance.md)
    value = ((2 * rank - count - 1) * money).sum(dim=1) / (count * safe)
    return torch.where(total > 0, value, torch.zeros_like(value))


def _buyer_mean(values: torch.Tensor, economy: Economy) -> torch.Tensor:
    """The mean over buyers; NaN where there are none (torch's mean over nothing, with no branch on the host)."""
    return economy.members.buyers.of(values).mean(dim=1)


def attention_entropy(state: State, economy: Economy) -> torch.Tensor:
    """Mean over buyers of the entropy of alpha_i. / log(allowed partners): 1 is uniform."""
    return _buyer_mean(state.entropy, economy)


def surplus(state: State, economy: Economy) -> torch.Tensor:
    """Mean over buyers of the inclusive value T_i log sum_j exp(u_ij / T_i)."""
    return _buyer_mean(state.surplus, economy)


def total_wealth(state: State, economy: Economy) -> torch.Tensor:
    """sum_i w_i, constant in a closed economy."""
    return state.money.sum(dim=1)


def order(state: State, economy: Economy) -> torch.Tensor:
    """|mean_i x_i| / R: 0 disordered, 1 all aligned (R = sqrt(d) unless the scenario says)."""
    return torch.linalg.vector_norm(state.states.mean(dim=1), dim=-1) / economy.radius


# by name, in column order: a table rather than decorators, which mutation testing (mutmut) does not enter
METRICS.update(
    {
        "hhi": herfindahl_hirschman_index,
        "cr4": four_firm_concentration,
        "gini": gini,
        "attention_entropy": attention_entropy,
        "surplus": surplus,
        "total_wealth": total_wealth,
        "order": order,
    }
)


def wealth_share(index: int) -> Metric:
    """The share of all money held by population ``index``."""

    def share(state: State, economy: Economy) -> torch.Tensor:
        return economy.members.populations[index].of(state.money).sum(dim=1) / state.money.sum(dim=1)

    return share


def wealth_share_column(population: str) -> str:
    """The metrics column of a population's share of money."""
    return f"wealth_share_{population}"


def metric_names(population_names) -> list[str]:
    """The metrics columns (after step and replica) of an economy with these populations."""
    return [*METRICS, *(wealth_share_column(name) for name in population_names)]


def metric_functions(economy: Economy) -> dict[str, Metric]:
    """Every observable of this economy, in column order."""
    functions = dict(METRICS)
    for index, name in enumerate(economy.population_names):
        functions[wealth_share_column(name)] = wealth_share(index)
    return functions


# observables of the last round's trade (revenue, choice entropy, surplus): the initial
# state follows no round, so they are undefined (NaN) there, not zero
TRADE_METRICS = ("hhi", "cr4", "attention_entropy", "surplus")


def observables(state: State, economy: Economy) -> torch.Tensor:
    """Every observable of a state after a round: one (B, M) float64 tensor, columns as in :func:`metric_functions`.

    No branch on the round: what a rollout compiles under ``run.compile`` (:func:`measure_played`).
    """
    return torch.stack([function(state, economy).double() for function in metric_functions(economy).values()], dim=1)


def measure(state: State, economy: Economy) -> torch.Tensor:
    """:func:`observables`, except at round 0 (the initial state): there the trade observables are NaN."""
    values = observables(state, economy)
    if state.round == 0:
        traded = [index for index, name in enumerate(metric_functions(economy)) if name in TRADE_METRICS]
        values[:, traded] = float("nan")
    return values


def measure_played(state: State, economy: Economy) -> torch.Tensor:
    """:func:`measure` of a state after at least one round, compiled where the economy's round is.

    Under ``run.compile`` the observables are compiled too (one graph, a CUDA graph under
    reduce-overhead): eagerly they are some 60 small operations a round, each a kernel launch on
    a GPU, about as many as the compiled round's own (docs/performance_log.md, "The metrics
    compiled"). Compiled, they agree with the eager ones to rounding.
    """
    if economy.compile == "off":
        return measure(state, economy)
    values = compiled_function(observables, economy.compile, state.states.device.type)(state, economy)
    if replays_cuda_graphs(economy.compile, state.states.device):
        values = values.clone()  # the next replay of the graph writes into its outputs
    return values
