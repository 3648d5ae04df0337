"""The attention market's mean field against sampled ensembles (issue 8, item 3).

One population of N agents trades in the default attention market (random W_Q, W_K, W_V
with N(0, s^2/d) entries, s = ``projections.scale``, random W_O, one head, eta = 1, fields
with N(0, 0.5^2) components), d = 8, spins on the sphere of radius R = sqrt(d), the ``vmf``
response (``large_d`` where stated), float64.

Ensemble. With the quenched disorder (projections, W_O, fields) of one seed, the same
initial state x(0), the same money and the same temperatures, R replicas of the sampled mode
differ only in their dynamics streams (replica r draws from derive_seed(seed, STREAM_DYNAMICS,
r), as in any run). x(0) is the scenario's draw for replica 0 projected onto the sphere
|x_i| = R, so that it is a possible spin configuration: the sampled process then starts from
a deterministic spin state, and the mean field's spin variance (R^2 - |x|^2)/d at t = 0 is
zero, as it is in the ensemble (docs/validation.md, item 8, "What the metric compares").
The expected mode with correction ``none`` and ``tap`` starts from the same x(0).

Metric, after t rounds, per (seed, N, s, T):

    error(t)  = sqrt( 1/(N d) sum_i |m_i(t) - xbar_i(t)|^2 ),  xbar_i = (1/R) sum_r x_i^r(t),
    se(t)     = sqrt( 1/(N d) sum_i sum_c var_r(x_ic^r(t)) / R ),    the MC standard error,
    debiased  = sqrt( max(error^2 - se^2, 0) )          (E error^2 = bias^2 + se^2),

m the mean-field state. A second, low-noise estimator of E x_i(t) is the conditional mean
(Rao-Blackwell) E[x_i(t) | spins at t-1] = sum_j alpha_ij f(h_i + u_j), averaged over the
replicas (alpha, u_j = x_j W_V W_O computed from each replica's spins at t-1, f the vmf mean):
it removes the noise of the last choice and the last spin draw. After one round it is exact
(every replica has the same x(0)), so the round-1 errors need no sampling at all; the
round-1 scan over N, s and T uses it, and adds the second-order expansion of E f(theta + delta)
with the full (anisotropic) field covariance, f(theta) + Sigma_i : grad grad f / 2, of which
tap keeps only the isotropic part tr(Sigma_i)/d.

Run (12 minutes on the shared 2-core box under load, 1 torch thread; 6.5 minutes of CPU):

    python -m experiments.mean_field_accuracy --out-dir experiments/results/mean_field_accuracy

writes ``ensemble.csv`` (every seed, N, s, round), ``ensemble_summary.csv`` (means over
seeds), ``round_one.csv`` (exact round-1 errors), ``round_one_summary.csv``, ``table.md`` and
``mean_field_accuracy.png`` (copied to docs/figures). ``--quick`` runs a reduced grid
(seconds); ``--from-csv`` re-summarises and re-plots the two per-seed CSVs without running.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import pandas as pd
import torch

from econspin import Scenario
from econspin.choice import logit_rows
from econspin.economy import Economy
from econspin.fitting import shared_start
from econspin.market import project, spin_variance
from econspin.response import make_response
from econspin.round import step
from econspin.simulate import Rollout
from econspin.state import State
from experiments.figures import save_figure

DIMENSION, TEMPERATURE, SCALE, RESPONSE = 8, 1.0, 1.0, "vmf"
CORRECTIONS = ("none", "tap")


def market_scenario(agents: int, mode: str, correction: str = "none", d: int = DIMENSION,
                    temperature: float = TEMPERATURE, scale: float = SCALE, response: str = RESPONSE,
                    seed: int = 0) -> Scenario:
    """One population in the default attention market; ``scale`` is the projections' scale s."""
    return Scenario.from_dict({
        "populations": {"agents": {"count": agents, "temperature": temperature, "eta": 1.0,
                                   "projections": {"scale": scale}, "correction": {"form": correction}}},
        "market": {"d": d, "response": response, "mode": mode},
        "run": {"device": "cpu", "dtype": "float64", "seed": seed},
    })


def build(agents: int, mode: str, replicas: int = 1, correction: str = "none", on_sphere: bool = True,
          **settings) -> Rollout:
    """A rollout of ``replicas`` elements (replica indices 0..R-1), all started from the shared x(0)."""
    scenario = market_scenario(agents, mode, correction, **settings)
    rollout = Rollout.create([scenario] * replicas, list(range(replicas)), "cpu", "float64")
    rollout.state = shared_start(rollout.state, rollout.economy.radius, on_sphere)
    return rollout


