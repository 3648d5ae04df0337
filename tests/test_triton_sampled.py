"""Sampled mode on the Triton kernel (econspin.triton_draws): the reference's and the fused kernel's sellers.

The draws are inversions at each buyer's uniform of the choice stream, as on the other
kernels: draw for draw the same sellers, up to a uniform within rounding of a boundary
between two sellers (float32). The programs run under Triton's interpreter here; the CUDA
test is in tests/test_triton_compiled.py.
"""

import dataclasses

import pytest
import torch
from fused_cases import TOLERANCE, assert_outcomes_close, economies, two_populations
from helpers import needs_triton, rollout
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernel_cases import check_command_line_equals_fused
from test_fused_sampled import assert_the_same_draws, limits_economy, reference_rows, three_hundred_agents
from test_oracle import check_draws_against_the_oracle, engine_and_graph
from test_oracle import economies as oracle_economies
from test_triton import TILES, assert_money_conserved, triton_economy

from econspin.fused import round_terms
from econspin.fused_sampled import fused_sampled_trade, sampled_blocks, sampled_choices
from econspin.host_syncs import HostSyncRecorder
from econspin.market import trade
from econspin.randomness import dynamics_keys
from econspin.round import step
from econspin.triton_blocks import Tiles, triton_sampled_blocks, triton_sampled_trade, uses_triton


def triton_choices(state, economy, tiles=None):
    """(B, H, N) sellers drawn by the Triton programs, and the round's terms."""
    blocks = lambda *arguments: triton_sampled_blocks(*arguments, tiles=tiles)  # noqa: E731
    return sampled_choices(state, economy, blocks=blocks)


@needs_triton
@given(economies(mode="sampled"), TILES)
@settings(max_examples=40, deadline=None, derandomize=True)
def test_triton_draws_the_reference_sellers(drawn, tiles):
    """Hypothesis economies (T = 0 ties, T = inf, networks, buyers with nobody to buy from), either precision."""
    state, economy = drawn
    alpha, uniforms, want = reference_rows(state, economy)
    got, _ = triton_choices(state, economy, tiles)
    if assert_the_same_draws(got, want, alpha, uniforms):
        outcome = triton_sampled_trade(state, triton_economy(economy), tiles=tiles)
        assert_outcomes_close(trade(state, economy), outcome, TOLERANCE[state.states.dtype])
        assert_money_conserved(outcome)


@needs_triton
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_draws_of_many_seller_tiles_are_the_fused_kernels(dtype):
    """N = 300 in tiles of 16 to 64 (the rows' pass in one loop and in two): T = 0 rows, T = inf sellers, a network."""
    state, economy = three_hundred_agents(dtype, batch=1)
    alpha, uniforms, _ = reference_rows(state, economy)
    want, _ = sampled_choices(state, economy)
    for tiles in (Tiles(64, 64), Tiles(16, 32, one_pass=False)):
        got, _ = triton_choices(state, economy, tiles)
        assert torch.all(got[..., :3] == -1) and (got >= 256).any()
        if assert_the_same_draws(got, want, alpha, uniforms) and dtype == "float64":
            fused = fused_sampled_trade(state, economy)
            assert_outcomes_close(fused, triton_sampled_trade(state, triton_economy(economy), tiles=tiles), 1e-12)


@needs_triton
def test_zero_and_infinite_temperature_draws_and_a_buyer_with_nobody():
    """Exact ties (integer states, identity projections): the reference's sellers, for 64 copies' uniforms."""
    state, economy = limits_economy()
    copies = 64

    def wide(frozen, names):
        return {name: getattr(frozen, name).expand(copies, *getattr(frozen, name).shape[1:]) for name in names}

    keys = dynamics_keys([5] * copies, list(range(copies)))  # an independent stream per copy
    batch = state.replace(**wide(state, ("states", "fields", "money", "temperature")), random_keys=keys)
    economy = dataclasses.replace(economy, **wide(economy, ("spend", "eta", "query", "key", "value", "output",
                                                            "visibility")))  # fmt: skip
    alpha, _, want = reference_rows(batch, economy)
    got, _ = triton_choices(batch, economy)
    assert torch.equal(got, want)
    assert torch.all(got[:, :, 9] == -1)
    chosen = got >= 0
    assert torch.all(alpha.gather(-1, got.clamp(min=0)[..., None]).squeeze(-1)[chosen] > 0)
    cold = got[:, :, :4]  # T = 0 buyers: a tied pair of best sellers, each drawn by some copies
    assert any(len(cold[:, head, buyer].unique()) > 1 for head in range(2) for buyer in range(4))


@needs_triton
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_uniforms_at_the_ends_of_a_row_draw_its_first_seller_and_its_last_within_rounding(dtype):
    """U = 0: the first allowed seller; u = 1 - 2^-53: fused's seller, or one past it by less than rounding.

    At the upper end the threshold u s_i may lie above the draw's own float64 running sum (s_i
    is the rows' pass's, its sums in another order): those rows take the last seller that
    moved the running sum; the sellers between the two draws weigh less than s_i's rounding.
    """
    run = rollout([two_populations(mode="sampled", heads=2, visibility=0.8)] * 2, dtype=dtype)
    mask = torch.rand(64, 64, generator=torch.Generator().manual_seed(6)) < 0.5
    economy = dataclasses.replace(run.economy, trade_mask=mask)
    allowed = mask & ~torch.eye(64, dtype=torch.bool)
    first = torch.where(allowed, torch.arange(64), 64).amin(-1)
    for uniform in (0.0, 1.0 - 2.0**-53):
        uniforms = torch.full((4, 64), uniform, dtype=torch.float64)
        fused = sampled_blocks(round_terms(run.state, economy), economy, uniforms)
        terms = round_terms(run.state, economy)
        got = triton_sampled_blocks(terms, economy, uniforms, tiles=Tiles(16, 16))
        assert torch.equal(got < 0, ~allowed.any(-1).expand(4, 64))
        if uniform == 0.0:
            assert torch.equal(got, fused) and torch.equal(got, torch.where(allowed.any(-1), first, -1).expand(4, 64))
            continue
        weights = reference_rows(run.state, economy)[0].reshape(4, 64, 64)  # alpha: weights / s_i
        between = torch.zeros(4, 64, dtype=torch.float64)
        for group, buyer in (got != fused).nonzero().tolist():
            low, high = sorted((int(got[group, buyer]), int(fused[group, buyer])))
            between[group, buyer] = weights[group, buyer, low + 1 : high + 1].sum()
        assert float(between.max()) < (1e-5 if dtype == "float32" else 1e-13), float(between.max())


