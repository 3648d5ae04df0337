"""The symmetric limit: the engine as a modern Hopfield network (validation item 6).

With tied identity projections (W_Q = W_K = W_V = I), values = keys, output W_O = I, the
linear response (m = theta) and no correction, a "query" population (buys, does not sell,
eta = 1, zero field) attending to a "patterns" population (sells, does not buy, eta = 0, zero
field, states = the stored patterns K = (x_1 .. x_P)) updates each query as

    xi <- K softmax(beta K^T xi),   beta = 1 / (T sqrt(d))

(the engine divides utilities by sqrt(d_k) and then by the buyer's temperature T). This is
the update rule of Ramsauer et al. 2021 ("Hopfield Networks is All You Need"), which never
increases the energy

    E(xi) = -lse(beta, K^T xi) + |xi|^2 / 2,    lse(beta, z) = beta^-1 log sum_j exp(beta z_j)

(their constants beta^-1 log P + M^2 / 2 are dropped), and whose fixed points pass, as beta
grows, from the global average of all patterns through metastable states (averages over a
subset) to single-pattern retrieval. We measure the regime by k90, the number of largest
attention weights softmax(beta K^T xi*) at the fixed point xi* that sum to 0.9.

Run: ``python -m experiments.hopfield --out-dir experiments/results/hopfield``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import pandas as pd
import torch

from econspin import Scenario
from econspin.round import step
from econspin.simulate import Rollout
from experiments.figures import copy_figure, save_figure


def hopfield_scenario(patterns: int, queries: int, d: int, beta: float) -> Scenario:
    """Patterns (sellers, eta 0) and queries (buyers, eta 1) at T = 1 / (beta sqrt(d))."""
    zero = {"distribution": "constant", "value": 0.0}
    tied = {"init": "identity", "tied": True, "scale": 1.0}
    return Scenario.from_dict(
        {
            "populations": {
                "patterns": {"count": patterns, "buys": False, "sells": True, "eta": 0.0, "field": zero,
                             "projections": tied},
                "query": {"count": queries, "buys": True, "sells": False, "eta": 1.0, "field": zero,
                          "projections": tied, "temperature": 1.0 / (beta * math.sqrt(d))},
            },
            "market": {"d": d, "response": "linear", "output": "identity", "mode": "expected"},
            "run": {"device": "cpu", "dtype": "float64"},
        }
    )


def engine_rollout(patterns: torch.Tensor, queries: torch.Tensor, betas) -> Rollout:
    """One batch element per (pattern set, query set, beta): patterns (B, P, d), queries (B, Q, d)."""
    batch, count, d = patterns.shape
    scenarios = [hopfield_scenario(count, queries.shape[1], d, float(beta)) for beta in betas]
    rollout = Rollout.create(scenarios, list(range(batch)), "cpu", "float64")
    rollout.state = rollout.state.replace(states=torch.cat([patterns, queries], dim=1).clone())
    return rollout


def engine_trajectory(rollout: Rollout, steps: int) -> list[torch.Tensor]:
    """Query states xi(0..steps), each (B, Q, d); also checks that the patterns stay put."""
    count = int((rollout.economy.population == 0).sum())
    state = rollout.state
    patterns = state.states[:, :count].clone()
    trajectory = [state.states[:, count:]]
    for _ in range(steps):
        state = step(state, rollout.economy)
        trajectory.append(state.states[:, count:])
    # eta = 0 and a zero field: a pattern's field is its own state, which the linear response
    # returns as |x| * x / |x|, i.e. to the last bit only (rounding drifts ~1e-16 per update)
    drift = (state.states[:, :count] - patterns).abs().max().item()
    assert drift <= 1e-12 * max(1.0, patterns.abs().max().item()), f"stored patterns moved by {drift}"
    rollout.state = state
    return trajectory


def attention(patterns: torch.Tensor, queries: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """softmax_j(beta x_j . xi): (B, Q, P)."""
    return torch.softmax(beta[:, None, None] * torch.einsum("bqd,bpd->bqp", queries, patterns), dim=-1)


def direct_update(patterns, queries, beta):
    """Ramsauer et al.'s update xi <- K softmax(beta K^T xi), written out."""
    return torch.einsum("bqp,bpd->bqd", attention(patterns, queries, beta), patterns)


def energy(patterns, queries, beta):
    """E = -beta^-1 log sum_j exp(beta x_j . xi) + |xi|^2 / 2, (B, Q)."""
    overlaps = torch.einsum("bqd,bpd->bqp", queries, patterns)
    return -torch.logsumexp(beta[:, None, None] * overlaps, dim=-1) / beta[:, None] + 0.5 * (queries**2).sum(-1)


