"""The susceptibility peak against the crossover of the temperature-gap sweep (issue 12, part 2).

Reads two sweep folders that the command line wrote for scenarios/temperature_gap_sweep.yaml
(the expected mode with ``--susceptibility hhi:populations.ai.temperature``, and the sampled
mode), and adds one measurement of its own: the susceptibility d hhi / d T_ai after fewer
rounds (``--rounds``, replica 0 of every point), which shows how the derivative grows with the
rounds where the mean-field dynamics does not settle. Writes

- ``final.csv``: per mode, point and replica, the final values (mean over the last 10% of
  rounds, as phase.png) of hhi, N_sellers * hhi and wealth_share_ai, and the susceptibility;
- ``growth.csv``: |d hhi / d T_ai| after each number of rounds, per temperature;
- ``summary.md``: the table quoted in docs/validation.md;
- ``susceptibility_crossover.png`` (and ``docs/figures/susceptibility_crossover.png``).

Run (the growth stage needs no sweep; the report reads the two sweeps of docs/validation.md,
section 9):

    python -m experiments.susceptibility_crossover growth
    python -m experiments.susceptibility_crossover report --expected runs/gap-chi --sampled runs/gap-sampled
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch

from econspin import Scenario
from econspin.susceptibilities import column_name, element_susceptibilities
from econspin.sweep import final_values, parse_values
from experiments.figures import save_figure

KEY = "populations.ai.temperature"
OBSERVABLE = "hhi"


def final_table(folder: Path, mode: str) -> pd.DataFrame:
    """A sweep folder's final values per (point, replica), with N_sellers * hhi."""
    table = pd.read_parquet(folder / "sweep.parquet")
    scenario = Scenario.from_yaml(folder / "scenario.yaml")
    final = final_values(table, [KEY])
    final["sellers_hhi"] = final["hhi"] * sum(p.count for p in scenario.populations.values() if p.sells)
    final.insert(0, "mode", mode)
    return final


def growth(scenario_path: Path, temperatures: tuple, rounds: list[int]) -> pd.DataFrame:
    """|d hhi / d T_ai| of replica 0 of every point after each number of rounds."""
    scenario = Scenario.from_yaml(scenario_path)
    points = [scenario.with_overrides({KEY: float(value)}) for value in temperatures]
    rows = []
    for count in rounds:
        chi, values = element_susceptibilities(points, [0] * len(points), OBSERVABLE, KEY, count, "cpu")
        rows += [{"rounds": count, KEY: t, "chi": c, OBSERVABLE: v} for t, c, v in zip(temperatures, chi, values)]
    return pd.DataFrame(rows)


def summary(final: pd.DataFrame, grown: pd.DataFrame, chi_column: str) -> str:
    """The markdown table: per temperature, concentration in both modes and the susceptibility."""
    by = final.groupby(["mode", KEY])
    mean, spread = by.mean(numeric_only=True), by.std(numeric_only=True)
    after_columns = " | ".join(f"after {n} rounds" for n in sorted(grown.rounds.unique()))
    lines = [
        "| T_ai | S hhi expected | S hhi sampled | wealth_share_ai expected | wealth_share_ai sampled "
        f"| d hhi / d T_ai (replicas) | {after_columns} |",
        "|" + "---|" * (6 + grown.rounds.nunique()),
    ]
    for temperature in sorted(final[KEY].unique()):
        expected, sampled = mean.loc[("expected", temperature)], mean.loc[("sampled", temperature)]
        expected_sd, sampled_sd = spread.loc[("expected", temperature)], spread.loc[("sampled", temperature)]
        chi = final[(final["mode"] == "expected") & (final[KEY] == temperature)][chi_column]
        after = grown[grown[KEY] == temperature].sort_values("rounds").chi
        lines.append(
            f"| {temperature:.3g} | {expected.sellers_hhi:.3g} ± {expected_sd.sellers_hhi:.2g} "
            f"| {sampled.sellers_hhi:.3g} ± {sampled_sd.sellers_hhi:.2g} "
            f"| {expected.wealth_share_ai:.3f} | {sampled.wealth_share_ai:.3f} "
            f"| {', '.join(f'{value:.3g}' for value in chi)} | " + " | ".join(f"{value:.3g}" for value in after) + " |"
        )
    return "\n".join(lines) + "\n"


