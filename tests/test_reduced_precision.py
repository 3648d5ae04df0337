"""run.utility_precision (econspin.precision): bf16 utilities against float64, money, limits, refusals.

The bound tested (module doc of econspin.precision): with u = 2^-8, each scaled utility
y_ij = beta_i U_ij of the bf16 round is within Delta_i = 3.02 u max_j sum_k |left_ik right_kj|
of its exact value, so each weight alpha_ij within a factor 2^(+-2 Delta_i) of the float64
one; received signal, revenue and surplus follow (below). The received product, on bf16
operands too, adds 3.02 u of sum_j alpha_ij |u_j|; the float32 arithmetic around the products
the 1e-5 of tests/test_fused.py.
"""

import dataclasses
import json
import math

import pytest
import torch
from fused_cases import economies, two_populations
from helpers import needs_triton, rollout, scenario
from hypothesis import given, settings
from typer.testing import CliRunner

from econspin import ScenarioError
from econspin.cli import app
from econspin.fused import fused_trade, round_terms, row_blocks
from econspin.fused_sampled import fused_sampled_trade
from econspin.precision import utility_product
from econspin.round import step

UNIT = 2.0**-8  # bf16's unit roundoff: 8 significant bits
SLACK = 1e-5  # the float32 arithmetic around the product (tests/fused_cases.py TOLERANCE)
RECEIVED = 3.02 * UNIT  # relative error of the received product e @ u on bf16 operands
runner = CliRunner()


def at(frozen, dtype):
    """The same dataclass with its floating tensors in ``dtype`` (money, which is float64 by design, kept)."""
    changed = {}
    for field in dataclasses.fields(frozen):
        value = getattr(frozen, field.name)
        if isinstance(value, torch.Tensor) and value.is_floating_point() and field.name != "money":
            changed[field.name] = value.to(dtype)
    return dataclasses.replace(frozen, **changed)


def bf16(economy):
    return dataclasses.replace(economy, utility_precision="bfloat16")


def exact_rows(state, economy):
    """(alpha, Delta, delivered, beta) per group from the float64 terms: the weights and the bound's Delta_i."""
    terms = round_terms(state, economy)
    groups, agents, _ = terms.left.shape
    scores = terms.left @ terms.right  # y_ij, -BIG on non-sellers
    allowed = economy.seller.expand(agents, agents).clone()
    allowed.fill_diagonal_(False)
    if economy.trade_mask is not None:
        allowed &= economy.trade_mask
    scores = scores.masked_fill(~allowed, -math.inf)
    alpha = torch.softmax(scores * math.log(2.0), dim=-1).nan_to_num(0.0)  # rows without a partner: 0
    magnitude = terms.left[..., :-1].abs() @ terms.right[:, :-1].abs()  # sum_k |left_ik right_kj|, mask column exact
    delta = (3.02 * UNIT + 2.0**-20) * magnitude.masked_fill(~allowed, 0.0).amax(-1)
    return alpha, allowed, delta, terms.delivered, terms.beta.reshape(groups, agents), terms.share


def triton_kernel(state, economy, **keywords):
    """The Triton kernel's market step (run.kernel: triton) on ``economy``, its programs interpreted on a CPU."""
    from econspin.triton_blocks import triton_trade

    return triton_trade(state, dataclasses.replace(economy, kernel="triton"), **keywords)


KERNELS = {"fused": fused_trade, "triton": triton_kernel}
EITHER_KERNEL = pytest.mark.parametrize("kernel", ["fused", pytest.param("triton", marks=needs_triton)])


@given(economies())
@settings(max_examples=40, deadline=None, derandomize=True)
def test_the_bf16_round_keeps_within_the_bound_from_bf16_rounding(drawn):
    assert_within_the_bf16_bound(drawn, fused_trade)


