"""The ffn self-impact correction fitted to sampled ensembles (issue 12, part 1).

The mean field m_i(t) of the expected mode should equal E[x_i(t)], the mean of agent i's
state over runs of the sampled mode that share the quenched disorder (projections, W_O,
fields, x(0), money, temperatures) and differ only in their sampling noise. The fit:

1. Ensemble. R replicas of the scenario in sampled mode, float64: ``Rollout.create`` with
   replicas 0..R-1 (each its own dynamics stream), every element then started from replica
   0's x(0), projected onto the sphere |x_i| = R_spin so that it is a spin configuration the
   sampled process can start from (docs/validation.md 8), and replica 0's money and
   temperatures. The target is xbar_i(t) = (1/R) sum_r x_i^r(t), with the mean money.
2. Fit. Per population, the two-layer network of the ``ffn`` correction, on the ``state``
   features (x_i, V_i, kappa_i: :class:`~econspin.corrections.FeedForwardCorrection`) or the
   ``invariant`` ones (:class:`~econspin.corrections.InvariantFeedForwardCorrection`, which
   can transfer to other disorders), its weights trained with Adam by autograd through the
   expected-mode rollout (reference kernel, float64) with teacher forcing: every window of
   ``window`` rounds starts from the ensemble mean xbar(t0) (and the mean money) and is rolled
   freely for ``window`` rounds; the loss is the mean squared error against xbar(t0 + k),
   k = 1..window. All windows of one ensemble run as batch elements of one economy, so one
   epoch is ``window`` rounds forward and back per ensemble. Several ensembles (disorder
   seeds, temperatures, population mixes) are fitted at once: the loss is their mean.
3. Held out. A second ensemble of the same scenario from replicas R..2R-1 (the same disorder
   and x(0), independent sampling noise: the fit must have learnt E x, not its sample), and
   one of the scenario at seed + 1 (other projections, fields and x(0): whether the
   correction carries over to another disorder). Errors are those of the free-running mean
   field from x(0) over all rounds:

       error = sqrt( (1/(T N)) sum_t sum_i |m_i(t) - xbar_i(t)|^2 ),

   the RMS over agents and rounds 1..T of the per-agent distance (not divided by sqrt(d)),
   with its Monte Carlo part sqrt( (1/(T N)) sum_t sum_i sum_c var_r(x_ic^r(t)) / R ).

Events and temperature schedules act at a round number that every batch element shares, so
the windows (which start at different rounds) cannot carry them: such scenarios are refused.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from econspin.corrections import FEED_FORWARD_FEATURES, feed_forward_weights
from econspin.economy import Economy
from econspin.fingerprint import scenario_digest
from econspin.metrics import gini, herfindahl_hirschman_index
from econspin.randomness import STREAM_FIT, derive_seed, make_generator
from econspin.round import step
from econspin.scenario import Scenario, ScenarioError, TemperatureSchedule
from econspin.simulate import Rollout
from econspin.state import State

# the invariant ffn fitted to the human-vs-AI family, shipped with the package (docs/validation.md 10)
HUMAN_VS_AI_WEIGHTS = Path(__file__).parent / "data" / "ffn_human_vs_ai.pt"
DEFAULT_HIDDEN = 16
INITIAL_SCALE = 0.1  # output-layer scale of the random start (0 would start exactly at none)
LEARNING_RATE = 0.01


@dataclass(frozen=True)
class Ensemble:
    """The sampled ensemble of one scenario: its mean states per round and the start they share.

    Attributes:
        scenario: the scenario (expected mode, float64, reference kernel) the mean field runs.
        start: the shared round-0 state of the expected mode (one batch element).
        mean_states: (T + 1, N, d) xbar_i(t), round 0 first.
        mean_money: (T + 1, N) the replicas' mean money.
        noise: (T,) Monte Carlo variance of xbar per agent, sum_c var_r(x_ic^r(t)) / R, mean over agents.
        replicas: R.
        observables: rounds 1..T of ``hhi`` and ``gini`` (the replicas' mean of each replica's
            value), ``hhi_of_mean`` and ``gini_of_mean`` (of the mean revenue and mean money:
            what a mean field exact for E R_j and E w_i would give), each (T,), or None.
    """

    scenario: Scenario
    start: State
    mean_states: torch.Tensor
    mean_money: torch.Tensor
    noise: torch.Tensor
    replicas: int
    observables: dict[str, torch.Tensor] | None = None

    @property
    def rounds(self) -> int:
        return self.mean_states.shape[0] - 1

    @property
    def standard_error(self) -> float:
        """The Monte Carlo part of the error measure: how far xbar scatters from E x."""
        return float(self.noise.mean().sqrt())


def shared_start(state: State, radius: float, on_sphere: bool = True) -> State:
    """Every batch element starts from element 0's x(0) (projected onto |x_i| = R), its money and T.

    Each element keeps its own random stream, so replicas differ only in their sampling noise.
    With ``on_sphere=False`` x(0) stays the scenario's draw, which the mean field reads as a
    magnetisation with spin variance (R^2 - |x_i|^2)/d while every replica starts from that
    very vector.
    """
    batch = state.states.shape[0]
    spins = state.states[0]
    if on_sphere:
        spins = spins * radius / torch.linalg.vector_norm(spins, dim=-1, keepdim=True)
    return state.replace(
        states=spins.expand(batch, -1, -1).clone(),
        money=state.money[0].expand(batch, -1).clone(),
        temperature=state.temperature[0].expand(batch, -1).clone(),
    )


def fitting_scenario(scenario: Scenario, correction: str = "none") -> Scenario:
    """The scenario as the fit runs its mean field: expected mode, float64, reference kernel, one correction."""
    for name, population in scenario.populations.items():
        if isinstance(population.temperature, TemperatureSchedule):
            raise ScenarioError(f"populations.{name}.temperature: fit-correction cannot follow a schedule yet")
    if scenario.events:
        raise ScenarioError("events: fit-correction cannot follow events yet (remove them to fit)")
    overrides = {"market.mode": "expected", "run.dtype": "float64", "run.kernel": "reference"}
    for name in scenario.populations:
        overrides[f"populations.{name}.correction"] = {"form": correction}
    return scenario.with_overrides(overrides)


def sample_ensemble(
    scenario: Scenario,
    replicas: int,
    steps: int,
    device: str = "cpu",
    on_round: Callable[[int], None] | None = None,
    first_replica: int = 0,
) -> Ensemble:
    """Run ``replicas`` sampled replicas sharing the disorder and x(0); keep the mean state of every round.

    The replicas' dynamics streams are those of replicas ``first_replica`` onwards, so that two
    ensembles of one scenario with disjoint ranges are independent draws of the same E x(t).
    Every replica starts from replica 0's x(0) (on the sphere), money and temperatures.
    """
    if replicas < 2:
        raise ScenarioError(f"--replicas {replicas}: an ensemble needs at least 2 replicas")
    expected = fitting_scenario(scenario)
    sampled = expected.with_overrides({"market.mode": "sampled"})
    rollout = Rollout.create(
        [sampled] * replicas, list(range(first_replica, first_replica + replicas)), device, "float64"
    )
    start = shared_start(Rollout.create([expected], [0], device, "float64").state, rollout.economy.radius)
    state = rollout.state.replace(
        **{
            name: getattr(start, name).expand_as(getattr(rollout.state, name)).clone()
            for name in ("states", "money", "temperature")
        }
    )
    means, money, noise = [state.states.mean(0)], [state.money.mean(0)], []
    observables = {name: [] for name in OBSERVABLES}
    with torch.no_grad():
        for _ in range(steps):
            state = step(state, rollout.economy)
            means.append(state.states.mean(0))
            money.append(state.money.mean(0))
            noise.append((state.states.var(0) / replicas).sum(-1).mean())
            for name, value in sampled_observables(state, rollout.economy).items():
                observables[name].append(value)
            if on_round is not None:
                on_round(state.round)
    return Ensemble(
        expected,
        start,
        torch.stack(means),
        torch.stack(money),
        torch.stack(noise),
        replicas,
        {name: torch.stack(values) for name, values in observables.items()},
    )


OBSERVABLES = ("hhi", "gini", "hhi_of_mean", "gini_of_mean")


def sampled_observables(state: State, economy: Economy) -> dict[str, torch.Tensor]:
    """The replicas' mean hhi and gini, and those of their mean revenue and money (finite-N bias apart).

    A buyer of the sampled mode pays one seller, so each replica's revenue is a multinomial
    draw and its hhi lies above the hhi of E R (Jensen): mean hhi - hhi_of_mean is that
    finite-N sampling bias, which no mean field, however exact for E R, can follow.
    """
    mean = state.replace(revenue=state.revenue.mean(0, keepdim=True), money=state.money.mean(0, keepdim=True))
    return {
        "hhi": herfindahl_hirschman_index(state, economy).mean(),
        "gini": gini(state, economy).mean(),
        "hhi_of_mean": herfindahl_hirschman_index(mean, economy)[0],
        "gini_of_mean": gini(mean, economy)[0],
    }


def with_ffn(economy: Economy, weights: dict[str, dict[str, torch.Tensor]], features: str = "state") -> Economy:
    """The economy with every population's correction the ffn of ``weights[name]``, shared by all elements."""
    batch = economy.batch_size
    corrections = tuple(
        FEED_FORWARD_FEATURES[features](
            **{key: value.to(economy.device).expand(batch, *value.shape) for key, value in weights[name].items()}
        )
        for name in economy.population_names
    )
    return dataclasses.replace(economy, corrections=corrections)


