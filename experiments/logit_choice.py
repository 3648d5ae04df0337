"""Logit choice: the engine's sampled choices follow the softmax; its inclusive value is McFadden's.

Three checks (MODEL.md, "Known limits the code must reproduce": Logit):

1. ``frequencies``: for fixed utilities u_j over K options (one option disallowed) and several
   temperatures from T = 0.01 to T = 100, draws of ``econspin.choice.sample_choice`` (inversion,
   what the round uses) and ``econspin.choice.gumbel_max_choice`` (argmax_j u_j / T + g_j, the
   random-utility model) are compared with alpha = ``logit_rows(...).probabilities`` by a
   chi-square goodness-of-fit test (cells with expected count < 5 merged; a draw of a
   disallowed or zero-probability option fails the check outright).
2. ``inclusive_value``: ``logit_rows(...).inclusive_value`` = T log sum_j exp(u_j / T) (the
   engine's consumer surplus) against the Monte Carlo mean of max_j (u_j + T g_j) minus
   T * 0.5772 (Euler's constant), g ~ Gumbel(0, 1) i.i.d.; the z-score uses the Monte Carlo
   standard error. (max_j (u_j + T g_j) is exactly Gumbel with location T logsumexp(u / T),
   so the two agree in expectation at every T.)
3. ``engine``: end to end. A market of buyer populations at different temperatures and one
   seller population, random projections. From one fixed state, many replicas each play one
   sampled-mode round (``econspin.round.step``); each buyer's money is 2^k and it spends all
   of it (spend 1), so every seller's revenue, a sum of distinct powers of two, tells exactly
   which buyers chose it. The empirical frequencies are compared with each buyer's
   expected-mode alpha row, read from the engine's own expected-mode ``trade`` on the same
   state (one-hot money: revenue_j / spend = alpha_ij).

Command::

    python -m experiments.logit_choice --out-dir experiments/results/logit_choice

writes ``frequencies.csv``, ``inclusive_value.csv``, ``engine_rows.csv``, ``summary.csv`` and
``logit_choice.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shutil
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from scipy import stats  # noqa: E402

from econspin import Scenario  # noqa: E402
from econspin.choice import EULER_GAMMA, gumbel_max_choice, logit_rows, sample_choice  # noqa: E402
from econspin.market import trade  # noqa: E402
from econspin.round import step  # noqa: E402
from econspin.simulate import Rollout  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TEMPERATURES = (0.01, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0)
IV_TEMPERATURES = (1e-3, 0.01, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0, 1000.0)
BUYER_TEMPERATURES = {"cold": 0.05, "cool": 0.3, "warm": 1.0, "hot": 5.0}


def test_utilities(options: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed utilities u_j ~ N(0, 1) (float64) and the allowed mask (the last option disallowed)."""
    generator = torch.Generator().manual_seed(seed)
    utilities = torch.randn(options, generator=generator, dtype=torch.float64)
    allowed = torch.ones(options, dtype=torch.bool)
    allowed[-1] = False
    return utilities, allowed


def chi_square_fit(counts: np.ndarray, probabilities: np.ndarray, minimum: float = 5.0) -> dict:
    """Chi-square goodness of fit; cells with expected count < ``minimum`` merged (smallest first).

    A count in a cell of probability 0 is an outright failure (p = 0).
    """
    n = counts.sum()
    impossible = int(counts[probabilities <= 0].sum())
    keep = probabilities > 0
    observed, expected = counts[keep].astype(float), probabilities[keep] * n
    order = np.argsort(expected)
    observed, expected = observed[order], expected[order]
    # merge the smallest cells together until the pooled cell reaches the minimum
    while expected.size > 1 and expected[0] < minimum:
        observed = np.concatenate([[observed[0] + observed[1]], observed[2:]])
        expected = np.concatenate([[expected[0] + expected[1]], expected[2:]])
        order = np.argsort(expected)
        observed, expected = observed[order], expected[order]
    cells = expected.size
    if cells < 2:
        statistic, p = 0.0, 1.0
    else:
        statistic, p = stats.chisquare(observed, expected * observed.sum() / expected.sum())
    if impossible:
        p = 0.0
    return {"chi2": float(statistic), "dof": cells - 1, "p": float(p), "impossible_draws": impossible}


