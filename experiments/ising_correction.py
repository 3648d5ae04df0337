"""The fitted ffn self-impact correction on the d = 1 kinetic Ising benchmark (issue 12, part 1).

The benchmark of ``experiments.kinetic_ising`` (Aguilera, Moosavi & Shimazaki 2021: N = 512,
asymmetric J, 128 parallel Glauber steps from all +1) asks how closely a mean field follows
the Monte Carlo magnetisations m_i(t). The naive mean field (nmf, correction ``none``) and
TAP (``tap``, Plefka[t-1,t] at second order) are fixed formulas; here the ``ffn`` correction
is fitted to Monte Carlo with :func:`econspin.fitting.fit_correction` (teacher-forced
windows through the expected-mode rollout) and scored against Monte Carlo it never saw:

- Target. Monte Carlo in the engine's sampled mode, m_i(t) estimated by the conditional
  expectation (1/R) sum_r tanh(beta (H_i + sum_j J_ij s^r_j(t-1))), in K equal blocks of
  repetitions (independent replica ranges). The fit reads the Monte Carlo of run seed 1
  (``TRAINING_SEED``), every score that of run seed 0 (``EVALUATION_SEED``, the seed of
  ``experiments.kinetic_ising``): independent sampling noise, so a fit of the sample rather
  than of E s(t) would show.
- Fits. One fit per group in ``--fit-betas`` (a group is one beta, or several joined by commas,
  ``0.85,1.15``: one correction fitted to the Monte Carlo of all of them at once, each an
  ensemble of :func:`econspin.fitting.fit_correction`), each scored at every beta of
  ``--betas``: at a beta it was fitted at the score is on held-out replicas, at the others it
  is a transfer to a temperature the fit never saw.
- Features (``--features``). ``invariant`` (:class:`~econspin.corrections.InvariantFeedForwardCorrection`):
  the network reads |theta_i|, m_i, tap's coefficient rho_i / (1 + rho_i) and T_i / (1 + T_i)
  among its eight scalars and gates a_i theta_i + b_i x_i, so its shift can carry the
  temperature as tap's does. ``state`` (the first form): a function of x_i = m_i(t - 1) alone
  here (V_i and kappa_i are 0 with fixed couplings), blind to beta.
- Score. eps_m = (1/T) sum_t mean_i (m_i(t) - m_i^MC(t))^2 as in ``experiments.kinetic_ising``,
  its Monte Carlo floor (the mean variance of m^MC, which adds to eps_m in expectation), and
  the jackknife standard error of eps_m over the K blocks (the Monte Carlo error bar).

Usage::

    python -m experiments.ising_correction --threads 1 --figure-copy docs/figures/ising_correction_invariant.png
    python -m experiments.ising_correction --features state --fit-betas 1.0   # the first form, at beta_c
"""

from __future__ import annotations

import argparse
import csv
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from econspin.fitting import Ensemble, Fit, compiled, fit_correction, fitting_scenario, mean_field_trajectory, with_ffn
from econspin.simulate import Rollout
from experiments import kinetic_ising as ki
from experiments.figures import save_figure

BETAS = (0.7, 0.85, 1.0, 1.15, 1.3)  # beta / beta_c: the sweep's range, evenly, beta_c in the middle
# One correction fitted over 0.85 and 1.15 (held out: 0.7, beta_c, 1.3), and one at beta_c alone;
# the first group is the transfer fit drawn in the figure's middle and right panels.
FIT_BETAS = ((0.85, 1.15), (1.0,))
FEATURES = ("invariant", "state")  # the first is the default
TRAINING_SEED = 1
EVALUATION_SEED = ki.DEFAULT_SEED
BLOCKS = 10
DEFAULT_REPETITIONS = 1000
DEFAULT_EPOCHS = 150  # the measured runs (docs/validation_ising.md 3)
DEFAULT_WINDOW = 8
DEFAULT_HIDDEN = 16
MEAN_FIELDS = {"nmf": "none", "tap": "tap"}