def mean_field_rounds(ensemble: Ensemble, economy: Economy) -> Iterator[State]:
    """The free-running mean field from the ensemble's x(0): the state after each round t = 1..T."""
    state = ensemble.start
    for _ in range(ensemble.rounds):
        state = step(state, economy)
        yield state


def mean_field_trajectory(ensemble: Ensemble, economy: Economy) -> torch.Tensor:
    """(T, N, d) the free-running mean field m(t), t = 1..T, from the ensemble's x(0).

    The states only: the fit scores every candidate by them (:func:`errors`), so the
    observables :func:`mean_field_run` adds would be work nobody reads.
    """
    return torch.stack([state.states[0] for state in mean_field_rounds(ensemble, economy)])


def mean_field_run(ensemble: Ensemble, economy: Economy) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The free-running mean field from the ensemble's x(0): m(t) (T, N, d) and its hhi and gini (T,)."""
    states, observables = [], {"hhi": [], "gini": []}
    for state in mean_field_rounds(ensemble, economy):
        states.append(state.states[0])
        observables["hhi"].append(herfindahl_hirschman_index(state, economy)[0])
        observables["gini"].append(gini(state, economy)[0])
    return torch.stack(states), {name: torch.stack(values) for name, values in observables.items()}


def rms_error(trajectory: torch.Tensor, ensemble: Ensemble) -> float:
    """The square root of the mean over rounds and agents of |m_i(t) - xbar_i(t)|^2."""
    return float((trajectory - ensemble.mean_states[1:]).pow(2).sum(-1).mean().sqrt())