def assert_within_the_bf16_bound(drawn, trade) -> None:
    """``trade`` at bf16 utilities against float64 (``drawn`` widened): received, revenue, surplus within the bound."""
    state, economy = drawn
    state32, economy32 = at(state, torch.float32), at(economy, torch.float32)
    state64, economy64 = at(state32, torch.float64), at(economy32, torch.float64)  # the same numbers, widened
    want, got = fused_trade(state64, economy64), trade(state32, bf16(economy32))
    alpha, allowed, delta, delivered, beta, share = exact_rows(state64, economy64)
    batch, agents = state.money.shape
    heads = economy.heads
    ratio = torch.expm1(2 * delta * math.log(2.0))[..., None]  # |alpha~ / alpha - 1| <= 2^(2 Delta) - 1
    # |alpha~_ij - alpha_ij| <= ratio_i alpha_ij; no bound on a row whose ratio overflows (T = 0: the next test)
    moved = torch.where(torch.isinf(ratio) & allowed, math.inf, ratio * alpha)

    def per_element(values):
        return values.reshape(batch, heads, *values.shape[1:]).sum(1)

    # the received product, also on bf16 operands: weights and u_j rounded, the sum rounded once (3 u)
    received_bound = per_element((moved + RECEIVED * (alpha + moved)) @ delivered.abs()).nan_to_num(math.inf)
    received_bound = torch.where(economy.buyer[None, :, None], received_bound, 0.0)  # non-buyers receive 0
    revenue_bound = per_element((moved * share[..., None]).sum(1)).nan_to_num(math.inf)
    surplus_bound = per_element(delta / beta) / heads  # |delta U| <= Delta_i / beta_i, surplus a mean over heads
    for name, bound in (("received", received_bound), ("revenue", revenue_bound), ("surplus", surplus_bound)):
        exact, rounded = getattr(want, name), getattr(got, name).double()
        assert torch.equal(torch.isinf(exact), torch.isinf(rounded)), name
        finite = torch.isfinite(exact)
        exact, rounded, bound = exact[finite], rounded[finite], bound[finite]
        scale = exact.abs().max() if exact.numel() else 0.0
        excess = (rounded - exact).abs() - bound - SLACK * (exact.abs() + scale + 1.0)
        assert excess.numel() == 0 or float(excess.max()) <= 0, f"{name}: {float(excess.max()):.3g}"
    assert torch.allclose(got.revenue.sum(1), got.spending.sum(1), rtol=1e-13, atol=0)  # money, at any bound
    assert torch.equal(got.spending, want.spending)


@pytest.mark.slow
@given(economies())
@settings(max_examples=1000, deadline=None)
def test_the_bf16_round_keeps_within_the_bound_many(drawn):
    test_the_bf16_round_keeps_within_the_bound_from_bf16_rounding.hypothesis.inner_test(drawn)


def test_the_bound_holds_with_room_on_the_two_population_economy():
    """Where the bound is small (warm rows), the bf16 round is close; it is the bound, not luck, that holds."""
    run = rollout(two_populations(heads=2, visibility=0.5), dtype="float32")
    state32, economy32 = run.state.replace(temperature=torch.full_like(run.state.temperature, 20.0)), run.economy
    state64, economy64 = at(state32, torch.float64), at(economy32, torch.float64)
    want, got = fused_trade(state64, economy64), fused_trade(state32, bf16(economy32))
    _, _, delta, *_ = exact_rows(state64, economy64)
    assert float(delta.max()) < 0.05  # a meaningful bound: weights within 2^(+-0.1)
    error = (got.received.double() - want.received).abs().max() / want.received.abs().max()
    assert 1e-5 < float(error) < 2 * float(torch.expm1(2 * delta.max() * math.log(2.0)))  # rounded, and bounded


@pytest.mark.parametrize("rows, inner, columns", [(200, 34, 300), (64, 4096, 32)])  # utilities; received
def test_torch_bf16_products_sum_in_float32_and_round_once(rows, inner, columns):
    """The assumption of the bounds: bmm on bf16 = the exact product of the rounded operands, rounded to bf16.

    Sums in bf16 would be off by up to ``inner`` units of 2^-8 (4096 for the received product).
    """
    generator = torch.Generator().manual_seed(7)
    left = torch.rand(3, rows, inner, generator=generator).to(torch.bfloat16)  # weights-like: same signs
    right = torch.randn(3, inner, columns, generator=generator).to(torch.bfloat16)
    exact = left.double() @ right.double()
    product = torch.bmm(left, right)
    assert product.dtype == torch.bfloat16
    magnitude = left.double().abs() @ right.double().abs()
    bound = UNIT * exact.abs() + inner * 2.0**-24 * magnitude  # one bf16 rounding after float32 sums
    assert torch.all((product.double() - exact).abs() <= bound)
    assert float((product.double() - exact).abs().max()) > 0  # it is rounded


