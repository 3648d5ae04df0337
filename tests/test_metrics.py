"""Every metric against an independent formula, on hand-made cases with known answers.

The metrics read a State; here its money, revenue, states and choice records are set by hand,
so each value is known in closed form (or from a formula written differently from the one in
econspin.metrics: pairwise differences for the Gini, sorting for CR4).
"""

import math
from unittest import mock

import numpy as np
import pytest
import torch
from helpers import needs_compiler, rollout, scenario
from hypothesis import given, settings
from hypothesis import strategies as st

import econspin.metrics as metrics_module
from econspin.host_syncs import HostSyncRecorder
from econspin.members import AgentSet
from econspin.metrics import (
    METRICS,
    measure,
    metric_functions,
    metric_names,
    revenue_shares,
    sorted_by_integer_keys,
    sorted_rows,
)
from econspin.round import step

MARKET_OF_FIVE = {  # 3 firms that only sell, 2 households that only buy
    "firms": {"count": 3, "buys": False},
    "households": {"count": 2, "sells": False},
}


def economy_with(populations=None, **market):
    run = rollout(scenario(populations=populations or MARKET_OF_FIVE, **market))
    return run.state, run.economy


def metric(name, state, economy):
    return float(metric_functions(economy)[name](state, economy)[0])


def with_money(state, money):
    return state.replace(money=torch.tensor([money], dtype=torch.float64))


def with_revenue(state, revenue):
    return state.replace(revenue=torch.tensor([revenue], dtype=torch.float64))


def pairwise_gini(values):
    """Half the relative mean absolute difference: sum_ij |w_i - w_j| / (2 N^2 mean w)."""
    values = np.asarray(values, dtype=np.float64)
    return np.abs(values[:, None] - values[None, :]).sum() / (2 * len(values) ** 2 * values.mean())


@pytest.mark.parametrize("count", [2, 5, 12])
def test_gini_of_one_rich_agent_is_one_minus_one_over_n(count):
    state, economy = economy_with({"a": {"count": count}})
    rich = with_money(state, [0.0] * (count - 1) + [1.0])
    assert metric("gini", rich, economy) == pytest.approx(1 - 1 / count, abs=1e-15)


def test_gini_of_equal_money_is_zero_and_of_one_to_n_is_known():
    state, economy = economy_with({"a": {"count": 9}})
    assert metric("gini", with_money(state, [2.5] * 9), economy) == pytest.approx(0.0, abs=1e-15)
    # wealth 1, 2, ..., n: G = (n - 1) / (3 n)
    assert metric("gini", with_money(state, list(range(9, 0, -1))), economy) == pytest.approx(8 / 27, abs=1e-15)


def test_gini_does_not_depend_on_the_unit_of_money_and_is_zero_without_money():
    state, economy = economy_with({"a": {"count": 3}})
    # total money below one unit: the normalisation is by the total, whatever its size
    assert metric("gini", with_money(state, [0.0, 0.0, 0.25]), economy) == pytest.approx(2 / 3, abs=1e-15)
    assert metric("gini", with_money(state, [0.0, 0.0, 0.0]), economy) == 0.0


@given(money=st.lists(st.floats(0, 1e6), min_size=4, max_size=4).filter(lambda w: sum(w) > 1e-3))
@settings(max_examples=60, deadline=None)
def test_gini_is_the_mean_absolute_difference(money):
    state, economy = economy_with({"a": {"count": 4}})
    assert metric("gini", with_money(state, money), economy) == pytest.approx(pairwise_gini(money), abs=1e-12)


@pytest.mark.parametrize("sellers", [1, 3, 4, 10])
def test_hhi_and_cr4_of_equal_shares(sellers):
    populations = {"firms": {"count": sellers, "buys": False}, "households": {"count": 2, "sells": False}}
    state, economy = economy_with(populations)
    state = with_revenue(state, [0.7] * sellers + [0.0, 0.0])
    assert metric("hhi", state, economy) == pytest.approx(1 / sellers, rel=1e-14)
    assert metric("cr4", state, economy) == pytest.approx(min(4, sellers) / sellers, rel=1e-14)


def test_hhi_and_cr4_of_a_monopoly_and_of_known_shares():
    state, economy = economy_with({"firms": {"count": 6, "buys": False}, "households": {"count": 1, "sells": False}})
    monopoly = with_revenue(state, [0, 0, 3.0, 0, 0, 0, 0])
    assert metric("hhi", monopoly, economy) == 1.0 and metric("cr4", monopoly, economy) == 1.0
    shares = with_revenue(state, [5, 1, 1, 1, 1, 1, 0])  # shares 1/2 and five of 1/10
    assert metric("hhi", shares, economy) == pytest.approx(0.25 + 5 * 0.01, rel=1e-14)
    assert metric("cr4", shares, economy) == pytest.approx(0.5 + 3 * 0.1, rel=1e-14)


