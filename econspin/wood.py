"""Wood's (1994) rejection sampler for the component of a von Mises-Fisher spin along its field.

The part of :func:`econspin.response.sample_von_mises_fisher` that draws w = s . theta_hat / R
(float64): every attempt of an agent is counter-based (:mod:`econspin.randomness`, DRAW_SPIN,
three uniforms an attempt), and the result is its first accepted attempt, however many are
evaluated at once. Three ways to run the attempts, the same law and, where each finishes, the
same number: every agent's first attempts at once and a loop over the agents left
(:func:`_wood_component`); a fixed budget with no host synchronisation
(:class:`RejectionBudget`); and, under ``run.compile``, the first attempts and the agents left
continued for a fixed number of them inside the compiled graph (:func:`_wood_continued`),
before the loop takes whoever remains. How a compiled round splits the step, traced and eager,
is at the end (:func:`_wood_first_traced`, :func:`_wood_rest_compiled`, :func:`_wood_component_eagerly`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from econspin import same_bits
from econspin.compiled import eager_operator, eager_parts_as_operators
from econspin.gaussians import cos_sin_of_turns
from econspin.randomness import DRAW_SPIN, UNIT_BITS, Draws, to_unit, unit_integers


@dataclass(frozen=True)
class RejectionBudget:
    """Wood's sampler with a fixed number of attempts per agent, so that no round waits on the host.

    The exact loop asks the host after each batch of attempts whether any agent is still
    without an accepted one. With a budget, every agent makes ``attempts`` attempts at once,
    the agents with none accepted are counted into ``unresolved`` (a device int64 scalar,
    added to in place), and nothing is read back. Attempts are counter-based, so every agent
    accepted within the budget gets the very number the loop gives it; a caller that finds
    ``unresolved`` nonzero must play the round again with the loop (econspin.simulate replays
    the chunk of rounds). ``attempts`` is chosen in docs/performance.md ("The sync-free rollout").
    """

    attempts: int
    unresolved: torch.Tensor

    @classmethod
    def on(cls, device: torch.device, attempts: int) -> "RejectionBudget":
        """A budget of ``attempts`` per agent with no unresolved agent counted yet."""
        if attempts < 1:
            raise ValueError(f"a rejection budget needs at least one attempt, not {attempts}")
        return cls(attempts, torch.zeros((), dtype=torch.int64, device=device))


WOOD_FIRST_ATTEMPTS = 2  # attempts every agent makes at once; Wood's acceptance is >= 0.65 a try
# ... and where the draw has at most WOOD_FEW_AGENTS agents, eagerly: there the loop over the agents left
# costs more than the attempts (a few dispatches, about 0.1 ms), and after two attempts 27 rounds in 30 of
# one economy of 64 agents had someone left, after four few (d = 32: Wood's step 0.14 against 0.25 ms)
WOOD_FIRST_ATTEMPTS_FEW = 4
WOOD_FEW_AGENTS = 512
WOOD_MORE_ATTEMPTS = 8  # attempts at once for the few agents (<= 12%) that still have none
WOOD_MOST_ATTEMPTS = 1000  # attempts after which an agent with none accepted is an error (:func:`_wood_rest`)


def _wood_component(
    kappa: torch.Tensor,
    dimension: int,
    draws: Draws,
    attempts: int | None = None,
    more_attempts: int = WOOD_MORE_ATTEMPTS,
    budget: RejectionBudget | None = None,
):
    """W = s . theta_hat / R for each agent, by Wood's rejection algorithm (float64).

    With m = d - 1, b = m / (2k + sqrt(4k^2 + m^2)), x0 = (1 - b) / (1 + b) and
    c = k x0 + m log(1 - x0^2), an attempt proposes z ~ Beta(m/2, m/2),
    w = (1 - (1 + b) z) / (1 - (1 - b) z), and accepts it when
    k w + m log(1 - x0 w) - c >= log U. The proposal is z = (1 + t) / 2 with t the first
    coordinate of a uniform point on the sphere S^(d-1), drawn from two uniforms by Ulrich's
    (1984) polar method: t = sqrt(1 - U1^(2/(d-2))) cos(2 pi U2) (d = 2: t = cos(2 pi U2)),
    since the first two coordinates have radius^2 = 1 - U1^(2/(d-2)) and a uniform angle.
    With z = (1 + t)/2, w = ((1 - b) - (1 + b) t) / ((1 + b) - (1 - b) t).

    Computed without cancellation (:func:`_wood_constants`): with D = (1 - t) + b (1 + t),
    1 - w = 2 b (1 + t) / D, 1 - x0 w = 4 b / ((1 + b) D) and 1 - x0^2 = 4 b / (1 + b)^2, so
    the test is 2 b k / (1 + b) + m log(1 + b) - 2 b k (1 + t) / D - m log D >= log U. Written
    with 1 - x0 w and c, its terms cancel to about kappa eps: the law of w was off by 1% at
    kappa = 1e15 and no attempt was ever accepted at kappa ~ 1e16 (the loop never ended).

    Attempt a of an agent uses the uniforms 3a (U1), 3a + 1 (U) and 3a + 2 (U2) of its spin
    stream, and the result is its first accepted attempt: the law of the rejection sampler,
    and the same number however many attempts are evaluated at once. ``attempts`` of them
    (default WOOD_FIRST_ATTEMPTS, or WOOD_FIRST_ATTEMPTS_FEW for at most WOOD_FEW_AGENTS agents)
    are evaluated for every agent together (one host synchronisation a round, to see whether
    any agent has none accepted); the agents with none accepted (at most 0.35^attempts of
    them: Wood's acceptance rate is at least 0.65 for every d and k) continue, ``more_attempts``
    at a time, in a loop over those agents only.

    With a ``budget`` there is no loop: ``budget.attempts`` attempts for every agent, and the
    agents left without an accepted one are added to ``budget.unresolved`` (their value is
    then not a draw of the law; the caller replays them with the loop).
    """
    constants, drawn = _wood_constants(kappa, dimension)
    if budget is not None:
        return _wood_budgeted(constants, drawn, dimension, draws, budget, more_attempts)
    if attempts is None:
        attempts = WOOD_FIRST_ATTEMPTS_FEW if kappa.numel() <= WOOD_FEW_AGENTS else WOOD_FIRST_ATTEMPTS
    result, pending = _wood_first(constants, drawn, dimension, draws, attempts)
    return _wood_rest(result, pending, constants, dimension, draws, attempts, more_attempts)


def _wood_constants(kappa: torch.Tensor, dimension: int) -> tuple[torch.Tensor, torch.Tensor]:
    """((4, ...) float64 b, 2 b k, 2 b k / (1 + b) + m log(1 + b) and k of :func:`_wood_component`; who is drawn).

    b = m / (2k + hypot(2k, m)), which neither overflows nor cancels, and 2 b k -> m / 2 as k ->
    inf. w is drawn where b > 0; elsewhere the agent takes w = 1: kappa infinite (T = 0), or
    beyond float64 (2k = inf, kappa > 9e307), where b is 0, or NaN, where b is NaN.
    """
    m1 = dimension - 1.0
    # one comparison says who is drawn: compiled, isfinite(kappa) and'ed with it joined the masks
    # through int32 ones, converted a lane at a time (docs/performance_log.md, "The spin draw's masks")
    # not torch.hypot, whose float64 gives an agent other bits in its tensor's scalar remainder (econspin.same_bits)
    denominator = 2.0 * kappa + same_bits.hypot(2.0 * kappa, torch.full_like(kappa, m1))
    b = m1 / denominator
    pull = m1 * (2.0 * kappa / denominator)  # 2 b k, exact in the limit (m / 2) where b is subnormal
    offset = pull / (1.0 + b) + m1 * torch.log1p(b)
    return torch.stack([b, pull, offset, kappa]), b > 0


def _wood_first(constants, drawn, dimension: int, draws: Draws, attempts: int):
    """(w, pending): each agent's first accepted of its first ``attempts``, and who has none.

    w = 1 where it is not ``drawn`` (kappa infinite, T = 0, or too large for float64: :func:`_wood_constants`);
    pending: the drawn agents with no attempt accepted yet (their w is not a draw until :func:`_wood_rest`).
    """
    result, accepted = _wood_attempts(constants, dimension, draws, 0, attempts)
    return torch.where(drawn, result, torch.ones_like(result)), drawn & ~accepted


def _wood_rest(result, pending, constants, dimension: int, draws: Draws, start: int, more_attempts: int):
    """Wood's component once the first ``start`` attempts are made (:func:`_wood_first`).

    The ``pending`` agents make ``more_attempts`` more at a time until each has one accepted.
    An agent with none accepted in WOOD_MOST_ATTEMPTS is an error, not a longer loop: at an
    acceptance rate of at least 0.65 an attempt that has probability 0.35^1000 = 1e-456, so the
    arithmetic of the acceptance test has failed (as it once did for kappa near 1e16: the loop
    never ended).
    """
    while bool(pending.any()):
        if start >= WOOD_MOST_ATTEMPTS:
            kappa = constants[3][pending]
            raise FloatingPointError(
                f"Wood's sampler accepted none of {start} attempts for {kappa.numel()} agents (d = {dimension}, "
                f"kappa {kappa.min().item():.6g} to {kappa.max().item():.6g}): its acceptance test failed"
            )
        index = pending.nonzero(as_tuple=True)
        more, more_accepted = _wood_attempts(
            constants[(slice(None), *index)], dimension, draws[index], start, more_attempts
        )
        result = result.index_put(index, torch.where(more_accepted, more, result[index]))
        pending = pending.index_put(index, ~more_accepted)
        start += more_attempts
    return result.clamp_(-1.0, 1.0)


# under run.compile (econspin.compiled), on the devices of OPERATOR_DEVICES: the loop as one node of
# the compiled graph instead of a graph break (torch.compiler.disable splits the round into a graph
# per frame above the call); it asks the host whether anyone is left, inside the operator. Registered
# on the dispatcher directly (econspin.compiled.eager_operator), not by torch.library.custom_op, whose
# wrappers cost 22 us a call; nothing differentiates through it: a traced draw whose w requires a
# gradient takes the graph break instead (_wood_rest_compiled)
@eager_operator("wood_rest", lambda marked, constants, keys, dimension: torch.empty_like(marked), reads_the_host=True)
def wood_rest_operator(
    marked: torch.Tensor, constants: torch.Tensor, keys: torch.Tensor, dimension: int
) -> torch.Tensor:
    """:func:`_wood_rest` after WOOD_FIRST_ATTEMPTS attempts, on the agents' keys (``Draws.keys``).

    ``marked``: w with NaN where the agent has no accepted attempt yet (:func:`_wood_first_marked`).
    """
    return _wood_rest_marked(marked, constants, dimension, Draws(keys))


def _wood_first_marked(constants, drawn, dimension: int, draws: Draws, attempts: int) -> torch.Tensor:
    """:func:`_wood_first` with who is pending marked in w itself: NaN where no attempt is accepted yet.

    The form of the compiled round: Inductor's C++ stores and loads a bool tensor one byte at a
    time in loops over its 64-byte vectors (with the pending agents' masks, the continuation's
    kernel spent about half its time there); the mark travels in the float64 w, which it stores
    vectorised. An accepted w is never NaN (a NaN score is never accepted), and w = 1 where
    it is not ``drawn``, so the mark means pending and nothing else.
    """
    if not torch.compiler.is_compiling():
        result, pending = _wood_first(constants, drawn, dimension, draws, attempts)
        return torch.where(pending, math.nan, result)
    # every agent's first attempts, one expression each (the continuation keeps the batched form:
    # unrolled there too, its kernel made the round at B = 1 slower by 0.1 ms)
    return torch.where(drawn, _wood_attempts_traced(constants, dimension, draws, 0, attempts), 1.0)


def _wood_rest_marked(marked, constants, dimension: int, draws: Draws) -> torch.Tensor:
    """:func:`_wood_rest` of the agents marked NaN in w after the first attempts: a new tensor, ``marked`` untouched.

    Most rounds no agent is left: a NaN anywhere makes the sum NaN, and w is within [-1, 1] elsewhere
    (1 where it is not drawn), so the sum is finite exactly when none is marked. One pass and one
    host read, where ``isnan(marked).any()`` took 22 us at B = 128, N = 64 (docs/performance.md).
    """
    if not math.isnan(float(marked.detach().sum())):
        return marked.clamp(-1.0, 1.0)
    # _wood_rest's first index_put makes a new tensor: the loop never writes into marked
    return _wood_rest(marked, torch.isnan(marked), constants, dimension, draws, WOOD_FIRST_ATTEMPTS, WOOD_MORE_ATTEMPTS)


WOOD_TRACED_SHARE = 16  # under run.compile, up to 1/16 of the agents continue inside the graph
WOOD_TRACED_MINIMUM = 16  # ... and at least this many (one economy of 64 agents leaves 2-3 on average)


def _wood_continued(marked, constants, dimension: int, draws: Draws, start: int, more_attempts: int):
    """The marked w (:func:`_wood_first_marked`) after attempts start .. start + more_attempts - 1 of some pending.

    Up to a fixed number of the pending agents make these attempts.

    The loop over the agents left (:func:`_wood_rest`) asks the host how many there are; under
    run.compile it runs eagerly (a graph break when this was measured; since then an operator of
    the graph on the CPU, :func:`wood_rest_operator`), a few dozen operations on a few hundred
    agents, and cost 0.6 ms of a sampled round at B = 128, N = 64 (about 300 agents left of 8192; 0.29 ms with 2 left at
    B = 1; docs/performance_log.md, "The sampled round at d = 32"). Here, with shapes fixed in
    advance, so that it traces into the graph of the first attempts: the first ``capacity``
    pending agents in row order (max(WOOD_TRACED_MINIMUM, agents / WOOD_TRACED_SHARE)) make the
    loop's next attempts, gathered by their rank among the pending (a cumulative count), and
    their results go back by the same indices (NaN again where none is accepted); slots beyond
    the pending count compute for agent 0 and write nowhere. Who is still pending (beyond the
    capacity, or with none of these attempts accepted) is left to the loop, which starts again
    at ``start``: every attempt is counter-based, so those it repeats are rejected again, and
    each agent's draw is still its first accepted attempt.
    """
    shape = marked.shape
    flat_result = marked.reshape(-1)
    agents = flat_result.numel()
    capacity = min(agents, max(WOOD_TRACED_MINIMUM, agents // WOOD_TRACED_SHARE))
    if capacity == 0:
        return marked
    device = marked.device
    # NaN is the one value unequal to itself: a vector comparison compiled, where Inductor's C++
    # took isnan of float64 a lane at a time (stored, tested, loaded back as a mask)
    flat_pending = flat_result != flat_result
    rank = torch.cumsum(flat_pending, 0) - 1
    # each pending agent of rank below the capacity into its slot; the others into a spare slot, dropped
    # (the rank clamped, not a second mask and'ed: compiled, Inductor joins masks through int32 ones)
    slot = torch.where(flat_pending, rank.clamp(max=capacity), capacity)
    slots = torch.zeros(capacity + 1, dtype=torch.long, device=device)
    slots = slots.scatter(0, slot, torch.arange(agents, device=device))[:capacity]
    filled = torch.arange(capacity, device=device) < flat_pending.sum()
    more, more_accepted = _wood_attempts(
        constants.reshape(constants.shape[0], -1)[:, slots],
        dimension,
        Draws(draws.keys.reshape(-1)[slots]),
        start,
        more_attempts,
    )
    values = torch.where(more_accepted, more, math.nan)
    target = torch.where(filled, slots, agents)  # slots past the pending count: the spare entry
    spare_result = torch.cat([flat_result, flat_result.new_zeros(1)]).scatter(0, target, values)
    return spare_result[:agents].view(shape)


def _wood_budgeted(constants, drawn, dimension: int, draws: Draws, budget: RejectionBudget, group: int):
    """Wood's component with ``budget.attempts`` attempts for every agent, ``group`` at a time.

    In groups, so that memory stays that of ``group`` attempts (each holds three float64
    uniforms an agent); every group is computed for every agent, as no one asks the host
    whether any is still needed.
    """
    result, accepted = _wood_attempts(constants, dimension, draws, 0, min(group, budget.attempts))
    for start in range(group, budget.attempts, group):
        more, more_accepted = _wood_attempts(constants, dimension, draws, start, min(group, budget.attempts - start))
        result = torch.where(accepted, result, more)  # an earlier accepted attempt wins
        accepted = accepted | more_accepted
    budget.unresolved.add_((drawn & ~accepted).sum())
    result = torch.where(drawn, result, torch.ones_like(result))
    return result.clamp_(-1.0, 1.0)


def _wood_attempts(constants: torch.Tensor, dimension: int, draws: Draws, start: int, count: int):
    """Attempts start .. start + count - 1 for every agent: (first accepted w, whether any)."""
    # own_loop: traced (the continuation of _wood_continued), the words are hashed in a loop of their own, in uint64
    # on the CPU (0.024 ms there, 0.079 ms inline, at B = 128, N = 64); eagerly and on CUDA the same as without it
    uniform = draws.uniform(DRAW_SPIN, 3 * count, 3 * start, own_loop=True).unflatten(0, (count, 3))  # (count, 3, ...)
    logs = torch.log(uniform[:, :2])  # log U1, log U
    t = torch.cos((2.0 * math.pi) * uniform[:, 2])
    if dimension > 2:
        t *= torch.sqrt(torch.expm1(logs[:, 0] * (2.0 / (dimension - 2))).neg_())
    b, pull, offset, _ = constants
    ones_t = 1.0 + t
    spread = torch.addcmul(1.0 - t, b, ones_t)  # D = (1 - t) + b (1 + t)
    ratio = ones_t / spread  # (1 + t) / D (out of place: the draw's gradient reads 1 + t)
    w = torch.addcmul(ratio.new_ones(()), b, ratio, value=-2.0)  # 1 - 2 b (1 + t) / D (a 0-d one, broadcast)
    # 2 b k / (1 + b) + m log(1 + b) - 2 b k (1 + t) / D - m log D >= log U
    score = torch.log(spread).mul_(-(dimension - 1.0)).add_(offset).addcmul_(pull, ratio, value=-1.0)
    accept = score >= logs[:, 1]
    result, accepted = w[-1], accept[-1]
    for attempt in range(count - 2, -1, -1):  # the first accepted one wins
        result = torch.where(accept[attempt], w[attempt], result)
        accepted = accepted | accept[attempt]
    return result, accepted


def _wood_attempts_traced(constants: torch.Tensor, dimension: int, draws: Draws, start: int, count: int):
    """:func:`_wood_attempts` as torch.compile is given every agent's first attempts: w, NaN where none is accepted.

    The attempts' words are hashed first, in a loop of their own, and stored (``own_loop``: on
    the CPU each product is one uint64 multiplication there, in scalar code; inline, the float64
    loop took each in 32-bit halves, 0.2 ms more at B = 128, N = 64). Each attempt is then one
    expression of its three words: two uniforms and its cosine from the third's 52-bit integer
    (:func:`econspin.gaussians.cos_sin_of_turns`, within 1e-15 of torch's cos), so Inductor fuses
    the attempts into one loop over the agents. Batched as eagerly, it stored part of the hashes,
    the logs and t, and recomputed w. Who has an accepted attempt is the mark itself (the last
    attempt's w, or NaN, then each earlier accepted one over it), not a bool or'ed attempt by
    attempt: Inductor joined those masks through int32 ones, converted from the float64
    comparisons a lane at a time.
    """
    b, pull, offset, _ = constants
    words = draws.words(DRAW_SPIN, 3 * count, 3 * start, own_loop=True)  # hashed apart, stored
    result = None
    for attempt in range(count - 1, -1, -1):  # the first accepted one wins
        first = to_unit(words[3 * attempt])
        threshold = torch.log(to_unit(words[3 * attempt + 1]))
        angle = unit_integers(words[3 * attempt + 2])  # U2 = (angle + 1/2) 2^-52
        t = cos_sin_of_turns(angle, bits=UNIT_BITS)[0]
        if dimension > 2:
            t = t * torch.sqrt(-torch.expm1(torch.log(first) * (2.0 / (dimension - 2))))
        spread = (1.0 - t) + b * (1.0 + t)  # the same terms as _wood_attempts
        ratio = (1.0 + t) / spread
        w = 1.0 - 2.0 * b * ratio
        score = offset - torch.log(spread) * (dimension - 1.0) - pull * ratio
        result = torch.where(score >= threshold, w, math.nan if result is None else result)
    return result


# Wood's step as a compiled round takes it (econspin.response.sample_von_mises_fisher): traced but for the loop
@torch.compiler.disable
def _wood_component_eagerly(
    kappa: torch.Tensor, dimension: int, draws: Draws, budget: "RejectionBudget | None" = None
) -> torch.Tensor:
    """:func:`_wood_component`, kept eager under run.compile (eagerly, the whole step is this).

    Compiled without a budget, the step is split instead: its first attempts traced
    (:func:`_wood_first_traced`), its loop run eagerly (:func:`_wood_rest_compiled`), since the
    loop asks the host whether any agent still lacks an accepted attempt: one custom operator of
    the graph on the CPU, a graph break on CUDA. With a ``budget`` there is no loop, but the
    count of unresolved agents is added to in place, and torch.compile does not replay a graph
    that mutates an input as a CUDA graph (reduce-overhead skips it): it stays eager too.
    """
    return _wood_component(kappa, dimension, draws, budget=budget)


def _wood_first_traced(kappa: torch.Tensor, dimension: int, draws: Draws):
    """(w marked NaN where pending, constants): under run.compile, the traced part of Wood's step.

    Every agent's first ``WOOD_FIRST_ATTEMPTS`` attempts (nearly all of the work: at most 12%
    of the agents need more) fuse with their hashes into the compiled graph, and so do the next
    ``WOOD_MORE_ATTEMPTS`` of a fixed number of the agents left (:func:`_wood_continued`);
    whoever is still left (NaN in w, :func:`_wood_first_marked`) continues in the
    loop (:func:`_wood_rest_compiled`: the operator econspin::wood_rest on the CPU, a graph break
    on CUDA), which then most rounds only asks whether anyone is.
    The same attempts, the same first accepted one: the loop's draw, to the rounding of the
    compiled log, cos and expm1 (as the compiled Gaussians, econspin.gaussians).
    """
    constants, drawn = _wood_constants(kappa, dimension)
    marked = _wood_first_marked(constants, drawn, dimension, draws, WOOD_FIRST_ATTEMPTS)
    # the loop's next attempts for a fixed number of the agents left, still in the graph
    marked = _wood_continued(marked, constants, dimension, draws, WOOD_FIRST_ATTEMPTS, WOOD_MORE_ATTEMPTS)
    return marked, constants


def _wood_rest_compiled(marked, constants, dimension: int, draws: Draws) -> torch.Tensor:
    """:func:`_wood_rest` under run.compile: one operator of the graph (econspin::wood_rest), or a graph break.

    The loop asks the host whether any agent is left, so it cannot be traced: on the devices of
    econspin.compiled.OPERATOR_DEVICES (the CPU) it runs inside a custom operator, one node of
    the compiled round, elsewhere (CUDA) between graphs (:func:`_wood_rest_eagerly`). On the CPU
    the operator is one branch of a ``torch.cond`` on whether any w is marked NaN (the sum is NaN
    exactly then, as :func:`_wood_rest_marked` tests it); the other, taken in most
    rounds, is w clamped in the graph. Called every round, where it mostly found nobody, the
    operator made the compiled sampled round at B = 128, N = 64 take 5.28-5.71 ms, against
    5.06-5.26 ms this way (docs/performance.md, "Wood's loop called only where agents are
    left"). The operator has no autograd kernel (econspin.compiled.eager_operator): where w
    requires a gradient (a sampled round differentiated through its draw) the loop is a graph
    break on every device, and the gradient flows through it as eagerly.
    """
    if eager_parts_as_operators(marked.device) and not (torch.is_grad_enabled() and marked.requires_grad):

        def loop(marked, constants, keys):
            return wood_rest_operator(marked, constants, keys, dimension)

        def none_left(marked, constants, keys):
            return marked.clamp(-1.0, 1.0)

        return torch.cond(torch.isnan(marked.sum()), loop, none_left, (marked, constants, draws.keys))
    return _wood_rest_eagerly(marked, constants, dimension, draws)


@torch.compiler.disable
def _wood_rest_eagerly(marked, constants, dimension: int, draws: Draws) -> torch.Tensor:
    """:func:`_wood_rest`, kept eager under run.compile: it asks the host whether any agent is left."""
    return _wood_rest_marked(marked, constants, dimension, draws)