@dataclass(frozen=True)
class MonteCarlo:
    """Glauber Monte Carlo of one beta, kept per block of repetitions.

    Attributes:
        beta: the inverse temperature.
        block_means: (K, T, N) the mean conditional expectation of each block, row t-1 for step t.
        noise: (T, N) the variance of the mean over all K blocks, Var_r[tanh(...)] / R.
        repetitions: R, all blocks together.
    """

    beta: float
    block_means: np.ndarray
    noise: np.ndarray
    repetitions: int

    @property
    def mean(self) -> np.ndarray:
        """(T, N) m^MC(t), the mean over all repetitions."""
        return self.block_means.mean(0)

    @property
    def floor(self) -> float:
        """The Monte Carlo part of eps_m: the mean over (t, i) of the variance of m^MC."""
        return float(self.noise.mean())


def sample(beta: float, repetitions: int, seed: int, blocks: int = BLOCKS, steps: int = ki.STEPS,
           path: Path | str = ki.DATA) -> MonteCarlo:
    """Monte Carlo of ``repetitions`` (a multiple of ``blocks``) in blocks of consecutive replicas."""
    if repetitions % blocks:
        raise ValueError(f"repetitions {repetitions} is not a multiple of the {blocks} blocks")
    size = repetitions // blocks
    means, noises = zip(*(ki.monte_carlo(beta, size, steps, seed, path, first_replica=k * size)
                          for k in range(blocks)))
    # Each block's noise is its variance / size; the mean of K blocks has 1/K of their mean.
    return MonteCarlo(beta, np.stack(means), np.mean(noises, axis=0) / blocks, repetitions)


def ensemble(monte_carlo: MonteCarlo, path: Path | str = ki.DATA) -> Ensemble:
    """The fitting module's target: the expected-mode Ising scenario, x(0) = +1, xbar(t) = m^MC(t)."""
    size = monte_carlo.mean.shape[1]
    # The scenario's run seed draws only the fit's starting weights (the expected mode draws nothing).
    scenario = fitting_scenario(ki.ising_scenario(monte_carlo.beta, size, path=path, seed=TRAINING_SEED))
    start = Rollout.create([scenario], [0], "cpu", "float64").state
    mean = torch.from_numpy(monte_carlo.mean)[..., None]
    states = torch.cat([start.states[0][None], mean])
    money = start.money[0].expand(states.shape[0], -1).clone()  # the Ising scenario trades nothing
    return Ensemble(scenario, start, states, money, torch.from_numpy(monte_carlo.noise.mean(1)),
                    monte_carlo.repetitions)


def trajectories(target: Ensemble, fits: dict[str, Fit]) -> dict[str, np.ndarray]:
    """(T, N) m(t) of nmf, tap and each fitted ffn (by label) from x(0), at the target's beta."""
    with torch.no_grad():
        found = {name: mean_field_trajectory(target, compiled(target, correction))
                 for name, correction in MEAN_FIELDS.items()}
        base = compiled(target)
        found.update({label: mean_field_trajectory(target, with_ffn(base, fit.weights, fit.features))
                      for label, fit in fits.items()})
    return {label: values[..., 0].numpy() for label, values in found.items()}


def magnetisation_error(trajectory: np.ndarray, monte_carlo: MonteCarlo) -> dict[str, float]:
    """eps_m against m^MC, eps_m minus the Monte Carlo floor, and its jackknife standard error over blocks."""
    eps = ki.squared_error(trajectory, monte_carlo.mean)
    error = jackknife_error(leave_one_out_errors(trajectory, monte_carlo))
    return {"eps_m": eps, "eps_m_minus_floor": eps - monte_carlo.floor, "standard_error": error}


def leave_one_out_errors(trajectory: np.ndarray, monte_carlo: MonteCarlo) -> np.ndarray:
    """(K,) eps_m against the mean of all blocks but block k."""
    blocks = monte_carlo.block_means.shape[0]
    total = monte_carlo.block_means.sum(0)
    return np.array([ki.squared_error(trajectory, (total - block) / (blocks - 1))
                     for block in monte_carlo.block_means])


