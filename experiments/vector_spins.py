"""Vector spins at weak coupling (validation item 3).

Two checks of the d-dimensional spin special case (fixed couplings, no attention):

1. Mean field against Monte Carlo. N = 8 spins of dimension d = 64 on the sphere of radius
   R = sqrt(d), couplings J = 0.9 * softmax(randn(N, N)) (row softmax, diagonal kept),
   T = 1, fields h_i with i.i.d. N(0, 0.5^2) components, every replica started from the same
   spins x(0) (random directions on the sphere). The sampled mode run with many replicas is
   a Monte Carlo ensemble of the stochastic process (each new spin drawn from the vMF law of
   its field); its ensemble mean is compared, step by step, agent by agent, component by
   component, with the expected mode (vmf response) with correction ``none`` (naive kinetic
   mean field) and ``tap`` (Onsager term). Two Monte Carlo estimators of m_i(t) are used:
   the raw spins s_i(t), and the conditional expectation f(h_i + sum_j J_ij s_j(t-1))
   (MODEL.md's low-noise estimator); z = (m_MF - mean_MC) / SE.

2. The large_d response against the exact vMF mean for d = 16..512: the maximum over a
   range of fields of |g_large_d - g_vmf| / R (g the mean's length, R = sqrt(d); the field
   per component u = |theta| / sqrt(d) in [0, 4], T = 1), and the same for the dynamics
   (expected mode, naive, the J above, 10 steps) driven by each response. Both should fall
   like 1/d; the slope is fitted on log-log axes.

Run: ``python -m experiments.vector_spins --out-dir experiments/results/vector_spins``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from econspin import Scenario
from econspin.response import make_response
from econspin.round import step
from econspin.simulate import Rollout
from experiments.figures import copy_figure, save_figure

AGENTS, DIMENSION, STRENGTH, TEMPERATURE, FIELD_SCALE = 8, 64, 0.9, 1.0, 0.5


def coupling_matrix(agents: int = AGENTS, strength: float = STRENGTH, seed: int = 0) -> np.ndarray:
    """J = strength * softmax(randn(N, N)) along rows (each row sums to ``strength``)."""
    logits = np.random.default_rng(seed).standard_normal((agents, agents))
    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
    return strength * weights / weights.sum(axis=1, keepdims=True)


def write_couplings(path: Path, couplings: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, J=couplings)
    return path


def spin_rollout(path, d, mode, response="vmf", correction="none", replicas=1, temperature=TEMPERATURE,
                 seed=0) -> Rollout:
    """A rollout of the fixed-coupling spin model (one population, eta = 1)."""
    with np.load(path) as data:
        agents = data["J"].shape[0]
    scenario = Scenario.from_dict(
        {
            "populations": {"spins": {"count": agents, "temperature": temperature, "eta": 1.0,
                                      "correction": {"form": correction}}},
            "market": {"d": d, "response": response, "mode": mode, "couplings": {"file": str(path)}},
            "run": {"device": "cpu", "dtype": "float64", "seed": seed},
        }
    )
    return Rollout.create([scenario] * replicas, list(range(replicas)), "cpu", "float64")


def initial_conditions(agents: int, d: int, field_scale: float = FIELD_SCALE, seed: int = 1):
    """Spins x(0) on the sphere |x| = sqrt(d) (random directions) and fields h ~ N(0, scale^2)."""
    generator = np.random.default_rng(seed)
    spins = generator.standard_normal((agents, d))
    spins *= math.sqrt(d) / np.linalg.norm(spins, axis=1, keepdims=True)
    fields = field_scale * generator.standard_normal((agents, d))
    return torch.from_numpy(spins), torch.from_numpy(fields)


def run_trajectory(rollout: Rollout, spins, fields, steps: int) -> list[torch.Tensor]:
    """States after rounds 1..steps (each (B, N, d)), all batch elements started at ``spins``."""
    batch = rollout.economy.batch_size
    state = rollout.state.replace(states=spins.expand(batch, -1, -1).clone(),
                                  fields=fields.expand(batch, -1, -1).clone())
    states = []
    for _ in range(steps):
        state = step(state, rollout.economy)
        states.append(state.states)
    return states


def mean_field_vs_monte_carlo(path, couplings, d=DIMENSION, replicas=4000, steps=6, field_scale=FIELD_SCALE,
                              seed=0) -> pd.DataFrame:
    """Per step, correction and estimator: fraction of |z| < 5, max |z|, rms z, rms error / rms SE."""
    agents = couplings.shape[0]
    spins, fields = initial_conditions(agents, d, field_scale, seed + 1)
    sampled = run_trajectory(spin_rollout(path, d, "sampled", replicas=replicas, seed=seed), spins, fields, steps)
    response = make_response("vmf", d, math.sqrt(d))
    temperature = torch.full((replicas, agents), TEMPERATURE, dtype=torch.float64)
    previous = [spins.expand(replicas, -1, -1)] + sampled[:-1]
    coupling = torch.from_numpy(couplings)
    conditional = [response.mean(fields + torch.matmul(coupling, s), temperature) for s in previous]
    estimators = {"raw spins": sampled, "conditional": conditional}
    mean_field = {c: [s[0] for s in run_trajectory(spin_rollout(path, d, "expected", correction=c), spins, fields,
                                                   steps)]
                  for c in ("none", "tap")}
    rows = []
    for t in range(steps):
        for estimator, samples in estimators.items():
            mc_mean = samples[t].mean(0)
            se = samples[t].std(0) / math.sqrt(replicas)
            for correction, trajectory in mean_field.items():
                error = trajectory[t] - mc_mean
                z = (error / se.clamp(min=1e-10)).flatten()  # step 1, conditional: exact (SE 0)
                rows.append({
                    "step": t + 1, "estimator": estimator, "correction": correction, "replicas": replicas,
                    "frac_within_5se": float((z.abs() < 5).double().mean()),
                    "max_abs_z": float(z.abs().max()), "rms_z": float(z.pow(2).mean().sqrt()),
                    "rms_error": float(error.pow(2).mean().sqrt()), "rms_se": float(se.pow(2).mean().sqrt()),
                    "rms_magnetisation": float(mc_mean.pow(2).mean().sqrt()),
                })
    return pd.DataFrame(rows)


def large_d_response_error(dimensions=(16, 32, 64, 128, 256, 512), points=4001, max_field=4.0) -> pd.DataFrame:
    """Max over u = |theta|/sqrt(d) in [0, max_field] of |g_large_d - g_vmf| / R, at T = 1."""
    rows = []
    for d in dimensions:
        radius = math.sqrt(d)
        per_component = torch.linspace(0.0, max_field, points, dtype=torch.float64)
        norm = per_component * radius
        temperature = torch.full_like(norm, TEMPERATURE)
        exact = make_response("vmf", d, radius).magnitude(norm, temperature)
        approximate = make_response("large_d", d, radius).magnitude(norm, temperature)
        error = (approximate - exact).abs() / radius
        where = int(error.argmax())
        relative = ((approximate - exact).abs() / exact.clamp(min=1e-300))[1:]
        rows.append({"d": d, "max_abs_error": float(error.max()), "at_field_per_component": float(per_component[where]),
                     "max_relative_error": float(relative.max())})
    return pd.DataFrame(rows)


def large_d_dynamics_error(couplings, dimensions=(16, 32, 64, 128, 256, 512), steps=10, field_scale=FIELD_SCALE,
                           tmp_dir: Path | None = None) -> pd.DataFrame:
    """Max over steps and agents of |x_large_d(t) - x_vmf(t)| / R (expected mode, naive)."""
    path = write_couplings((tmp_dir or Path(".")) / "vector_spins_couplings.npz", couplings)
    rows = []
    for d in dimensions:
        spins, fields = initial_conditions(couplings.shape[0], d, field_scale)
        runs = {r: run_trajectory(spin_rollout(path, d, "expected", response=r), spins, fields, steps)
                for r in ("large_d", "vmf")}
        error = max(float(((a - b).norm(dim=-1) / math.sqrt(d)).max()) for a, b in zip(runs["large_d"], runs["vmf"]))
        order = float(runs["vmf"][-1].norm(dim=-1).mean() / math.sqrt(d))
        rows.append({"d": d, "max_dynamics_error": error, "final_mean_length_over_R": order})
    return pd.DataFrame(rows)


def log_log_slope(x, y) -> float:
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])


def plot(comparison: pd.DataFrame, response_error: pd.DataFrame, dynamics_error: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    styles = {("raw spins", "none"): "C0--", ("raw spins", "tap"): "C1--",
              ("conditional", "none"): "C0-o", ("conditional", "tap"): "C1-o"}
    for (estimator, correction), group in comparison.groupby(["estimator", "correction"]):
        axes[0].plot(group["step"], group["max_abs_z"], styles[(estimator, correction)],
                     label=f"{correction} vs MC ({estimator})")
    axes[0].axhline(5, color="k", lw=0.8, ls=":")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("max |z| over agents x components")
    replicas = int(comparison["replicas"].iloc[0])
    axes[0].set_title(f"mean field vs Monte Carlo (N=8, d=64, {replicas} replicas)", fontsize=9)
    axes[0].legend(fontsize=7)
    d = response_error["d"].to_numpy()
    axes[1].loglog(d, response_error["max_abs_error"], "C2-o",
                   label=f"response, slope {log_log_slope(d, response_error['max_abs_error']):.2f}")
    dynamics_slope = log_log_slope(dynamics_error["d"], dynamics_error["max_dynamics_error"])
    axes[1].loglog(dynamics_error["d"], dynamics_error["max_dynamics_error"], "C3-s",
                   label=f"dynamics, slope {dynamics_slope:.2f}")
    axes[1].loglog(d, response_error["max_abs_error"].iloc[0] * d[0] / d, "k:", label="1/d")
    axes[1].set_xticks(d, [str(int(v)) for v in d])
    axes[1].minorticks_off()
    axes[1].set_xlabel("d")
    axes[1].set_ylabel("max |large_d - vmf| / R")
    axes[1].set_title("large_d response vs exact vMF mean", fontsize=9)
    axes[1].legend(fontsize=7)
    figure.tight_layout()
    save_figure(figure, path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=Path("experiments/results/vector_spins"))
    parser.add_argument("--replicas", type=int, default=4000)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--figure-copy", default="docs/figures/vector_spins.png",
                        help="second copy of the figure; '' for none")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (small tensors: 1 is fastest)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(2, args.threads)))
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    couplings = coupling_matrix(seed=args.seed)
    path = write_couplings(out / "couplings.npz", couplings)

    started = time.perf_counter()
    comparison = mean_field_vs_monte_carlo(path, couplings, replicas=args.replicas, steps=args.steps, seed=args.seed)
    comparison_time = time.perf_counter() - started
    comparison.to_csv(out / "mean_field_vs_monte_carlo.csv", index=False)
    started = time.perf_counter()
    response_error = large_d_response_error()
    dynamics_error = large_d_dynamics_error(couplings, tmp_dir=out)
    error_time = time.perf_counter() - started
    merged = response_error.merge(dynamics_error, on="d")
    merged.to_csv(out / "large_d_error.csv", index=False)

    plot(comparison, response_error, dynamics_error, out / "vector_spins.png")
    copy_figure(out / "vector_spins.png", args.figure_copy)

    pd.set_option("display.width", 160)
    print(f"J row sums {couplings.sum(1).round(3).tolist()}, max J {couplings.max():.3f}")
    print(comparison.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    summary = comparison.groupby(["estimator", "correction"]).agg(
        frac_within_5se=("frac_within_5se", "mean"), max_abs_z=("max_abs_z", "max"), rms_z=("rms_z", "mean"))
    print(summary.to_string(float_format=lambda v: f"{v:.4g}"))
    print(merged.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"slope response error {log_log_slope(merged['d'], merged['max_abs_error']):.3f}, "
          f"relative {log_log_slope(merged['d'], merged['max_relative_error']):.3f}, "
          f"dynamics {log_log_slope(merged['d'], merged['max_dynamics_error']):.3f}")
    print(f"wall time: mean field vs Monte Carlo {comparison_time:.1f} s, large_d error {error_time:.1f} s")


if __name__ == "__main__":
    main()
