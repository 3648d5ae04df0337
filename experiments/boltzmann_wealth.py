"""Boltzmann wealth: the engine side by side with projectmesa's tutorial model (Mesa 3).

The model (Mesa's introductory tutorial, after Dragulescu & Yakovenko 2000): N agents start
with one unit of money each; every step every agent holding at least one unit gives one unit
to another agent chosen uniformly at random.

Three implementations are run, each for ``replicas`` independent replicas:

- ``mesa_sequential``: the tutorial form, ``econspin.mesa.MoneyModel``, written the Mesa 3 way
  (``mesa.Model``, ``mesa.Agent``, ``self.agents.shuffle_do("step")``, a ``DataCollector``
  with a Gini model reporter). Agents act one at a time in a fresh random order each step, so an agent can
  receive a unit and pass it on within the same step, and an agent emptied earlier in the
  step does not give.
- ``mesa_synchronous``: ``econspin.mesa.ReferenceModel`` on the same scenario: the per-agent
  reference model written the plain Mesa way (every agent first decides, on the money it held
  at the start of the step, whether it gives and to whom; then all transfers are applied).
  This is the engine's round, played one agent at a time with numpy.
- ``engine``: ``scenarios/boltzmann_wealth.yaml`` on econspin (uniform logit choice, sampled
  mode, spend_rule unit, unit 1).

Recipient rule. The tutorial draws ``other_agent = self.random.choice(self.model.agents)``,
which may return the agent itself (a self-gift, which changes nothing). The engine always
excludes self-trade, so the tutorial model here draws the recipient uniformly from the *other*
N - 1 agents (rejection of self), as the reference model does. ``self.model.agents[i]`` is O(N) in Mesa 3.3 (it builds a
list), so the models keep a tuple of their agents for the draw; this changes nothing else.

Theory. Pairwise random exchange of whole units has the uniform law over configurations as
its stationary law, whose one-agent marginal tends to the geometric (discrete
Boltzmann-Gibbs) law P(m) = (1 - q) q^m, q = mean / (1 + mean), with Gini 1 / (1 + q) = 2/3 at
a mean of one unit. The synchronous round is different: an agent pays one unit when it held
one at the start of the round and receives Binomial(~lambda N, 1/(N - 1)) ~ Poisson(lambda)
units, lambda = P(m >= 1). That is a discrete-time queue, m' = m - 1[m >= 1] + A, whose
stationary mean lambda + lambda^2 / (2 (1 - lambda)) equals 1 for lambda = 2 - sqrt(2): so
P(0) = sqrt(2) - 1 = 0.414 (geometric: 0.5) and the Gini is lower (computed below, ~0.580).

The sequential step is not the pairwise-exchange chain either (each agent acts exactly once
per step, at a random position u of the order, rather than at Poisson times), so its
stationary law is not exactly geometric: in mean field an agent at position u receives
Poisson(lambda u), gives if it then holds a unit, and receives Poisson(lambda (1 - u));
``sequential_mean_field_pmf`` solves that chain (P(0) ~ 0.466, Gini ~ 0.634).

Command::

    python -m experiments.boltzmann_wealth --out-dir experiments/results/boltzmann_wealth

writes ``summary.csv`` (one row per variant and per theoretical law), ``gini_trajectories.csv``,
``stationary_pmf.csv``, ``comparison.csv`` (tests between variants) and the figures
``gini_vs_step.png`` and ``money_pmf.png``.
"""

from __future__ import annotations

import argparse
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mesa  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from scipy import optimize, stats  # noqa: E402

from econspin import Scenario  # noqa: E402
from econspin.mesa import ReferenceModel  # noqa: E402
from econspin.mesa.boltzmann import MoneyModel  # noqa: E402
from econspin.simulate import Rollout  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "scenarios" / "boltzmann_wealth.yaml"
VARIANTS = ("engine", "mesa_synchronous", "mesa_sequential")
LABELS = {
    "engine": "econspin engine (synchronous round)",
    "mesa_synchronous": "Mesa, synchronous (econspin.mesa.ReferenceModel)",
    "mesa_sequential": "Mesa, sequential (tutorial shuffle_do)",
}
COLOURS = {"engine": "tab:blue", "mesa_synchronous": "tab:orange", "mesa_sequential": "tab:green"}