def test_concentration_counts_sellers_only():
    """Revenue recorded on a non-seller (it cannot earn any) does not enter the shares."""
    state, economy = economy_with()
    state = with_revenue(state, [1.0, 1.0, 2.0, 100.0, 0.0])
    assert metric("hhi", state, economy) == pytest.approx(0.25**2 * 2 + 0.5**2, rel=1e-14)
    assert metric("cr4", state, economy) == pytest.approx(1.0, rel=1e-14)


@given(revenue=st.lists(st.floats(0, 1e3), min_size=7, max_size=7).filter(lambda r: sum(r) > 1e-6))
@settings(max_examples=60, deadline=None)
def test_hhi_and_cr4_against_sorted_shares(revenue):
    state, economy = economy_with({"firms": {"count": 7, "buys": False}, "households": {"count": 1, "sells": False}})
    state = with_revenue(state, revenue + [0.0])
    shares = np.sort(np.asarray(revenue) / sum(revenue))[::-1]
    assert metric("hhi", state, economy) == pytest.approx(float(shares @ shares), abs=1e-12)
    assert metric("cr4", state, economy) == pytest.approx(float(shares[:4].sum()), abs=1e-12)


def test_wealth_shares_and_total_wealth():
    state, economy = economy_with()
    state = with_money(state, [1.0, 2.0, 3.0, 4.0, 10.0])
    assert metric("wealth_share_firms", state, economy) == pytest.approx(0.3, rel=1e-14)
    assert metric("wealth_share_households", state, economy) == pytest.approx(0.7, rel=1e-14)
    assert metric("total_wealth", state, economy) == 20.0


def test_order_is_one_when_aligned_and_zero_when_opposed():
    state, economy = economy_with({"a": {"count": 4}}, radius=3.0)  # R != sqrt(d): order divides by R
    direction = torch.tensor([0.6, 0.0, 0.8, 0.0], dtype=torch.float64)
    aligned = state.replace(states=(3.0 * direction).expand(1, 4, 4).clone())
    assert metric("order", aligned, economy) == pytest.approx(1.0, rel=1e-14)
    opposed = aligned.states.clone()
    opposed[0, 2:] *= -1
    assert metric("order", state.replace(states=opposed), economy) == pytest.approx(0.0, abs=1e-15)
    half = aligned.states.clone()
    half[0, 2:] = 0.0  # two of four agents aligned at full length, two at the origin
    assert metric("order", state.replace(states=half), economy) == pytest.approx(0.5, rel=1e-14)


def test_attention_entropy_and_surplus_average_over_buyers_only():
    state, economy = economy_with()
    state = state.replace(entropy=torch.tensor([[9.0, 9.0, 9.0, 0.2, 0.6]], dtype=torch.float64),
                          surplus=torch.tensor([[5.0, 5.0, 5.0, -1.0, 3.0]], dtype=torch.float64))
    assert metric("attention_entropy", state, economy) == pytest.approx(0.4, rel=1e-14)
    assert metric("surplus", state, economy) == pytest.approx(1.0, rel=1e-14)


@pytest.mark.parametrize("heads", [1, 3])
def test_attention_entropy_is_one_for_uniform_choice_and_zero_for_argmax(heads):
    hot = economy_with({"a": {"count": 6, "temperature": math.inf}}, heads=heads)
    assert metric("attention_entropy", step(*hot), hot[1]) == pytest.approx(1.0, rel=1e-12)
    cold = economy_with({"a": {"count": 6, "temperature": 0.0}}, heads=heads)
    assert metric("attention_entropy", step(*cold), cold[1]) == pytest.approx(0.0, abs=1e-12)


def test_surplus_is_t_log_n_for_equal_utilities():
    """Identical agents: u_ij equal for all j, so T log sum_j exp(u / T) = u + T log(N - 1)."""
    populations = {"a": {"count": 5, "temperature": 0.5, "state": {"distribution": "constant", "value": 1.0},
                         "projections": {"init": "identity"}}}
    state, economy = economy_with(populations)
    utility = 4 * 1.0 / math.sqrt(4)  # q . k / sqrt(d_k) with q = k = (1, 1, 1, 1)
    assert metric("surplus", step(state, economy), economy) == pytest.approx(utility + 0.5 * math.log(4), rel=1e-12)


