"""Wood's sampler: its compiled continuation and loop operator, its budget, and concentrations past float64.

Continued inside the compiled graph for a fixed number of agents; the loop as an operator; and
agents so concentrated that float64 cannot tell their w from 1.
"""

import math

import pytest
import torch
from helpers import generated_loops, needs_compiler
from torch._inductor.utils import run_and_get_code

from econspin import response, wood
from econspin.randomness import round_draws
from econspin.wood import _wood_first_traced


def split_step(kappa: torch.Tensor, dimension: int, draws) -> tuple[torch.Tensor, int]:
    """The compiled round's Wood step run eagerly (first attempts, continuation, loop): (w, agents left to the loop)."""
    marked, constants = _wood_first_traced(kappa, dimension, draws)
    pending = torch.isnan(marked)  # the agents left are marked NaN
    attempts = (wood.WOOD_FIRST_ATTEMPTS, wood.WOOD_MORE_ATTEMPTS)
    return wood._wood_rest(marked, pending, constants, dimension, draws, *attempts), int(pending.sum())


ROOM = {"one agent": (1, 10**9), "the default": (wood.WOOD_TRACED_MINIMUM, wood.WOOD_TRACED_SHARE), "all": (10**6, 1)}


@pytest.mark.parametrize("dimension", [2, 3, 16])
@pytest.mark.parametrize("room", sorted(ROOM))
@pytest.mark.parametrize("more", [wood.WOOD_MORE_ATTEMPTS, 1])
def test_the_continued_step_draws_what_the_loop_draws(monkeypatch, dimension, room, more):
    """Bit for bit the loop's w, whether the continuation takes one agent, the default share, or all of them.

    With room for one agent most of those left go on to the loop, which repeats the attempts
    the continuation made for nobody else; with room for all, the loop finds no one. Infinite
    kappa (T = 0) keeps w = 1 and is never pending. With one more attempt at a time, many
    continued agents have it rejected too: they must stay marked for the loop.
    """
    minimum, share = ROOM[room]
    monkeypatch.setattr(wood, "WOOD_TRACED_MINIMUM", minimum)
    monkeypatch.setattr(wood, "WOOD_TRACED_SHARE", share)
    monkeypatch.setattr(wood, "WOOD_MORE_ATTEMPTS", more)
    kappa = torch.logspace(-2, 4, 3000, dtype=torch.float64).reshape(3, 1000)
    kappa[0, :5] = math.inf
    draws = round_draws(torch.tensor([1, 2, 3]), 4, 1000)
    want = wood._wood_component(kappa, dimension, draws)
    got, left = split_step(kappa, dimension, draws)
    assert torch.equal(got, want)
    assert torch.all(got[0, :5] == 1)
    _, pending = wood._wood_first(*wood._wood_constants(kappa, dimension), dimension, draws, wood.WOOD_FIRST_ATTEMPTS)
    before = int(pending.sum())
    assert before > 1  # there was something to continue
    if room == "one agent":
        assert left >= before - 1  # one agent continued in the graph, the rest to the loop
    elif more == 1:  # some continued agents had their one more attempt rejected: still left to the loop
        assert 0 < left < before
    else:  # the default's 187 slots hold nearly all here: few are left (overflow, 8 more rejections)
        assert left < before / 10


@pytest.mark.parametrize("dimension", [2, 3, 16])
def test_the_loops_operator_draws_what_the_loop_draws(monkeypatch, dimension):
    """econspin::wood_rest, what a compiled round calls for the agents left: the loop's w bit for bit.

    Its inputs untouched, and a well-formed operator (torch.library.opcheck: schema, fake tensors),
    with agents left and with none.
    """
    monkeypatch.setattr(wood, "WOOD_TRACED_MINIMUM", 1)  # the continuation takes one agent: the loop has more
    monkeypatch.setattr(wood, "WOOD_TRACED_SHARE", 10**9)
    kappa = torch.logspace(-2, 4, 600, dtype=torch.float64).reshape(3, 200)
    kappa[0, :5] = math.inf
    kappa[1, :5] = torch.tensor([1e16, 5e16, 1e19, 1e300, 1e308], dtype=torch.float64)  # past float64's resolution
    draws = round_draws(torch.tensor([1, 2, 3]), 4, 200)
    marked, constants = _wood_first_traced(kappa, dimension, draws)
    pending = torch.isnan(marked)
    assert bool(pending.any())  # the loop has work: agents left after the continuation
    kept = marked.clone()
    got = wood.wood_rest_operator(marked, constants, draws.keys, dimension)
    assert torch.equal(marked.view(torch.int64), kept.view(torch.int64))  # bit for bit, the NaN marks too
    attempts = (wood.WOOD_FIRST_ATTEMPTS, wood.WOOD_MORE_ATTEMPTS)
    assert torch.equal(got, wood._wood_rest(marked.clone(), pending, constants, dimension, draws, *attempts))
    # and the step's draw unsplit (each agent's first accepted attempt), whatever attempt the operator starts at
    assert torch.equal(got, wood._wood_component(kappa, dimension, draws))
    torch.library.opcheck(wood.wood_rest_operator, (marked, constants, draws.keys, dimension))
    # no agent left (the operator's check is one sum): w itself, as a new tensor, and a well-formed operator again
    done = wood.wood_rest_operator(got, constants, draws.keys, dimension)
    assert torch.equal(done, got) and done.data_ptr() != got.data_ptr()
    torch.library.opcheck(wood.wood_rest_operator, (got, constants, draws.keys, dimension))
    # it reads the host (whether anyone is left): a CUDA graph must not capture it, the blocks' operators may
    assert torch.Tag.cudagraph_unsafe in wood.wood_rest_operator.tags
    assert not torch.ops.econspin.expected_blocks.default.tags and not torch.ops.econspin.sampled_blocks.default.tags