def jackknife_error(leave_one_out: np.ndarray) -> float:
    blocks = len(leave_one_out)
    return float(np.sqrt((blocks - 1) / blocks * ((leave_one_out - leave_one_out.mean()) ** 2).sum()))


def difference_to_tap(trajectory: np.ndarray, tap: np.ndarray, monte_carlo: MonteCarlo) -> dict[str, float]:
    """eps_m - eps_m(tap) against the same Monte Carlo, with the jackknife error of the difference itself.

    Both errors move together with the Monte Carlo's collective mode, so the paired error bar
    is smaller than the two bars added: it is the one that says whether a method beats tap.
    """
    difference = ki.squared_error(trajectory, monte_carlo.mean) - ki.squared_error(tap, monte_carlo.mean)
    paired = leave_one_out_errors(trajectory, monte_carlo) - leave_one_out_errors(tap, monte_carlo)
    return {"minus_tap": difference, "minus_tap_standard_error": jackknife_error(paired)}


def implied_shift(trajectory: np.ndarray, beta: float, path: Path | str = ki.DATA) -> np.ndarray:
    """(T - 1, N) s_i(t) = theta_i(t) - T artanh m_i(t), theta_i(t) = H_i + sum_j J_ij m_j(t - 1).

    The shift subtracted from the field that maps m(t - 1) to m(t) through tanh: beta sigma^2 m
    for TAP, the network's output for the ffn, and for Monte Carlo the one-step correction
    that would have reproduced it exactly.
    """
    fields, couplings = ki.load_parameters(path)
    theta = fields + trajectory[:-1] @ couplings.T
    return theta - np.arctanh(np.clip(trajectory[1:], -1 + 1e-15, 1 - 1e-15)) / beta


def fit_at(beta_rels: float | tuple[float, ...], repetitions: int, epochs: int, window: int = DEFAULT_WINDOW,
           hidden: int = DEFAULT_HIDDEN, steps: int = ki.STEPS, path: Path | str = ki.DATA,
           blocks: int = BLOCKS, features: str = "state", training: dict | None = None) -> Fit:
    """One ffn fitted to the Monte Carlo of the training seed at every beta = beta_rel * beta_c at once.

    The loss is the mean of the betas' teacher-forced losses. ``training`` caches each beta's
    Monte Carlo (by beta_rel) across fits. The default features stay ``state``, as in
    :func:`econspin.fitting.fit_correction`; the command's default is ``invariant``.
    """
    training = {} if training is None else training
    targets = {}
    for beta_rel in fit_group(beta_rels):
        if beta_rel not in training:
            training[beta_rel] = ensemble(sample(beta_rel * ki.BETA_C, repetitions, TRAINING_SEED, blocks, steps,
                                                 path), path)
        targets[f"{beta_rel:g}"] = training[beta_rel]
    return fit_correction(targets, {}, epochs, window, hidden, features=features)


def fit_group(beta_rels: float | tuple[float, ...]) -> tuple[float, ...]:
    return tuple(beta_rels) if isinstance(beta_rels, tuple | list) else (beta_rels,)


def fit_label(beta_rels: float | tuple[float, ...]) -> str:
    """``ffn@1`` for a fit at beta_c, ``ffn@0.85+1.15`` for one fit over two beta."""
    return "ffn@" + "+".join(f"{beta_rel:g}" for beta_rel in fit_group(beta_rels))


def fitted_betas(label: str) -> tuple[float, ...]:
    """The beta / beta_c a fit's label names (empty for nmf and tap)."""
    return tuple(float(value) for value in label[len("ffn@"):].split("+")) if label.startswith("ffn@") else ()