# --------------------------------------------------------------------------- runs


@dataclass
class VariantRun:
    """What one variant produced over all its replicas."""

    name: str
    gini: np.ndarray  # (replicas, steps + 1), step 0 included
    final_money: np.ndarray  # (replicas, N) integer units
    pmf_counts: np.ndarray  # counts of money values, summed over the stationary window and replicas
    total_money: np.ndarray  # (replicas, steps + 1)
    wall_time: float
    notes: dict = field(default_factory=dict)


def _bincount(values: np.ndarray, size: int) -> np.ndarray:
    counts = np.bincount(values.ravel(), minlength=size)
    if counts.size > size:  # a value beyond the table: fold into the last cell (never expected)
        counts = np.concatenate([counts[: size - 1], [counts[size - 1:].sum()]])
    return counts


def run_mesa(variant: str, agents: int, steps: int, replicas: int, seed: int, window_start: int,
             max_money: int = 64) -> VariantRun:
    """Run one Mesa variant; the Gini comes from its DataCollector."""
    gini = np.zeros((replicas, steps + 1))
    totals = np.zeros((replicas, steps + 1))
    final = np.zeros((replicas, agents), dtype=np.int64)
    counts = np.zeros(max_money, dtype=np.int64)
    started = time.perf_counter()
    for replica in range(replicas):
        if variant == "mesa_sequential":
            model = MoneyModel(n=agents, seed=seed * 1000 + replica)
            reporter = "Gini"
        else:
            # the scenario's disorder is inert here (zero projections); Mesa's generator draws the recipients
            model = ReferenceModel(engine_scenario(agents), rng=seed * 1000 + replica + 500)
            reporter = "gini"
        totals[replica, 0] = wealth_of(model).sum()
        for t in range(1, steps + 1):
            model.step()
            money = wealth_of(model)
            totals[replica, t] = money.sum()
            if t >= window_start:
                counts += _bincount(money, max_money)
        gini[replica] = model.datacollector.get_model_vars_dataframe()[reporter].to_numpy()
        final[replica] = wealth_of(model)
    wall = time.perf_counter() - started
    return VariantRun(variant, gini, final, counts, totals, wall)


def wealth_of(model: mesa.Model) -> np.ndarray:
    """Whole units held by each agent."""
    return np.rint([agent.wealth for agent in model.agents]).astype(np.int64)


def engine_scenario(agents: int, path: Path = SCENARIO) -> Scenario:
    scenario = Scenario.from_yaml(path)
    (name,) = scenario.populations
    return scenario.with_overrides({f"populations.{name}.count": agents})


def run_engine(agents: int, steps: int, replicas: int, seed: int, window_start: int,
               device: str | None = None, max_money: int = 64) -> VariantRun:
    """Run scenarios/boltzmann_wealth.yaml; the Gini is the engine's own ``gini`` metric."""
    # the engine derives each replica's random streams from run.seed and the replica index
    scenario = engine_scenario(agents).with_overrides({"run.seed": seed})
    run = scenario.run
    rollout = Rollout.create([scenario] * replicas, list(range(replicas)), device or run.device, run.dtype)
    totals = np.zeros((replicas, steps + 1))
    counts = np.zeros(max_money, dtype=np.int64)
    money0 = rollout.state.money.cpu().numpy()
    totals[:, 0] = money0.sum(1)
    started = time.perf_counter()
    for t in range(1, steps + 1):
        rollout.advance(1)
        money = rollout.state.money.cpu().numpy()
        totals[:, t] = money.sum(1)
        if t >= window_start:
            counts += _bincount(np.rint(money).astype(np.int64), max_money)
    wall = time.perf_counter() - started
    metrics = rollout.metrics()
    gini = metrics.pivot(index="replica", columns="step", values="gini").to_numpy()  # step 0: the initial state
    final = rollout.state.money.cpu().numpy()
    integral = bool(np.all(final == np.rint(final)))
    return VariantRun("engine", gini, np.rint(final).astype(np.int64), counts, totals, wall,
                      {"integral": integral, "device": str(rollout.economy.device)})


