"""The sampled mode on the fused path (econspin.fused_sampled) against the reference kernel.

The reference kernel (econspin.market.trade) draws each buyer's seller by inverting its logit
row at the buyer's counter-based uniform; the fused kernel inverts the unnormalised block
rows at the same uniforms, in two levels. They must pick the same sellers draw for draw.
"""

import dataclasses
import math

import numpy as np
import pytest
import torch
from fused_cases import TOLERANCE, assert_outcomes_close, economies, on_meta, two_populations
from helpers import MISSING_COMPILER, needs_compiler, rollout, scenario
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from econspin.choice import logit_rows, sample_choice
from econspin.fused import uses_fused
from econspin.fused_sampled import compiled_draws, fused_sampled_trade, inverse_cdf, sampled_choices, tile_width
from econspin.market import allowed_sellers, network_mask, project, seller_bias, trade
from econspin.randomness import DRAW_CHOICE, dynamics_keys, round_draws
from econspin.round import step


def reference_rows(state, economy):
    """(alpha (B, H, N, N), uniforms (B, H, N), choices (B, H, N)) as the reference kernel makes them."""
    x, population = state.states, economy.population
    query = project(x, economy.query, population)
    key = project(x, economy.key, population)
    utilities = torch.einsum("bhce,bhne->bhcn", query, key) / math.sqrt(query.shape[-1])
    utilities = utilities + seller_bias(state, economy)[:, None, None, :]
    allowed = allowed_sellers(economy, network_mask(economy), slice(None))[None, None]
    alpha = logit_rows(utilities, allowed, state.temperature[:, None, :, None]).probabilities
    uniforms = state.draws().uniform(DRAW_CHOICE, economy.heads).transpose(0, 1).contiguous()
    return alpha, uniforms, sample_choice(alpha, uniforms)


def near_a_boundary(alpha, uniforms, tolerance):
    """(B, H, N) bool: the uniform lies within ``tolerance`` of a boundary of the row's cumulative alpha."""
    cumulative = alpha.double().cumsum(-1)
    cumulative = cumulative / cumulative[..., -1:].clamp(min=1e-300)
    return ((cumulative - uniforms[..., None]).abs() < tolerance).any(-1)


def assert_the_same_draws(got, want, alpha, uniforms) -> bool:
    """float64: the same sellers; float32: other sellers only where the uniform is within 1e-5 of a boundary.

    Returns whether every draw is the same.
    """
    differ = got != want
    if alpha.dtype == torch.float64:
        assert not differ.any()
    else:  # a float32 row may differ only where its uniform is within float32 rounding of a boundary
        assert not (differ & ~near_a_boundary(alpha, uniforms, 1e-5)).any()
    return not differ.any()