def test_measure_returns_every_metric_in_column_order():
    state, economy = economy_with()
    state = with_money(with_revenue(state, [1.0, 2.0, 1.0, 0.0, 0.0]), [1.0, 1.0, 1.0, 1.0, 4.0]).replace(round=1)
    values = measure(state, economy)[0]
    names = list(metric_functions(economy))
    assert names[: len(METRICS)] == list(METRICS)
    assert values[names.index("hhi")].item() == pytest.approx(0.375, rel=1e-14)
    assert values[names.index("gini")].item() == pytest.approx(pairwise_gini([1, 1, 1, 1, 4]), rel=1e-14)
    assert values[names.index("wealth_share_households")].item() == pytest.approx(5 / 8, rel=1e-14)


def test_the_initial_state_has_no_trade_metrics_and_every_money_metric():
    """Step 0 follows no round: HHI, CR4, entropy and surplus are NaN, not the zeros the state starts with."""
    state, economy = economy_with()
    state = with_money(state, [1.0, 1.0, 1.0, 1.0, 4.0])
    columns = dict(zip(metric_functions(economy), measure(state, economy)[0].tolist()))
    assert all(math.isnan(columns[name]) for name in ("hhi", "cr4", "attention_entropy", "surplus"))
    assert columns["gini"] == pytest.approx(pairwise_gini([1, 1, 1, 1, 4]), rel=1e-14)
    assert columns["total_wealth"] == 8.0 and columns["wealth_share_households"] == pytest.approx(5 / 8, rel=1e-14)
    assert math.isfinite(columns["order"])


def test_a_rollout_table_starts_with_the_initial_state():
    run = rollout([scenario(populations=MARKET_OF_FIVE)] * 2, [0, 1])
    initial = measure(run.state, run.economy).numpy()
    run.advance(3)
    table = run.metrics()
    assert table["step"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3] and table["replica"].tolist() == [0, 1] * 4
    np.testing.assert_array_equal(table[table.step == 0].iloc[:, 2:].to_numpy(), initial)
    assert table[table.step > 0][["hhi", "attention_entropy"]].notna().all().all()


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


FLOATS = st.one_of(
    st.floats(allow_nan=False, width=32),  # infinities, both zeros, subnormals included
    st.sampled_from([0.0, -0.0, 1.0, 2.0]),  # ties
)


# sorted_rows' CPU paths: numpy's sort (eager), the integer keys (compiled; RADIX_VALUES 1: from 256 a row)
SORTS = {
    "numpy": sorted_rows,
    "integer keys": lambda values: _keys_from_256_a_row(values),
}


def _keys_from_256_a_row(values: torch.Tensor) -> torch.Tensor:
    with mock.patch.object(metrics_module, "RADIX_VALUES", 1):  # the keys from 256 a row, however few rows
        return sorted_by_integer_keys(values)


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from([torch.float32, torch.float64]),
    st.integers(1, 3),
    st.sampled_from([1, 255, 256, 3000]),
    st.sampled_from(sorted(SORTS)),
    st.data(),
)
def test_sorted_rows_equal_torchs_sort_bit_for_bit(dtype, batch, count, path, data):
    """Both CPU paths of sorted_rows (numpy's sort; the rows as one radix-sorted key) give sort(dim=1)'s values."""
    drawn = data.draw(st.lists(FLOATS, min_size=8, max_size=8))
    generator = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    values = torch.tensor(drawn, dtype=dtype)[torch.randint(0, 8, (batch, count), generator=generator)]
    values = values * torch.rand(batch, count, generator=generator, dtype=dtype).add(0.5)  # not only 8 values
    got = SORTS[path](values)
    want = values.sort(dim=1).values
    assert got.dtype == dtype and torch.equal(want, got)  # -0.0 and 0.0 may trade places: equal values


