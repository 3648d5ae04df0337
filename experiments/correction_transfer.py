r"""Does a fitted ffn correction transfer? none, tap and fitted ffns on held-out economies (docs/validation.md 10).

For every held-out scenario and every held-out disorder seed, one sampled ensemble (R replicas
sharing the disorder and x(0), as ``econspin fit-correction`` builds them) and the free-running
mean field of each correction from the same x(0), float64, reference kernel. Per (scenario,
seed, correction):

- ``state_error``: sqrt((1/(T N)) sum_t sum_i |m_i(t) - xbar_i(t)|^2), rounds 1..T, and
  ``monte_carlo`` its Monte Carlo part (fitting.Ensemble.standard_error);
- for hhi and gini: ``<obs>_error`` = RMS over rounds of (mean-field value - the replicas'
  mean value); ``<obs>_bias`` = RMS over rounds of (the replicas' mean value - the value of
  their mean revenue or money), the finite-N sampling bias that even an exact mean field of
  E R_j and E w_i keeps (each sampled buyer pays one seller: a multinomial revenue, whose hhi
  lies above that of its mean); ``<obs>_beyond_bias`` = RMS over rounds of (mean-field value -
  the value of the mean revenue or money), the mean field's own error.

Confidence intervals: percentile bootstrap over the disorder seeds (the seeds resampled with
replacement, 2000 times, generator seeded), for the mean of each error and for the mean of the
per-seed ratio ffn / tap. Writes ``errors.csv`` (every row), ``summary.csv``, ``table.md`` and
``correction_transfer.png`` into --out-dir, and the figure to docs/figures. Run (1 torch thread):

    python -m experiments.correction_transfer --weights invariant=econspin/data/ffn_human_vs_ai.pt \\
        --weights state=experiments/results/correction_transfer/ffn_state.pt
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from econspin import Scenario  # noqa: E402
from econspin.fitting import compiled, mean_field_run, sample_ensemble, with_ffn  # noqa: E402

SMALL = {"populations.human.count": 51, "populations.ai.count": 13}
# held out: the family's own temperatures at new seeds, a temperature not fitted, another population mix
HELD_OUT = {
    "T_ai = 0.1": {"populations.ai.temperature": 0.1},
    "T_ai = 0.3": {"populations.ai.temperature": 0.3},
    "T_ai = 0.5 (not fitted)": {"populations.ai.temperature": 0.5},
    "32 humans, 32 AI, T_ai = 0.3 (not fitted)": {
        "populations.human.count": 32, "populations.ai.count": 32, "populations.ai.temperature": 0.3},
    "N = 256, T_ai = 0.1 (not fitted)": {"populations.human.count": 205, "populations.ai.count": 51},
}
LARGE_SEEDS = 4  # the N = 256 scenario runs the first 4 held-out seeds only (16x the work of N = 64)
BOOTSTRAP = 2000
OBSERVABLES = ("hhi", "gini")


def evaluate(ensemble, corrections: dict[str, tuple[dict | None, str]]) -> list[dict]:
    """One row per correction: the state error and the hhi and gini errors with the bias apart."""
    rows = []
    sampled = {name: values.numpy() for name, values in ensemble.observables.items()}
    for label, (weights, features) in corrections.items():
        economy = compiled(ensemble, label) if weights is None else with_ffn(compiled(ensemble), weights, features)
        with torch.no_grad():
            states, observables = mean_field_run(ensemble, economy)
        row = {
            "correction": label,
            "state_error": float((states - ensemble.mean_states[1:]).pow(2).sum(-1).mean().sqrt()),
            "monte_carlo": ensemble.standard_error,
        }
        for name in OBSERVABLES:
            field = observables[name].numpy()
            row[f"{name}_error"] = rms(field - sampled[name])
            row[f"{name}_bias"] = rms(sampled[name] - sampled[f"{name}_of_mean"])
            row[f"{name}_beyond_bias"] = rms(field - sampled[f"{name}_of_mean"])
        rows.append(row)
    return rows


def rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(values))))


def bootstrap(values: np.ndarray, generator: np.random.Generator) -> tuple[float, float, float]:
    """The mean and its 95 % percentile interval over resamples of the seeds."""
    means = values[generator.integers(0, len(values), (BOOTSTRAP, len(values)))].mean(1)
    return float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    generator = np.random.default_rng(0)
    rows = []
    columns = ["state_error", *(f"{o}_{kind}" for o in OBSERVABLES for kind in ("error", "bias", "beyond_bias"))]
    for (scenario, correction), group in table.groupby(["scenario", "correction"], sort=False):
        group = group.sort_values("seed")
        row = {"scenario": scenario, "correction": correction, "seeds": len(group)}
        for column in columns:
            row[column], row[f"{column}_low"], row[f"{column}_high"] = bootstrap(group[column].to_numpy(), generator)
        tap = table[(table.scenario == scenario) & (table.correction == "tap")].sort_values("seed")
        ratio = group.state_error.to_numpy() / tap.state_error.to_numpy()
        row["ratio_to_tap"], row["ratio_to_tap_low"], row["ratio_to_tap_high"] = bootstrap(ratio, generator)
        row["monte_carlo"] = float(group.monte_carlo.mean())
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(summary: pd.DataFrame) -> str:
    def cell(row, column, digits=3):
        return f"{row[column]:.{digits}f} [{row[column + '_low']:.{digits}f}, {row[column + '_high']:.{digits}f}]"

    lines = ["| held-out scenario | correction | state RMS error [95 % CI] | / tap [95 % CI] | MC part | "
             "hhi error | hhi bias | hhi beyond bias | gini error | gini bias | gini beyond bias |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, row in summary.iterrows():
        lines.append(
            f"| {row.scenario} | {row.correction} | {cell(row, 'state_error')} | {cell(row, 'ratio_to_tap', 2)} | "
            f"{row.monte_carlo:.3f} | {row.hhi_error:.4f} | {row.hhi_bias:.4f} | {cell(row, 'hhi_beyond_bias', 4)} | "
            f"{row.gini_error:.4f} | {row.gini_bias:.4f} | {cell(row, 'gini_beyond_bias', 4)} |")
    return "\n".join(lines) + "\n"


def figure(summary: pd.DataFrame, path: Path) -> None:
    scenarios = list(dict.fromkeys(summary.scenario))
    corrections = list(dict.fromkeys(summary.correction))
    panels = [("state_error", "state: RMS per-agent error"), ("hhi_beyond_bias", "hhi: error beyond the finite-N bias"),
              ("gini_beyond_bias", "gini: error beyond the finite-N bias")]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    width = 0.8 / len(corrections)
    for axis, (column, title) in zip(axes, panels):
        for index, correction in enumerate(corrections):
            rows = summary[summary.correction == correction].set_index("scenario").loc[scenarios]
            centre = rows[column].to_numpy()
            error = np.stack([centre - rows[f"{column}_low"].to_numpy(), rows[f"{column}_high"].to_numpy() - centre])
            axis.bar(np.arange(len(scenarios)) + (index - (len(corrections) - 1) / 2) * width, centre, width,
                     yerr=error, capsize=2, label=correction)
        if column == "state_error":
            monte_carlo = summary.groupby("scenario", sort=False).monte_carlo.mean().loc[scenarios].to_numpy()
            axis.scatter(np.arange(len(scenarios)), monte_carlo, marker="_", s=400, color="black", zorder=3,
                         label="Monte Carlo part")
        axis.set_xticks(np.arange(len(scenarios)), [s.replace(" (", "\n(").replace(", T", ",\nT") for s in scenarios],
                        fontsize=7)
        axis.set_title(title, fontsize=10)
    axes[0].legend(fontsize=8)
    fig.suptitle("human_vs_ai, N = 64 unless named (held-out seeds): mean field against the sampled ensemble mean, "
                 "mean over seeds with 95 % bootstrap CI", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", action="append", default=[], help="LABEL=FILE of econspin fit-correction")
    parser.add_argument("--seeds", default="100-107", help="held-out disorder seeds FIRST-LAST")
    parser.add_argument("--replicas", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out-dir", type=Path, default=Path("experiments/results/correction_transfer"))
    parser.add_argument("--figure", type=Path, default=Path("docs/figures/correction_transfer.png"))
    parser.add_argument("--from-csv", action="store_true", help="re-summarise errors.csv and redraw")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.from_csv:
        table = pd.read_csv(args.out_dir / "errors.csv")
    else:
        corrections = {"none": (None, "state"), "tap": (None, "state")}
        for text in args.weights:
            label, path = text.split("=", 1)
            contents = torch.load(path, weights_only=True)
            corrections[f"ffn ({label})"] = (contents["populations"], contents.get("features", "state"))
        first, last = (int(part) for part in args.seeds.split("-"))
        base = Scenario.from_yaml("scenarios/human_vs_ai.yaml").with_overrides(SMALL)
        rows, started = [], time.perf_counter()
        for name, overrides in HELD_OUT.items():
            for seed in range(first, last + 1 if "N = 256" not in name else min(last + 1, first + LARGE_SEEDS)):
                scenario = base.with_overrides(overrides).with_run_settings(seed=seed)
                ensemble = sample_ensemble(scenario, args.replicas, args.steps)
                rows += [{"scenario": name, "seed": seed, **row} for row in evaluate(ensemble, corrections)]
                print(f"{name}, seed {seed}: " + ", ".join(f"{r['correction']} {r['state_error']:.3f}"
                                                         for r in rows[-len(corrections):])
                      + f" ({time.perf_counter() - started:.0f} s)", flush=True)
        table = pd.DataFrame(rows)
        table.to_csv(args.out_dir / "errors.csv", index=False)
    summary = summarise(table)
    summary.to_csv(args.out_dir / "summary.csv", index=False)
    (args.out_dir / "table.md").write_text(markdown(summary))
    print(markdown(summary))
    figure(summary, args.out_dir / "correction_transfer.png")
    args.figure.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.out_dir / "correction_transfer.png", args.figure)


if __name__ == "__main__":
    main()