def check_frequencies(draws: int, temperatures=TEMPERATURES, seed: int = 0) -> pd.DataFrame:
    """Check 1: sample_choice and gumbel_max_choice against the softmax, per temperature."""
    utilities, allowed = test_utilities(seed=seed)
    options = utilities.numel()
    rows = []
    generator = torch.Generator().manual_seed(seed + 1)
    for temperature in temperatures:
        t = torch.tensor([[temperature]], dtype=torch.float64)
        alpha = logit_rows(utilities[None, :], allowed[None, :], t).probabilities[0]
        uniforms = torch.rand(draws, generator=generator, dtype=torch.float64)
        inversion = sample_choice(alpha.expand(draws, options), uniforms)
        gumbel = gumbel_max_choice(utilities.expand(draws, options), allowed.expand(draws, options),
                                   t, generator=generator)
        for method, picks in (("sample_choice", inversion), ("gumbel_max_choice", gumbel)):
            counts = np.bincount(picks.numpy(), minlength=options)
            fit = chi_square_fit(counts, alpha.numpy())
            frequencies = counts / draws
            rows.append({"temperature": temperature, "method": method, "draws": draws,
                         "max_abs_deviation": float(np.abs(frequencies - alpha.numpy()).max()),
                         "alpha_max": float(alpha.max()), **fit,
                         **{f"freq_{j}": frequencies[j] for j in range(options)},
                         **{f"alpha_{j}": float(alpha[j]) for j in range(options)}})
    return pd.DataFrame(rows)


def check_inclusive_value(draws: int, temperatures=IV_TEMPERATURES, seed: int = 0) -> pd.DataFrame:
    """Check 2: T logsumexp(u / T) (engine) against E max_j (u_j + T g_j) - T gamma (Monte Carlo)."""
    utilities, allowed = test_utilities(seed=seed)
    live = utilities[allowed]
    generator = torch.Generator().manual_seed(seed + 2)
    rows = []
    for temperature in temperatures:
        t = torch.tensor([[temperature]], dtype=torch.float64)
        engine = float(logit_rows(utilities[None, :], allowed[None, :], t).inclusive_value[0])
        direct = float(temperature * torch.logsumexp(live / temperature, dim=0))
        uniform = torch.rand(draws, live.numel(), generator=generator, dtype=torch.float64)
        gumbel = -torch.log(-torch.log(uniform.clamp(min=1e-300)))
        maxima = (live[None, :] + temperature * gumbel).max(dim=1).values
        monte_carlo = float(maxima.mean()) - temperature * EULER_GAMMA
        standard_error = float(maxima.std()) / math.sqrt(draws)
        rows.append({"temperature": temperature, "draws": draws, "engine_inclusive_value": engine,
                     "direct_T_logsumexp": direct, "monte_carlo_mean_max_minus_T_gamma": monte_carlo,
                     "standard_error": standard_error, "difference": monte_carlo - engine,
                     "z": (monte_carlo - engine) / standard_error if standard_error > 0 else 0.0,
                     "relative_difference": (monte_carlo - engine) / abs(engine),
                     "max_u": float(live.max())})
    return pd.DataFrame(rows)


def engine_scenario(buyers_per_population: int = 3, sellers: int = 10, seed: int = 0) -> Scenario:
    populations = {
        name: {"count": buyers_per_population, "temperature": temperature, "spend": 1.0, "sells": False,
               "projections": {"scale": 2.0}}
        for name, temperature in BUYER_TEMPERATURES.items()
    }
    populations["sellers"] = {"count": sellers, "buys": False, "projections": {"scale": 2.0}}
    return Scenario.from_dict({
        "name": "logit_check",
        "populations": populations,
        "market": {"d": 4, "mode": "sampled", "response": "sphere", "spend_rule": "share"},
        "run": {"seed": seed, "device": "cpu", "dtype": "float64"},
    })