def compare(out_dir: Path, betas=BETAS, fit_betas=FIT_BETAS, repetitions: int = DEFAULT_REPETITIONS,
            training_repetitions: int = DEFAULT_REPETITIONS, epochs: int = DEFAULT_EPOCHS,
            window: int = DEFAULT_WINDOW, hidden: int = DEFAULT_HIDDEN, steps: int = ki.STEPS,
            path: Path | str = ki.DATA, blocks: int = BLOCKS, figure_copy: Path | None = None,
            features: str = FEATURES[0], log=partial(print, flush=True)) -> list[dict]:
    """One fit per group of ``fit_betas``; score nmf, tap and every fit at each of ``betas``; CSV and figure."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fits, timings, training = {}, {}, {}
    for group in fit_betas:
        label = fit_label(group)
        started = time.perf_counter()
        fits[label] = fit_at(group, training_repetitions, epochs, window, hidden, steps, path, blocks, features,
                             training)
        timings[label] = time.perf_counter() - started
        losses = fits[label].losses
        log(f"fit at beta/beta_c = {label[4:]} ({features}): loss {losses[0]:.3e} -> {losses[-1]:.3e}, "
            f"{timings[label]:.1f} s (Monte Carlo and fit)")
    rows, figure_data = [], {}
    for beta_rel in betas:
        beta = beta_rel * ki.BETA_C
        started = time.perf_counter()
        monte_carlo = sample(beta, repetitions, EVALUATION_SEED, blocks, steps, path)
        mc_seconds = time.perf_counter() - started
        found = trajectories(ensemble(monte_carlo, path), fits)
        for label, trajectory in found.items():
            trained = fitted_betas(label)
            rows.append({
                "beta_rel": float(beta_rel), "method": "ffn" if trained else label,
                "fitted_at": label[len("ffn@"):] if trained else "",
                "held_out": "same beta, other replicas" if beta_rel in trained else ("other beta" if trained else ""),
                **magnetisation_error(trajectory, monte_carlo),
                **difference_to_tap(trajectory, found["tap"], monte_carlo),
                "mc_noise_floor": monte_carlo.floor, "repetitions": repetitions,
                "features": features if trained else "",
                "training_repetitions": training_repetitions if trained else "", "epochs": epochs if trained else "",
                "window": window if trained else "",
                "wall_s": round(timings[label], 1) if trained else "", "mc_wall_s": round(mc_seconds, 1),
            })
            log(f"beta/beta_c = {beta_rel:g} {label:10s} eps_m = {rows[-1]['eps_m']:.3e} "
                f"+- {rows[-1]['standard_error']:.1e} (floor {monte_carlo.floor:.1e}), minus tap's "
                f"{rows[-1]['minus_tap']:.2e} +- {rows[-1]['minus_tap_standard_error']:.1e}")
        figure_data[float(beta_rel)] = (monte_carlo.mean, found)
    write_rows(out_dir / "eps_m.csv", rows)
    torch.save({"features": features, "weights": {label: fit.weights for label, fit in fits.items()}},
               out_dir / "weights.pt")
    plot(rows, figure_data, fit_label(fit_betas[0]), out_dir / "ising_correction.png", figure_copy, path)
    return rows


def write_rows(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def own_beta(rows: list[dict]) -> dict[float, dict]:
    """Each beta's row of the ffn fitted at that beta alone (where one was)."""
    return {row["beta_rel"]: row for row in rows if row["fitted_at"] == f"{row['beta_rel']:g}"}


