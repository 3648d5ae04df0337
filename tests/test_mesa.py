"""The Mesa rims: EconSpinModel over the engine, and the per-agent reference model against the engine."""

import math
import subprocess
import sys

import mesa
import numpy as np
import pandas as pd
import pytest
from helpers import shared_start_ensemble

from econspin import Scenario, ScenarioError, simulate
from econspin.mesa import EconSpinModel, ReferenceModel
from econspin.network import build_graph

SCENARIOS = "scenarios"


def two_populations(mode="expected", **market):
    return Scenario.from_dict({
        "populations": {
            "human": {"count": 6, "temperature": 1.0, "spend": 0.2, "eta": 0.6,
                      "money": {"distribution": "exponential"}, "correction": {"form": "tap"}},
            "ai": {"count": 4, "temperature": 0.1, "spend": 0.4, "sells": True,
                   "money": {"distribution": "exponential"}},
            "shops": {"count": 3, "temperature": 0.5, "buys": False},
        },
        "market": {"d": 3, "heads": 2, "mode": mode, "response": "vmf", "visibility": 0.4, **market},
        "run": {"device": "cpu", "dtype": "float64", "seed": 5},
    })


def test_model_steps_are_the_engines_rounds():
    scenario = two_populations()
    model = EconSpinModel(scenario, seed=11)
    for _ in range(4):
        model.step()
    engine = simulate(scenario, steps=4, seed=11, replicas=1)
    collected = model.datacollector.get_model_vars_dataframe()
    assert len(collected) == 5  # the initial state, then every round, as Mesa models collect
    columns = [c for c in engine.metrics.columns if c not in ("step", "replica")]
    # both start with the initial state (step 0, its trade metrics NaN in both)
    np.testing.assert_array_equal(collected[columns].to_numpy(), engine.metrics[columns].to_numpy())
    assert model.steps == 4


def test_agents_read_the_engines_tensors():
    model = EconSpinModel(two_populations(), seed=1)
    model.step()
    state = model.rollout.state
    assert len(model.agents) == 13
    assert [agent.population for agent in model.agents].count("shops") == 3
    assert sum(agent.wealth for agent in model.agents) == pytest.approx(float(state.money.sum()), rel=1e-14)
    agent = model.agent_at(7)
    assert agent.state.data_ptr() == state.states[0, 7].data_ptr()  # a view, not a copy
    assert agent.temperature == pytest.approx(0.1)
    assert agent.revenue == float(state.revenue[0, 7]) and agent.spending == float(state.spending[0, 7])
    wealth = model.datacollector.get_agent_vars_dataframe()["wealth"]
    assert len(wealth) == 2 * 13


def test_keyword_settings_change_the_scenario():
    model = EconSpinModel(two_populations(), seed=0, ai_temperature=0.02, visibility=-1.0,
                          **{"populations.human.spend": 0.3})
    assert model.scenario.populations["ai"].temperature == 0.02
    assert model.scenario.market.visibility == -1.0
    assert model.scenario.populations["human"].spend == 0.3
    with pytest.raises(ScenarioError, match="unknown setting 'robot_temperature'"):
        EconSpinModel(two_populations(), seed=0, robot_temperature=1.0)


def test_seeding_follows_mesa():
    scenario = two_populations(mode="sampled")

    def wealth_after_two(**seeding):
        model = EconSpinModel(scenario, **seeding)
        model.step()
        model.step()
        return [agent.wealth for agent in model.agents]

    assert wealth_after_two(seed=3) == wealth_after_two(seed="3")  # typed into a page, the seed is text
    assert wealth_after_two(seed=3) != wealth_after_two(seed=4)
    assert wealth_after_two(rng=9) == wealth_after_two(rng=9)
    assert wealth_after_two() != wealth_after_two()  # unseeded, as any Mesa model


def test_batch_run_returns_its_usual_table():
    rows = mesa.batch_run(
        EconSpinModel,
        parameters={"scenario": f"{SCENARIOS}/human_vs_ai.yaml", "human_count": 20, "ai_count": 5,
                    "ai_temperature": [0.05, 1.0], "seed": [1]},
        iterations=2,
        max_steps=3,
        display_progress=False,
    )
    table = pd.DataFrame(rows)
    assert {"RunId", "iteration", "Step", "ai_temperature", "hhi", "gini", "wealth", "AgentID"} <= set(table.columns)
    assert table.RunId.nunique() == 4 and len(table) == 4 * 25
    final = table.groupby("RunId").first()
    assert (final.total_wealth == final.total_wealth.iloc[0]).all()
    cold, hot = (final[final.ai_temperature == t].hhi.iloc[0] for t in (0.05, 1.0))
    assert cold != hot


def test_agents_sit_on_the_trade_network():
    scenario = two_populations(network={"generator": "erdos_renyi_graph", "params": {"p": 0.4}})
    model = EconSpinModel(scenario, seed=2)
    graph = build_graph(scenario.market.network, scenario.population_sizes, 2)
    for agent in model.agents:
        neighbours = sorted(other.index for other in agent.cell.neighborhood.agents)
        assert neighbours == sorted(graph.neighbors(agent.index))
    assert EconSpinModel(two_populations(), seed=2).grid is None


def test_from_yaml():
    model = EconSpinModel.from_yaml(f"{SCENARIOS}/human_vs_ai.yaml", seed=0, human_count=10, ai_count=3)
    model.step()
    assert len(model.agents) == 13 and math.isfinite(model.metrics["hhi"])


def test_reference_model_is_the_engine_agent_by_agent():
    """Expected mode: every agent's state and money equal the engine's after every round."""
    for scenario in (two_populations(), two_populations(spend_rule="unit", heads=1, response="large_d")):
        engine = EconSpinModel(scenario, seed=7, dtype="float64")
        reference = ReferenceModel(scenario, seed=7)
        for _ in range(5):
            engine.step()
            reference.step()
            state = engine.rollout.state
            for agent in reference.agents:
                np.testing.assert_allclose(agent.state, state.states[0, agent.index].numpy(), rtol=1e-7, atol=1e-9)
                assert agent.wealth == pytest.approx(float(state.money[0, agent.index]), rel=1e-10)


def test_reference_model_and_engine_agree_in_distribution():
    """Sampled mode: the mean money of each agent after three rounds, over many seeds, within sampling error."""
    scenario = two_populations(mode="sampled")
    runs, rounds = 200, 3
    ensemble = shared_start_ensemble(scenario, runs)
    ensemble.advance(rounds)
    engine = ensemble.state.money.numpy()
    per_agent = []
    for seed in range(runs):
        model = ReferenceModel(scenario, rng=seed)  # the same economy; Mesa's generator draws
        for _ in range(rounds):
            model.step()
        per_agent.append([agent.wealth for agent in model.agents])
    reference = np.array(per_agent)
    difference = engine.mean(0) - reference.mean(0)
    error = np.sqrt(engine.var(0) / runs + reference.var(0) / runs)
    assert np.all(np.abs(difference) <= 4.5 * error), np.max(np.abs(difference) / error)
    assert np.allclose(reference.sum(1), engine.sum(1)[0], rtol=1e-12)


def test_engine_never_imports_mesa():
    code = "import sys, econspin, econspin.simulate, econspin.sweep; print('mesa' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