def compiled(ensemble: Ensemble, correction: str = "none", batch: int = 1) -> Economy:
    """The expected-mode economy of the ensemble's scenario (``batch`` elements) with a named correction."""
    scenario = fitting_scenario(ensemble.scenario, correction)
    return Rollout.create([scenario] * batch, [0] * batch, str(ensemble.start.states.device), "float64").economy


def errors(ensemble: Ensemble, weights: dict[str, dict[str, dict]], features: str = "state") -> dict[str, float]:
    """The RMS error of none, tap and each named set of ffn weights against the ensemble mean."""
    with torch.no_grad():
        found = {
            name: rms_error(mean_field_trajectory(ensemble, compiled(ensemble, name)), ensemble)
            for name in ("none", "tap")
        }
        base = compiled(ensemble)
        for label, values in weights.items():
            found[label] = rms_error(mean_field_trajectory(ensemble, with_ffn(base, values, features)), ensemble)
    found["monte_carlo"] = ensemble.standard_error
    return found


def initial_weights(scenario: Scenario, hidden: int, features: str = "state") -> dict[str, dict[str, torch.Tensor]]:
    """Random float64 starting weights per population, from the run seed (w2 small: near ``none``)."""
    generator = make_generator(derive_seed(scenario.run.seed, STREAM_FIT))
    return {
        name: feed_forward_weights(scenario.market.d, hidden, INITIAL_SCALE, generator, torch.float64, features)
        for name in scenario.populations
    }


def window_loss(ensemble: Ensemble, economy: Economy, window: int) -> torch.Tensor:
    """Teacher forcing: from xbar(t0) (and the mean money), ``window`` free rounds against xbar(t0 + k).

    ``economy`` has one element per start t0 = 0..T - window.
    """
    starts = ensemble.rounds - window + 1
    state = ensemble.start.replace(
        **{
            name: getattr(ensemble.start, name).expand(starts, *getattr(ensemble.start, name).shape[1:])
            for name in ("fields", "temperature", "revenue", "spending", "entropy", "surplus", "random_keys")
        },
        states=ensemble.mean_states[:starts].clone(),
        money=ensemble.mean_money[:starts].clone(),
    )
    loss = 0.0
    for k in range(1, window + 1):
        state = step(state, economy)
        loss = loss + (state.states - ensemble.mean_states[k : k + starts]).pow(2).mean()
    return loss / window


