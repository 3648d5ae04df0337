"""Figures drawn from the tables a run writes, never from a live model.

Every function takes DataFrames in the output folder's format and a path, and writes one
PNG atomically. Concentration measures are dimensionless shares. Step 0 is the initial
state: the trade measures (HHI, CR4, attention entropy) are NaN there, so their lines start
at round 1, while the Gini of money starts at round 0.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from econspin.output import write_atomically  # noqa: E402

CONCENTRATION_PANELS = [
    ("hhi", "HHI of revenue shares (0-1)"),
    ("cr4", "CR4: top-4 revenue share (0-1)"),
    ("gini", "Gini of money (0-1)"),
    ("attention_entropy", "attention entropy / log(partners)"),
]


def _save(figure, path: Path) -> None:
    def write(stream):
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
        stream.write(buffer.getvalue())

    write_atomically(path, write)
    plt.close(figure)


def _band(axis, table: pd.DataFrame, column: str, label: str | None, color=None) -> None:
    """Replica mean over rounds with a band of one standard deviation."""
    grouped = table.groupby("step")[column]
    mean, spread = grouped.mean(), grouped.std().fillna(0.0)
    (line,) = axis.plot(mean.index, mean.values, label=label, color=color, lw=1.6)
    # every panel is a share in [0, 1]: the band is clipped there
    low, high = (mean - spread).clip(0.0, 1.0), (mean + spread).clip(0.0, 1.0)
    axis.fill_between(mean.index, low, high, color=line.get_color(), alpha=0.2, lw=0)


def concentration_figure(
    metrics: pd.DataFrame, path: Path, title: str, sellers: int | None = None, group: str | None = None
) -> None:
    """HHI, CR4, Gini and attention entropy against the round, one line per group.

    The line is the mean over replicas, the band one standard deviation across them.
    ``sellers`` draws the competitive level 1/S on the HHI panel.
    """
    figure, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    groups = [(None, metrics)] if group is None else list(metrics.groupby(group, sort=False))
    for (column, label), axis in zip(CONCENTRATION_PANELS, axes.flat):
        for name, table in groups:
            _band(axis, table, column, None if name is None else f"{group} = {name}")
        if column == "hhi" and sellers:
            axis.axhline(1.0 / sellers, color="grey", ls="--", lw=1, label=f"1/S (S = {sellers})")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    for axis in axes[1]:
        axis.set_xlabel("round")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        axes[0, 0].legend(fontsize=8)
    replicas = metrics["replica"].nunique()
    figure.suptitle(f"{title}: market concentration (mean over {replicas} replicas, band = ±1 sd)")
    _save(figure, path)


def wealth_ccdf(money: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each distinct amount w of money and P(money >= w) over all agents, those with none included.

    Ties count once each way: for integer money P(money >= k) is exactly the share of agents
    holding k units or more.
    """
    values, counts = np.unique(np.asarray(money, dtype=np.float64), return_counts=True)
    at_least = np.cumsum(counts[::-1])[::-1]  # agents holding values[k] or more
    return values, at_least / counts.sum()


