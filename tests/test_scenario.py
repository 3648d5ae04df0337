"""Scenarios: round trips, schedules, events, networks, distributions."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import rollout, scenario

from econspin import Scenario, ScenarioError
from econspin.market import trade
from econspin.network import build_graph
from econspin.round import step
from econspin.simulate import apply_plan

SCENARIOS = sorted((Path(__file__).parent.parent / "scenarios").glob("*.yaml"))


@pytest.mark.parametrize("path", SCENARIOS, ids=[path.stem for path in SCENARIOS])
def test_shipped_scenarios_load_and_round_trip(path):
    loaded = Scenario.from_yaml(path)
    again = Scenario.from_dict(__import__("yaml").safe_load(loaded.to_yaml()))
    assert again == loaded


def test_round_trip_keeps_infinite_temperatures_and_schedules():
    original = scenario(populations={
        "a": {"count": 3, "temperature": math.inf},
        "b": {"count": 3, "temperature": {"schedule": [[0, 1.0], [5, 0.1]]}},
        "c": {"count": 3, "temperature": {"distribution": "lognormal", "mean": 0.5}},
    })
    again = Scenario.from_dict(__import__("yaml").safe_load(original.to_yaml()))
    assert again == original


def test_schedule_and_events_change_temperature_and_fields():
    base = scenario(populations={
        "human": {"count": 5, "temperature": {"schedule": [[0, 1.0], [3, 0.25]]}},
        "ai": {"count": 4, "temperature": 2.0},
    })
    with_events = Scenario.from_dict({
        **base.model_dump(),
        "events": [{"at": 2, "population": "ai", "temperature": 0.05, "field_shift": 1.5}],
    })
    run = rollout(with_events)
    fields_before = run.state.fields.clone()
    temperatures = []
    for _ in range(5):
        run.state = apply_plan(run.state, run.economy, run.scenarios)
        temperatures.append(run.state.temperature[0].tolist())
        run.state = step(run.state, run.economy)
    assert temperatures[0] == [1.0] * 5 + [2.0] * 4
    assert temperatures[2] == [1.0] * 5 + [0.05] * 4
    assert temperatures[3] == [0.25] * 5 + [0.05] * 4
    shift = run.state.fields - fields_before
    assert torch.all(shift[0, :5] == 0)
    direction = run.economy.field_direction[0, 1]
    assert torch.allclose(shift[0, 5:], 1.5 * direction.expand(4, -1))


def test_per_agent_temperature_distribution():
    loaded = scenario(populations={"a": {"count": 4000, "temperature": {"distribution": "lognormal", "mean": 0.5,
                                                                         "sigma": 0.4}}})
    temperature = rollout(loaded).state.temperature[0]
    assert abs(float(temperature.mean()) - 0.5) < 0.02 and float(temperature.std()) > 0.1


@pytest.mark.parametrize("kind", ["equal", "exponential", "lognormal", "pareto"])
def test_money_distributions_have_the_asked_mean(kind):
    money = {"distribution": kind, "mean": 3.0, **({"alpha": 3.0} if kind == "pareto" else {})}
    loaded = scenario(populations={"a": {"count": 20000, "money": money}})
    money = rollout(loaded).state.money[0]
    assert torch.all(money >= 0)
    assert abs(float(money.mean()) / 3.0 - 1) < 0.05


def test_trade_follows_the_network_only(tmp_path):
    edges = tmp_path / "edges.txt"
    edges.write_text("0 1\n1 2\n2 3\n3 0\n4 5\n")
    loaded = Scenario.from_yaml(_write(tmp_path, """