def plot(rows: list[dict], figure_data: dict, transfer: str, path: Path, copy: Path | None = None,
         network: Path | str = ki.DATA) -> None:
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    left = axes[0]
    series = {"naive mean field": [r for r in rows if r["method"] == "nmf"],
              "TAP (Plefka[t-1,t], 2nd order)": [r for r in rows if r["method"] == "tap"]}
    for fitted in dict.fromkeys(r["fitted_at"] for r in rows if r["fitted_at"]):
        chosen = [r for r in rows if r["fitted_at"] == fitted]
        series[f"ffn ({chosen[0]['features']}) fitted at beta/beta_c = {fitted.replace('+', ', ')}"] = chosen
    each = sorted(own_beta(rows).values(), key=lambda r: r["beta_rel"])
    if len(each) > 1:
        series["ffn fitted at each beta alone"] = each
    for (label, chosen), marker in zip(series.items(), "os^Dv<>p"):
        if chosen:
            left.errorbar([r["beta_rel"] for r in chosen], [r["eps_m"] for r in chosen],
                          yerr=[r["standard_error"] for r in chosen], fmt=marker + "-", capsize=3, label=label)
    floors = [r for r in rows if r["method"] == "nmf"]
    left.plot([r["beta_rel"] for r in floors], [r["mc_noise_floor"] for r in floors], ":", color="gray",
              label="Monte Carlo floor Var/R")
    left.set_yscale("log")
    left.axvline(1.0, color="k", lw=0.5)
    left.set_xlabel(r"$\beta/\beta_c$")
    left.set_ylabel(r"$\epsilon_m$ against held-out Monte Carlo")
    size = next(iter(figure_data.values()))[0].shape[1]
    left.set_title(f"N = {size}, R = {floors[0]['repetitions']} (bars: jackknife s.e.)")
    left.legend(fontsize=7)
    middle, right = axes[1], axes[2]
    critical = min(figure_data, key=lambda b: abs(b - 1.0))
    mc, found = figure_data[critical]
    t = np.arange(mc.shape[0] + 1)
    middle.plot(t, np.r_[1.0, mc.mean(1)], "k-", lw=2, label="Glauber Monte Carlo")
    for label, style in (("nmf", "--"), ("tap", "-."), *((label, ":") for label in found if label.startswith("ffn@"))):
        middle.plot(t, np.r_[1.0, found[label].mean(1)], style, lw=1.5, label=label)
    middle.set_xlabel("step t")
    middle.set_ylabel(r"$\langle m_i(t)\rangle_i$")
    middle.set_title(rf"mean magnetisation at $\beta/\beta_c$ = {critical:g}")
    middle.legend(fontsize=8)
    for beta_rel, colour in ((critical, "C0"), (min(figure_data), "C3")):
        mc, found = figure_data[beta_rel]
        beta = beta_rel * ki.BETA_C
        plot_binned(right, mc, implied_shift(mc, beta, network), colour, "-", f"MC-implied, {beta_rel:g}")
        plot_binned(right, found["tap"], implied_shift(found["tap"], beta, network), colour, "-.",
                    f"TAP, {beta_rel:g}")
        if transfer in found:
            plot_binned(right, found[transfer], implied_shift(found[transfer], beta, network), colour, ":",
                        f"{transfer}, {beta_rel:g}")
    right.axhline(0.0, color="k", lw=0.5)
    right.set_xlabel(r"$m_i(t)$")
    right.set_ylabel(r"shift $s_i = \theta_i - T\,\mathrm{artanh}\,m_i$")
    right.set_title(r"the correction subtracted from the field, by $\beta/\beta_c$")
    right.legend(fontsize=7)
    figure.tight_layout()
    save_figure(figure, path, copy)


def plot_binned(axis, trajectory: np.ndarray, shift: np.ndarray, colour: str, style: str, label: str) -> None:
    """Mean shift in 20 bins of m_i(t), t >= 2 (where m(t - 1) exists), bins with 20 or more points."""
    m = trajectory[1:].ravel()
    values = shift.ravel()
    edges = np.linspace(m.min(), m.max(), 21)
    index = np.clip(np.digitize(m, edges) - 1, 0, 19)
    counts = np.bincount(index, minlength=20)
    sums = np.bincount(index, weights=values, minlength=20)
    keep = counts >= 20
    centres = 0.5 * (edges[1:] + edges[:-1])
    axis.plot(centres[keep], sums[keep] / counts[keep], style, color=colour, label=label)