def test_money_is_conserved_and_budgets_spent_at_bf16():
    for mode in ("expected", "sampled"):
        run = rollout(two_populations(heads=3, visibility=1.5, mode=mode), dtype="float32")
        economy = bf16(run.economy)
        trade = fused_trade if mode == "expected" else fused_sampled_trade
        outcome = trade(run.state, economy) if mode == "expected" else trade(run.state, economy, run.state.draws())
        assert outcome.revenue.dtype == outcome.spending.dtype == torch.float64
        assert torch.all(outcome.revenue >= 0)
        budgets = run.economy.spend.double() * run.state.money  # share rule: s_i = sigma_i w_i, every row has partners
        assert torch.equal(outcome.spending, budgets)
        assert torch.allclose(outcome.revenue.sum(1), outcome.spending.sum(1), rtol=1e-13, atol=0)
        start = run.state.money.sum(1)
        state = run.state
        with torch.no_grad():
            for _ in range(50):
                state = step(state, economy)
        assert float((state.money.sum(1) / start - 1).abs().max()) < 1e-12, mode
        assert bool(torch.all(state.money >= 0))


@EITHER_KERNEL
def test_infinite_temperature_is_exactly_uniform_at_bf16(kernel):
    run = rollout(two_populations(heads=2, visibility=0.8), dtype="float32")
    state = run.state.replace(temperature=torch.full_like(run.state.temperature, math.inf))
    outcome = KERNELS[kernel](state, bf16(run.economy))
    terms = round_terms(state, run.economy)
    allowed = run.economy.seller.expand(64, 64).clone().fill_diagonal_(False).float()
    uniform = allowed / allowed.sum(1, keepdim=True)
    received = (uniform @ terms.delivered).reshape(1, 2, 64, -1).sum(1)
    bound = RECEIVED * (uniform @ terms.delivered.abs()).reshape(1, 2, 64, -1).sum(1) + 1e-6
    assert torch.all((outcome.received - received).abs() <= bound)
    assert torch.equal(outcome.entropy, torch.ones_like(outcome.entropy))
    assert torch.allclose(outcome.impact, 1 / allowed.sum(1)[None].expand(1, 64), rtol=1e-6, atol=0)


@EITHER_KERNEL
def test_the_received_product_is_rounded_once_to_bf16(kernel):
    """The received product's float32 sum comes back rounded to bf16, as torch's bf16 product returns it.

    At T = inf each allowed seller weighs exactly 1, so with one head the received signal is
    that rounded sum over n_i sellers, divided by n_i = 1 / impact: times n_i it lies on the bf16 grid.
    """
    run = rollout(two_populations(heads=1, visibility=0.8), dtype="float32")
    state = run.state.replace(temperature=torch.full_like(run.state.temperature, math.inf))
    outcome = KERNELS[kernel](state, bf16(run.economy))
    sums = outcome.received.double() * (1 / outcome.impact.double())[..., None].round()
    on_the_grid = sums.to(torch.bfloat16).double()
    assert torch.all((sums - on_the_grid).abs() <= 2.0**-20 * sums.abs())
    assert int((on_the_grid != 0).sum()) > 100


def zero_temperature_economy():
    """300 agents at T = 0, d = 8, with bf16 utilities: (state, economy, the round's bf16 terms)."""
    populations = {"a": {"count": 300, "temperature": 0.0, "projections": {"scale": 1.0}}}
    run = rollout(scenario(populations=populations, d=8, output="identity"), dtype="float32")
    state, economy = run.state, bf16(run.economy)
    return state, economy, round_terms(state, economy)