def _gini_rows(money: np.ndarray) -> np.ndarray:
    money = np.sort(money, axis=1)
    n = money.shape[1]
    rank = np.arange(1, n + 1)
    return ((2 * rank - n - 1) * money).sum(1) / (n * money.sum(1))


# --------------------------------------------------------------------------- theory


def geometric_pmf(mean: float, size: int) -> np.ndarray:
    """P(m) = (1 - q) q^m, q = mean / (1 + mean): the whole-unit Boltzmann-Gibbs law."""
    q = mean / (1 + mean)
    return (1 - q) * q ** np.arange(size)


def geometric_gini(mean: float) -> float:
    """Gini of the geometric law: 1 / (1 + q); 2/3 at mean 1."""
    return 1 / (1 + mean / (1 + mean))


def synchronous_queue_pmf(mean: float = 1.0, size: int = 64, iterations: int = 4000) -> tuple[np.ndarray, float]:
    """Mean-field stationary law of the synchronous round, m' = m - 1[m >= 1] + Poisson(lambda).

    lambda = P(m >= 1) is fixed by the mean: lambda + lambda^2 / (2 (1 - lambda)) = mean
    (the discrete-time queue with Poisson arrivals and one departure per step); for mean 1,
    lambda^2 - 4 lambda + 2 = 0, lambda = 2 - sqrt 2. Solved by root finding on lambda and
    power iteration on the truncated chain.
    """

    def queue_mean(lam):
        return lam + lam**2 / (2 * (1 - lam))

    lam = optimize.brentq(lambda x: queue_mean(x) - mean, 1e-9, 1 - 1e-9)
    arrivals = stats.poisson.pmf(np.arange(size), lam)
    pmf = np.zeros(size)
    pmf[min(int(round(mean)), size - 1)] = 1.0
    for _ in range(iterations):
        served = np.zeros(size)
        served[0] = pmf[0] + pmf[1]
        served[1:-1] = pmf[2:]
        pmf = np.convolve(served, arrivals)[:size]
    return pmf / pmf.sum(), lam


def sequential_mean_field_pmf(mean: float = 1.0, size: int = 64, positions: int = 200) -> tuple[np.ndarray, float]:
    """Mean-field stationary law of the sequential (shuffle_do) step, measured between steps.

    An agent acting at position u ~ U(0, 1) of the step's random order first receives
    A1 ~ Poisson(lambda u) units from the agents before it, gives one unit if it then holds
    one, and receives A2 ~ Poisson(lambda (1 - u)) from those after it; lambda = the share
    of agents that give during a step, fixed by the mean. The one-step transition matrix is
    averaged over u (midpoint rule) and its stationary vector taken.
    """
    serve = np.zeros((size, size))
    serve[0, 0] = 1.0
    serve[np.arange(1, size), np.arange(size - 1)] = 1.0

    def arrivals(mu):
        pmf = stats.poisson.pmf(np.arange(size), mu)
        matrix = np.zeros((size, size))
        for row in range(size):
            matrix[row, row:] = pmf[: size - row]
        matrix[:, -1] += 1.0 - matrix.sum(1)  # the truncated tail stays in the last cell
        return matrix

    def law(lam):
        u = (np.arange(positions) + 0.5) / positions
        transition = sum(arrivals(lam * x) @ serve @ arrivals(lam * (1 - x)) for x in u) / positions
        values, vectors = np.linalg.eig(transition.T)
        vector = np.real(vectors[:, np.argmin(np.abs(values - 1))])
        return vector / vector.sum()

    lam = optimize.brentq(lambda x: pmf_moments(law(x))[0] - mean, 0.05, 0.99, xtol=1e-10)
    return law(lam), lam


