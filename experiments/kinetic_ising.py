"""Asymmetric kinetic Ising model, forward problem (Aguilera, Moosavi & Shimazaki 2021).

The engine's fixed-coupling mode with d = 1 and the ``vmf`` response (tanh; Glauber's
parallel rule in sampled mode) is the kinetic Ising model

    P(s_i(t) = +1 | s(t-1)) = 1 / (1 + exp(-2 beta (H_i + sum_j J_ij s_j(t-1)))).

From all spins +1 we run 128 parallel steps at beta = beta_rel * beta_c and compare

- ``nmf``: the engine's expected mode, correction ``none``,
  m_i(t) = tanh(beta (H_i + sum_j J_ij m_j(t-1)));
- ``tap``: expected mode, correction ``tap`` (Roudi & Hertz 2011; Plefka[t-1,t] at second
  order in Aguilera et al.), m_i(t) = tanh(beta (H_i + sum_j J_ij m_j(t-1))
  - beta^2 m_i(t) sum_j J_ij^2 (1 - m_j(t-1)^2));
- ``mc``: the engine's sampled mode, R independent repetitions (batch elements, each with
  its own random stream); m_i(t) is estimated by the conditional expectation
  (1/R) sum_r tanh(beta (H_i + sum_j J_ij s^r_j(t-1))).

The error of a method is eps_m = (1/128) sum_t mean_i (m_i^method(t) - m_i^MC(t))^2.

Usage::

    python -m experiments.kinetic_ising --beta-rel 1.0 --method tap --out m.npy
    python -m experiments.kinetic_ising --sweep --out-dir experiments/results/kinetic_ising
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import torch

from econspin import Scenario
from econspin.round import step
from econspin.simulate import Rollout
from experiments.figures import save_figure

DATA = Path(__file__).parent / "data" / "kinetic_ising_N512_H0.5_J0_1.0_Js0.1.npz"
BETA_C = 1.1108397534
STEPS = 128
DEFAULT_REPETITIONS = 1000
DEFAULT_SEED = 0
CHUNK = 500  # repetitions per batch (rollout)
SWEEP_BETAS = tuple(np.round(np.linspace(0.7, 1.3, 13), 3))
CORRECTIONS = {"nmf": "none", "tap": "tap"}


def load_parameters(path: Path | str = DATA) -> tuple[np.ndarray, np.ndarray]:
    """Fields H (N,) and couplings J (N, N) of the shipped network."""
    with np.load(path) as data:
        return np.asarray(data["H"], dtype=np.float64), np.asarray(data["J"], dtype=np.float64)


def ising_scenario(beta: float, size: int, correction: str = "none", mode: str = "expected",
                   path: Path | str = DATA, seed: int = DEFAULT_SEED) -> Scenario:
    """The engine's kinetic Ising model: d = 1, vmf (tanh), fixed couplings, T = 1 / beta."""
    return Scenario.from_dict(
        {
            "populations": {"spins": {"count": size, "temperature": 1.0 / beta, "eta": 1.0,
                                      "correction": {"form": correction},
                                      "state": {"distribution": "constant", "value": 1.0}}},
            "market": {"d": 1, "response": "vmf", "mode": mode,
                       "couplings": {"file": str(path), "coupling_key": "J", "field_key": "H"}},
            "run": {"seed": seed, "device": "cpu", "dtype": "float64"},
        }
    )


def mean_field(beta: float, method: str, steps: int = STEPS, path: Path | str = DATA) -> np.ndarray:
    """(steps, N): row t-1 holds m(t) of the engine's expected mode (nmf or tap), m(0) = 1."""
    size = load_parameters(path)[0].shape[0]
    run = Rollout.create([ising_scenario(beta, size, CORRECTIONS[method], "expected", path)], [0], "cpu", "float64")
    state, rows = run.state, []
    with torch.no_grad():
        for _ in range(steps):
            state = step(state, run.economy)
            rows.append(state.states[0, :, 0].clone())
    return torch.stack(rows).numpy()


