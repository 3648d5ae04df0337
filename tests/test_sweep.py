"""The sweep grammar."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from econspin.scenario import ScenarioError
from econspin.sweep import Grid, parse_grid, parse_values


def test_linear_log_and_list_grids():
    assert parse_values("0:1:5", "x") == (0.0, 0.25, 0.5, 0.75, 1.0)
    values = parse_values("log:0.01:1:3", "x")
    assert all(math.isclose(a, b) for a, b in zip(values, (0.01, 0.1, 1.0)))
    assert parse_values("0.5,2,sphere,true", "x") == (0.5, 2, "sphere", True)
    assert parse_values("3", "x") == (3,)
    assert parse_grid("populations.ai.temperature=1:2:2") == Grid("populations.ai.temperature", (1.0, 2.0))


@pytest.mark.parametrize("spec", ["log:-1:1:3", "log:1:2", "0:1:0", "a:b:c", "1,,2", "1:2:3:4:5"])
def test_bad_specs_raise(spec):
    with pytest.raises(ScenarioError):
        parse_values(spec, "--grid key")


def test_batches_follow_shape_and_memory_and_do_not_change_results():
    from helpers import scenario

    from econspin.sweep import plan_batches, run_sweep, sweep_points

    base = scenario(run={"seed": 4})
    points = sweep_points(base, [parse_grid("populations.ai.temperature=0.1,1"), parse_grid("market.d=4,6")])
    assert sorted(len(batch) for batch in plan_batches(points, 3)) == [6, 6]  # d differs: two shapes
    small = [(o, s.with_overrides({"run.memory_budget_mb": 0.02})) for o, s in points]
    assert max(len(batch) for batch in plan_batches(small, 3)) < 6
    together = run_sweep(points, 3, 5, "cpu", "float64")
    apart = run_sweep(small, 3, 5, "cpu", "float64")
    assert list(together.columns) == list(apart.columns) and len(together) == len(apart)
    # NaN (the trade metrics of step 0, the initial state) only where the other has NaN too
    np.testing.assert_allclose(together.select_dtypes("number"), apart.select_dtypes("number"), rtol=0, atol=1e-12)


def test_a_sweep_over_the_seed_gives_every_point_its_own_random_network():
    from helpers import scenario

    from econspin import simulate
    from econspin.sweep import run_sweep, sweep_points

    base = scenario(network={"generator": "erdos_renyi_graph", "params": {"p": 0.4}})
    points = sweep_points(base, [parse_grid("run.seed=0,1,2")])
    table = run_sweep(points, 2, 6, "cpu", "float64")
    for index, (_, point) in enumerate(points):
        alone = simulate(point, steps=6, replicas=2, dtype="float64").metrics
        alone = alone.sort_values(["replica", "step"], kind="stable").reset_index(drop=True)
        swept = table[table["point"] == index][alone.columns].reset_index(drop=True)
        assert swept.equals(alone), f"point {index} (seed {point.run.seed}) differs from its own run"


def test_one_memory_model_sizes_batches_blocks_and_the_up_front_check():
    import torch
    from helpers import rollout, scenario

    from econspin.economy import rows_per_block
    from econspin.memory import SWEEP_BLOCK_ROWS, MemoryModel, check_memory
    from econspin.sweep import plan_batches, sweep_points

    base = scenario(populations={"a": {"count": 200}}, run={"memory_budget_mb": 8})
    budget = 8 * 2**20
    memory = MemoryModel.of_scenario(base, torch.float64)
    points = sweep_points(base, [parse_grid("populations.a.temperature=0.1:1:40")])
    sizes = [len(batch) for batch in plan_batches(points, 1, "float64")]
    size = max(sizes)
    assert sum(sizes) == 40 and 1 < size < 40
    # the planner fills the budget with elements whose blocks are SWEEP_BLOCK_ROWS tall
    assert size * memory.element_bytes(SWEEP_BLOCK_ROWS) <= budget < (size + 1) * memory.element_bytes(SWEEP_BLOCK_ROWS)
    # such a batch passes the up-front check, and the round then takes the tallest blocks that fit
    economy = rollout([point for _, point in points[:size]]).economy
    rows = rows_per_block(economy)
    assert SWEEP_BLOCK_ROWS <= rows < 200
    assert size * memory.element_bytes(rows) <= budget < size * memory.element_bytes(rows + 1)
    # the up-front check refuses exactly the batches whose one-row blocks do not fit
    largest = memory.elements_per_batch(1)
    check_memory(base, largest, torch.float64)
    with pytest.raises(ScenarioError, match="run.memory_budget_mb"):
        check_memory(base, largest + 1, torch.float64)
    assert MemoryModel.of_economy(economy) == memory


@settings(max_examples=40, deadline=None)
@given(
    temperatures=st.integers(1, 7),
    spends=st.integers(1, 3),
    ds=st.integers(1, 2),
    replicas=st.integers(1, 3),
    budget=st.sampled_from([0.003, 0.02, 1024.0]),
    points_per_shard=st.one_of(st.none(), st.integers(1, 5)),
)
def test_shards_cut_the_planner_batches_between_points(temperatures, spends, ds, replicas, budget, points_per_shard):
    from helpers import scenario

    from econspin.sweep import plan_batches, plan_shards, sweep_points

    base = scenario(run={"memory_budget_mb": budget})
    grids = [
        parse_grid(f"populations.ai.temperature=0.1:1:{temperatures}"),
        parse_grid(f"populations.ai.spend=0.1:0.3:{spends}"),
        parse_grid(f"market.d={','.join(str(4 + 2 * k) for k in range(ds))}"),
    ]
    points = sweep_points(base, grids)
    batches = plan_batches(points, replicas)
    shards = plan_shards(points, replicas, None, points_per_shard)
    # every element once, in the planner's order; every shard inside one batch; at most K points
    assert [element for shard in shards for element in shard.elements] == [e for batch in batches for e in batch]
    batch_of = {element: number for number, batch in enumerate(batches) for element in batch}
    for shard in shards:
        assert len({batch_of[element] for element in shard.elements}) == 1
        assert points_per_shard is None or len(shard.points) <= points_per_shard
    # cuts fall between points: a point's replicas of one batch stay in one shard
    for number, batch in enumerate(batches):
        inside = [shard for shard in shards if batch_of[shard.elements[0]] == number]
        for point, _ in batch:
            assert sum(point in shard.points for shard in inside) == 1
    if points_per_shard is None:
        assert [list(shard.elements) for shard in shards] == batches
    assert len({shard.name for shard in shards}) == len(shards)
    assert shards == plan_shards(points, replicas, None, points_per_shard)  # the same sweep, the same shards


@pytest.mark.parametrize("mode", ["expected", "sampled"])
def test_shards_of_any_size_give_the_same_table_bit_for_bit(mode):
    """Blocks of whole rows: a batch's elements do not touch each other's arithmetic."""
    from helpers import scenario

    from econspin.sweep import run_sweep, sweep_points

    points = sweep_points(scenario(mode=mode, run={"seed": 2}), [parse_grid("populations.ai.temperature=0.05:2:5")])
    whole = run_sweep(points, 3, 6, "cpu", "float32")
    for points_per_shard in (1, 2):
        pd.testing.assert_frame_equal(run_sweep(points, 3, 6, "cpu", "float32", None, points_per_shard), whole)


def test_check_points_compiles_each_set_of_compile_inputs_once(monkeypatch):
    """Points differing where the compiler cannot refuse them are checked by one compilation."""
    from helpers import scenario

    import econspin.sweep as sweep

    built = []
    build_economy = sweep.build_economy

    def counted(scenarios, *arguments, **options):
        built.append(len(scenarios))
        return build_economy(scenarios, *arguments, **options)

    monkeypatch.setattr(sweep, "build_economy", counted)
    base = scenario(run={"seed": 1})
    points = sweep.sweep_points(base, [parse_grid("populations.ai.temperature=log:0.02:2:64")])
    sweep.check_points(points, "float32")
    assert built == [1]  # 64 points, one compilation (the sweep compiles each point once more, in its batch)
    grids = [parse_grid("populations.ai.spend=0.1:0.3:8"), parse_grid("market.d=4,6"), parse_grid("run.seed=0,1")]
    sweep.check_points(sweep.sweep_points(base, grids), "float32")
    assert built == [1, 1, 1]  # d makes two shapes; the seed draws nothing but the dynamics


@pytest.mark.parametrize(
    ("mode", "heads", "ai_buys"), [("expected", 1, True), ("expected", 2, False), ("sampled", 1, True)]
)
def test_a_batched_sweep_gives_every_point_the_bits_it_gives_alone(monkeypatch, mode, heads, ai_buys):
    """A batch of points and each point alone (one element): the same numbers, bit for bit.

    The batch draws its points' common parameters once and projects with one copy of them.
    """
    from helpers import scenario

    import econspin.economy
    from econspin.simulate import Rollout
    from econspin.sweep import run_sweep, sweep_points

    populations = {
        "human": {"count": 9, "temperature": 1.0, "spend": 0.3, "money": {"distribution": "exponential"}},
        "ai": {"count": 4, "temperature": 0.1, "buys": ai_buys},
    }
    base = scenario(mode=mode, heads=heads, populations=populations, run={"seed": 5})
    points = sweep_points(base, [parse_grid("populations.ai.temperature=0,0.05,0.3,2,inf")])
    drawn = []
    draw = econspin.economy._element_parameters
    monkeypatch.setattr(econspin.economy, "_element_parameters", lambda *a: drawn.append(1) or draw(*a))
    economy = Rollout.create([s for _, s in points], [0] * len(points), "cpu", "float32").economy
    assert len(drawn) == 1 and economy.shared_projections and economy.every_agent_buys == ai_buys
    together = run_sweep(points, 1, 6, "cpu", "float32")
    alone = run_sweep(points, 1, 6, "cpu", "float32", None, 1)  # one point, one replica: batches of one
    pd.testing.assert_frame_equal(together, alone)


def test_points_drawn_from_other_seeds_or_replicas_keep_their_own_projections():
    from helpers import scenario

    from econspin.simulate import Rollout

    base = scenario(run={"seed": 1})
    for scenarios, replicas, per_replica in (
        ([base, base.with_overrides({"run.seed": 2})], [0, 0], False),
        ([base, base], [0, 1], True),
        ([base], [0], False),  # one element: nothing to share
    ):
        economy = Rollout.create(scenarios, replicas, "cpu", "float64", per_replica).economy
        assert not economy.shared_projections
        if len(scenarios) > 1:
            assert not torch.equal(economy.query[0], economy.query[1])


def test_an_initial_state_drawn_once_for_several_elements_is_each_elements_own():
    """Each element of a batch starts where it starts alone.

    Elements that differ only in constant temperatures share their draws; drawn temperatures,
    another seed or another replica draw their own.
    """
    from helpers import scenario

    from econspin.simulate import Rollout

    base = scenario(run={"seed": 3})
    gamma = {"distribution": "gamma", "mean": 1.0, "sigma": 0.3}
    scenarios = [
        base,
        base.with_overrides({"populations.ai.temperature": 0.5}),
        base.with_overrides({"populations.human.temperature": gamma}),
        base.with_overrides({"populations.human.temperature": {**gamma, "sigma": 0.6}}),
        base.with_overrides({"run.seed": 4}),
        base,
    ]
    replicas = [0, 0, 0, 0, 0, 1]
    together = Rollout.create(scenarios, replicas, "cpu", "float64").state
    for index, (alone_scenario, replica) in enumerate(zip(scenarios, replicas)):
        alone = Rollout.create([alone_scenario], [replica], "cpu", "float64").state
        for name in ("states", "fields", "money", "temperature"):
            assert torch.equal(getattr(together, name)[index], getattr(alone, name)[0]), (index, name)
    assert not torch.equal(together.temperature[2], together.temperature[3])
    assert torch.equal(together.states[0], together.states[1])
    assert not torch.equal(together.states[0], together.states[5])