def pmf_gini(pmf: np.ndarray) -> float:
    """Gini of a law on 0, 1, 2, ...: E|X - Y| / (2 E X), X, Y independent."""
    m = np.arange(pmf.size)
    return float((pmf[:, None] * pmf[None, :] * np.abs(m[:, None] - m[None, :])).sum() / (2 * (m * pmf).sum()))


def pmf_moments(pmf: np.ndarray) -> tuple[float, float]:
    m = np.arange(pmf.size)
    mean = float((m * pmf).sum())
    return mean, float((m**2 * pmf).sum() - mean**2)


# --------------------------------------------------------------------------- analysis


def relaxation(gini_mean: np.ndarray, stationary: float) -> dict:
    """Relaxation of the replica-mean Gini: an exponential fit and the first 1/e, 5% and 1% crossings.

    Fit G(t) = G_inf - A exp(-t / tau) on t >= 1. t_1e is the first step with
    |G(t) - G_inf| <= |G(0) - G_inf| / e, t_5pct the first with |G(t) - G_inf| <= 0.05 G_inf
    (G_inf = the stationary mean), t_1pct the first with the 5-step moving average within 1%.
    """
    t = np.arange(gini_mean.size)
    gap = np.abs(gini_mean - stationary)
    t_1e = int(np.argmax(gap <= gap[0] / math.e))
    t_5 = int(np.argmax(gap <= 0.05 * stationary))
    # 1%: on the 5-step centred moving average (the replica mean is noisy at the 1% level)
    smooth = np.convolve(gini_mean, np.ones(5) / 5, mode="same")
    close = np.abs(smooth - stationary) <= 0.01 * stationary
    t_1 = int(np.argmax(close[2:])) + 2 if close[2:].any() else -1
    try:
        params, _ = optimize.curve_fit(lambda x, g, a, tau: g - a * np.exp(-x / tau), t[1:], gini_mean[1:],
                                       p0=(stationary, stationary, 5.0), maxfev=20000)
        tau = float(params[2])
    except RuntimeError:
        tau = float("nan")
    return {"tau_fit": tau, "t_1e": t_1e, "t_5pct": t_5, "t_1pct": t_1}


def summarise(run: VariantRun, window_start: int) -> dict:
    window = run.gini[:, window_start:]
    per_replica = window.mean(axis=1)
    pmf = run.pmf_counts / run.pmf_counts.sum()
    mean, variance = pmf_moments(pmf)
    final = run.final_money.ravel()
    row = {
        "variant": run.name,
        "agents": run.final_money.shape[1],
        "replicas": run.gini.shape[0],
        "steps": run.gini.shape[1] - 1,
        "window_start": window_start,
        "gini_stationary_mean": float(per_replica.mean()),
        "gini_stationary_sd_replicas": float(per_replica.std(ddof=1)) if per_replica.size > 1 else float("nan"),
        "gini_instant_sd": float(window.std(ddof=1)),
        "gini_final_mean": float(run.gini[:, -1].mean()),
        "p0_stationary": float(pmf[0]),
        "var_stationary": variance,
        "mean_stationary": mean,
        "gini_of_stationary_pmf": pmf_gini(pmf),
        "final_mean": float(final.mean()),
        "final_var": float(final.var()),
        "final_p0": float((final == 0).mean()),
        "final_max": int(final.max()),
        "money_conserved": bool(np.all(run.total_money == run.total_money[:, :1])),
        "wall_s": run.wall_time,
    }
    row.update(relaxation(run.gini.mean(axis=0), row["gini_stationary_mean"]))
    return row


def chi_square_samples(a: np.ndarray, b: np.ndarray, minimum: float = 5.0) -> tuple[float, float, int]:
    """Two-sample chi-square (contingency) test on integer samples, tail cells merged."""
    size = int(max(a.max(), b.max())) + 1
    table = np.stack([np.bincount(a, minlength=size), np.bincount(b, minlength=size)]).astype(float)
    # merge the tail until every expected count is >= minimum
    while table.shape[1] > 2:
        expected = table.sum(0)[None, :] * table.sum(1)[:, None] / table.sum()
        if expected[:, -1].min() >= minimum:
            break
        table = np.concatenate([table[:, :-2], table[:, -2:].sum(1, keepdims=True)], axis=1)
    statistic, p, dof, _ = stats.chi2_contingency(table)
    return float(statistic), float(p), int(dof)