@needs_triton
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_money_is_conserved_round_after_round(dtype):
    run = rollout([two_populations(mode="sampled", heads=2, visibility=1.5, run={"kernel": "triton"})] * 2,
                  dtype=dtype)  # fmt: skip
    assert run.economy.kernel == "triton" and uses_triton(run.state, run.economy)
    start = run.state.money.sum(1)
    fused = rollout([two_populations(mode="sampled", heads=2, visibility=1.5)] * 2, dtype=dtype)
    with torch.no_grad():
        for _ in range(4):
            run.state, fused.state = step(run.state, run.economy), step(fused.state, fused.economy)
            assert torch.all(run.state.money >= 0)
    assert float((run.state.money.sum(1) / start - 1).abs().max()) < 1e-12
    if dtype == "float64":  # the same sellers every round: the fused kernel's rollout
        assert torch.allclose(run.state.money, fused.state.money, rtol=1e-12, atol=0)


@needs_triton
@pytest.mark.parametrize("network", [False, True])
def test_the_triton_sampled_step_never_waits_on_the_host(network):
    run = rollout(two_populations(mode="sampled", heads=2, visibility=0.5), dtype="float32")
    economy = triton_economy(run.economy)
    if network:
        mask = torch.rand(64, 64, generator=torch.Generator().manual_seed(4)) < 0.5
        economy = dataclasses.replace(economy, trade_mask=mask)
    first = triton_sampled_trade(run.state, economy)
    with torch.no_grad(), HostSyncRecorder() as recorder:
        again = triton_sampled_trade(run.state, economy)
    assert recorder.events == [], "\n".join(recorder.summary())
    assert_outcomes_close(first, again, 0.0)


@needs_triton
def test_a_sampled_triton_scenario_runs_from_the_command_line_as_the_fused_one(tmp_path, monkeypatch):
    import kernel_cases

    sampled = kernel_cases.SCENARIO.replace("visibility: 0.5", "visibility: 0.5, mode: sampled")
    monkeypatch.setattr(kernel_cases, "SCENARIO", sampled)
    check_command_line_equals_fused("triton", tmp_path, steps=4)


@needs_triton
@given(st.integers(0, 2**20))
@settings(max_examples=4, deadline=None, derandomize=True)
def test_tile_sizes_change_no_draw(seed):
    run = rollout([two_populations(mode="sampled", heads=2, visibility=-0.7)] * 2, [seed, seed + 1])
    state = run.state.replace(temperature=run.state.temperature.index_fill(1, torch.tensor([0, 5, 41]), 0.0))
    whole, _ = triton_choices(state, run.economy, Tiles(64, 64))
    for tiles in (Tiles(16, 16), Tiles(32, 16), Tiles(16, 64, one_pass=False)):
        assert torch.equal(triton_choices(state, run.economy, tiles)[0], whole)


@needs_triton
@given(spec=oracle_economies(mode="sampled"))
@settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
def test_the_triton_draws_match_the_independent_oracle_round_after_round(spec):
    """econspin.reference's inversion at the engine's choice uniforms picks the Triton kernel's sellers.

    Every term of the round in play (responses, corrections, spend rules, networks dense and
    sparse: a sparse one takes its own kernel); revenue and money, which depend on the choices
    alone, agree to rounding for three rounds. These economies (N <= 15) fit one seller tile:
    the running sums across tiles are the other tests' (N = 300, the tile sizes).
    """
    spec["run"]["kernel"] = "triton"
    run, graph = engine_and_graph(spec)
    assert run.economy.kernel == "triton"
    check_draws_against_the_oracle(run, graph)


@needs_triton
def test_bf16_utilities_draw_nearly_the_fused_kernels_bf16_sellers():
    """run.utility_precision: bfloat16 in sampled mode: both kernels round each score to bf16 once.

    Their float32 sums run in other orders, so a score may round to the neighbouring bf16 value
    on one kernel: a draw may differ where that moves a boundary past its uniform; most do not.
    """
    low = {"kernel": "triton", "utility_precision": "bfloat16"}
    run = rollout([two_populations(mode="sampled", heads=2, visibility=0.5, run=low)] * 2, dtype="float32")
    assert run.economy.utility_precision == "bfloat16" and uses_triton(run.state, run.economy)
    fused = dataclasses.replace(run.economy, kernel="fused")
    want, _ = sampled_choices(run.state, fused)
    got, _ = sampled_choices(run.state, run.economy, blocks=triton_sampled_blocks)
    assert float((got == want).double().mean()) > 0.95
    full, _ = sampled_choices(run.state, dataclasses.replace(fused, utility_precision="full"))
    assert bool((full != want).any())  # the rounding changes some draws: the test sees bf16 scores
    outcome = triton_sampled_trade(run.state, run.economy)
    assert_money_conserved(outcome)