populations: {a: {count: 6, temperature: 0.5}}
market: {d: 4, network: {edge_list: edges.txt}}
"""))
    run = rollout(loaded)
    outcome = trade(run.state, run.economy)
    mask = run.economy.trade_mask
    assert mask[0, 1] and mask[1, 0] and not mask[0, 2] and not mask[4, 0]
    # agent 4 can only buy from 5 and 5 only from 4: 4 and 5 pay each other their whole budgets
    budget = 0.1 * run.state.money[0]
    assert math.isclose(float(outcome.revenue[0, 5]), float(budget[4]))
    assert math.isclose(float(outcome.revenue[0, 4]), float(budget[5]))


def test_edge_list_weights_and_comments(tmp_path):
    """Weights (a number or networkx's data dictionary) reach the networkx graph; the market trades every edge."""
    (tmp_path / "edges.txt").write_text("# buyer seller weight\n0 1 2.5\n\n1 2 {'weight': 0.5}  # from nx\n2 0\n")
    loaded = Scenario.from_yaml(_write(tmp_path, """
populations: {a: {count: 4}}
market: {d: 2, network: {edge_list: edges.txt, params: {directed: true}}}
"""))
    graph = build_graph(loaded.market.network, loaded.population_sizes, loaded.run.seed)
    assert graph.is_directed() and dict(graph.edges) == {(0, 1): {"weight": 2.5}, (1, 2): {"weight": 0.5},
                                                         (2, 0): {"weight": 1.0}}
    mask = rollout(loaded).economy.trade_mask
    assert mask.nonzero().tolist() == [[0, 1], [1, 2], [2, 0]]


def test_networkx_generator_with_parameters():
    loaded = scenario(populations={"a": {"count": 40}},
                      network={"generator": "watts_strogatz_graph", "params": {"k": 4, "p": 0.0}})
    mask = rollout(loaded).economy.trade_mask
    assert int(mask.sum()) == 40 * 4  # a ring lattice: each agent with its 4 nearest neighbours
    with pytest.raises(ScenarioError, match="no generator"):
        rollout(scenario(network={"generator": "no_such_graph"}))
    with pytest.raises(ScenarioError, match="refused"):
        rollout(scenario(network={"generator": "watts_strogatz_graph", "params": {"q": 1}}))


def test_coupling_file_shape_is_checked(tmp_path):
    np.savez(tmp_path / "j.npz", J=np.zeros((3, 3)))
    with pytest.raises(ScenarioError, match="shape"):
        rollout(Scenario.from_yaml(_write(tmp_path, """
populations: {a: {count: 4}}
market: {d: 1, couplings: {file: j.npz}}
""")))


def _write(folder: Path, text: str) -> Path:
    path = folder / "scenario.yaml"
    path.write_text(text)
    return path


IGNORED_OPTIONS = {
    "uniform temperature mean": ({"temperature": {"distribution": "uniform", "mean": 2.0}}, "temperature.mean"),
    "uniform temperature sigma": ({"temperature": {"distribution": "uniform", "sigma": 0.3}}, "temperature.sigma"),
    "lognormal temperature low": ({"temperature": {"distribution": "lognormal", "low": 0.1}}, "temperature.low"),
    "gamma temperature high": ({"temperature": {"distribution": "gamma", "high": 3.0}}, "temperature.high"),
    "lognormal money alpha": ({"money": {"distribution": "lognormal", "alpha": 3.0}}, "money.alpha"),
    "pareto money sigma": ({"money": {"distribution": "pareto", "sigma": 2.0}}, "money.sigma"),
    "constant state scale": ({"state": {"distribution": "constant", "scale": 2.0}}, "state.scale"),
    "normal field value": ({"field": {"value": 1.0}}, "field.value"),
    "tap correction scale": ({"correction": {"form": "tap", "scale": 0.5}}, "correction.scale"),
    "none correction hidden": ({"correction": {"hidden": 8}}, "correction.hidden"),
    "tap correction seed": ({"correction": {"form": "tap", "seed": 3}}, "correction.seed"),
    "none correction weights": ({"correction": {"form": "none", "weights": "w.pt"}}, "correction.weights"),
    "ffn from a file with a seed": ({"correction": {"form": "ffn", "weights": "w.pt", "seed": 3}}, "correction.seed"),
    "identity projections seed": ({"projections": {"init": "identity", "seed": 3}}, "projections.seed"),
}


@pytest.mark.parametrize("case", sorted(IGNORED_OPTIONS))
def test_an_option_the_chosen_variant_ignores_is_refused_by_its_key(case):
    options, key = IGNORED_OPTIONS[case]
    with pytest.raises(ScenarioError) as error:
        scenario(populations={"a": {"count": 3, **options}}, response="vmf")
    message = str(error.value)
    assert f"populations.a.{key}:" in message and "does not use it" in message and "\n" not in message


def test_variants_fill_in_the_defaults_of_what_they_read_and_round_trip():
    loaded = scenario(populations={"a": {"count": 2000, "temperature": {"distribution": "uniform", "high": 2.0},
                                         "money": {"distribution": "pareto"},
                                         "correction": {"form": "ffn"}}})
    population = loaded.populations["a"]
    assert (population.temperature.low, population.temperature.mean) == (0.0, None)
    assert (population.money.alpha, population.money.sigma) == (2.0, None)
    assert (population.correction.hidden, population.correction.scale) == (16, 0.0)
    temperature = rollout(loaded).state.temperature[0]
    assert 0 <= float(temperature.min()) and float(temperature.max()) <= 2.0 and float(temperature.max()) > 1.5
    assert Scenario.from_dict(__import__("yaml").safe_load(loaded.to_yaml())) == loaded
    assert loaded.with_overrides({"populations.a.temperature.low": 0.5}).populations["a"].temperature.low == 0.5
    with pytest.raises(ScenarioError, match=r"populations\.a\.temperature\.mean: distribution uniform"):
        loaded.with_overrides({"populations.a.temperature.mean": 0.5})


def test_tap_asks_the_response_whether_it_has_a_temperature(monkeypatch):
    from econspin.response import RESPONSES

    tap = {"a": {"count": 3, "correction": {"form": "tap"}}}
    with pytest.raises(ScenarioError, match="tap needs a finite-temperature response"):
        scenario(populations=tap, response="linear")
    scenario(populations=tap, response="large_d")
    monkeypatch.setattr(RESPONSES["linear"], "finite_temperature", True)
    assert scenario(populations=tap, response="linear").market.response == "linear"
    monkeypatch.setattr(RESPONSES["large_d"], "finite_temperature", False)
    with pytest.raises(ScenarioError, match="tap needs a finite-temperature response"):
        scenario(populations=tap, response="large_d")


def test_nested_errors_name_the_key_and_say_what_is_wrong():
    low_above_high = r"^scenario: populations\.a\.temperature: distribution uniform needs low <= high"
    with pytest.raises(ScenarioError, match=low_above_high):
        scenario(populations={"a": {"count": 3, "temperature": {"distribution": "uniform", "low": 2.0, "high": 1.0}}})
    with pytest.raises(ScenarioError, match=r"^populations\.a\.temperature\.schedule\.1\.1: should be a number"):
        scenario(populations={"a": {"count": 3}}).with_overrides(
            {"populations.a.temperature": {"schedule": [[0, 1.0], [4, "cold"]]}})
    with pytest.raises(ScenarioError, match=r"^run\.steps: Input should be greater than 0 \(got 0\)$"):
        scenario(populations={"a": {"count": 3}}).with_overrides({"run.steps": 0})
    with pytest.raises(ScenarioError, match=r"^scenario: populations: should be a mapping of keys \(got 5\)$"):
        Scenario.from_dict({"populations": 5})