def _single_head_market(state: State, economy: Economy, rows: slice):
    """Choice probabilities alpha (b, N, N) and goods u_j = x_j W_V W_O (b, N, d) of elements ``rows``, one head."""
    if economy.heads != 1 or economy.couplings is not None:
        raise ValueError("the conditional mean is written for one head of the attention market")
    x, population = state.states[rows], economy.population
    query = project(x, economy.query[rows], population)[:, 0]
    key = project(x, economy.key[rows], population)[:, 0]
    value = project(x, economy.value[rows], population)[:, 0]
    delivered = torch.einsum("bne,bed->bnd", value, economy.output[rows, 0])
    utilities = query @ key.transpose(1, 2) / math.sqrt(query.shape[-1])
    money = state.money[rows]
    premium = torch.log((money / money.mean(1, keepdim=True).clamp(min=1e-300)).clamp(min=1e-12)).to(x.dtype)
    utilities = utilities + (economy.visibility[rows, None] * premium)[:, None, :]
    agents = x.shape[1]
    allowed = economy.seller[None, :] & ~torch.eye(agents, dtype=torch.bool, device=x.device)
    if economy.trade_mask is not None:
        allowed = allowed & economy.trade_mask
    alpha = logit_rows(utilities, allowed[None], state.temperature[rows, :, None]).probabilities
    alpha = alpha * economy.buyer[None, :, None].to(alpha.dtype)
    return alpha, delivered