@needs_compiler
def test_a_compiled_draw_runs_the_loop_only_where_agents_are_left(monkeypatch):
    """Compiled, the loop's operator runs inside torch.cond: where agents are left it draws the loop's w, else none.

    With room for one agent in the continuation, a field of many concentrations leaves agents
    to the loop: the compiled spins are the eager ones (1e-9, as in the slow test of
    test_compiled_round) and the loop ran. At T = 0 nobody is drawn: the other branch, w = 1,
    the spins R theta_hat, and no loop. One graph either way.
    """
    monkeypatch.setattr(wood, "WOOD_TRACED_MINIMUM", 1)
    monkeypatch.setattr(wood, "WOOD_TRACED_SHARE", 10**9)
    loops = []
    loop = wood._wood_rest
    monkeypatch.setattr(wood, "_wood_rest", lambda *arguments: loops.append(1) or loop(*arguments))
    generator = torch.Generator().manual_seed(5)
    theta = torch.randn(2, 300, 3, dtype=torch.float64, generator=generator)
    theta = theta * torch.logspace(-2, 3, 300, dtype=torch.float64)[:, None] / theta.norm(dim=-1, keepdim=True)
    draws = round_draws(torch.tensor([3, 4]), 7, 300)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(response.sample_von_mises_fisher, dynamic=False)
    for temperature, any_left in ((torch.ones(2, 300, dtype=torch.float64), True),
                                  (torch.zeros(2, 300, dtype=torch.float64), False)):
        with torch.no_grad():
            eager = response.sample_von_mises_fisher(theta, temperature, 1.5, draws)
            loops.clear()
            got = compiled(theta, temperature, 1.5, draws)
        assert bool(loops) == any_left
        assert (got - eager).abs().max() <= 1e-9 * 1.5
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


@needs_compiler
def test_the_compiled_first_attempts_test_their_marks_with_vector_comparisons():
    """Compiled, Wood's traced step tests NaN and finiteness with comparisons, and marks w without bool masks or'ed.

    Checked in its loops over all the agents (the continuation's loop over its slots keeps the
    batched attempts' masks, the eager form). Inductor's C++ took isnan of float64 a lane at a
    time (the vector stored, std::isnan on each double, a mask loaded back), and joined float64
    comparisons through int32 masks converted a lane at a time: about a quarter of the
    instructions of the loop of the first attempts (docs/performance_log.md, "The spin draw's masks").
    The step is still the loop's draw.
    """
    kappa = torch.logspace(-2, 4, 600, dtype=torch.float64).reshape(3, 200)
    kappa[0, :5] = math.inf
    kappa[1, :5] = torch.tensor([1e16, 5e16, 1e19, 1e300, 1e308], dtype=torch.float64)  # past float64's resolution
    draws = round_draws(torch.tensor([1, 2, 3]), 4, 200)
    torch._dynamo.reset()
    (marked, constants), code = run_and_get_code(
        torch.compile(lambda kappa, keys: _wood_first_traced(kappa, 16, wood.Draws(keys)), dynamic=False),
        kappa,
        draws.keys,
    )
    over_agents = generated_loops(code, 600)
    assert len(over_agents) >= 2  # the constants, the first attempts with the pending agents' ranks, the marks
    assert not any("std::isnan" in loop or "cast<int32_t" in loop for loop in over_agents)
    attempts = (wood.WOOD_FIRST_ATTEMPTS, wood.WOOD_MORE_ATTEMPTS)
    got = wood._wood_rest(marked, torch.isnan(marked), constants, 16, draws, *attempts)
    assert torch.allclose(got, wood._wood_component(kappa, 16, draws), rtol=0, atol=1e-9)


def test_a_rejection_budget_counts_on_its_device_in_integers_and_needs_an_attempt():
    """RejectionBudget.on: an int64 zero on the device (a count of agents, exact however many), one attempt at least."""
    budget = wood.RejectionBudget.on(torch.device("cpu"), 3)
    assert budget.attempts == 3 and budget.unresolved.dtype == torch.int64 and budget.unresolved.shape == ()
    assert int(budget.unresolved) == 0 and budget.unresolved.device.type == "cpu"
    with pytest.raises(ValueError, match="at least one attempt, not 0"):
        wood.RejectionBudget.on(torch.device("cpu"), 0)
    assert wood.RejectionBudget.on(torch.device("cpu"), 1).attempts == 1