def wealth_figure(wealth: pd.DataFrame, path: Path, title: str) -> None:
    """Complementary CDF of final money by population, log-log, pooled over replicas."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    total = wealth["money"].sum()
    for name, table in wealth.groupby("population", sort=False):
        values, probability = wealth_ccdf(table["money"].to_numpy())
        positive = values > 0  # log axes: zero money counts in every P(money >= w) but has no point
        if positive.any():
            axes[0].loglog(
                values[positive],
                probability[positive],
                drawstyle="steps-post",
                label=f"{name} ({table['money'].sum() / total:.1%} of money)",
            )
    axes[0].set_xlabel("money per agent (units of the initial mean)")
    axes[0].set_ylabel("P(money ≥ w)")
    axes[0].set_title("distribution (CCDF, log-log)")
    axes[0].grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    shares = wealth.groupby(["replica", "population"], sort=False)["money"].sum().unstack()
    shares = shares.div(shares.sum(axis=1), axis=0)
    counts = wealth.groupby("population", sort=False)["agent"].nunique()
    positions = np.arange(len(shares.columns))
    colors = [f"C{index}" for index in range(len(shares.columns))]  # as in the CCDF panel
    axes[1].bar(
        positions,
        shares.mean().values,
        yerr=shares.std().fillna(0).values,
        capsize=4,
        color=colors,
        label="share of money (±1 sd over replicas)",
    )
    axes[1].scatter(
        positions, (counts / counts.sum()).reindex(shares.columns).values, color="k", zorder=3, label="share of agents"
    )
    axes[1].set_xticks(positions, shares.columns)
    axes[1].set_ylabel("share of all money")
    axes[1].set_title("money by population")
    axes[1].legend(fontsize=8)
    figure.suptitle(f"{title}: final money distribution by population")
    _save(figure, path)


def phase_figure(
    final: pd.DataFrame,
    keys: list[str],
    path: Path,
    title: str,
    sellers: int | None = None,
    responses: Sequence[str] = (),
) -> None:
    """Final HHI and Gini against the swept keys: lines with bands (one key) or heat maps (two).

    ``sellers`` draws the competitive level 1/S on the HHI panel (one key). ``responses`` are
    susceptibility columns (``susceptibility:OBSERVABLE:INPUT``), one more panel each, whose
    peak (largest |mean|) is marked on every panel with one key.
    """
    panels = [("hhi", "final HHI"), ("gini", "final Gini of money")]
    panels += [(column, "d {} / d {}".format(*column.split(":")[1:])) for column in responses]
    if len(keys) == 1:
        figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.5), squeeze=False)
        axes = axes[0]
        key = keys[0]
        peaks = []
        for axis, (column, label) in zip(axes, panels):
            grouped = final.groupby(key)[column]
            mean, spread = grouped.mean(), grouped.std().fillna(0.0)
            numeric = _numeric(mean.index)
            where = mean.index if numeric else np.arange(len(mean))  # names (a market mode) sit side by side
            magnitude = mean.abs()[mean.abs() > 0]
            if column in responses and magnitude.size > 1 and magnitude.max() > 1e3 * magnitude.min():
                # spread over many decades (e.g. chaotic low-T rounds): the size on a log axis, no band
                label = f"|{label}|"
                axis.plot(where, mean.abs().values, "o-", lw=1.6)
                axis.set_yscale("log")
            else:
                axis.plot(where, mean.values, "o-", lw=1.6)
                axis.fill_between(where, mean - spread, mean + spread, alpha=0.2, lw=0)
            if not numeric:
                axis.set_xticks(where, [_tick(value) for value in mean.index])
            if column == "hhi" and sellers:
                axis.axhline(1.0 / sellers, color="grey", ls="--", lw=1, label=f"1/S (S = {sellers})")
                axis.legend(fontsize=8)
            axis.set_xlabel(key)
            if column in responses:
                axis.set_ylabel(f"{label}\n(after the last round)")
                if numeric:  # a peak is a place on a numeric axis
                    peaks.append((mean.abs().idxmax(), label))
            else:
                axis.set_ylabel(f"{label} (mean over last 10% of rounds)")
            positive = np.asarray(mean.index, dtype=float) if numeric else np.zeros(0)
            if positive.size > 2 and np.all(positive > 0) and positive.max() / positive.min() > 20:
                axis.set_xscale("log")
            axis.grid(alpha=0.3)
        for number, (where, label) in enumerate(peaks):
            for axis in axes:
                axis.axvline(where, color=f"C{number + 1}", ls=":", lw=1.2, label=f"peak of {label}: {where:.3g}")
            axes[len(axes) - len(peaks) + number].legend(fontsize=8)
        figure.subplots_adjust(wspace=0.35)
        figure.suptitle(f"{title}: final concentration against {key} (band = ±1 sd over replicas)")
    else:
        figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.8))
        first, second = keys[:2]
        for axis, (column, label) in zip(axes, panels):
            grid = final.groupby([second, first])[column].mean().unstack()
            image = axis.imshow(grid.values, origin="lower", aspect="auto", cmap="viridis")
            axis.set_xticks(range(grid.shape[1]), [_tick(value) for value in grid.columns], rotation=45)
            axis.set_yticks(range(grid.shape[0]), [_tick(value) for value in grid.index])
            axis.set_xlabel(first)
            axis.set_ylabel(second)
            figure.colorbar(image, ax=axis, label=f"{label} (replica mean)")
        figure.suptitle(f"{title}: final concentration over {first} x {second}")
    _save(figure, path)


def _numeric(values) -> bool:
    """Whether swept values are numbers (drawn on a numeric axis) rather than names or switches."""
    return all(
        isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_)) for value in values
    )


def _tick(value) -> str:
    return f"{value:.3g}" if _numeric([value]) else str(value)