@dataclass(frozen=True)
class Fit:
    """The fitted weights per population and what the fit measured.

    Attributes:
        weights: population -> {w1, b1, w2, b2} (float64, CPU).
        initial: the random weights the fit started from (the untrained ffn).
        losses: the training loss (mean squared error per component) after each epoch.
        errors: for each scored ensemble (those fitted and those given), the RMS per-agent
            error of none, tap, the untrained and the fitted ffn, and its Monte Carlo part.
        features: the ffn's feature set, ``state`` or ``invariant``.
    """

    weights: dict[str, dict[str, torch.Tensor]]
    initial: dict[str, dict[str, torch.Tensor]]
    losses: list[float]
    errors: dict[str, dict[str, float]]
    features: str = "state"


def fit_correction(
    train: Ensemble | dict[str, Ensemble],
    scored: dict[str, Ensemble],
    epochs: int,
    window: int = 8,
    hidden: int = DEFAULT_HIDDEN,
    on_epoch: Callable[[int], None] | None = None,
    features: str = "state",
    learning_rate: float = LEARNING_RATE,
) -> Fit:
    """Fit the per-population ffn to ``train`` by Adam through teacher-forced windows.

    ``train`` is one ensemble (scored as ``train``) or several by label, fitted at once (the
    loss is the mean of theirs); their populations must have the same names. The fit is
    scored on every ensemble fitted and on each of ``scored`` (by label).
    """
    fitted_on = {"train": train} if isinstance(train, Ensemble) else dict(train)
    first = next(iter(fitted_on.values()))
    names = set(first.scenario.populations)
    for label, ensemble in fitted_on.items():
        if set(ensemble.scenario.populations) != names:
            raise ScenarioError(
                f"{label}: its populations ({', '.join(ensemble.scenario.populations)}) are not "
                f"those of the others ({', '.join(first.scenario.populations)}): one ffn each"
            )
    windows = {label: max(1, min(window, ensemble.rounds)) for label, ensemble in fitted_on.items()}
    initial = initial_weights(first.scenario, hidden, features)
    parameters = {
        name: {key: value.clone().to(first.start.states.device).requires_grad_() for key, value in values.items()}
        for name, values in initial.items()
    }
    optimizer = torch.optim.Adam([p for values in parameters.values() for p in values.values()], lr=learning_rate)
    bases = {
        label: compiled(ensemble, batch=ensemble.rounds - windows[label] + 1) for label, ensemble in fitted_on.items()
    }
    losses = []
    for epoch in range(epochs):
        optimizer.zero_grad()
        loss = sum(
            window_loss(ensemble, with_ffn(bases[label], parameters, features), windows[label])
            for label, ensemble in fitted_on.items()
        ) / len(fitted_on)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            raise ScenarioError(f"fit-correction: the loss is not finite at epoch {epoch + 1}; try fewer --steps")
        if on_epoch is not None:
            on_epoch(epoch)
    fitted = {name: {key: value.detach().cpu() for key, value in values.items()} for name, values in parameters.items()}
    candidates = {"ffn_untrained": initial, "ffn": fitted}
    found = {label: errors(ensemble, candidates, features) for label, ensemble in {**fitted_on, **scored}.items()}
    return Fit(fitted, initial, losses, found, features)


def weights_file_contents(fit: Fit, scenario: Scenario | dict[str, Scenario], settings: dict) -> dict:
    """What ``--out`` holds: the weights each population reads, the scenario hash(es) and the fit's losses.

    A scenario reads it with ``correction: {form: ffn, features: FEATURES, weights: FILE}`` in
    each population (:func:`econspin.economy._ffn_weights` takes ``populations[name]`` and
    checks ``features``). ``scenario`` is the hash of the (first) scenario fitted,
    ``scenarios`` that of every ensemble fitted, by label.
    """
    scenarios = {"train": scenario} if isinstance(scenario, Scenario) else scenario
    digests = {label: scenario_digest(value) for label, value in scenarios.items()}
    return {
        "populations": fit.weights,
        "features": fit.features,
        "scenario": next(iter(digests.values())),
        "scenarios": digests,
        "losses": fit.losses,
        "errors": fit.errors,
        "settings": settings,
    }