def random_network(path: Path, size: int, seed: int, field_scale: float = 0.5, mean: float = 1.0,
                   spread: float = 0.1) -> Path:
    """A network of the benchmark's law at another size: H ~ U(-H0, H0), J_ij ~ N(J0/N, Js^2/N)."""
    generator = np.random.default_rng(seed)
    fields = generator.uniform(-field_scale, field_scale, size)
    couplings = generator.normal(mean / size, spread / np.sqrt(size), (size, size))
    np.savez(path, H=fields, J=couplings)
    return path


def network_problem(path: Path) -> str:
    """What is wrong with a network file (empty when nothing): it must hold H (N,) and J (N, N)."""
    try:
        with np.load(path) as data:
            shapes = {key: data[key].shape for key in ("H", "J") if key in data.files}
    except (OSError, ValueError) as error:
        return f"cannot be read as an npz file ({error.__class__.__name__})"
    if set(shapes) != {"H", "J"}:
        return f"needs the keys H and J, has {sorted(shapes) or 'neither'}"
    if len(shapes["H"]) != 1 or shapes["J"] != (shapes["H"][0], shapes["H"][0]):
        return f"H has shape {shapes['H']} and J {shapes['J']}; they must be (N,) and (N, N)"
    return ""


def beta_group(text: str) -> tuple[float, ...]:
    """``0.85,1.15`` -> (0.85, 1.15): the beta / beta_c one correction is fitted over at once."""
    try:
        group = tuple(float(value) for value in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: beta / beta_c values joined by commas, e.g. 0.85,1.15") from None
    if len(set(group)) != len(group):
        raise argparse.ArgumentTypeError(f"{text!r}: a beta appears twice in one fit")
    return group


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--betas", type=float, nargs="+", default=list(BETAS), help="beta / beta_c scored")
    parser.add_argument("--fit-betas", type=beta_group, nargs="+", default=list(FIT_BETAS),
                        help="beta / beta_c of each fit; 0.85,1.15 is one fit over both (default: 0.85,1.15 1.0; "
                             "the first is the transfer fit drawn in the figure)")
    parser.add_argument("--features", choices=FEATURES, default=FEATURES[0],
                        help="the ffn's inputs: invariant (with T and tap's coefficient) or state (m_i alone)")
    parser.add_argument("--repetitions", type=int, default=DEFAULT_REPETITIONS, help="Monte Carlo scored against")
    parser.add_argument("--training-repetitions", type=int, default=DEFAULT_REPETITIONS,
                        help="Monte Carlo fitted to (run seed 1)")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW)
    parser.add_argument("--hidden", type=int, default=DEFAULT_HIDDEN)
    parser.add_argument("--steps", type=int, default=ki.STEPS)
    parser.add_argument("--network", type=Path, default=ki.DATA,
                        help="npz file with fields H (N,) and couplings J (N, N); default the paper's N = 512")
    parser.add_argument("--out-dir", type=Path, default=Path("experiments/results/ising_correction"))
    parser.add_argument("--figure-copy", type=Path, default=None, help="also save the figure here")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    for name in ("repetitions", "training_repetitions"):
        if getattr(args, name) < 2 * BLOCKS or getattr(args, name) % BLOCKS:
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)}: a multiple of {BLOCKS}, "
                         f"at least {2 * BLOCKS} (the jackknife blocks)")
    for name in ("epochs", "window", "hidden", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} {getattr(args, name)}: must be at least 1")
    if min(args.betas + [beta for group in args.fit_betas for beta in group]) <= 0:
        parser.error("--betas, --fit-betas: every beta / beta_c must be positive")
    problem = network_problem(args.network)
    if problem:
        parser.error(f"--network {args.network}: {problem}")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    compare(args.out_dir, args.betas, args.fit_betas, args.repetitions, args.training_repetitions, args.epochs,
            args.window, args.hidden, args.steps, args.network, figure_copy=args.figure_copy, features=args.features)
    print(f"wall time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