def assert_the_argmax_of(outcome, best, delivered, rows):
    """``outcome`` on ``rows`` splits each buyer's budget equally among its ``best`` sellers."""
    ties = best.sum(-1)
    alpha = best.float() / ties[..., None]
    bound = RECEIVED * (alpha @ delivered.abs()) + 1e-6
    assert torch.all(((outcome.received - alpha @ delivered).abs() <= bound)[rows])
    assert torch.allclose(outcome.impact[rows], 1 / ties.float()[rows], rtol=1e-6, atol=0)
    return alpha


def test_zero_temperature_is_the_argmax_of_the_bf16_utilities():
    """T = 0 at bf16: every seller whose bf16-rounded utility equals the best shares the budget equally.

    With utilities that all differ, full precision picks one seller per row; bf16 rounding
    makes near-best sellers tie, and the round splits among exactly those.
    """
    state, economy, low = zero_temperature_economy()
    rounded = torch.bmm(low.left, low.right).float()  # bf16 utilities (times the power of two beta_i)
    rounded.diagonal(dim1=1, dim2=2).fill_(-math.inf)
    best = rounded == rounded.amax(-1, keepdim=True)
    assert int((best.sum(-1) > 1).sum()) >= 5  # rounding made ties
    outcome = fused_trade(state, economy, rows=64)
    alpha = assert_the_argmax_of(outcome, best, low.delivered, slice(None))
    assert torch.allclose(outcome.revenue[0], 0.1 * alpha[0].T.double() @ state.money[0], rtol=1e-6, atol=0)
    full = fused_trade(state, dataclasses.replace(economy, utility_precision="full"))
    assert torch.equal(full.impact, torch.ones_like(full.impact))  # full precision: one seller per row


@needs_triton
def test_zero_temperature_on_the_triton_kernel_is_the_argmax_wherever_the_rounding_is_certain():
    """The Triton kernel's T = 0 rows at bf16: the argmax of the bf16 rounding of the float32 sums.

    Its float32 sums run in another order than torch's product. Where the d_k + 2 products
    cancel, the sums differ by a few float32 units, and a utility near the midpoint of two bf16
    values then rounds to either. So the test rounds the exact sums moved by the float32 sums'
    error bound (16 2^-24 sum_k |left_ik right_kj|) both ways, and holds the kernel to the argmax
    on the rows where the two roundings agree on every seller that could be the best.
    """
    state, economy, low = zero_temperature_economy()
    exact = low.left.double() @ low.right.double()
    error = 16 * 2.0**-24 * (low.left.double().abs() @ low.right.double().abs())
    lower, upper = ((exact + sign * error).to(torch.bfloat16).double() for sign in (-1, 1))
    lower.diagonal(dim1=1, dim2=2).fill_(-math.inf)
    upper.diagonal(dim1=1, dim2=2).fill_(-math.inf)
    floor = lower.amax(-1, keepdim=True)
    contenders = upper >= floor  # every seller whose rounded utility could be the row's best
    certain = torch.all(~contenders | (lower == upper), dim=-1)
    best = contenders & (lower == floor)
    assert float(certain.float().mean()) > 0.9
    assert int((best.sum(-1) > 1)[certain].sum()) >= 5  # rounding made ties on rows it is certain of
    assert_the_argmax_of(triton_kernel(state, economy), best, low.delivered, certain)


def test_blocks_do_not_change_the_bf16_round(monkeypatch):
    run = rollout([two_populations(heads=2, visibility=-0.7)] * 3, dtype="float32")
    economy = bf16(run.economy)
    whole = fused_trade(run.state, economy, rows=64)
    for rows in (1, 7, 33):
        part = fused_trade(run.state, economy, rows=rows)
        for name in ("received", "revenue", "entropy", "surplus"):
            assert torch.allclose(getattr(whole, name), getattr(part, name), rtol=1e-5, atol=1e-6), name