def check_engine(replicas: int, repeats: int, seed: int = 0, buyers_per_population: int = 3,
                 sellers: int = 10) -> tuple[pd.DataFrame, dict]:
    """Check 3: sampled-mode rounds from one fixed state against the expected-mode alpha rows."""
    scenario = engine_scenario(buyers_per_population, sellers, seed)
    rollout = Rollout.create([scenario] * replicas, list(range(replicas)), "cpu", "float64")
    economy, state = rollout.economy, rollout.state
    buyers = torch.nonzero(economy.buyer).squeeze(1)
    seller_index = torch.nonzero(economy.seller).squeeze(1)
    nb = buyers.numel()
    if nb > 50:
        raise ValueError("at most 50 buyers: revenues must stay exact sums of powers of two")
    # one fixed state for every replica: replica 0's states; buyer k holds 2^k and spends it all
    states = state.states[:1].expand_as(state.states).clone()
    money = torch.zeros_like(state.money)
    money[:, buyers] = 2.0 ** torch.arange(nb, dtype=torch.float64)
    fixed = state.replace(states=states, money=money)

    # the expected-mode alpha rows, from the engine's own trade() on the same state
    expected_economy = dataclasses.replace(economy, mode="expected")
    one_hot = torch.zeros_like(money)
    element = torch.arange(min(nb, replicas))
    one_hot[element, buyers[element]] = 1.0
    outcome = trade(fixed.replace(money=one_hot), expected_economy)
    alpha = outcome.revenue[element][:, seller_index].numpy()  # (nb, S), rows sum to 1
    temperatures = fixed.temperature[0, buyers].numpy()

    counts = np.zeros((nb, seller_index.numel()), dtype=np.int64)
    bits = 2 ** np.arange(nb)
    started = time.perf_counter()
    with torch.no_grad():
        for repeat in range(repeats):
            # the same state played as round ``repeat``: fresh counter-based draws each time
            after = step(fixed.replace(round=repeat), economy)
            revenue = np.rint(after.revenue[:, seller_index].numpy()).astype(np.int64)  # (R, S)
            chosen = (revenue[:, :, None] & bits[None, None, :]) > 0  # (R, S, nb)
            counts += chosen.sum(axis=0).T
    wall = time.perf_counter() - started
    draws = replicas * repeats
    assert np.all(counts.sum(axis=1) == draws), "every buyer must choose exactly one seller per round"
    rows = []
    for k in range(nb):
        fit = chi_square_fit(counts[k], alpha[k])
        population = economy.population_names[int(economy.population[buyers[k]])]
        rows.append({"buyer": int(buyers[k]), "population": population,
                     "temperature": float(temperatures[k]), "draws": draws,
                     "max_abs_deviation": float(np.abs(counts[k] / draws - alpha[k]).max()),
                     "alpha_max": float(alpha[k].max()), **fit,
                     **{f"freq_{j}": counts[k, j] / draws for j in range(alpha.shape[1])},
                     **{f"alpha_{j}": alpha[k, j] for j in range(alpha.shape[1])}})
    table = pd.DataFrame(rows)
    pooled_chi2 = float(table["chi2"].sum())
    pooled_dof = int(table["dof"].sum())
    info = {"draws_per_buyer": draws, "buyers": nb, "sellers": int(seller_index.numel()), "wall_s": wall,
            "pooled_chi2": pooled_chi2, "pooled_dof": pooled_dof,
            "pooled_p": float(stats.chi2.sf(pooled_chi2, pooled_dof))}
    return table, info