def k90(weights: torch.Tensor, level: float = 0.9) -> torch.Tensor:
    """The number of largest weights whose sum reaches ``level`` (per row)."""
    cumulative = weights.sort(dim=-1, descending=True).values.cumsum(-1)
    return (cumulative < level - 1e-12).sum(-1) + 1


def make_patterns(kind: str, batch: int, count: int, d: int, generator: torch.Generator,
                  clusters: int = 8, spread: float = 0.5) -> torch.Tensor:
    """``random``: i.i.d. N(0, 1) components; ``clustered``: cluster centres N(0, 1) plus N(0, spread^2)."""
    if kind == "random":
        return torch.randn(batch, count, d, generator=generator, dtype=torch.float64)
    centres = torch.randn(batch, clusters, d, generator=generator, dtype=torch.float64)
    members = centres.repeat_interleave(count // clusters, dim=1)
    return members + spread * torch.randn(batch, count, d, generator=generator, dtype=torch.float64)


def separation_beta(patterns: torch.Tensor) -> torch.Tensor:
    """Smallest beta meeting Ramsauer et al.'s sufficient condition for retrieving each pattern.

    Pattern i is well separated (a fixed point near it exists and attracts a sphere around it)
    when Delta_i = x_i.x_i - max_{j != i} x_i.x_j >= 2/(beta P) + beta^-1 log(2 (P-1) P beta M^2),
    M = max_j |x_j|. Returns per pattern the smallest such beta (inf if none in [1e-4, 1e4]).
    """
    batch, count, _ = patterns.shape
    gram = torch.einsum("bid,bjd->bij", patterns, patterns)
    own = gram.diagonal(dim1=1, dim2=2)
    others = gram.masked_fill(torch.eye(count, dtype=torch.bool), -math.inf).amax(-1)
    delta = own - others
    radius2 = own.amax(-1, keepdim=True)
    betas = torch.logspace(-4, 4, 4001, dtype=torch.float64)
    bound = 2 / (betas * count) + torch.log(2 * (count - 1) * count * betas * radius2[..., None]) / betas
    ok = delta[..., None] >= bound
    first = torch.where(ok.any(-1), ok.float().argmax(-1), torch.full_like(delta, -1, dtype=torch.long))
    return torch.where(first >= 0, betas[first.clamp(min=0)], torch.full_like(delta, math.inf))


def check_engine_against_direct(d=32, count=16, queries=8, batch=4, steps=10, seed=0) -> dict:
    """Max |engine - direct| over a few updates, at betas spanning the three regimes."""
    generator = torch.Generator().manual_seed(seed)
    patterns = torch.randn(batch, count, d, generator=generator, dtype=torch.float64)
    xi = torch.randn(batch, queries, d, generator=generator, dtype=torch.float64)
    betas = torch.logspace(-2.5, 0, batch, dtype=torch.float64)
    trajectory = engine_trajectory(engine_rollout(patterns, xi, betas), steps)
    worst = 0.0
    direct = xi
    for t in range(1, steps + 1):
        direct = direct_update(patterns, direct, betas)
        scale = direct.abs().max().item()
        worst = max(worst, (trajectory[t] - direct).abs().max().item() / max(scale, 1.0))
    return {"max_relative_difference": worst, "steps": steps, "batch": batch}


def energy_traces(kinds=("random", "clustered"), d=64, count=64, queries=64, batch=4, steps=30,
                  betas=(0.005, 0.02, 0.05, 0.2, 1.0), seed=1) -> pd.DataFrame:
    """E(xi_t) for every query of every pattern set and beta, run on the engine."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for kind in kinds:
        for beta in betas:
            patterns = make_patterns(kind, batch, count, d, generator)
            xi = torch.randn(batch, queries, d, generator=generator, dtype=torch.float64)
            beta_vector = torch.full((batch,), beta, dtype=torch.float64)
            trajectory = engine_trajectory(engine_rollout(patterns, xi, beta_vector), steps)
            energies = torch.stack([energy(patterns, q, beta_vector) for q in trajectory])  # (steps+1, B, Q)
            increase = energies[1:] - energies[:-1]
            for t in range(steps + 1):
                rows.append({
                    "kind": kind, "beta": beta, "step": t,
                    "energy_mean": float(energies[t].mean()), "energy_min": float(energies[t].min()),
                    "energy_max": float(energies[t].max()),
                    "max_increase_to_here": float(increase[:t].max()) if t > 0 else float("nan"),
                    "relative_max_increase_to_here": float((increase[:t] / energies[:t].abs().clamp(min=1)).max())
                    if t > 0 else float("nan"),
                    "queries": batch * queries,
                })
    return pd.DataFrame(rows)


def regimes(kinds=("random", "clustered"), d=64, count=64, queries=32, batch=2, steps=100,
            betas=None, seed=2) -> pd.DataFrame:
    """k90 at the fixed point against beta; all betas of a kind batched in one rollout."""
    betas = torch.logspace(-3, 0.5, 22, dtype=torch.float64) if betas is None else torch.as_tensor(betas)
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for kind in kinds:
        patterns = make_patterns(kind, batch, count, d, generator)
        xi = torch.randn(batch, queries, d, generator=generator, dtype=torch.float64)
        points = len(betas)
        all_patterns = patterns.repeat(points, 1, 1)
        all_queries = xi.repeat(points, 1, 1)
        all_betas = betas.repeat_interleave(batch)
        trajectory = engine_trajectory(engine_rollout(all_patterns, all_queries, all_betas), steps)
        final, before = trajectory[-1], trajectory[-2]
        weights = attention(all_patterns, final, all_betas)
        counts = k90(weights).double()
        moved = (final - before).norm(dim=-1) / final.norm(dim=-1).clamp(min=1e-12)
        nearest = torch.cdist(final, all_patterns).min(-1).values / all_patterns.norm(dim=-1).mean(-1, keepdim=True)
        mean_pattern = all_patterns.mean(1, keepdim=True)
        to_mean = (final - mean_pattern).norm(dim=-1) / all_patterns.norm(dim=-1).mean(-1, keepdim=True)
        separation = separation_beta(patterns)
        for index, beta in enumerate(betas.tolist()):
            chunk = slice(index * batch, (index + 1) * batch)
            c = counts[chunk]
            rows.append({
                "kind": kind, "beta": beta, "k90_mean": float(c.mean()), "k90_median": float(c.median()),
                "k90_min": float(c.min()), "k90_max": float(c.max()),
                "fraction_single": float((c == 1).double().mean()),
                "max_weight_mean": float(weights[chunk].amax(-1).mean()),
                "distance_to_nearest_pattern": float(nearest[chunk].mean()),
                "distance_to_pattern_mean": float(to_mean[chunk].mean()),
                "last_step_relative_change": float(moved[chunk].max()),
                "ramsauer_separation_beta_median": float(separation.median()),
                "patterns": count, "d": d, "queries": batch * queries,
            })
    return pd.DataFrame(rows)


def plot(traces: pd.DataFrame, table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for index, (beta, group) in enumerate(traces[traces["kind"] == "clustered"].groupby("beta")):
        shifted = group["energy_mean"] - group["energy_mean"].iloc[-1]
        axes[0].plot(group["step"], shifted.clip(lower=1e-14), f"C{index}-", label=f"beta={beta:g}")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("update")
    axes[0].set_ylabel("mean E(xi_t) - E(xi_final)")
    axes[0].set_title("energy along engine updates (clustered patterns)", fontsize=9)
    axes[0].legend(fontsize=7)
    for index, (kind, group) in enumerate(table.groupby("kind")):
        axes[1].semilogx(group["beta"], group["k90_mean"], f"C{index}-o", label=f"{kind} patterns (mean)")
        axes[1].fill_between(group["beta"], group["k90_min"], group["k90_max"], color=f"C{index}", alpha=0.2)
    count = int(table["patterns"].iloc[0])
    axes[1].axhline(1, color="k", lw=0.8, ls=":")
    axes[1].axhline(count // 8, color="C1", lw=0.8, ls=":", label="cluster size")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("beta")
    axes[1].set_ylabel("k90 at the fixed point")
    axes[1].set_title(f"regimes: {count} patterns, d={int(table['d'].iloc[0])}", fontsize=9)
    axes[1].legend(fontsize=7)
    figure.tight_layout()
    save_figure(figure, path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=Path("experiments/results/hopfield"))
    parser.add_argument("--figure-copy", default="docs/figures/hopfield.png",
                        help="second copy of the figure; '' for none")
    parser.add_argument("--small", action="store_true", help="fewer queries and betas (seconds)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (small tensors: 1 is fastest)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(2, args.threads)))
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    agreement = check_engine_against_direct()
    if args.small:
        traces = energy_traces(queries=16, batch=2, steps=15)
        table = regimes(queries=8, batch=1, steps=60, betas=torch.logspace(-3, 0.5, 8, dtype=torch.float64))
    else:
        traces = energy_traces()
        table = regimes()
    wall = time.perf_counter() - started
    traces.to_csv(out / "energy_traces.csv", index=False)
    table.to_csv(out / "hopfield_regimes.csv", index=False)
    plot(traces, table, out / "hopfield.png")
    copy_figure(out / "hopfield.png", args.figure_copy)
    pd.set_option("display.width", 200)
    print(f"engine vs direct update: {agreement}")
    last = traces.groupby(["kind", "beta"]).last()
    print("energy: max increase over all queries and updates (absolute, relative to |E|):")
    print(last[["max_increase_to_here", "relative_max_increase_to_here", "queries"]].to_string())
    print(table.drop(columns=["patterns", "d"]).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"wall time {wall:.1f} s")


if __name__ == "__main__":
    main()