def test_full_precision_is_the_product_in_the_working_precision():
    """The default leaves every block what it was: the product of the run.dtype operands, bit for bit."""
    run = rollout(two_populations(heads=2, visibility=0.4), dtype="float32")
    assert run.economy.utility_precision == "full"
    terms = round_terms(run.state, run.economy)
    assert terms.left.dtype == terms.right.dtype == torch.float32
    product = torch.bmm(terms.left, terms.right)
    for g, r, _, _ in row_blocks(terms, run.economy, rows=16):
        block = torch.empty_like(product[g, r])
        assert torch.equal(utility_product(terms.left[g, r], terms.right[g], block, None, False), product[g, r])
    low = round_terms(run.state, bf16(run.economy))
    assert low.left.dtype == low.right.dtype == torch.bfloat16


def test_tf32_switch_is_scoped_to_the_product():
    generator = torch.Generator().manual_seed(1)
    left, right = torch.randn(2, 5, 6, generator=generator), torch.randn(2, 6, 7, generator=generator)
    before = torch.backends.cuda.matmul.allow_tf32
    scores = torch.empty(2, 5, 7)
    assert torch.equal(utility_product(left, right, scores, None, True), torch.bmm(left, right))
    assert torch.backends.cuda.matmul.allow_tf32 == before


@pytest.mark.parametrize(
    "run, market, expected",
    [
        ({"dtype": "float64", "utility_precision": "bfloat16"}, {}, "needs run.dtype: float32"),
        ({"kernel": "reference", "utility_precision": "bfloat16"}, {}, "needs run.kernel: auto, fused or triton"),
        ({"kernel": "flex", "utility_precision": "bfloat16"}, {}, "the flex kernel computes at full precision"),
        ({"utility_precision": "bfloat16"}, {"couplings": {"curie_weiss": 1.0}}, "market.couplings has none"),
    ],
)
def test_nonsense_combinations_are_refused_in_one_line(tmp_path, run, market, expected):
    with pytest.raises(ScenarioError, match="run.utility_precision: bfloat16"):
        scenario(run=run, **market)
    path = tmp_path / "scenario.yaml"
    settings_ = ", ".join(f"{key}: {value}" for key, value in run.items())
    extra = "couplings: {curie_weiss: 1.0}, " if market else ""
    path.write_text(f"populations:\n  a: {{count: 6}}\nmarket: {{d: 4, {extra}}}\nrun: {{device: cpu, {settings_}}}\n")
    result = runner.invoke(app, ["check", str(path)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "run.utility_precision: bfloat16" in result.output and expected in result.output


def test_tf32_on_the_cpu_and_a_sparse_network_are_refused_when_built():
    with pytest.raises(ScenarioError, match="run.utility_precision: tf32 is a CUDA tensor-core mode"):
        rollout(scenario(run={"utility_precision": "tf32"}), dtype="float32")
    sparse = {"generator": "gnp_random_graph", "params": {"p": 0.3}, "layout": "sparse"}
    with pytest.raises(ScenarioError, match="runs on the sparse kernel"):
        rollout(scenario(network=sparse, run={"utility_precision": "bfloat16"}), dtype="float32")
    with pytest.raises(ScenarioError, match="needs run.dtype: float32"):  # the dtype a caller passes counts too
        rollout(scenario(run={"utility_precision": "bfloat16"}), dtype="float64")
    result = runner.invoke(app, ["bench", "--utilities", "tf32", "--device", "cpu"])
    assert result.exit_code == 2 and "--utilities: tf32 is a CUDA tensor-core mode" in result.output, result.output


def test_bench_times_the_bf16_round_beside_bf16_sdpa(tmp_path):
    out = tmp_path / "bench.json"
    arguments = ["bench", "--quick", "--sizes", "48", "--batches", "1,2", "--repeats", "1", "--baselines", "none"]
    result = runner.invoke(app, [*arguments, "--threads", "1", "--utilities", "bfloat16", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "fused/low" in result.output and "SDPA low ms" in result.output
    written = json.loads(out.read_text())
    assert written["utility_precision"] == "bfloat16"
    for row in written["rows"]:
        assert row["low_ms"] > 0 and row["low_floor_ms"] > 0
        assert row["low_speedup"] == pytest.approx(row["fused_ms"] / row["low_ms"])
        assert row["low_pairs_per_s"] == pytest.approx(row["pairs"] / row["low_ms"] * 1e3)
        assert 1e-6 < row["low_difference"] < 1.0  # rounded at bf16, yet the same economy