def monte_carlo(beta: float, repetitions: int = DEFAULT_REPETITIONS, steps: int = STEPS, seed: int = DEFAULT_SEED,
                path: Path | str = DATA, chunk: int = CHUNK, first_replica: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Glauber Monte Carlo on the engine's sampled mode.

    Returns (m, noise): m (steps, N) is the mean over repetitions of the conditional
    expectation tanh(beta (H + J s(t-1))), row t-1 for step t; noise (steps, N) is the
    variance of that mean, Var_r[tanh(...)] / R (its expected contribution to eps_m).
    Repetition r is batch element r (replica index r, its own random stream), so the
    result depends only on (beta, repetitions, steps, seed), not on ``chunk``. The
    repetitions are replicas ``first_replica`` onwards: disjoint ranges are independent
    blocks whose means average to the mean over their union.
    """
    fields, couplings = load_parameters(path)
    size = fields.shape[0]
    h = torch.from_numpy(beta * fields)
    coupling_t = torch.from_numpy(beta * couplings).T.contiguous()  # s @ (beta J)^T = beta J s
    total = torch.zeros(steps, size, dtype=torch.float64)
    squares = torch.zeros(steps, size, dtype=torch.float64)
    scenario = ising_scenario(beta, size, "none", "sampled", path, seed)
    with torch.no_grad():
        for start in range(first_replica, first_replica + repetitions, chunk):
            replicas = list(range(start, min(start + chunk, first_replica + repetitions)))
            run = Rollout.create([scenario] * len(replicas), replicas, "cpu", "float64")
            state = run.state
            for t in range(steps):
                spins = state.states[..., 0]  # s(t), (B, N)
                conditional = torch.tanh(h + spins @ coupling_t)  # E[s(t+1) | s(t)]
                total[t] += conditional.sum(0)
                squares[t] += (conditional**2).sum(0)
                if t + 1 < steps:
                    state = step(state, run.economy)
    mean = total / repetitions
    variance = (squares / repetitions - mean**2).clamp(min=0.0) * repetitions / max(repetitions - 1, 1)
    return mean.numpy(), (variance / repetitions).numpy()


def squared_error(m: np.ndarray, reference: np.ndarray) -> float:
    """eps_m: time average over the steps of mean_i (m_i(t) - reference_i(t))^2."""
    return float(np.mean((m - reference) ** 2))


def trajectory(beta_rel: float, method: str, repetitions: int = DEFAULT_REPETITIONS, seed: int = DEFAULT_SEED,
               steps: int = STEPS) -> np.ndarray:
    """The (steps, N) float64 magnetisations the command line writes."""
    beta = beta_rel * BETA_C
    if method == "mc":
        return monte_carlo(beta, repetitions, steps, seed)[0]
    return mean_field(beta, method, steps)


def sweep(out_dir: Path, betas=SWEEP_BETAS, repetitions: int = DEFAULT_REPETITIONS, seed: int = DEFAULT_SEED,
          steps: int = STEPS, figure_copy: Path | None = None) -> list[dict]:
    """eps_m of nmf and tap against Monte Carlo for every beta; CSV, traces and a figure."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, traces = [], {}
    for beta_rel in betas:
        beta = float(beta_rel) * BETA_C
        started = time.perf_counter()
        m_mc, noise = monte_carlo(beta, repetitions, steps, seed)
        mc_seconds = time.perf_counter() - started
        started = time.perf_counter()
        m_nmf = mean_field(beta, "nmf", steps)
        m_tap = mean_field(beta, "tap", steps)
        mf_seconds = time.perf_counter() - started
        row = {
            "beta_rel": float(beta_rel),
            "eps_nmf": squared_error(m_nmf, m_mc),
            "eps_tap": squared_error(m_tap, m_mc),
            "repetitions": repetitions,
            "mc_noise_floor": float(noise.mean()),
            "mc_wall_s": round(mc_seconds, 2),
            "mf_wall_s": round(mf_seconds, 2),
        }
        rows.append(row)
        print(", ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                        for key, value in row.items()), flush=True)
        if abs(beta_rel - 1.0) < 1e-9:
            traces = {"mc": m_mc.mean(1), "nmf": m_nmf.mean(1), "tap": m_tap.mean(1)}
    with open(out_dir / "eps_m.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if traces:
        with open(out_dir / "traces_beta_c.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["t", "m_mc", "m_nmf", "m_tap"])
            writer.writerow([0, 1.0, 1.0, 1.0])
            for t in range(steps):
                writer.writerow([t + 1, *(f"{traces[k][t]:.10f}" for k in ("mc", "nmf", "tap"))])
    plot(rows, traces, out_dir / "kinetic_ising.png", figure_copy)
    return rows


def plot(rows: list[dict], traces: dict, path: Path, copy: Path | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    betas = [row["beta_rel"] for row in rows]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    left = axes[0]
    left.semilogy(betas, [row["eps_nmf"] for row in rows], "o-", label="naive mean field (nmf)")
    left.semilogy(betas, [row["eps_tap"] for row in rows], "s-", label="TAP (Roudi-Hertz)")
    left.semilogy(betas, [row["mc_noise_floor"] for row in rows], ":", color="gray",
                  label="MC noise floor Var/R")
    left.axvline(1.0, color="k", lw=0.5)
    left.set_xlabel(r"$\beta/\beta_c$")
    left.set_ylabel(r"$\epsilon_m$ (vs Monte Carlo)")
    left.set_title(f"Magnetisation error, N=512, {rows[0]['repetitions']} MC repetitions")
    left.legend(fontsize=8)
    right = axes[1]
    if traces:
        t = np.arange(len(traces["mc"]) + 1)
        right.plot(t, np.r_[1.0, traces["mc"]], "k-", lw=2, label="Glauber Monte Carlo")
        right.plot(t, np.r_[1.0, traces["nmf"]], "--", label="naive mean field")
        right.plot(t, np.r_[1.0, traces["tap"]], "-.", label="TAP")
    right.set_xlabel("step t")
    right.set_ylabel(r"mean magnetisation $\langle m_i(t)\rangle_i$")
    right.set_title(r"Traces at $\beta=\beta_c$")
    right.legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, path, copy)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--beta-rel", type=float, default=1.0, help="beta / beta_c (beta_c = %g)" % BETA_C)
    parser.add_argument("--method", choices=("nmf", "tap", "mc"), default="nmf")
    parser.add_argument("--out", type=Path, help="output .npy, float64 (steps, N); row t-1 is m(t)")
    parser.add_argument("--repetitions", type=int, default=DEFAULT_REPETITIONS, help="Monte Carlo repetitions")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="run seed of the Monte Carlo streams")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--sweep", action="store_true", help="eps_m of nmf and tap against MC over beta")
    parser.add_argument("--betas", type=float, nargs="+", default=list(SWEEP_BETAS))
    parser.add_argument("--out-dir", type=Path, default=Path("experiments/results/kinetic_ising"))
    parser.add_argument("--figure-copy", type=Path, default=None, help="also save the figure here")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.sweep:
        started = time.perf_counter()
        sweep(args.out_dir, args.betas, args.repetitions, args.seed, args.steps, args.figure_copy)
        print(f"sweep wall time {time.perf_counter() - started:.1f} s")
        return
    if args.out is None:
        parser.error("--out is required unless --sweep")
    m = trajectory(args.beta_rel, args.method, args.repetitions, args.seed, args.steps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, m.astype(np.float64))


if __name__ == "__main__":
    main()