def plot(frequencies: pd.DataFrame, inclusive: pd.DataFrame, engine: pd.DataFrame, path: Path, dpi: int = 100) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    ax = axes[0]
    options = len([c for c in frequencies.columns if c.startswith("alpha_") and c[6:].isdigit()])
    inversion = frequencies[frequencies.method == "sample_choice"]
    cmap = plt.get_cmap("viridis")
    for index, (_, row) in enumerate(inversion.iterrows()):
        colour = cmap(index / max(1, len(inversion) - 1))
        j = np.arange(options)
        ax.plot(j, [row[f"alpha_{k}"] for k in j], "-", color=colour, lw=1, label=f"softmax, T = {row.temperature:g}")
        ax.plot(j, [row[f"freq_{k}"] for k in j], "o", color=colour, mfc="none", ms=5)
    ax.set_xlabel("option j (the last one disallowed)")
    ax.set_ylabel("probability / sampled frequency")
    ax.set_title("sample_choice frequencies (o) vs softmax (lines)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)

    ax = axes[1]
    t = inclusive.temperature.to_numpy()
    ax.plot(t, inclusive.z, "o",
            label="z = (MC mean of max_j(u_j + T g_j) - T γ\n       - T logsumexp(u/T)) / standard error")
    ax.axhline(0, color="k", lw=1)
    ax.axhspan(-2, 2, color="grey", alpha=0.2, label="|z| < 2")
    ax.set_xscale("log")
    ax.set_ylim(-4, 4)
    ax.set_xlabel("temperature T")
    ax.set_ylabel("z-score of the difference")
    ax.set_title("Inclusive value: engine vs McFadden (Monte Carlo)")
    ax.legend(fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)

    ax = axes[2]
    sellers = len([c for c in engine.columns if c.startswith("alpha_") and c[6:].isdigit()])
    for name, group in engine.groupby("population", sort=False):
        a = group[[f"alpha_{j}" for j in range(sellers)]].to_numpy().ravel()
        f = group[[f"freq_{j}" for j in range(sellers)]].to_numpy().ravel()
        ax.plot(a, f, "o", ms=4, mfc="none", label=f"buyers '{name}', T = {group.temperature.iloc[0]:g}")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="frequency = alpha")
    ax.set_xscale("symlog", linthresh=1e-3)
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_xlabel("expected-mode alpha_ij (engine trade)")
    ax.set_ylabel("sampled-mode frequency (engine rounds)")
    ax.set_title(f"Engine end to end: {int(engine.draws.iloc[0])} rounds per buyer")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def run_all(draws: int, iv_draws: int, replicas: int, repeats: int, seed: int = 0) -> dict:
    started = time.perf_counter()
    frequencies = check_frequencies(draws, seed=seed)
    frequency_wall = time.perf_counter() - started
    started = time.perf_counter()
    inclusive = check_inclusive_value(iv_draws, seed=seed)
    inclusive_wall = time.perf_counter() - started
    engine, info = check_engine(replicas, repeats, seed=seed)
    summary = pd.DataFrame([
        {"check": "frequencies (sample_choice, gumbel_max_choice) vs softmax",
         "cases": len(frequencies), "min_p": float(frequencies.p.min()),
         "max_abs_deviation": float(frequencies.max_abs_deviation.max()),
         "impossible_draws": int(frequencies.impossible_draws.sum()), "wall_s": frequency_wall},
        {"check": "inclusive value: T logsumexp(u/T) vs MC E max(u + T g) - T gamma",
         "cases": len(inclusive), "max_abs_z": float(inclusive.z.abs().max()),
         "max_abs_relative_difference": float(inclusive.relative_difference.abs().max()),
         "max_engine_vs_direct": float((inclusive.engine_inclusive_value - inclusive.direct_T_logsumexp).abs().max()),
         "wall_s": inclusive_wall},
        {"check": "engine: sampled-round frequencies vs expected-mode alpha rows",
         "cases": len(engine), "min_p": float(engine.p.min()), "pooled_chi2": info["pooled_chi2"],
         "pooled_dof": info["pooled_dof"], "pooled_p": info["pooled_p"],
         "max_abs_deviation": float(engine.max_abs_deviation.max()),
         "impossible_draws": int(engine.impossible_draws.sum()), "wall_s": info["wall_s"]},
    ])
    return {"frequencies": frequencies, "inclusive": inclusive, "engine": engine, "engine_info": info,
            "summary": summary}


def write_outputs(result: dict, out_dir: Path, copy_figures_to: Path | None = None) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    result["frequencies"].to_csv(out_dir / "frequencies.csv", index=False)
    result["inclusive"].to_csv(out_dir / "inclusive_value.csv", index=False)
    result["engine"].to_csv(out_dir / "engine_rows.csv", index=False)
    result["summary"].to_csv(out_dir / "summary.csv", index=False)
    figure = out_dir / "logit_choice.png"
    plot(result["frequencies"], result["inclusive"], result["engine"], figure)
    if copy_figures_to is not None:
        copy_figures_to.mkdir(parents=True, exist_ok=True)
        shutil.copy(figure, copy_figures_to / figure.name)
    return figure


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=ROOT / "experiments" / "results" / "logit_choice")
    parser.add_argument("--draws", type=int, default=200_000, help="choice draws per temperature and method")
    parser.add_argument("--iv-draws", type=int, default=200_000, help="Monte Carlo draws per temperature")
    parser.add_argument("--replicas", type=int, default=1000, help="engine: replicas per round")
    parser.add_argument("--repeats", type=int, default=20, help="engine: rounds from the fixed state")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--copy-figures-to", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run_all(args.draws, args.iv_draws, args.replicas, args.repeats, args.seed)
    write_outputs(result, args.out_dir, args.copy_figures_to)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        fit = ["alpha_max", "max_abs_deviation", "chi2", "dof", "p"]
        print(result["frequencies"][["temperature", "method", *fit]].to_string(index=False))
        print(result["inclusive"][["temperature", "engine_inclusive_value", "monte_carlo_mean_max_minus_T_gamma",
                                   "standard_error", "z"]].to_string(index=False))
        print(result["engine"][["buyer", "population", "temperature", *fit]].to_string(index=False))
        print(result["summary"].to_string(index=False))
    return result


if __name__ == "__main__":
    main()