def chi_square_law(sample: np.ndarray, pmf: np.ndarray, minimum: float = 5.0) -> tuple[float, float, int]:
    """Goodness of fit of an integer sample to a law on 0, 1, ..., tail merged into one cell."""
    n = sample.size
    size = int(sample.max()) + 1
    observed = np.bincount(sample, minlength=size).astype(float)
    law = np.concatenate([pmf[:size], [0.0]]) if pmf.size >= size else np.pad(pmf, (0, size - pmf.size + 1))
    law[-1] = max(0.0, 1.0 - law[:-1].sum())
    observed = np.concatenate([observed, [0.0]])
    cells = size + 1
    # merge from the tail while the expected count is small
    while cells > 2 and law[cells - 1] * n < minimum:
        law[cells - 2] += law[cells - 1]
        observed[cells - 2] += observed[cells - 1]
        cells -= 1
    law, observed = law[:cells], observed[:cells]
    statistic, p = stats.chisquare(observed, law * n)
    return float(statistic), float(p), cells - 1


def band_agreement(a: np.ndarray, b: np.ndarray, start: int = 1) -> dict:
    """Per step: do the mean +- 2 sd replica bands overlap; is |mean difference| <= 2 standard errors."""
    ma, mb = a.mean(0)[start:], b.mean(0)[start:]
    sa, sb = a.std(0, ddof=1)[start:], b.std(0, ddof=1)[start:]
    overlap = (ma - 2 * sa <= mb + 2 * sb) & (mb - 2 * sb <= ma + 2 * sa)
    se = np.sqrt(sa**2 / a.shape[0] + sb**2 / b.shape[0])
    within = np.abs(ma - mb) <= 2 * se
    return {"bands_overlap_fraction": float(overlap.mean()), "mean_within_2se_fraction": float(within.mean()),
            "max_abs_mean_difference": float(np.abs(ma - mb).max())}


def compare(a: VariantRun, b: VariantRun) -> dict:
    ks = stats.ks_2samp(a.final_money.ravel(), b.final_money.ravel(), method="asymp")
    chi2, chi2_p, dof = chi_square_samples(a.final_money.ravel(), b.final_money.ravel())
    row = {"pair": f"{a.name} vs {b.name}", "ks_statistic": float(ks.statistic), "ks_p": float(ks.pvalue),
           "chi2": chi2, "chi2_p": chi2_p, "chi2_dof": dof}
    row.update(band_agreement(a.gini, b.gini))
    return row


# --------------------------------------------------------------------------- figures