def figure(final: pd.DataFrame, grown: pd.DataFrame, chi_column: str, path: Path, copy: str) -> None:
    panels, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for mode, marker in (("expected", "o-"), ("sampled", "s--")):
        grouped = final[final["mode"] == mode].groupby(KEY)["sellers_hhi"]
        axes[0].errorbar(grouped.mean().index, grouped.mean(), grouped.std(), fmt=marker, capsize=3,
                         label=f"{mode} mode")
    axes[0].axhline(1.0, color="grey", ls=":", lw=1, label="equal shares")
    axes[0].set_ylabel("S x final hhi (1 = equal shares)")
    axes[0].set_title("concentration (mean over the last 10% of rounds, ±1 sd)")
    expected = final[final["mode"] == "expected"]
    axes[1].scatter(expected[KEY], expected[chi_column].abs(), s=14, color="C0", alpha=0.6, label="replicas")
    axes[1].plot(expected.groupby(KEY)[chi_column].apply(lambda v: v.abs().mean()), "o-", color="C0",
                 label="mean |d hhi / d T_ai|")
    axes[1].set_title("|d hhi / d T_ai| after the sweep's last round")
    for count, table in grown.groupby("rounds"):
        axes[2].plot(table[KEY], table["chi"].abs(), "o-", label=f"after {count} rounds")
    last = expected[expected["replica"] == 0].sort_values(KEY)
    axes[2].plot(last[KEY], last[chi_column].abs(), "o-", label="after the sweep's last round")
    axes[2].set_title("growth with the rounds (replica 0)")
    for axis in axes:
        axis.set_xscale("log")
        axis.set_xlabel("T_ai (humans at T = 1)")
        axis.grid(alpha=0.3, which="both")
        axis.legend(fontsize=8)
    for axis in axes[1:]:
        axis.set_yscale("log")
    panels.suptitle("temperature-gap sweep: concentration and the susceptibility d hhi / d T_ai (float64 mean field)")
    panels.tight_layout()
    save_figure(panels, path, copy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=["growth", "report"], help="growth: d hhi / d T_ai after --rounds; "
                        "report: read the two sweeps and growth.csv, write the table and the figure")
    parser.add_argument("--scenario", type=Path, default=Path("scenarios/temperature_gap_sweep.yaml"))
    parser.add_argument("--temperatures", default="log:0.02:2:9", help="the sweep's grid of T_ai")
    parser.add_argument("--rounds", default="10,30", help="comma-separated rounds for the growth panel")
    parser.add_argument("--expected", type=Path, help="sweep folder, expected mode, with the column")
    parser.add_argument("--sampled", type=Path, help="sweep folder, sampled mode")
    parser.add_argument("--out-dir", type=Path, default=Path("experiments/results/susceptibility_crossover"))
    parser.add_argument("--docs-figure", default="docs/figures/susceptibility_crossover.png")
    parser.add_argument("--threads", type=int, default=1)
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    out = arguments.out_dir
    out.mkdir(parents=True, exist_ok=True)
    if arguments.stage == "growth":
        started = time.perf_counter()
        temperatures = parse_values(arguments.temperatures, "--temperatures")
        grown = growth(arguments.scenario, temperatures, [int(value) for value in arguments.rounds.split(",")])
        grown.to_csv(out / "growth.csv", index=False)
        print(f"growth: {time.perf_counter() - started:.1f} s")
        return
    chi_column = column_name(OBSERVABLE, KEY)
    final = pd.concat([final_table(arguments.expected, "expected"), final_table(arguments.sampled, "sampled")])
    grown = pd.read_csv(out / "growth.csv")
    final.to_csv(out / "final.csv", index=False)
    (out / "summary.md").write_text(summary(final, grown, chi_column))
    print((out / "summary.md").read_text())
    figure(final, grown, chi_column, out / "susceptibility_crossover.png", arguments.docs_figure)


if __name__ == "__main__":
    main()
