"""Response functions by autograd: against central differences, limits with known answers, refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import scenario
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from econspin.scenario import ScenarioError
from econspin.simulate import Rollout, simulate
from econspin.susceptibilities import element_susceptibilities, input_value, insert_input, parse_input, susceptibility

POPULATIONS = {
    "human": {"count": 7, "temperature": 1.0, "spend": 0.2, "eta": 0.6},
    "ai": {"count": 5, "temperature": 0.2, "spend": 0.3, "eta": 0.8},
}
STEP = 1e-5  # central differences: truncation ~ STEP^2, rounding ~ 1e-16 / STEP, both far below 1e-3


def perturbed(base, wrt: str, shift: float):
    """The scenario with the input moved by ``shift``: a key set to value + shift, or a field shifted by events."""
    if wrt.startswith("field"):
        populations = list(base.populations) if wrt == "field" else [wrt.split(".")[1]]
        events = [{"at": 0, "population": name, "field_shift": shift} for name in populations]
        return base.with_overrides({"events": [*base.model_dump()["events"], *events]})
    value = input_value(base, parse_input(wrt, base))
    return base.with_overrides({wrt: value + shift})


def central_difference(base, observable: str, wrt: str, steps: int) -> float:
    """[O(p + h) - O(p - h)] / 2h from two float64 runs of the scenario (the default, fused kernel)."""

    def final(shift):
        metrics = simulate(perturbed(base, wrt, shift), steps=steps, replicas=1, dtype="float64").metrics
        return float(metrics[observable].iloc[-1])

    return (final(STEP) - final(-STEP)) / (2 * STEP)


def assert_relative(autograd: float, difference: float, tolerance: float = 1e-3, floor: float = 1e-8):
    """Relative error below ``tolerance`` (with an absolute floor for a derivative that is zero)."""
    assert abs(autograd - difference) <= tolerance * max(abs(difference), floor), (autograd, difference)


INPUTS = ["populations.ai.temperature", "populations.human.spend", "populations.ai.eta", "market.visibility", "field"]
OBSERVABLES = ["order", "hhi", "gini", "attention_entropy", "wealth_share_ai"]


@pytest.mark.parametrize("wrt", INPUTS)
@pytest.mark.parametrize("observable", OBSERVABLES)
def test_autograd_matches_central_differences(wrt, observable):
    """Each kind of input x several observables, after 3 rounds: relative error < 1e-3 in float64."""
    base = scenario(populations=POPULATIONS, visibility=0.3, heads=2, run={"seed": 2})
    chi = susceptibility(base, observable, wrt, steps=3, replicas=1)
    assert chi.per_replica.shape == (1,) and chi.steps == 3
    difference = central_difference(base, observable, wrt, 3)
    assert abs(difference) > 1e-6  # every pair here responds: the comparison is not 0 against 0
    assert_relative(chi.mean, difference)


RANDOM_ECONOMIES = dict(
    temperature=st.sampled_from([0.05, 0.3, 1.0, 3.0]),
    other_temperature=st.sampled_from([0.0, 0.5, math.inf]),
    eta=st.sampled_from([0.0, 0.4, 1.0]),
    response=st.sampled_from(["large_d", "vmf", "sphere"]),
    correction=st.sampled_from(["none", "tap"]),
    heads=st.integers(1, 2),
    steps=st.integers(1, 4),
    wrt=st.sampled_from([*INPUTS, "field.human", "populations.human.eta"]),
    observable=st.sampled_from([*OBSERVABLES, "cr4", "surplus"]),
    network=st.sampled_from([None, "dense", "sparse"]),
    seed=st.integers(0, 5),
)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**RANDOM_ECONOMIES)
def test_autograd_matches_central_differences_over_random_economies(**economy):
    """Temperatures 0 and inf among the other agents, eta at its ends, every response, tap, networks."""
    check_random_economy(**economy)


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**RANDOM_ECONOMIES)
def test_autograd_matches_central_differences_over_many_random_economies(**economy):
    """The same over 150 economies (about 3 minutes on one core)."""
    check_random_economy(**economy)


def check_random_economy(
    temperature, other_temperature, eta, response, correction, heads, steps, wrt, observable, network, seed
):
    """Autograd against central differences on one economy drawn by hypothesis."""
    if response == "sphere":
        correction = "none"  # tap needs a finite-temperature response
    populations = {
        "human": {"count": 6, "temperature": other_temperature, "spend": 0.25, "eta": 0.5,
                  "correction": {"form": correction}},
        "ai": {"count": 4, "temperature": temperature, "spend": 0.3, "eta": eta, "correction": {"form": correction}},
    }
    if wrt.endswith(".eta"):  # central differences need room on both sides of eta
        populations[wrt.split(".")[1]]["eta"] = 0.5
    graph = None if network is None else {"generator": "erdos_renyi_graph", "params": {"p": 0.6}, "layout": network}
    base = scenario(populations=populations, visibility=-0.4, heads=heads, response=response, network=graph,
                    run={"seed": seed})
    chi = susceptibility(base, observable, wrt, steps=steps, replicas=1)
    difference = central_difference(base, observable, wrt, steps)
    if observable == "surplus" and other_temperature == math.inf:  # T log(n) at T = inf: no finite surplus
        assert math.isnan(difference) and math.isnan(chi.mean)
        return
    assert_relative(chi.mean, difference, floor=1e-6)


@pytest.mark.parametrize("wrt", INPUTS)
def test_gradcheck_float64(wrt):
    """Gradcheck of input -> observable (three rounds), with the input as the inserted leaf."""
    base = scenario(populations=POPULATIONS, visibility=0.3, response="vmf")
    run = Rollout.create([base, base.with_overrides({"populations.ai.temperature": 0.5})], [0, 1], "cpu", "float64")
    wrt_input = parse_input(wrt, base)
    start = torch.tensor([input_value(s, wrt_input) for s in run.scenarios], dtype=torch.float64)

    def observables(leaf):
        economy, state = insert_input(run.economy, run.state, wrt_input, leaf)
        from econspin.round import step

        for _ in range(3):
            state = step(state, economy)
        return torch.stack([torch.linalg.vector_norm(state.states.mean(1), dim=-1), state.money[:, :7].sum(1)])

    assert torch.autograd.gradcheck(observables, (start.clone().requires_grad_(True),), atol=1e-8, rtol=1e-6)


def test_money_is_conserved_so_total_wealth_does_not_respond():
    base = scenario(populations=POPULATIONS, visibility=0.3)
    for wrt in INPUTS:
        chi = susceptibility(base, "total_wealth", wrt, steps=4, replicas=2)
        assert np.abs(chi.per_replica).max() < 1e-12, wrt
        assert np.allclose(chi.observable_values, 12.0)


def uniform_choice_wealth_share(counts, spends, steps, rounds_share_of):
    """Hand calculation at T = inf: every buyer spreads sigma_p w_i evenly over the N - 1 others.

    Money follows w(t + 1) = M w(t) with M = I - S + A S, S = diag(sigma), A_ji = 1 / (N - 1)
    (j != i); so dw(n)/d sigma_p = sum_k M^(n-1-k) (dM/d sigma_p) M^k w(0), with
    dM/d sigma_p = (A - I) diag(1_p). Returns the share of ``rounds_share_of`` and its derivative
    with respect to that population's own sigma.
    """
    agents = sum(counts)
    population = np.repeat(np.arange(len(counts)), counts)
    sigma = np.asarray(spends)[population]
    uniform = (np.ones((agents, agents)) - np.eye(agents)) / (agents - 1)
    step = np.eye(agents) - np.diag(sigma) + uniform @ np.diag(sigma)
    derivative_of_step = (uniform - np.eye(agents)) @ np.diag((population == rounds_share_of).astype(float))
    money, derivative = np.ones(agents), np.zeros(agents)
    for _ in range(steps):
        money, derivative = step @ money, step @ derivative + derivative_of_step @ money
    members = population == rounds_share_of
    return money[members].sum() / money.sum(), derivative[members].sum() / money.sum()


@pytest.mark.parametrize("steps", [1, 5])
def test_uniform_choice_wealth_share_matches_the_hand_calculation(steps):
    """At T = inf money is a linear Markov chain: d share / d sigma is a sum of matrix products.

    After one round it is -n_h n_a / (N (N - 1)), the human agents' loss to the AI agents.
    """
    populations = {
        "human": {"count": 7, "temperature": math.inf, "spend": 0.2},
        "ai": {"count": 5, "temperature": math.inf, "spend": 0.3},
    }
    base = scenario(populations=populations, visibility=0.0)
    chi = susceptibility(base, "wealth_share_human", "populations.human.spend", steps=steps, replicas=2)
    share, expected = uniform_choice_wealth_share([7, 5], [0.2, 0.3], steps, 0)
    if steps == 1:
        assert math.isclose(expected, -7 * 5 / (12 * 11))
    assert np.allclose(chi.observable_values, share, rtol=1e-12)
    assert np.allclose(chi.per_replica, expected, rtol=1e-10)


def test_temperature_susceptibility_falls_like_inverse_square_temperature():
    """The T -> inf limit: O(T) = O(inf) + c / T + ..., so T^2 dO/dT tends to -c, a finite number."""
    scaled = {}
    for temperature in (1e3, 1e4):
        populations = {
            "human": {"count": 7, "temperature": temperature, "spend": 0.2},
            "ai": {"count": 5, "temperature": 0.3, "spend": 0.3},
        }
        base = scenario(populations=populations, visibility=0.3)
        chi = susceptibility(base, "attention_entropy", "populations.human.temperature", steps=2, replicas=1)
        scaled[temperature] = temperature**2 * chi.mean
    assert abs(scaled[1e4]) > 1e-3  # the limit is not zero: the entropy still moves at order 1/T
    assert math.isclose(scaled[1e3], scaled[1e4], rel_tol=0.02)


def test_batched_elements_are_each_their_own_and_replicas_are_seeds():
    base = scenario(populations=POPULATIONS, visibility=0.3, run={"seed": 7})
    points = [base.with_overrides({"populations.ai.temperature": value}) for value in (0.1, 0.4, 2.0)]
    batched, values = element_susceptibilities(points, [0, 1, 2], "hhi", "populations.ai.temperature", 3, "cpu")
    for index, point in enumerate(points):
        alone, alone_values = element_susceptibilities([point], [index], "hhi", "populations.ai.temperature", 3, "cpu")
        assert batched[index] == pytest.approx(alone[0], rel=1e-12)
        assert values[index] == pytest.approx(alone_values[0], rel=1e-12)
    chi = susceptibility(base, "hhi", "populations.ai.temperature", steps=3, replicas=3)
    assert chi.seeds == (7, 8, 9)
    for replica, seed in enumerate(chi.seeds):
        one = susceptibility(base, "hhi", "populations.ai.temperature", steps=3, replicas=1, seed=seed)
        assert chi.per_replica[replica] == pytest.approx(one.mean, rel=1e-12)
    assert chi.mean == pytest.approx(chi.per_replica.mean())
    assert chi.standard_error == pytest.approx(chi.per_replica.std(ddof=1) / math.sqrt(3))
    assert len(set(chi.per_replica)) == 3  # each seed its own disorder


def test_a_sampled_scenario_is_differentiated_through_its_mean_field():
    base = scenario(populations=POPULATIONS, visibility=0.3)
    sampled = base.with_overrides({"market.mode": "sampled"})
    expected = susceptibility(base, "order", "field", steps=3, replicas=2)
    assert np.array_equal(susceptibility(sampled, "order", "field", steps=3, replicas=2).per_replica,
                          expected.per_replica)


@pytest.mark.parametrize(
    "change,observable,wrt,message",
    [
        ({"populations.ai.temperature": 0.0}, "hhi", "populations.ai.temperature", "argmax"),
        ({"populations.ai.temperature": math.inf}, "hhi", "populations.ai.temperature", "use a finite T"),
        ({"populations.ai.temperature": {"schedule": [[0, 0.2], [2, 0.5]]}}, "hhi", "populations.ai.temperature",
         "no single value"),
        ({"market.spend_rule": "unit"}, "hhi", "populations.ai.spend", "market.unit"),
        ({}, "hhi", "populations.ai.temprature", "did you mean 'populations.ai.temperature'"),
        ({}, "hhi", "populations.robots.spend", "inputs: populations.human.temperature"),
        ({}, "hi", "field", "did you mean 'hhi'"),
        ({}, "wealth_share_robots", "field", "observables: hhi"),
    ],
)
def test_refusals_are_one_clear_line(change, observable, wrt, message):
    base = scenario(populations=POPULATIONS).with_overrides(change)
    with pytest.raises(ScenarioError) as error:
        susceptibility(base, observable, wrt, steps=2, replicas=1)
    assert message in str(error.value) and "\n" not in str(error.value)


def sweep_scenario(tmp_path):
    """A scenario file of 16 agents, 6 rounds, 2 replicas."""
    populations = {"human": {"count": 12, "temperature": 1.0}, "ai": {"count": 4, "temperature": 0.1}}
    path = tmp_path / "scenario.yaml"
    path.write_text(scenario(populations=populations, run={"steps": 6, "replicas": 2, "seed": 3}).to_yaml())
    return path


def test_sweep_adds_the_susceptibility_column_and_panel(tmp_path):
    import json

    import pandas as pd
    from typer.testing import CliRunner

    from econspin.cli import app
    from econspin.scenario import Scenario

    path = sweep_scenario(tmp_path)
    out = tmp_path / "sweep"
    runner = CliRunner()
    result = runner.invoke(app, ["sweep", str(path), "--grid", "populations.ai.temperature=0.1,0.5,2",
                                 "--susceptibility", "hhi:populations.ai.temperature", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(out / "sweep.parquet")
    column = "susceptibility:hhi:populations.ai.temperature"
    assert table.loc[table.step < 6, column].isna().all()
    last = table[table.step == 6]
    base = Scenario.from_yaml(path)
    key = "populations.ai.temperature"
    points = [base.with_overrides({key: value}) for value in last[key]]
    expected, _ = element_susceptibilities(points, list(last.replica), "hhi", "populations.ai.temperature", 6, "cpu")
    assert np.allclose(last[column].to_numpy(), expected, rtol=1e-12)
    assert json.loads((out / "manifest.json").read_text())["susceptibility"] == ["hhi:populations.ai.temperature"]
    assert (out / "phase.png").exists()
    (out / "phase.png").unlink()
    assert runner.invoke(app, ["plot", str(out)]).exit_code == 0  # the panel is drawn from the table alone
    assert (out / "phase.png").exists()


@pytest.mark.parametrize(
    "option,grid,message",
    [
        ("hhi", "populations.ai.temperature=0.1,0.5", "write OBSERVABLE:INPUT"),
        ("hi:field", "populations.ai.temperature=0.1,0.5", "did you mean 'hhi'"),
        ("hhi:populations.ai.temprature", "populations.ai.temperature=0.1,0.5", "did you mean"),
        ("hhi:populations.ai.temperature", "populations.ai.temperature=0,0.5", "populations.ai.temperature=0"),
    ],
)
def test_sweep_refuses_a_bad_susceptibility_in_one_line(tmp_path, option, grid, message):
    from typer.testing import CliRunner

    from econspin.cli import app

    path = sweep_scenario(tmp_path)
    result = CliRunner().invoke(app, ["sweep", str(path), "--grid", grid, "--susceptibility", option,
                                      "--out", str(tmp_path / "x"), "--quiet"])
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert result.output.startswith("error: --susceptibility")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("wrt", [*INPUTS, "field.ai"])
def test_the_adjoint_round_by_round_equals_one_graph_over_all_rounds(wrt):
    """The memory-lean adjoint (forward on the fused kernel, replay on the reference) == the whole graph."""
    from econspin.susceptibilities import whole_graph_susceptibilities

    base = scenario(populations=POPULATIONS, visibility=0.3).with_overrides(
        {"populations.human.correction.form": "tap"}
    )
    points = [base, base.with_overrides({"populations.ai.temperature": 0.6, "populations.ai.eta": 0.3})]
    for observable in ("order", "gini", "attention_entropy"):
        adjoint, _ = element_susceptibilities(points, [0, 1], observable, wrt, 5, "cpu")
        whole = whole_graph_susceptibilities(points, [0, 1], observable, wrt, 5)
        assert np.allclose(adjoint, whole, rtol=1e-9, atol=1e-12), (observable, adjoint, whole)


def test_events_and_schedules_enter_the_derivative_as_they_enter_the_run():
    """A temperature event cuts the input's path at its round; a schedule of the other population is followed."""
    populations = {**POPULATIONS, "human": {**POPULATIONS["human"], "temperature": {"schedule": [[0, 1.0], [2, 0.4]]}}}
    base = scenario(populations=populations, visibility=0.3).with_overrides(
        {"events": [{"at": 3, "population": "ai", "temperature": 0.5}, {"at": 1, "population": "human",
                                                                           "field_shift": 0.7}]}
    )
    for wrt in ("populations.ai.temperature", "field.human", "populations.ai.spend"):
        chi = susceptibility(base, "hhi", wrt, steps=5, replicas=1)
        assert_relative(chi.mean, central_difference(base, "hhi", wrt, 5))