@pytest.mark.parametrize("dimension", [2, 3, 32, 200])
def test_every_path_ends_at_concentrations_float64_cannot_resolve(dimension):
    """Kappa from 1e12 to float64's largest: w below 1 by ~ d / kappa, the same on loop, budget and split step.

    Written with x0 and c, the acceptance test cancelled: around kappa ~ 1e16 no attempt was ever
    accepted, and a round at T ~ 1e-17 never ended. Where b = m / (2k + hypot(2k, m)) underflows
    (kappa ~ 1e308) the agent takes w = 1, as at T = 0.
    """
    wide, near = (torch.logspace(12, 300, 400, dtype=torch.float64), torch.logspace(14, 20, 400, dtype=torch.float64))
    largest = torch.tensor([1e306, 1e307, 1e308, torch.finfo(torch.float64).max], dtype=torch.float64)
    kappa = torch.cat([wide, near, largest])[None]  # near: where the old test stopped accepting, for each d here
    draws = round_draws(torch.tensor([4]), 2, kappa.shape[1])
    constants, drawn = wood._wood_constants(kappa, dimension)
    assert bool(drawn[:, :800].all()) and not bool(drawn[:, -1])  # b = 0 only past 2k = inf
    assert torch.equal(drawn, constants[0] > 0)
    loop = wood._wood_component(kappa.clone(), dimension, draws)
    budget = wood.RejectionBudget.on(torch.device("cpu"), 24)
    budgeted = wood._wood_component(kappa.clone(), dimension, draws, budget=budget)
    split, _ = split_step(kappa.clone(), dimension, draws)
    assert int(budget.unresolved) == 0
    assert torch.equal(budgeted, loop) and torch.equal(split, loop)
    assert bool((loop[~drawn] == 1.0).all())
    scaled = (1.0 - loop) * kappa  # Gamma((d - 1) / 2) at large kappa: 1 - w ~ (d - 1) / (2 kappa)
    assert bool((loop <= 1.0).all()) and float(scaled.max()) < 2 * (dimension - 1) + 40


def test_an_acceptance_test_that_accepts_nothing_is_an_error_not_an_endless_loop():
    """With an offset of -inf no score reaches log U: the loop gives up after WOOD_MOST_ATTEMPTS, naming kappa."""
    kappa = torch.tensor([[3.0, 40.0]], dtype=torch.float64)
    constants, drawn = wood._wood_constants(kappa, 5)
    constants[2] = -math.inf
    draws = round_draws(torch.tensor([1]), 0, 2)
    result, pending = wood._wood_first(constants, drawn, 5, draws, wood.WOOD_FIRST_ATTEMPTS)
    assert bool(pending.all())
    with pytest.raises(FloatingPointError, match=r"none of 100\d attempts for 2 agents \(d = 5, kappa 3 to 40\)"):
        wood._wood_rest(result, pending, constants, 5, draws, wood.WOOD_FIRST_ATTEMPTS, wood.WOOD_MORE_ATTEMPTS)


# the last two: where 1 - w is a few ulps of 1, and the old test (with x0 and c) was 13% and 2% off
GAMMA_CASES = [(d, kappa) for d in (2, 3, 32) for kappa in (1e6, 1e12, 1e14)] + [(3, 3e15), (32, 1e16)]


@pytest.mark.parametrize("dimension, kappa", GAMMA_CASES)
def test_at_large_concentration_kappa_times_one_minus_w_is_gamma_distributed(dimension, kappa):
    """The scaled component kappa (1 - w) -> Gamma((d - 1) / 2, 1) as kappa -> inf (the tangent plane's Gaussian limit).

    Its mean and variance, both (d - 1) / 2, within 5 standard errors of 50 000 draws. At kappa =
    1e14 float64 resolves 1 - w ~ 1e-14 to 1%, and the acceptance test still has the law right
    (with x0 and c its cancellation made the mean 13% high at d = 3, kappa = 3e15, and 2% high,
    16 standard errors, at d = 32, 1e16).
    """
    count, shape = 50_000, (dimension - 1) / 2
    w = wood._wood_component(torch.full((1, count), kappa, dtype=torch.float64), dimension,
                             round_draws(torch.tensor([5]), 0, count))
    scaled = (1.0 - w[0]) * kappa
    mean_error = 5 * math.sqrt(shape / count)
    variance_error = 5 * math.sqrt((2 * shape**2 + 6 * shape) / count)  # Gamma(a): mu_4 = 3 a^2 + 6 a
    assert abs(float(scaled.mean()) - shape) < mean_error
    assert abs(float(scaled.var()) - shape) < variance_error
