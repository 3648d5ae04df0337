"""Curie-Weiss / Brock-Durlauf: the engine's mean field and Monte Carlo against m = tanh(beta (J m + h)).

Fixed couplings J_ij = J / N (``market.couplings.curie_weiss``), uniform field h, d = 1,
``vmf`` response (tanh; Glauber's parallel rule in sampled mode). In the limit N -> inf the
stationary magnetisation solves the Curie-Weiss (Brock-Durlauf social-interaction) equation

    m = tanh(beta (J m + h)),

with T_c = J at h = 0 (m = 0 above T_c, a pair of nonzero roots +-m* below). The number of
roots switches from 3 to 1 at |beta h| = H(beta J), H(x) = sqrt(x (x - 1)) - artanh(sqrt((x - 1) / x)).

The engine's matrix is J / N off the diagonal and 0 on it, so sum_j J_ij m = J (N - 1) / N m.
We pass ``curie_weiss = J N / (N - 1)`` so that the engine's model is exactly the equation
above at every N (the finite-N Monte Carlo still has its own finite-size effects).

Usage::

    python -m experiments.curie_weiss --out-dir experiments/results/curie_weiss
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import brentq

from econspin import Scenario
from econspin.round import step
from econspin.simulate import Rollout
from experiments.figures import save_figure

COUPLING = 1.0  # J; T_c = J
TEMPERATURES = tuple(np.round(np.r_[np.arange(0.5, 0.951, 0.05), 0.98, 1.02, np.arange(1.05, 1.501, 0.05)], 3))
MF_SIZE = 100  # all m_i stay equal in the mean-field iteration: N only enters via (N - 1) / N
MC_SIZE = 2000
MC_REPETITIONS = 8
MC_STEPS = 300
MC_BURN_IN = 150


# --- theory -------------------------------------------------------------------------------------

def spinodal(x: float) -> float:
    """H(x) = sqrt(x (x - 1)) - artanh(sqrt((x - 1) / x)) for x = beta J >= 1 (0 below)."""
    if x <= 1.0:
        return 0.0
    return math.sqrt(x * (x - 1.0)) - math.atanh(math.sqrt((x - 1.0) / x))


def roots(beta_j: float, beta_h: float) -> list[float]:
    """All roots of m = tanh(beta_j m + beta_h) in [-1, 1], ascending."""
    f = lambda m: math.tanh(beta_j * m + beta_h) - m  # noqa: E731
    grid = np.linspace(-1.0, 1.0, 4001)
    values = np.tanh(beta_j * grid + beta_h) - grid
    found = []
    for a, b, fa, fb in zip(grid[:-1], grid[1:], values[:-1], values[1:]):
        if fa == 0.0:
            found.append(float(a))
        elif fa * fb < 0:
            found.append(brentq(f, a, b, xtol=1e-15, rtol=1e-15))
    if values[-1] == 0.0:
        found.append(1.0)
    return found


def stationary_magnetisation(temperature: float, coupling: float = COUPLING, field: float = 0.0) -> float:
    """The stable root reached from m = +1: the largest root of m = tanh(beta (J m + h))."""
    beta = 1.0 / temperature
    return max(roots(beta * coupling, beta * field))


# --- engine -------------------------------------------------------------------------------------

def curie_weiss_scenario(temperature: float, field: float, size: int, coupling: float = COUPLING,
                         mode: str = "expected", start: float = 1.0, seed: int = 0,
                         compensate: bool = True) -> Scenario:
    """N spins, J_ij = J / (N - 1) off the diagonal (J / N with ``compensate=False``), field h."""
    scale = size / (size - 1) if compensate else 1.0
    return Scenario.from_dict(
        {
            "populations": {"agents": {"count": size, "temperature": temperature, "eta": 1.0,
                                       "correction": {"form": "none"},
                                       "field": {"distribution": "constant", "value": field},
                                       "state": {"distribution": "constant", "value": start}}},
            "market": {"d": 1, "response": "vmf", "mode": mode, "couplings": {"curie_weiss": coupling * scale}},
            "run": {"seed": seed, "device": "cpu", "dtype": "float64"},
        }
    )


def mean_field_fixed_points(points: list[tuple[float, float]], size: int = MF_SIZE, coupling: float = COUPLING,
                            start: float = 1.0, max_steps: int = 20000, tolerance: float = 1e-13,
                            compensate: bool = True) -> tuple[np.ndarray, np.ndarray, int]:
    """Iterate the engine's naive mean field for (temperature, field) points, all in one batch.

    Returns (m, last_change, steps): the mean magnetisation of each point, the largest
    |m(t) - m(t-1)| of its last step, and the steps run (until every change < tolerance).
    """
    scenarios = [curie_weiss_scenario(t, h, size, coupling, "expected", start, compensate=compensate)
                 for t, h in points]
    run = Rollout.create(scenarios, list(range(len(points))), "cpu", "float64")
    state = run.state
    change = torch.full((len(points),), math.inf, dtype=torch.float64)
    steps = 0
    with torch.no_grad():
        while steps < max_steps:
            new = step(state, run.economy)
            change = (new.states - state.states).abs().amax(dim=(1, 2))
            state, steps = new, steps + 1
            if float(change.max()) < tolerance:
                break
    return state.states[..., 0].mean(1).numpy(), change.numpy(), steps


def monte_carlo(temperature: float, field: float = 0.0, size: int = MC_SIZE, repetitions: int = MC_REPETITIONS,
                steps: int = MC_STEPS, burn_in: int = MC_BURN_IN, coupling: float = COUPLING,
                seed: int = 0) -> tuple[float, float, float, float]:
    """Glauber Monte Carlo (engine's sampled mode) from all +1.

    Per step the magnetisation is estimated by the conditional expectation
    m(t) = mean_i tanh(beta (h + sum_j J_ij s_j)); each repetition's estimate is its average
    over the steps after ``burn_in``. Returns (mean of m, its standard error over
    repetitions, mean of |m(t)|, its standard error). At finite N the sign of m can flip
    near T_c (the barrier between +-m* is only O(N (1 - T)^2)), so |m| is the finite-size
    order parameter there.
    """
    scenario = curie_weiss_scenario(temperature, field, size, coupling, "sampled", 1.0, seed)
    run = Rollout.create([scenario] * repetitions, list(range(repetitions)), "cpu", "float64")
    beta, per_pair = 1.0 / temperature, coupling / (size - 1)
    state = run.state
    sums = torch.zeros(repetitions, dtype=torch.float64)
    absolute = torch.zeros(repetitions, dtype=torch.float64)
    with torch.no_grad():
        for t in range(steps):
            state = step(state, run.economy)
            if t >= burn_in:
                spins = state.states[..., 0]
                local = field + per_pair * (spins.sum(1, keepdim=True) - spins)  # sum_{j != i} J_ij s_j
                m = torch.tanh(beta * local).mean(1)
                sums += m
                absolute += m.abs()
    means = (sums / (steps - burn_in)).numpy()
    absolutes = (absolute / (steps - burn_in)).numpy()
    root = math.sqrt(repetitions)
    return (float(means.mean()), float(means.std(ddof=1) / root),
            float(absolutes.mean()), float(absolutes.std(ddof=1) / root))


def equilibria_map(beta_j_values, beta_h_values, size: int = 10, max_steps: int = 4000):
    """Engine mean field from +1 and from -1 at each (beta J, beta h) (J = 1, T = 1 / beta)."""
    points = [(1.0 / bj, bh / bj) for bj in beta_j_values for bh in beta_h_values]
    up, _, _ = mean_field_fixed_points(points, size, 1.0, +1.0, max_steps, 1e-12)
    down, _, _ = mean_field_fixed_points(points, size, 1.0, -1.0, max_steps, 1e-12)
    shape = (len(beta_j_values), len(beta_h_values))
    counts = np.array([[len(roots(bj, bh)) for bh in beta_h_values] for bj in beta_j_values])
    return up.reshape(shape), down.reshape(shape), counts


# --- the experiment -----------------------------------------------------------------------------

def run(out_dir: Path, figure_copy: Path | None = None, repetitions: int = MC_REPETITIONS,
        size: int = MC_SIZE, field: float = 0.0) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    temperatures = [float(t) for t in TEMPERATURES]
    started = time.perf_counter()
    m_mf, change, mf_steps = mean_field_fixed_points([(t, field) for t in temperatures])
    mf_seconds = time.perf_counter() - started
    rows = []
    started = time.perf_counter()
    for t, m_engine, last in zip(temperatures, m_mf, change):
        mc, error, mc_abs, abs_error = monte_carlo(t, field, size, repetitions)
        rows.append({"temperature": t, "field": field, "m_theory": stationary_magnetisation(t, COUPLING, field),
                     "m_meanfield": float(m_engine), "meanfield_last_change": float(last),
                     "m_montecarlo": mc, "m_montecarlo_stderr": error,
                     "abs_m_montecarlo": mc_abs, "abs_m_montecarlo_stderr": abs_error})
        print(", ".join(f"{k}={v:.6g}" for k, v in rows[-1].items()), flush=True)
    mc_seconds = time.perf_counter() - started
    with open(out_dir / "magnetisation.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    started = time.perf_counter()
    beta_j = np.round(np.linspace(0.2, 3.0, 29), 3)
    beta_h = np.round(np.linspace(-1.0, 1.0, 41), 3)
    up, down, counts = equilibria_map(beta_j, beta_h)
    map_seconds = time.perf_counter() - started
    bistable = np.abs(up - down) > 1e-6
    agreement = float(np.mean(bistable == (counts == 3)))
    with open(out_dir / "equilibria.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["beta_J", "beta_h", "roots", "m_from_plus1", "m_from_minus1", "bistable_engine"])
        for a, bj in enumerate(beta_j):
            for b, bh in enumerate(beta_h):
                writer.writerow([bj, bh, counts[a, b], f"{up[a, b]:.12f}", f"{down[a, b]:.12f}", int(bistable[a, b])])
    summary = {
        "mf_steps": mf_steps, "mf_wall_s": mf_seconds, "mc_wall_s": mc_seconds, "map_wall_s": map_seconds,
        "mc_size": size, "mc_repetitions": repetitions, "map_points": int(bistable.size),
        "map_bistable": int(bistable.sum()), "map_three_roots": int((counts == 3).sum()),
        "map_agreement": agreement, "max_abs_mf_minus_theory": max(abs(r["m_meanfield"] - r["m_theory"]) for r in rows),
        "H(1.5)": spinodal(1.5), "H(2)": spinodal(2.0),
    }
    with open(out_dir / "summary.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["quantity", "value"])
        for key, value in summary.items():
            writer.writerow([key, value])
    print(summary)
    plot(rows, beta_j, beta_h, bistable, counts, out_dir / "curie_weiss.png", figure_copy, size, repetitions)
    return summary


def plot(rows, beta_j, beta_h, bistable, counts, path: Path, copy: Path | None, size: int, repetitions: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    left = axes[0]
    fine = np.linspace(0.4, 1.6, 241)
    left.plot(fine, [stationary_magnetisation(t, COUPLING, rows[0]["field"]) for t in fine], "k-", lw=1,
              label=r"root of $m=\tanh(\beta(Jm+h))$")
    temperatures = [r["temperature"] for r in rows]
    left.plot(temperatures, [r["m_meanfield"] for r in rows], "o", mfc="none", ms=7, label="engine mean field (nmf)")
    left.errorbar(temperatures, [r["m_montecarlo"] for r in rows], yerr=[r["m_montecarlo_stderr"] for r in rows],
                  fmt="s", ms=3, label=f"engine Glauber MC (N={size}, {repetitions} reps)")
    left.plot(temperatures, [r["abs_m_montecarlo"] for r in rows], "x", ms=5, color="tab:green",
              label=r"MC $\langle |m| \rangle$ (finite-size order parameter)")
    left.axvline(COUPLING, color="gray", ls="--", lw=1, label=r"$T_c = J$")
    left.set_xlabel("temperature T (J = 1)")
    left.set_ylabel("stationary magnetisation m")
    left.set_title(f"Curie-Weiss, h = {rows[0]['field']:g}")
    left.legend(fontsize=8)
    right = axes[1]
    grid_j, grid_h = np.meshgrid(beta_j, beta_h, indexing="ij")
    right.scatter(grid_j[counts == 3], grid_h[counts == 3], s=30, facecolors="none", edgecolors="tab:blue",
                  lw=0.6, label="3 roots (theory)")
    right.scatter(grid_j[bistable], grid_h[bistable], s=6, color="tab:red",
                  label="engine: from +1 and -1 differ (bistable)")
    x = np.linspace(1.0, beta_j.max(), 200)
    curve = np.array([spinodal(v) for v in x])
    right.plot(x, curve, "k-", lw=1.2, label=r"$|\beta h| = H(\beta J)$")
    right.plot(x, -curve, "k-", lw=1.2)
    right.set_xlabel(r"$\beta J$")
    right.set_ylabel(r"$\beta h$")
    right.set_title("Number of equilibria")
    right.legend(fontsize=7, loc="lower left")
    figure.tight_layout()
    save_figure(figure, path, copy)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=Path("experiments/results/curie_weiss"))
    parser.add_argument("--figure-copy", type=Path, default=None, help="also save the figure here")
    parser.add_argument("--repetitions", type=int, default=MC_REPETITIONS)
    parser.add_argument("--size", type=int, default=MC_SIZE, help="spins in the Monte Carlo")
    parser.add_argument("--field", type=float, default=0.0, help="uniform field h of the temperature sweep")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    run(args.out_dir, args.figure_copy, args.repetitions, args.size, args.field)
    print(f"wall time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