def plot_gini(trajectories: pd.DataFrame, theory: dict[str, float], path: Path, agents: int, replicas: int,
              dpi: int = 100) -> None:
    """Gini vs step, replica mean and mean +- 2 sd bands, from the ``gini_trajectories.csv`` table."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.0), gridspec_kw={"width_ratios": [2, 1]})
    for ax, last in zip(axes, (None, 60)):
        for name, group in trajectories.groupby("variant", sort=False):
            group = group.sort_values("step")
            steps, mean, sd = group.step.to_numpy(), group.gini_mean.to_numpy(), group.gini_sd.to_numpy()
            cut = slice(None) if last is None else slice(0, last + 1)
            ax.plot(steps[cut], mean[cut], color=COLOURS[name], lw=1.2, label=LABELS[name] + " (mean)")
            ax.fill_between(steps[cut], (mean - 2 * sd)[cut], (mean + 2 * sd)[cut], color=COLOURS[name], alpha=0.25,
                            lw=0, label=LABELS[name] + " (mean ± 2 sd)")
        ax.axhline(theory["geometric"], color="k", ls="--", lw=1, label="geometric law: 2/3")
        ax.axhline(theory["queue"], color="k", ls=":", lw=1,
                   label=f"synchronous queue law: {theory['queue']:.4f}")
        ax.axhline(theory["sequential"], color="k", ls="-.", lw=1,
                   label=f"sequential mean-field law: {theory['sequential']:.4f}")
        ax.set_xlabel("step (round)")
        ax.set_ylabel("Gini coefficient of money")
        ax.grid(alpha=0.3)
    axes[0].set_title(f"Boltzmann wealth model: Gini vs step (N = {agents}, {replicas} replicas)")
    axes[1].set_title("first 60 steps")
    axes[0].set_ylim(0.45, 0.75)
    axes[1].set_ylim(0, 0.75)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0.17, 1, 1))
    fig.legend(handles, labels, fontsize=7.5, loc="lower center", ncol=3, frameon=False)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def plot_pmf(pmfs: dict[str, np.ndarray], laws: dict[str, np.ndarray], path: Path, dpi: int = 100) -> None:
    """Stationary money PMFs of the variants with the theoretical laws overlaid."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    markers = {"engine": "o", "mesa_synchronous": "s", "mesa_sequential": "^"}
    for ax, log in zip(axes, (False, True)):
        for name, pmf in pmfs.items():
            m = np.nonzero(pmf)[0]
            ax.plot(m, pmf[m], markers[name], color=COLOURS[name], ms=5, mfc="none", label=LABELS[name])
        m = np.arange(16)
        ax.plot(m, laws["geometric"][:16], "k--", lw=1, label="geometric (1-q) q^m, q = 1/2")
        ax.plot(m, laws["queue"][:16], "k:", lw=1.3, label="synchronous queue law (mean field)")
        ax.plot(m, laws["sequential"][:16], "k-.", lw=1, label="sequential law (mean field)")
        ax.set_xlabel("money m (units)")
        ax.set_ylabel("P(m)")
        ax.grid(alpha=0.3)
        if log:
            ax.set_yscale("log")
            ax.set_ylim(1e-6, 1)
        else:
            ax.set_xlim(-0.5, 8.5)
    axes[0].set_title("Stationary money distribution (time-averaged over the window)")
    axes[1].set_title("same, log scale")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def run_all(agents: int, steps: int, replicas: int, seed: int, window_start: int | None = None,
            variants=VARIANTS, device: str | None = None, log=print) -> dict:
    """Run the variants and the analysis; returns the runs and the tables (no files)."""
    window_start = window_start if window_start is not None else max(1, steps // 2)
    runs: dict[str, VariantRun] = {}
    for name in variants:
        if name == "engine":
            runs[name] = run_engine(agents, steps, replicas, seed, window_start, device=device)
        else:
            runs[name] = run_mesa(name, agents, steps, replicas, seed, window_start)
        log(f"{name}: {runs[name].wall_time:.1f} s")
    geometric = geometric_pmf(1.0, 64)
    queue, lam = synchronous_queue_pmf(1.0, 64)
    sequential, lam_sequential = sequential_mean_field_pmf(1.0, 64)
    rows = [summarise(run, window_start) for run in runs.values()]
    for law_name, pmf, rate in (("theory_geometric", geometric, 0.5), ("theory_synchronous_queue", queue, lam),
                                ("theory_sequential_mean_field", sequential, lam_sequential)):
        mean, variance = pmf_moments(pmf)
        rows.append({"variant": law_name, "gini_stationary_mean": pmf_gini(pmf),
                     "gini_of_stationary_pmf": pmf_gini(pmf),
                     "p0_stationary": float(pmf[0]), "mean_stationary": mean, "var_stationary": variance,
                     "giving_share": rate})
    summary = pd.DataFrame(rows)
    comparisons = []
    names = list(runs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            comparisons.append(compare(runs[a], runs[b]))
    for name, run in runs.items():
        laws = (("geometric", geometric), ("synchronous_queue", queue), ("sequential_mean_field", sequential))
        for law_name, pmf in laws:
            chi2, p, dof = chi_square_law(run.final_money.ravel(), pmf)
            comparisons.append({"pair": f"{name} vs {law_name} law", "chi2": chi2, "chi2_p": p, "chi2_dof": dof})
    return {"runs": runs, "summary": summary, "comparison": pd.DataFrame(comparisons),
            "laws": {"geometric": geometric, "queue": queue, "sequential": sequential},
            "lambda": lam, "lambda_sequential": lam_sequential, "window_start": window_start}


def draw_figures(out_dir: Path, agents: int, replicas: int) -> list[Path]:
    """The two figures, from the CSV tables in ``out_dir`` (so that they can be redrawn alone)."""
    trajectories = pd.read_csv(out_dir / "gini_trajectories.csv")
    table = pd.read_csv(out_dir / "stationary_pmf.csv")
    laws = {"geometric": table.geometric.to_numpy(), "queue": table.synchronous_queue.to_numpy(),
            "sequential": table.sequential_mean_field.to_numpy()}
    theory = {"geometric": geometric_gini(1.0), "queue": pmf_gini(laws["queue"]),
              "sequential": pmf_gini(laws["sequential"])}
    pmfs = {name: table[name].to_numpy() for name in VARIANTS if name in table}
    figures = [out_dir / "gini_vs_step.png", out_dir / "money_pmf.png"]
    plot_gini(trajectories, theory, figures[0], agents, replicas)
    plot_pmf(pmfs, laws, figures[1])
    return figures


def write_outputs(result: dict, out_dir: Path, copy_figures_to: Path | None = None) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = result["runs"]
    result["summary"].to_csv(out_dir / "summary.csv", index=False)
    result["comparison"].to_csv(out_dir / "comparison.csv", index=False)
    trajectories = []
    for name, run in runs.items():
        steps = np.arange(run.gini.shape[1])
        trajectories.append(pd.DataFrame({"variant": name, "step": steps, "gini_mean": run.gini.mean(0),
                                          "gini_sd": run.gini.std(0, ddof=1) if run.gini.shape[0] > 1 else 0.0}))
    pd.concat(trajectories).to_csv(out_dir / "gini_trajectories.csv", index=False)
    pmf_table = {"money": np.arange(64), "geometric": result["laws"]["geometric"],
                 "synchronous_queue": result["laws"]["queue"], "sequential_mean_field": result["laws"]["sequential"]}
    for name, run in runs.items():
        pmf_table[name] = run.pmf_counts / run.pmf_counts.sum()
    pd.DataFrame(pmf_table).to_csv(out_dir / "stationary_pmf.csv", index=False)
    first = next(iter(runs.values()))
    figures = draw_figures(out_dir, agents=first.final_money.shape[1], replicas=first.gini.shape[0])
    if copy_figures_to is not None:
        copy_figures_to.mkdir(parents=True, exist_ok=True)
        for figure in figures:
            shutil.copy(figure, copy_figures_to / f"boltzmann_wealth_{figure.name}")
    return figures


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=ROOT / "experiments" / "results" / "boltzmann_wealth")
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--replicas", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window-start", type=int, default=None,
                        help="first step of the stationary window (default steps/2)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--device", default=None, help="engine device (default: the scenario's)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--copy-figures-to", type=Path, default=None,
                        help="also copy the PNGs here (e.g. docs/figures)")
    parser.add_argument("--replot", action="store_true", help="only redraw the figures from the CSVs in --out-dir")
    args = parser.parse_args(argv)
    if args.replot:
        figures = draw_figures(args.out_dir, args.agents, args.replicas)
        if args.copy_figures_to is not None:
            args.copy_figures_to.mkdir(parents=True, exist_ok=True)
            for figure in figures:
                shutil.copy(figure, args.copy_figures_to / f"boltzmann_wealth_{figure.name}")
        return {"figures": figures}
    torch.set_num_threads(args.threads)
    result = run_all(args.agents, args.steps, args.replicas, args.seed, args.window_start, args.variants, args.device)
    write_outputs(result, args.out_dir, args.copy_figures_to)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(result["summary"].to_string(index=False))
        print(result["comparison"].to_string(index=False))
    return result


if __name__ == "__main__":
    main()
