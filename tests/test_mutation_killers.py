"""Observables on hand-made states, each expected value worked out by hand here.

Written to kill surviving mutants of econspin/metrics.py (``make mutation``, docs/testing.md).

hhi, cr4, gini, attention_entropy, surplus and order themselves are registered by a decorator,
which mutmut 3 does not mutate; their formulas are pinned by the metric tests of issue 8.
"""

import math

import pytest
import torch
from helpers import rollout, scenario

from econspin.metrics import measure, metric_functions, metric_names, revenue_shares


def _two_populations():
    """7 humans then 5 ai agents (helpers.scenario), one batch element."""
    return rollout(scenario())


def test_wealth_shares_are_each_populations_part_of_all_money():
    run = _two_populations()
    money = torch.tensor([[1.0] * 7 + [2.0] * 5], dtype=torch.float64)  # humans hold 7, ai 10
    state = run.state.replace(money=money)
    functions = metric_functions(run.economy)
    human = float(functions["wealth_share_human"](state, run.economy))
    ai = float(functions["wealth_share_ai"](state, run.economy))
    assert human == pytest.approx(7 / 17, abs=1e-15)
    assert ai == pytest.approx(10 / 17, abs=1e-15)


def test_revenue_shares_do_not_depend_on_the_scale_of_money():
    """Shares are R_j / sum R whatever the unit of money.

    A small economy (total revenue 0.4 < 1) has the same HHI as the same economy in larger units.
    """
    run = _two_populations()
    revenue = torch.zeros(1, 12, dtype=torch.float64)
    revenue[0, :3] = torch.tensor([0.2, 0.1, 0.1], dtype=torch.float64)
    for unit in (1.0, 1e-3, 250.0):
        state = run.state.replace(revenue=revenue * unit)
        shares = revenue_shares(state, run.economy)[0]
        assert shares[:3].tolist() == pytest.approx([0.5, 0.25, 0.25], abs=1e-15)
        assert metric_functions(run.economy)["hhi"](state, run.economy).item() == pytest.approx(0.375, abs=1e-15)


def test_nothing_sold_gives_undefined_shares():
    run = _two_populations()
    state = run.state.replace(revenue=torch.zeros(1, 12, dtype=torch.float64))
    assert torch.isnan(revenue_shares(state, run.economy)).all()


def test_without_buyers_the_choice_observables_are_undefined():
    """An economy of sellers only makes no choices.

    Attention entropy and surplus are NaN (one per batch element); the money observables are
    still defined.
    """
    populations = {"shops": {"count": 4, "buys": False}, "firms": {"count": 3, "buys": False, "temperature": 0.5}}
    run = rollout([scenario(populations=populations)] * 2, [0, 1])
    run.advance(1)
    values = measure(run.state, run.economy)
    columns = dict(zip(metric_names(run.economy.population_names), values.T))
    assert values.shape == (2, len(columns))
    assert torch.isnan(columns["attention_entropy"]).all() and torch.isnan(columns["surplus"]).all()
    assert columns["total_wealth"].tolist() == pytest.approx([7.0, 7.0])
    assert (columns["wealth_share_shops"] + columns["wealth_share_firms"]).tolist() == pytest.approx([1.0, 1.0])
    assert not math.isnan(float(columns["gini"][0]))


def test_metric_columns_name_every_observable_and_each_populations_share():
    run = _two_populations()
    names = metric_names(("human", "ai"))
    assert names[-2:] == ["wealth_share_human", "wealth_share_ai"]
    assert names == list(metric_functions(run.economy))
    assert {"hhi", "cr4", "gini", "attention_entropy", "surplus", "total_wealth", "order"} <= set(names)