def inversion_rows(seed, agents, dtype, rows=17):
    """(weights (3, rows, N), uniforms (3, rows)), rows >= 9: exact ties, random rows, rows with nobody to buy from.

    Integer weights (exact sums: exact ties), a block of random ones, and in every block a row
    of zeros (5), a row whose only seller is the last column (6), a T = 0 row (weights 0 or 1,
    7) and a T = inf row (every seller 1, 8); the first block's thresholds lie exactly on boundaries.
    In float64 with rows > 9, row 9 is one seller of weight 1 beside sellers of 2^-30 each, its
    threshold among the small ones: running sums in float32 (spacing 2^-23 at 1) would not tell
    them apart. (float32 weights' tile sums are float32: there the draw is the whole row's only
    up to rounding, by design, and such a row is a case of that rounding.)
    """
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randint(0, 4, (3, rows, agents), generator=generator).double()
    weights[1] = torch.rand(rows, agents, generator=generator, dtype=torch.float64)
    weights[:, 5] = 0.0
    weights[:, 6] = 0.0
    weights[:, 6, -1] = 1.0
    weights[:, 7] = weights[:, 7] == 3
    weights[:, 8] = 1.0
    uniforms = torch.rand(3, rows, generator=generator, dtype=torch.float64)
    uniforms[0] = torch.randint(1, 16, (rows,), generator=generator) / 16
    if rows > 9 and agents > 1 and dtype == "float64":
        small = 2.0**-30
        weights[:, 9] = small
        weights[:, 9, 0] = 1.0
        total = 1.0 + (agents - 1) * small
        uniforms[:, 9] = (1.0 + (agents // 2 - 0.5) * small) / total  # the threshold halfway through the small ones
    return weights.to(getattr(torch, dtype)), uniforms


@given(st.integers(0, 2**31), st.integers(1, 300), st.integers(1, 40), st.sampled_from(["float64", "float32"]))
@settings(max_examples=80, deadline=None, derandomize=True)
def test_inverse_cdf_picks_what_whole_row_inversion_picks(seed, agents, tile, dtype):
    """Two-level inversion == choice.sample_choice, whatever the tile, on rows with zeros, ties and empty rows."""
    weights, uniforms = inversion_rows(seed, agents, dtype)
    want = sample_choice(weights, uniforms)
    assert torch.equal(want[:, 5], torch.full((3,), -1)) and torch.equal(want[:, 6], torch.full((3,), agents - 1))
    if agents > 1 and dtype == "float64":  # halfway through the sellers of weight 2^-30 beside one of weight 1
        assert torch.equal(want[:, 9], torch.full((3,), agents // 2))
    for width in (None, tile, agents):
        got = inverse_cdf(weights, uniforms, width)
        assert torch.equal(got, want), width
    chosen = want.clamp(min=0)[..., None]
    assert torch.all(weights.gather(-1, chosen).squeeze(-1)[want >= 0] > 0)  # never a seller of weight 0


# (N, tile, dtype), one compilation each: one level; the default tiles of 16 above N = 64, the last of 6
COMPILED_INVERSIONS = [(13, None, "float64"), (70, None, "float32")]
# one level at the ensembles' N = 64; tiles of 16, the last of 4; tiles of 32, the last of 12
LARGER_COMPILED_INVERSIONS = [(64, None, "float32"), (100, None, "float32"), (300, 32, "float64")]


@needs_compiler
@given(st.integers(0, 2**31), st.integers(9, 40), st.sampled_from(COMPILED_INVERSIONS))
@settings(max_examples=12, deadline=None, derandomize=True)
def test_the_compiled_inversion_draws_the_eager_sellers(seed, rows, case):
    """compiled_positions (a compiled round's blocks) gives running_positions' sellers: same sums, thresholds, count.

    Over blocks of any height (the compiled rows are dynamic), with ties, empty rows, T = 0 and
    T = inf rows and a narrower last tile.
    """
    agents, tile, dtype = case
    weights, uniforms = inversion_rows(seed, agents, dtype, rows)
    want = inverse_cdf(weights, uniforms, tile)
    assert torch.equal(inverse_cdf(weights, uniforms, tile, compiled=True), want)
    assert torch.equal(want, sample_choice(weights, uniforms))
    # with the blocks' scores y <= 0 (as econspin.fused.row_blocks leaves them): the same draws, and
    # s_i and sum_j e_ij y_ij from the same call, to the working precision's rounding of the sums
    scores = -torch.rand(weights.shape, generator=torch.Generator().manual_seed(seed), dtype=weights.dtype) * 10
    drawn, totals, dots = compiled_draws(weights, uniforms, tile, scores=scores)
    assert torch.equal(drawn, want)
    tolerance = 1e-12 if weights.dtype == torch.float64 else 1e-5
    for got, eager in ((totals, weights.sum(-1)), (dots, (scores * weights).sum(-1))):
        assert torch.allclose(got, eager, rtol=tolerance, atol=tolerance * float(eager.abs().max()))


@needs_compiler
@pytest.mark.slow
@given(st.integers(0, 2**31), st.integers(9, 40), st.sampled_from(LARGER_COMPILED_INVERSIONS))
@settings(max_examples=30, deadline=None, derandomize=True)
def test_the_compiled_inversion_draws_the_eager_sellers_at_larger_n(seed, rows, case):
    test_the_compiled_inversion_draws_the_eager_sellers.hypothesis.inner_test(seed, rows, case)


def test_a_tile_sum_rounded_up_still_gives_a_seller_of_positive_weight():
    """float32 tile sums round: 1 + 1.5 2^-24 sums to 1 + 2^-23, above what the tile's float64 running sum reaches.

    A threshold between the two falls in tile 0 but past its last seller; the draw takes that
    seller (column 1) and never column 2, whose weight is 0.
    """
    weights = torch.tensor([[1.0, 1.5 * 2**-24, 0.0, 1.0]], dtype=torch.float32)
    total = 2.0 + 2**-23  # the float32 tile sums, accumulated in float64
    uniforms = torch.tensor([(1.0 + 1.75 * 2**-24) / total], dtype=torch.float64)
    for compiled in (False, True) if MISSING_COMPILER is None else (False,):
        assert inverse_cdf(weights, uniforms, tile=2, compiled=compiled).tolist() == [1]


def test_a_rounded_up_last_tile_narrower_than_the_others_gives_a_seller_of_the_row():
    """The same rounding in the last tile, of 2 sellers where the others have 4: the draw is column 5, the row's last.

    The tile's running sums read past the row's end (columns 6 and 7) must add nothing: a
    column there would be drawn, a seller the row does not have.
    """
    weights = torch.tensor([[1.0, 0.0, 0.0, 0.0, 1.0, 1.5 * 2**-24]], dtype=torch.float32)
    total = 2.0 + 2**-23  # tile sums 1 and 1 + 2^-23 (rounded up), accumulated in float64
    uniforms = torch.tensor([(2.0 + 1.75 * 2**-24) / total], dtype=torch.float64)
    for compiled in (False, True) if MISSING_COMPILER is None else (False,):
        assert inverse_cdf(weights, uniforms, tile=4, compiled=compiled).tolist() == [5]


def test_tiles_split_rows_as_documented():
    assert tile_width(1) == 1 and tile_width(64) == 64 and tile_width(65) == 16 and tile_width(128) == 16
    assert tile_width(1000) == 32 and tile_width(1024) == 32 and tile_width(1025) == 64 and tile_width(4096) == 64


@given(economies(mode="sampled"), st.integers(1, 12))
@settings(max_examples=60, deadline=None, derandomize=True)
def test_fused_sampled_equals_reference_draw_for_draw(drawn, rows):
    state, economy = drawn
    alpha, uniforms, want = reference_rows(state, economy)
    reference = trade(state, economy)
    for block in (None, rows):
        got, _ = sampled_choices(state, economy, rows=block)
        if assert_the_same_draws(got, want, alpha, uniforms):
            assert_outcomes_close(
                reference, fused_sampled_trade(state, economy, rows=block), TOLERANCE[state.states.dtype]
            )


def test_the_draws_given_are_the_draws_used():
    """Draws of another round passed in: the reference's sellers at those draws, not the state's own round's."""
    state, economy = three_hundred_agents("float64", batch=1)
    later = round_draws(state.random_keys, state.round + 1, state.states.shape[1])
    given_draws = fused_sampled_trade(state, economy, later)
    assert_outcomes_close(trade(state, economy, later), given_draws, 1e-12)
    own = fused_sampled_trade(state, economy)
    assert not torch.allclose(own.revenue, given_draws.revenue)  # other sellers drawn: other revenue


def three_hundred_agents(dtype: str, batch: int = 2):
    """(state, economy) in sampled mode: N = 300, T = 0 every 7th agent, T = inf sellers, a 60% network, 3 isolated."""
    populations = {
        "human": {"count": 220, "temperature": 1.0, "spend": 0.3, "money": {"distribution": "pareto"}},
        "ai": {"count": 60, "temperature": 0.05, "spend": 0.9},
        "shop": {"count": 20, "temperature": math.inf, "buys": False},
    }
    run = rollout([scenario(populations=populations, heads=2, visibility=0.5, mode="sampled")] * batch, dtype=dtype)
    mask = torch.rand(300, 300, generator=torch.Generator().manual_seed(1)) < 0.6
    mask[:3] = False  # buyers with nobody to buy from
    economy = dataclasses.replace(run.economy, trade_mask=mask)
    return run.state.replace(temperature=run.state.temperature.index_fill(1, torch.arange(0, 300, 7), 0.0)), economy


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_two_level_rows_equal_reference_draw_for_draw(dtype):
    """N = 300: rows inverted in two levels (tiles of 32, the last of 12), with T = 0, T = inf and a network."""
    state, economy = three_hundred_agents(dtype)
    assert tile_width(300) == 32
    alpha, uniforms, want = reference_rows(state, economy)
    got, _ = sampled_choices(state, economy, rows=50)
    assert torch.all(got[..., :3] == -1) and (got >= 256).any()  # some draws in the last, narrower tile
    differ = got != want
    if dtype == "float64":
        assert not differ.any()
        assert_outcomes_close(trade(state, economy), fused_sampled_trade(state, economy), 1e-12)
    else:
        assert not (differ & ~near_a_boundary(alpha, uniforms, 1e-5)).any()


@pytest.mark.slow
@given(economies(mode="sampled"), st.integers(1, 12))
@settings(max_examples=1000, deadline=None)
def test_fused_sampled_equals_reference_many(drawn, rows):
    test_fused_sampled_equals_reference_draw_for_draw.hypothesis.inner_test(drawn, rows)


def sampled_market(**market):
    return two_populations(mode="sampled", **market)


def test_draws_do_not_depend_on_block_size_or_batch_layout(monkeypatch):
    scenarios = [sampled_market(heads=2, visibility=-0.7)] * 3
    batch = rollout(scenarios, replicas=[0, 1, 2])
    state = batch.state.replace(temperature=batch.state.temperature.index_fill(1, torch.tensor([0, 5]), 0.0))
    whole, _ = sampled_choices(state, batch.economy, rows=64)
    for rows in (1, 7, 33):
        assert torch.equal(sampled_choices(state, batch.economy, rows=rows)[0], whole)
    monkeypatch.setattr("econspin.fused.BLOCK_ENTRIES", 64 * 16)  # one batch-head at a time, MIN_ROWS rows
    assert torch.equal(sampled_choices(state, batch.economy)[0], whole)
    monkeypatch.undo()
    # the same elements in another order, and one alone: each draws what it drew in the batch
    permuted = rollout(scenarios, replicas=[2, 0, 1])
    permuted_state = permuted.state.replace(temperature=state.temperature[[2, 0, 1]])
    assert torch.equal(sampled_choices(permuted_state, permuted.economy)[0], whole[[2, 0, 1]])
    alone = rollout(scenarios[:1], replicas=[1])
    alone_state = alone.state.replace(temperature=state.temperature[1:2])
    assert torch.equal(sampled_choices(alone_state, alone.economy)[0], whole[1:2])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_money_is_conserved_round_after_round(dtype):
    run = rollout([sampled_market(heads=3, visibility=1.5)] * 2, dtype=dtype)
    assert uses_fused(run.state, run.economy)
    outcome = fused_sampled_trade(run.state, run.economy, rows=5)
    assert outcome.revenue.dtype == outcome.spending.dtype == torch.float64
    assert torch.allclose(outcome.revenue.sum(1), outcome.spending.sum(1), rtol=1e-13, atol=0)
    start = run.state.money.sum(1)
    with torch.no_grad():
        for _ in range(50):
            run.state = step(run.state, run.economy)
            assert torch.all(run.state.money >= 0)
    assert float((run.state.money.sum(1) / start - 1).abs().max()) < 1e-12


def limits_economy():
    """Integer states and identity projections (exact utilities, exact ties), T = 0, T = inf, a network."""
    populations = {
        "cold": {"count": 4, "temperature": 0.0, "projections": {"init": "identity"}},
        "warm": {"count": 4, "temperature": 0.7, "projections": {"init": "identity"}},
        "hot": {"count": 3, "temperature": math.inf, "projections": {"init": "identity"}},
    }
    run = rollout(scenario(populations=populations, heads=2, output="identity", visibility=0.0))
    states = torch.tensor(
        [
            [1, 0, 0, 0],
            [0, 1, 0, 0],
            [1, 1, 0, 0],
            [0, 0, 1, 1],
            [1, -1, 0, 0],
            [2, 0, 0, 0],
            [2, 0, 0, 0],
            [0, 0, -1, 0],
            [0, 1, 1, 0],
            [1, 0, 1, 0],
            [0, 0, 0, 0],
        ]
    ).double()
    mask = torch.ones(11, 11, dtype=torch.bool)
    mask[9] = False  # a buyer with nobody to buy from
    mask[10, :5] = False
    economy = dataclasses.replace(run.economy, trade_mask=mask)
    return run.state.replace(states=states[None]), economy


def test_choice_frequencies_are_alpha_chi_square():
    """4000 independent draws of one round from one state: counts per (market, buyer, seller) against alpha.

    Includes T = 0 rows with exact ties (argmax, ties drawn uniformly), T = inf rows (uniform
    over the allowed sellers), a network and a buyer with nobody to buy from.
    """
    state, economy = limits_economy()
    replicas = 4000
    keys = dynamics_keys([5] * replicas, list(range(replicas)))  # an independent stream per copy

    def copies(frozen, names):
        return {name: getattr(frozen, name).expand(replicas, *getattr(frozen, name).shape[1:]) for name in names}

    batch = state.replace(**copies(state, ("states", "fields", "money", "temperature")), random_keys=keys)
    wide = dataclasses.replace(
        economy, **copies(economy, ("spend", "eta", "query", "key", "value", "output", "visibility"))
    )
    alpha = reference_rows(state, economy)[0][0]  # (H, N, N), the same for every copy
    cold, hot = alpha[:, :4], alpha[:, 8:]
    assert ((cold > 0) & (cold < 1)).any() and torch.all((cold == 0) | (cold == 1) | (cold == 0.5))  # ties
    assert torch.all((hot == 0) | (hot == hot.amax(-1, keepdim=True)))  # uniform over the allowed sellers
    choice, _ = sampled_choices(batch, wide)  # (replicas, H, N)
    assert torch.all(choice[:, :, 9] == -1) and torch.all(alpha[:, 9] == 0)
    counts = torch.zeros_like(alpha)
    ones = torch.ones(alpha.shape[:2] + (replicas,), dtype=alpha.dtype)
    counts.scatter_add_(2, choice.clamp(min=0).permute(1, 2, 0), ones)
    counts[:, 9] = 0
    assert torch.all(counts[alpha == 0] == 0)  # never a seller of probability 0
    expected = replicas * alpha
    keep = alpha > 0
    statistic = float(((counts - expected) ** 2)[keep].div(expected[keep]).sum())
    dof = int((keep.sum(-1) - 1).clamp(min=0).sum())
    assert dof > 40
    assert stats.chi2.sf(statistic, dof) > 1e-4, (statistic, dof)


def test_fused_sampled_step_never_waits_on_the_host():
    """Meta tensors hold no data: any .item(), bool(tensor) or branch on data would raise."""
    run = rollout(sampled_market(heads=2, visibility=0.5), dtype="float32")
    economy = dataclasses.replace(run.economy, trade_mask=torch.rand(64, 64) < 0.5)
    outcome = fused_sampled_trade(on_meta(run.state), on_meta(economy), rows=16)
    assert outcome.received.device.type == "meta" and outcome.revenue.shape == (1, 64)


def test_a_sampled_rollout_is_the_same_on_either_kernel():
    """Same sellers, so the same money to rounding; spins drawn from the same uniforms, so the same states."""
    populations = {
        "human": {"count": 30, "temperature": 0.8, "spend": 0.2},
        "ai": {"count": 10, "temperature": 0.0, "spend": 0.5, "eta": 0.5},
        "firm": {"count": 8, "temperature": math.inf, "buys": False},
    }
    runs = [
        rollout(
            scenario(
                populations=populations, heads=2, visibility=0.4, response="vmf", mode="sampled", run={"kernel": kernel}
            )
        )
        for kernel in ("reference", "fused")
    ]
    assert [run.economy.kernel for run in runs] == ["reference", "fused"]
    for run in runs:
        run.advance(20)
    reference, fused = (run.state for run in runs)
    assert torch.allclose(reference.money, fused.money, rtol=1e-12, atol=0)
    assert torch.allclose(reference.states, fused.states, rtol=0, atol=1e-9)
    np.testing.assert_allclose(runs[0].metrics().to_numpy(), runs[1].metrics().to_numpy(), rtol=1e-9, atol=1e-12)


def test_buffers_reused_between_rounds_of_other_shapes_change_no_number():
    """A round after rounds of other shapes and modes gives the bits it gave first.

    The blocks and the running sums live in memory kept from round to round (econspin.workspace).
    """
    small = rollout([sampled_market(heads=2, visibility=0.5)] * 2)
    large = rollout([scenario(populations={"human": {"count": 90, "temperature": 0.5}}, mode="sampled")] * 3)
    expected = rollout([two_populations(heads=2)] * 2)
    first_choice, _ = sampled_choices(small.state, small.economy)
    first_outcome = fused_sampled_trade(small.state, small.economy)
    first_expected = step(expected.state, expected.economy)
    for run in (large, small, expected, large):
        step(run.state, run.economy)
    assert torch.equal(sampled_choices(small.state, small.economy)[0], first_choice)
    again = fused_sampled_trade(small.state, small.economy)
    for name in ("received", "revenue", "spending", "entropy", "surplus"):
        assert torch.equal(getattr(again, name), getattr(first_outcome, name)), name
    again_expected = step(expected.state, expected.economy)
    assert torch.equal(again_expected.states, first_expected.states)
    assert torch.equal(again_expected.money, first_expected.money)


def test_each_thread_has_buffers_of_its_own():
    """Two threads playing rounds at once must not write into each other's blocks."""
    import threading

    from econspin import workspace as kept
    from econspin.workspace import workspace

    here = workspace("blocks", 16, torch.float64, torch.device("cpu"))
    there = []
    worker = threading.Thread(target=lambda: there.append(workspace("blocks", 16, torch.float64, "cpu")))
    worker.start()
    worker.join()
    assert here.data_ptr() != there[0].data_ptr()
    assert workspace("blocks", 8, torch.float64, "cpu").data_ptr() == here.data_ptr()  # reused on this thread
    # off the CPU nothing is kept: CUDA's caching allocator reuses memory, and CUDA graphs own theirs
    workspace("blocks", 8, torch.float64, "meta")
    assert all(device.type == "cpu" for _, _, device in kept._WORKSPACES.buffers)
    runs = [rollout([sampled_market(heads=2)] * 2, replicas=[r, r + 1]) for r in range(4)]
    alone = [sampled_choices(run.state, run.economy)[0] for run in runs]
    together = [None] * len(runs)

    def play(index):
        for _ in range(20):
            together[index] = sampled_choices(runs[index].state, runs[index].economy)[0]

    threads = [threading.Thread(target=play, args=(index,)) for index in range(len(runs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for got, want in zip(together, alone):
        assert torch.equal(got, want)