def conditional_mean(state: State, economy: Economy, limit: int = 2**22,
                     precision: torch.dtype = torch.float32) -> torch.Tensor:
    """E[x_i(t+1) | the spins x(t)] = sum_j alpha_ij f(h_i + (1 - eta_i) x_i + eta_i u_j), (B, N, d).

    The sampled round draws seller c_i ~ alpha_i. and then a vMF spin in the field
    h_i + (1 - eta_i) x_i + eta_i u_{c_i}; this is its exact mean given x(t) (one head, no
    couplings). Buyers without a partner (and non-buyers) feel h_i + (1 - eta_i) x_i. f is
    the vMF mean: the sampled mode draws vMF spins whatever the economy's response is. It is
    evaluated in ``precision`` (float32 by default: relative error ~1e-6).
    """
    batch, agents, d = state.states.shape
    response = make_response("vmf", d, economy.radius)  # the law the sampled mode draws, whatever f is
    chunk = max(1, limit // (agents * agents * d))
    means = []
    for start in range(0, batch, chunk):
        rows = slice(start, min(start + chunk, batch))
        alpha, delivered = _single_head_market(state, economy, rows)
        eta = economy.eta[rows]
        base = state.fields[rows] + (1.0 - eta)[..., None] * state.states[rows]
        field = base[:, :, None, :] + eta[:, :, None, None] * delivered[:, None, :, :]
        temperature = state.temperature[rows]
        # float32 Bessel ratios (relative error ~1e-6, far below the Monte Carlo noise) are 3x cheaper
        temperatures = temperature[:, :, None].expand(-1, -1, agents)
        spins = response.mean(field.to(precision), temperatures.to(precision)).to(field.dtype)
        stay = (1.0 - alpha.sum(-1)).clamp(min=0.0)
        means.append(torch.einsum("bij,bijd->bid", alpha, spins) + stay[..., None] * response.mean(base, temperature))
    return torch.cat(means)


def second_order_full_covariance(state: State, economy: Economy) -> torch.Tensor:
    """f(theta_i) + Sigma_i : grad grad f(theta_i) / 2 with the full field covariance Sigma_i, (B, N, d).

    Sigma_i = (1 - eta_i)^2 c_i I + eta_i^2 [sum_j alpha_ij (u_j - a_i)(u_j - a_i)^T
    + sum_j alpha_ij c_j G_j^T G_j], G_j = W_V^{p(j)} W_O, c_j = (R^2 - |x_j|^2)/d: the
    covariance tap reduces to tr(Sigma_i)/d. For an isotropic f(theta) = g(r) theta / r,
    r = |theta|, Sigma : grad grad f = psi'(r)/r (theta.Sigma theta) theta
    + psi(r) (tr Sigma theta + 2 Sigma theta) with psi = g'/r^2 - g/r^3; g'' by central
    differences of the response's slope.
    """
    rows = slice(0, state.states.shape[0])
    alpha, delivered = _single_head_market(state, economy, rows)
    eta, x = economy.eta, state.states
    received = torch.einsum("bij,bjd->bid", alpha, delivered)
    field = state.fields + (1.0 - eta)[..., None] * x + eta[..., None] * received
    deviation = delivered[:, None, :, :] - received[:, :, None, :]
    choice = torch.einsum("bij,bija,bijc->biac", alpha, deviation, deviation)
    c = spin_variance(x, economy.radius)
    gain = torch.einsum("bpde,bef->bpdf", economy.value[:, :, 0], economy.output[:, 0])
    gram = torch.einsum("bpdf,bpdg->bpfg", gain, gain)[:, economy.population]  # (B, N, d, d) per seller
    seller = torch.einsum("bij,bj,bjfg->bifg", alpha, c, gram)
    identity = torch.eye(x.shape[-1], dtype=x.dtype)
    sigma = ((1.0 - eta) ** 2 * c)[..., None, None] * identity + (eta**2)[..., None, None] * (choice + seller)
    response, temperature = economy.response, state.temperature
    r = torch.linalg.vector_norm(field, dim=-1)
    g = response.magnitude(r, temperature)
    slope = response.slope(r, temperature)
    step_size = 1e-4 * r
    curvature = (response.slope(r + step_size, temperature) - response.slope(r - step_size, temperature)) / (
        2 * step_size)
    psi = slope / r**2 - g / r**3
    psi_slope = curvature / r**2 - 3 * slope / r**3 + 3 * g / r**4
    quadratic = torch.einsum("bia,biac,bic->bi", field, sigma, field)
    trace = sigma.diagonal(dim1=-2, dim2=-1).sum(-1)
    pulled = torch.einsum("biac,bic->bia", sigma, field)
    correction = (psi_slope / r * quadratic)[..., None] * field + psi[..., None] * (trace[..., None] * field
                                                                                     + 2 * pulled)
    return response.mean(field, temperature) + 0.5 * correction


def rms(values: torch.Tensor) -> float:
    return float(values.pow(2).mean().sqrt())


def compare_ensemble(agents: int, replicas: int, rounds: int, seed: int = 0, temperature: float = TEMPERATURE,
                     scale: float = SCALE, response: str = RESPONSE, conditional_replicas: int | None = 1000,
                     d: int = DIMENSION) -> pd.DataFrame:
    """Per round: the errors of none and tap against the sampled ensemble (raw and conditional)."""
    settings = dict(temperature=temperature, scale=scale, response=response, seed=seed, d=d)
    started = time.perf_counter()
    ensemble = build(agents, "sampled", replicas, **settings)
    mean_field = {c: build(agents, "expected", 1, c, **settings) for c in CORRECTIONS}
    sampled, economy = ensemble.state, ensemble.economy
    states = {c: rollout.state for c, rollout in mean_field.items()}
    subset = slice(0, min(replicas, conditional_replicas or replicas))
    rows = []
    for t in range(1, rounds + 1):
        given = sampled.replace(**{name: getattr(sampled, name)[subset]
                                   for name in ("states", "fields", "money", "temperature")})
        conditional = conditional_mean(given, economy)
        sampled = step(sampled, economy)
        states = {c: step(s, mean_field[c].economy) for c, s in states.items()}
        mean = sampled.states.mean(0)
        se = (sampled.states.var(0) / replicas).mean().sqrt()
        count = conditional.shape[0]
        conditional_estimate = conditional.mean(0)
        conditional_se = (conditional.var(0) / count).mean().sqrt() if count > 1 else torch.tensor(0.0)
        row = {"seed": seed, "agents": agents, "d": d, "temperature": temperature, "scale": scale,
               "response": response, "replicas": replicas, "conditional_replicas": count, "round": t,
               "rms_magnetisation": rms(mean), "mc_se": float(se), "conditional_se": float(conditional_se),
               "exact_vs_sampled": rms(conditional_estimate - mean)}  # about mc_se: the two estimators agree
        for c, s in states.items():
            error = rms(s.states[0] - mean)
            row[f"{c}_error"] = error
            row[f"{c}_debiased"] = math.sqrt(max(error**2 - float(se) ** 2, 0.0))
            row[f"{c}_conditional"] = rms(s.states[0] - conditional_estimate)
            conditional_error = row[f"{c}_conditional"]
            row[f"{c}_conditional_debiased"] = math.sqrt(max(conditional_error**2 - float(conditional_se) ** 2, 0.0))
        rows.append(row)
    table = pd.DataFrame(rows)
    table["wall_time"] = time.perf_counter() - started
    return table


def round_one_exact(agents: int, seed: int = 0, temperature: float = TEMPERATURE, scale: float = SCALE,
                    response: str = RESPONSE, d: int = DIMENSION, on_sphere: bool = True) -> dict:
    """Round-1 errors of none, tap and the full-covariance second order against the exact E x(1)."""
    settings = dict(temperature=temperature, scale=scale, response=response, seed=seed, d=d, on_sphere=on_sphere)
    start = build(agents, "expected", 1, "none", **settings)
    exact = conditional_mean(start.state, start.economy, precision=torch.float64)[0]
    row = {"seed": seed, "agents": agents, "d": d, "temperature": temperature, "scale": scale,
           "response": response, "start": "sphere" if on_sphere else "drawn", "rms_magnetisation": rms(exact)}
    for c in CORRECTIONS:
        rollout = build(agents, "expected", 1, c, **settings)
        row[f"{c}_error"] = rms(step(rollout.state, rollout.economy).states[0] - exact)
    row["second_order_error"] = rms(second_order_full_covariance(start.state, start.economy)[0] - exact)
    return row


def summarise(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Means over seeds; ``tap_over_none`` is the mean over seeds of the per-seed ratio."""
    table = table.assign(tap_over_none=table["tap_error"] / table["none_error"])
    if "tap_conditional" in table:
        table = table.assign(tap_over_none_conditional=table["tap_conditional_debiased"]
                             / table["none_conditional_debiased"])
    numeric = [c for c in table.columns if c not in keys + ["seed", "response"] and table[c].dtype.kind in "fi"]
    summary = table.groupby(keys)[numeric].mean().reset_index()
    summary.insert(len(keys), "seeds", table.groupby(keys)["seed"].nunique().to_numpy())
    return summary


def markdown_tables(ensemble: pd.DataFrame, round_one: pd.DataFrame) -> str:
    lines = ["Sampled ensembles (means over seeds; errors RMS over agents and components):", "",
             "| N | response | s | T | round | none error | tap error | MC s.e. | none debiased | tap debiased "
             "| none vs cond. | tap vs cond. | cond. s.e. | tap/none (cond., debiased) | replicas | seeds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in ensemble.iterrows():
        lines.append(f"| {r.agents:.0f} | {r.response} | {r.scale:g} | {r.temperature:g} | {r['round']:.0f} "
                     f"| {r.none_error:.4f} | {r.tap_error:.4f} | {r.mc_se:.4f} | {r.none_debiased:.4f} "
                     f"| {r.tap_debiased:.4f} | {r.none_conditional:.4f} | {r.tap_conditional:.4f} "
                     f"| {r.conditional_se:.4f} | {r.tap_over_none_conditional:.3f} | {r.replicas:.0f} "
                     f"| {r.seeds:.0f} |")
    lines += ["", "Round 1 against the exact E x(1) (no sampling; means over seeds):", "",
              "| N | response | x(0) | s | T | none error | tap error | full-covariance 2nd order | tap/none | seeds |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in round_one.iterrows():
        lines.append(f"| {r.agents:.0f} | {r.response} | {r.start} | {r.scale:g} | {r.temperature:g} "
                     f"| {r.none_error:.5f} "
                     f"| {r.tap_error:.5f} | {r.second_order_error:.5f} | {r.tap_over_none:.3f} | {r.seeds:.0f} |")
    return "\n".join(lines) + "\n"


def plot(ensemble: pd.DataFrame, round_one: pd.DataFrame, path: Path, copy: str | None) -> None:
    """Four panels: round-1 tap/none against N and errors against s; ensembles over rounds and N."""
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(12, 9))
    exact = round_one[(round_one["response"] == RESPONSE) & (round_one["start"] == "sphere")]
    ax = axes[0, 0]
    at_unit_temperature = exact[exact["temperature"] == TEMPERATURE]
    for index, (scale, group) in enumerate(sorted(at_unit_temperature.groupby("scale"), reverse=True)):
        group = group.sort_values("agents")
        ax.semilogx(group["agents"], group["tap_over_none"], f"C{index}-o", ms=4, label=f"s={scale:g}, T=1")
    at_unit_scale = exact[(exact["scale"] == SCALE) & (exact["temperature"] != TEMPERATURE)]
    for index, (temperature, group) in enumerate(at_unit_scale.groupby("temperature")):
        group = group.sort_values("agents")
        ax.semilogx(group["agents"], group["tap_over_none"], f"C{index + 5}--s", ms=4,
                    label=f"s=1, T={temperature:g}")
    sizes = sorted(exact["agents"].unique())
    ax.set_xticks(sizes, [str(int(n)) for n in sizes])
    ax.minorticks_off()
    ax.set_ylim(0, 1)
    ax.set_xlabel("N")
    ax.set_ylabel("tap error / none error")
    ax.set_title("round 1 vs exact E x(1): tap / none against N (d = 8, vmf)", fontsize=9)
    ax.legend(fontsize=7, ncol=2)

    ax = axes[0, 1]
    largest = at_unit_temperature["agents"].max()
    weak = at_unit_temperature[at_unit_temperature["agents"] == largest].sort_values("scale")
    s = weak["scale"].to_numpy()
    for column, style, label in (("none_error", "C0--o", "none"), ("tap_error", "C1-s", "tap"),
                                 ("second_order_error", "C2-^", "2nd order, full covariance")):
        ax.loglog(s, weak[column], style, ms=5, label=label)
    ax.loglog(s, weak["tap_error"].to_numpy()[0] * (s / s[0]) ** 2, "k:", lw=0.8, label="∝ s²")
    ax.loglog(s, weak["second_order_error"].to_numpy()[0] * (s / s[0]) ** 3, "k-.", lw=0.8, label="∝ s³")
    ax.set_xticks(s, [f"{v:g}" for v in s])
    ax.minorticks_off()
    ax.set_xlabel("projection scale s (coupling)")
    ax.set_ylabel("RMS error vs exact E x(1)")
    ax.set_title(f"round 1: error against coupling (N = {largest:.0f}, T = 1, mean of seeds)", fontsize=9)
    ax.legend(fontsize=7)

    sampled = ensemble[ensemble["response"] == RESPONSE]
    ax = axes[1, 0]
    sizes = sorted(sampled["agents"].unique())
    shown = [sizes[0], sizes[-1]] if len(sizes) > 1 else sizes
    for index, ((scale, agents), group) in enumerate(
            (key, group) for key, group in sampled.groupby(["scale", "agents"]) if key[1] in shown):
        group = group.sort_values("round")
        for column, style in (("none", "--o"), ("tap", "-s")):
            ax.semilogy(group["round"], group[f"{column}_conditional"], f"C{index}{style}", ms=4,
                        label=f"{column}, s={scale:g}, N={agents}")
        ax.semilogy(group["round"], group["conditional_se"].where(group["conditional_se"] > 0), f"C{index}:", lw=1)
    ax.set_xticks(sorted(sampled["round"].unique()))
    ax.set_xlabel("round")
    ax.set_ylabel("RMS error vs ensemble (conditional) mean")
    replicas = int(sampled["replicas"].max()) if len(sampled) else 0
    ax.set_title(f"sampled ensembles ({replicas} replicas; dotted: s.e. of the conditional mean)", fontsize=9)
    ax.legend(fontsize=7, ncol=2)

    ax = axes[1, 1]
    for index, (scale, group) in enumerate(sampled.groupby("scale")):
        for style, (t, rounds) in zip(("-o", "--s", ":^", "-.v", "-x", "--+"), group.groupby("round")):
            rounds = rounds.sort_values("agents")
            ax.semilogx(rounds["agents"], rounds["tap_over_none_conditional"], f"C{index}{style}", ms=4,
                        label=f"s={scale:g}, round {t}")
    ax.set_xticks(sizes, [str(int(n)) for n in sizes])
    ax.minorticks_off()
    ax.set_ylim(0, 1)
    ax.set_xlabel("N")
    ax.set_ylabel("tap error / none error (debiased, vs conditional mean)")
    ax.set_title("sampled ensembles: tap / none against N (mean of seeds)", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    save_figure(figure, path, copy)


def report(ensemble: pd.DataFrame, round_one: pd.DataFrame, out: Path, rounds: int, copy: str | None) -> str:
    """Summaries, table.md and the figure from the per-seed tables; returns the markdown."""
    round_one_summary = summarise(round_one, ["response", "start", "temperature", "scale", "agents"])
    round_one_summary.to_csv(out / "round_one_summary.csv", index=False)
    ensemble_summary = summarise(ensemble, ["response", "temperature", "scale", "agents", "round"])
    ensemble_summary.to_csv(out / "ensemble_summary.csv", index=False)
    shown = ensemble_summary[ensemble_summary["round"].isin(sorted({1, 2, rounds}))]
    text = markdown_tables(shown, round_one_summary)
    (out / "table.md").write_text(text)
    plot(ensemble_summary, round_one_summary, out / "mean_field_accuracy.png", copy)
    return text


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=Path("experiments/results/mean_field_accuracy"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 0.5], help="ensemble couplings s")
    parser.add_argument("--replicas", type=int, default=4000)
    parser.add_argument("--conditional-replicas", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=3, help="disorder realisations (run.seed 0..n-1)")
    parser.add_argument("--large-d-size", type=int, default=16, help="N of the one large_d ensemble (seed 0)")
    parser.add_argument("--exact-sizes", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256])
    parser.add_argument("--exact-scales", type=float, nargs="+", default=[2.0, 1.0, 0.5, 0.25, 0.125])
    parser.add_argument("--exact-temperatures", type=float, nargs="+", default=[0.5, 2.0, 4.0])
    parser.add_argument("--exact-seeds", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="a reduced grid that runs in seconds")
    parser.add_argument("--from-csv", action="store_true",
                        help="re-summarise and re-plot ensemble.csv and round_one.csv without running")
    parser.add_argument("--figure-copy", default="docs/figures/mean_field_accuracy.png",
                        help="second copy of the figure; '' for none")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (small tensors: 1 is fastest)")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.scales, args.replicas, args.conditional_replicas = [8, 16], [1.0], 400, 200
        args.rounds, args.seeds, args.exact_sizes, args.exact_scales = 2, 1, [8, 32], [1.0, 0.25]
        args.exact_temperatures, args.exact_seeds = [2.0], 2
        if args.figure_copy == parser.get_default("figure_copy"):
            args.figure_copy = ""
    torch.set_num_threads(max(1, args.threads))
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    if args.from_csv:
        ensemble = pd.read_csv(out / "ensemble.csv")
        print(report(ensemble, pd.read_csv(out / "round_one.csv"), out, int(ensemble["round"].max()),
                     args.figure_copy))
        return

    started = time.perf_counter()
    points = [(TEMPERATURE, s, RESPONSE, True) for s in args.exact_scales]
    points += [(t, SCALE, RESPONSE, True) for t in args.exact_temperatures]
    points += [(TEMPERATURE, SCALE, "large_d", True), (TEMPERATURE, SCALE, RESPONSE, False)]
    round_one = pd.DataFrame([
        round_one_exact(agents, seed, temperature, scale, response, on_sphere=on_sphere)
        for temperature, scale, response, on_sphere in points
        for agents in args.exact_sizes
        for seed in range(args.exact_seeds)
    ])
    exact_time = time.perf_counter() - started
    round_one.to_csv(out / "round_one.csv", index=False)

    started = time.perf_counter()
    tables = []
    runs = [(scale, agents, seed, RESPONSE) for scale in args.scales for agents in args.sizes
            for seed in range(args.seeds)]
    runs.append((SCALE, args.large_d_size, 0, "large_d"))
    for scale, agents, seed, response in runs:
        tables.append(compare_ensemble(agents, args.replicas, args.rounds, seed, scale=scale, response=response,
                                       conditional_replicas=args.conditional_replicas))
        last = tables[-1].iloc[-1]
        print(f"{response} s={scale:g} N={agents} seed={seed}: round {args.rounds} none {last.none_error:.4f} "
              f"tap {last.tap_error:.4f} se {last.mc_se:.4f} ({last.wall_time:.1f} s)", flush=True)
    ensemble = pd.concat(tables, ignore_index=True)
    ensemble_time = time.perf_counter() - started
    ensemble.to_csv(out / "ensemble.csv", index=False)
    print(report(ensemble, round_one, out, args.rounds, args.figure_copy))
    print(f"wall time: round-1 exact {exact_time:.1f} s, ensembles {ensemble_time:.1f} s")


if __name__ == "__main__":
    main()
