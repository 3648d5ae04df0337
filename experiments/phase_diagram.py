"""The economy's own phase diagram: concentration and order against temperature (item 7).

One population of N agents in the default attention market (random projections, random
W_O, one head), expected mode (mean field, no correction), large_d response, d = 16, fields
with i.i.d. N(0, 0.5^2) components (the prototype's scale), states N(0, 1), equal money,
spend 0.1. Temperature on a log grid. Every (temperature, replica) pair is one batch element
of a single Rollout per N; replica r runs with run.seed = r, so replicas differ in quenched
disorder (projections, W_O, fields) and in the initial state, and the same replica shares
them across temperatures (common random numbers).

Reported per (N, T): final hhi and order (mean, std, quartiles over replicas), the same
averaged over the last quarter of the run, N * hhi (the concentration relative to equal
shares; 1 = perfect competition), and two susceptibilities over replicas,

    chi_order = N Var_r(order_final),     chi_hhi = N^2 Var_r(hhi_final) = Var_r(N hhi_final),

the disorder-to-disorder fluctuation of the magnetisation (the usual N <(m - <m>)^2>) and of
the scaled concentration. Their peak marks the crossover.

Run: ``python -m experiments.phase_diagram --out-dir experiments/results/phase_diagram``;
``--small`` runs N = 64, 128 on a coarse grid in seconds.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from econspin import Scenario
from econspin.economy import build_economy
from econspin.simulate import Rollout
from experiments.figures import copy_figure, save_figure


def economy_scenario(agents: int, temperature: float, seed: int, d: int = 16, field_scale: float = 0.5,
                     dtype: str = "float32") -> Scenario:
    return Scenario.from_dict(
        {
            "populations": {"agents": {"count": agents, "temperature": float(temperature),
                                       "field": {"scale": field_scale}}},
            "market": {"d": d, "response": "large_d", "mode": "expected"},
            "run": {"device": "cpu", "dtype": dtype, "seed": int(seed)},
        }
    )


def sweep(agents: int, temperatures, replicas: int, steps: int, d: int = 16, field_scale: float = 0.5,
          dtype: str = "float32") -> tuple[pd.DataFrame, float]:
    """All (T, replica) pairs in one Rollout; returns the full metrics table and the wall time."""
    points = [(float(t), r) for t in temperatures for r in range(replicas)]
    scenarios = [economy_scenario(agents, t, r, d, field_scale, dtype) for t, r in points]
    started = time.perf_counter()
    rollout = Rollout.create(scenarios, [0] * len(points), "cpu", dtype)
    rollout.advance(steps)
    wall = time.perf_counter() - started
    table = rollout.metrics()
    table["replica"] = np.tile([r for _, r in points], steps + 1)  # step 0, the initial state, then every round
    table["temperature"] = np.tile([t for t, _ in points], steps + 1)
    table["N"] = agents
    return table, wall


def instability_temperature(seed: int, d: int = 16) -> float:
    """rho(W_V W_O): below this T the disordered state (uniform choice, no fields) is unstable.

    With alpha uniform and small states, the mean state obeys m <- m W_V W_O / T (the large_d
    response has slope c / (2T) = 1 / T at zero field, c = 2 R^2 / d = 2), so it grows where
    T < rho(W_V W_O), the spectral radius. Fields saturate the response and lower the real
    threshold; this is the clean-field estimate. The projections depend only on the seed.
    """
    economy = build_economy([economy_scenario(2, 1.0, seed, d, dtype="float64")], [0], "cpu", torch.float64)
    coupling = economy.value[0, 0, 0] @ economy.output[0, 0]
    return float(torch.linalg.eigvals(coupling).abs().max())


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Per (N, T): final and late-time hhi and order over replicas, and the susceptibilities."""
    finals = []
    for _, run in table.groupby("N"):
        steps = int(run["step"].max())
        late = run[run["step"] > steps - max(1, steps // 4)].groupby(["N", "temperature", "replica"])[
            ["hhi", "order"]].mean().add_suffix("_late").reset_index()
        finals.append(run[run["step"] == steps].merge(late, on=["N", "temperature", "replica"]))
    final = pd.concat(finals, ignore_index=True)
    instability = {r: instability_temperature(int(r)) for r in final["replica"].unique()}
    rows = []
    for (agents, temperature), group in final.groupby(["N", "temperature"]):
        steps = int(table.loc[table["N"] == agents, "step"].max())
        hhi, order = group["hhi"].to_numpy(), group["order"].to_numpy()
        rows.append({
            "N": agents, "temperature": temperature, "replicas": len(group), "steps": steps,
            "hhi_mean": hhi.mean(), "hhi_std": hhi.std(ddof=1) if len(hhi) > 1 else np.nan,
            "hhi_q25": np.quantile(hhi, 0.25), "hhi_q75": np.quantile(hhi, 0.75),
            "N_hhi_mean": agents * hhi.mean(),
            "order_mean": order.mean(), "order_std": order.std(ddof=1) if len(order) > 1 else np.nan,
            "order_q25": np.quantile(order, 0.25), "order_q75": np.quantile(order, 0.75),
            "hhi_late_mean": group["hhi_late"].mean(), "order_late_mean": group["order_late"].mean(),
            "chi_order": agents * order.var(ddof=1) if len(order) > 1 else np.nan,
            "chi_hhi": agents**2 * hhi.var(ddof=1) if len(hhi) > 1 else np.nan,
            "gini_mean": group["gini"].mean(), "entropy_mean": group["attention_entropy"].mean(),
            "inverse_sellers": 1.0 / agents,
            "instability_T_mean": float(np.mean([instability[r] for r in group["replica"]])),
        })
    return pd.DataFrame(rows)


def plot(summary: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(10, 7))
    for index, (agents, group) in enumerate(summary.groupby("N")):
        colour = f"C{index}"
        t = group["temperature"]
        axes[0, 0].loglog(t, group["N_hhi_mean"], f"{colour}-o", ms=3, label=f"N={agents}")
        axes[0, 0].fill_between(t, agents * group["hhi_q25"], agents * group["hhi_q75"], color=colour, alpha=0.2)
        axes[0, 1].semilogx(t, group["order_mean"], f"{colour}-o", ms=3, label=f"N={agents}")
        axes[0, 1].fill_between(t, group["order_q25"], group["order_q75"], color=colour, alpha=0.2)
        axes[1, 0].loglog(t, group["chi_order"], f"{colour}-o", ms=3, label=f"N={agents}")
        axes[1, 1].loglog(t, group["chi_hhi"], f"{colour}-o", ms=3, label=f"N={agents}")
    axes[0, 0].axhline(1, color="k", lw=0.8, ls=":")
    axes[0, 0].set_ylabel("N * hhi (1 = equal shares)")
    axes[0, 1].set_ylabel("order |mean x| / R")
    axes[1, 0].set_ylabel("chi_order = N Var_r(order)")
    axes[1, 1].set_ylabel("chi_hhi = N^2 Var_r(hhi)")
    for axis in axes.flat:
        axis.set_xlabel("temperature T")
        axis.legend(fontsize=7)
    figure.suptitle("attention economy, expected mode, large_d, d=16, field scale 0.5 (band: quartiles over replicas)",
                    fontsize=9)
    figure.tight_layout()
    save_figure(figure, path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=Path("experiments/results/phase_diagram"))
    parser.add_argument("--figure-copy", default="docs/figures/phase_diagram.png",
                        help="second copy of the figure; '' for none")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument("--t-min", type=float, default=0.03)
    parser.add_argument("--t-max", type=float, default=3.0)
    parser.add_argument("--points", type=int, default=13)
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--large", type=int, default=2048, help="sizes >= this use the --large-* settings")
    parser.add_argument("--large-points", type=int, default=13)
    parser.add_argument("--large-t-min", type=float, default=0.03)
    parser.add_argument("--large-t-max", type=float, default=3.0)
    parser.add_argument("--large-replicas", type=int, default=4)
    parser.add_argument("--large-steps", type=int, default=40)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core box)")
    parser.add_argument("--small", action="store_true", help="N = 64, 128, 5 temperatures, 3 replicas, 20 steps")
    parser.add_argument("--from-csv", action="store_true", help="re-summarise and re-plot OUT_DIR/trajectories.csv")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(2, args.threads)))
    if args.small:
        args.sizes, args.points, args.replicas, args.steps = [64, 128], 5, 3, 20
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    tables, walls = [], {}
    if args.from_csv:
        previous = pd.read_csv(out / "phase_diagram.csv")
        walls = previous.groupby("N")["wall_s"].first().to_dict()
        tables = [pd.read_csv(out / "trajectories.csv")]
        args.sizes = []
    for agents in args.sizes:
        large = agents >= args.large
        points, replicas, steps = ((args.large_points, args.large_replicas, args.large_steps) if large
                                   else (args.points, args.replicas, args.steps))
        low, high = (args.large_t_min, args.large_t_max) if large else (args.t_min, args.t_max)
        temperatures = np.geomspace(low, high, points)
        table, wall = sweep(agents, temperatures, replicas, steps, dtype=args.dtype)
        walls[agents] = wall
        print(f"N={agents}: {points} temperatures x {replicas} replicas = {points * replicas} batch elements, "
              f"{steps} steps, {wall:.1f} s", flush=True)
        tables.append(table)
    table = pd.concat(tables, ignore_index=True)
    table.to_csv(out / "trajectories.csv", index=False)
    summary = summarise(table)
    summary["wall_s"] = summary["N"].map(walls)
    summary.to_csv(out / "phase_diagram.csv", index=False)
    plot(summary, out / "phase_diagram.png")
    copy_figure(out / "phase_diagram.png", args.figure_copy)
    pd.set_option("display.width", 220)
    columns = ["N", "temperature", "replicas", "hhi_mean", "N_hhi_mean", "order_mean", "order_std", "chi_order",
               "chi_hhi", "hhi_late_mean", "order_late_mean", "entropy_mean", "instability_T_mean"]
    print(summary[columns].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    for agents, group in summary.groupby("N"):
        peaks = {key: float(group.loc[group[key].idxmax(), "temperature"]) if group[key].notna().any() else np.nan
                 for key in ("chi_order", "chi_hhi")}
        print(f"N={agents}: chi_order peaks at T={peaks['chi_order']:.3g}, chi_hhi peaks at T={peaks['chi_hhi']:.3g}")


if __name__ == "__main__":
    main()