@pytest.mark.parametrize("path", sorted(SORTS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch", [1, 3])
def test_sorted_rows_of_every_kind_of_value(path, dtype, batch):
    """Each path of sorted_rows against torch's sort, on negatives, both zeros, infinities, subnormals and ties.

    The paths: numpy's sort; the keys of float32 rows, the key of one float64 row, torch's sort for several
    float64 rows. A view of every other column too: numpy sorts the tensor's memory where it lies. The keys
    keep each zero's sign; numpy's vectorised sort may give -0.0 for 0.0 and back (equal values, as torch.equal
    holds them), which no metric can tell apart.
    """
    kinds = [-math.inf, -3.5, -1e-40, -0.0, 0.0, 1e-45, 2.0, 2.0, 7e30, math.inf]
    generator = torch.Generator().manual_seed(batch)
    values = torch.tensor(kinds, dtype=dtype)[torch.randint(0, len(kinds), (batch, 600), generator=generator)]
    for rows in (values[:, :300], values[:, ::2]):
        got = SORTS[path](rows)
        assert torch.equal(got, rows.sort(dim=1).values)
        if path == "integer keys":  # both zeros come back, as many of each
            signs = torch.signbit(got) & (got == 0)
            assert int(signs.sum()) == int((torch.signbit(rows) & (rows == 0)).sum())


def test_sorted_rows_take_numpy_eagerly_and_the_integer_keys_compiled_for_long_rows_only(monkeypatch):
    """Eagerly on the CPU numpy sorts float32 and float64; compiled, the keys where the rows are long and many.

    Everything else (float16, bfloat16, values autograd follows, short or few rows compiled) takes torch's sort.
    """
    import econspin.metrics as metrics

    used = []
    original_sort, original_numpy = torch.Tensor.sort, np.sort

    def recording(tensor, *arguments, **keywords):
        used.append(tensor.dtype)
        return original_sort(tensor, *arguments, **keywords)

    def numpy_recording(array, *arguments, **keywords):
        used.append("numpy")
        return original_numpy(array, *arguments, **keywords)

    monkeypatch.setattr(torch.Tensor, "sort", recording)
    monkeypatch.setattr(metrics.np, "sort", numpy_recording)
    cases = (((64, 256), torch.float32, "numpy"), ((2, 5), torch.float64, "numpy"),
             ((3, 7), torch.bfloat16, torch.bfloat16), ((3, 7), torch.float16, torch.float16))  # fmt: skip
    for shape, dtype, want in cases:
        used.clear()
        got = metrics.sorted_rows(torch.rand(*shape).to(dtype))
        assert used == [want] and got.dtype == dtype, shape
    followed = torch.rand(64, 256, requires_grad=True)  # autograd follows it (a susceptibility): torch's sort
    used.clear()
    metrics.sorted_rows(followed).sum().backward()
    assert used == [torch.float32] and torch.equal(followed.grad, torch.ones(64, 256))
    with torch.no_grad():
        used.clear()
        metrics.sorted_rows(followed)
        assert used == ["numpy"]
    for _ in range(2):  # while the host's syncs are recorded the CPU stands in for a GPU: torch's sort, no host read
        used.clear()
        with HostSyncRecorder() as recorder:
            metrics.sorted_rows(torch.rand(64, 256))
        assert set(used) == {torch.float32} and recorder.events == []  # (the recorder's mode sees the sort too)
        with pytest.raises(ZeroDivisionError), HostSyncRecorder():  # and after a recorder that raised, numpy again
            1 / 0
        used.clear()
        metrics.sorted_rows(torch.rand(64, 256))
        assert used == ["numpy"]
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    for shape, want in (((64, 256), torch.int64), ((1, 20000), torch.int64), ((2, 300), torch.float32),
                        ((512, 64), torch.float32)):  # fmt: skip
        used.clear()
        metrics.sorted_rows(torch.rand(*shape))
        assert used == [want], shape


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=12))
def test_an_agent_set_selects_its_agents_columns_as_the_indices_do(mask):
    """AgentSet.of: a view of the range where the agents are consecutive, the same values as index_select always."""
    chosen = torch.tensor(mask)
    agents = AgentSet.of_mask(chosen)
    values = torch.arange(3.0 * len(mask)).view(3, len(mask))
    assert torch.equal(agents.indices, chosen.nonzero().squeeze(1))
    assert torch.equal(agents.of(values), values.index_select(1, agents.indices))
    indices = agents.indices.tolist()
    consecutive = indices == list(range(indices[0], indices[-1] + 1)) if indices else True
    assert (agents.span is not None) == consecutive
    if indices and agents.span is not None:
        assert agents.of(values).untyped_storage().data_ptr() == values.untyped_storage().data_ptr()  # a view


def test_metrics_of_agents_apart_equal_those_of_agents_together():
    """Buyers in two runs (a population that does not buy between them): the gathered columns' metrics."""
    populations = {
        "a": {"count": 5, "temperature": 1.0},
        "firms": {"count": 4, "buys": False, "temperature": 1.0},
        "b": {"count": 6, "temperature": 0.5},
    }
    run = rollout(scenario(populations=populations))
    run.advance(2)
    members = run.economy.members
    assert members.buyers.span is None and members.sellers.span == (0, 15)
    assert all(population.span is not None for population in members.populations)
    want = torch.stack([run.state.entropy.index_select(1, members.buyers.indices).mean(1)])
    assert torch.equal(metric_functions(run.economy)["attention_entropy"](run.state, run.economy), want[0])


@needs_compiler
def test_sorted_rows_compiled_equal_torchs_sort():
    """Under run.compile the metrics are traced (metrics.measure_played): the keys' bit views and shifts compile."""
    generator = torch.Generator().manual_seed(1)
    for shape, dtype in (((64, 256), torch.float32), ((1, 16384), torch.float64)):  # both kinds of key
        values = (torch.randn(*shape, generator=generator) * 100).to(dtype)
        compiled = torch.compile(sorted_rows, dynamic=False)(values)
        assert torch.equal(compiled, values.sort(dim=1).values), (shape, dtype)
