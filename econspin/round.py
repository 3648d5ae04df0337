"""One round of the attention economy, t -> t+1, as a pure function of the state.

``step(state, economy) -> state`` reads nothing else and changes nothing: the same state
gives the same next state: the draws of sampled mode are counter-based random numbers, a
function of the state's keys, its round and the agent (:mod:`econspin.randomness`).
"""

from __future__ import annotations

import torch

from econspin import traced_blocks
from econspin.compiled import compiled_function, eager_parts_as_operators, replays_cuda_graphs, stores_measured_values
from econspin.corrections import FieldContext
from econspin.economy import Economy
from econspin.economy_terms import field_weights
from econspin.flex import flex_trade, uses_flex
from econspin.fused import fused_trade, uses_fused
from econspin.fused_sampled import fused_sampled_trade
from econspin.market import MarketOutcome, spin_variance, trade
from econspin.randomness import Draws, agent_draws, round_tag
from econspin.response import RejectionBudget
from econspin.sparse import sparse_trade
from econspin.state import State
from econspin.traced_blocks import traced_expected_blocks, traced_sampled_blocks, traces
from econspin.triton_blocks import triton_sampled_trade, triton_trade, uses_triton
from econspin.uniform import uniform_trade, uses_uniform


def step(state: State, economy: Economy, budget: RejectionBudget | None = None) -> State:
    """Advance every batch element by one round (MODEL.md steps 1-7).

    1-3. Each buyer i chooses sellers by logit choice over the utilities
         u_ij = q_i . k_j / sqrt(d_k) (+ gamma log(w_j / mean w)) at its temperature T_i:
         alpha_ij = softmax_j(u_ij / T_i) (expected mode), or one seller c_i ~ alpha_i. per
         market (sampled mode). See :mod:`econspin.market`.
    4.   Budgets s_i = sigma_i w_i (or one unit); flows F_ij = s_i alpha_ij, revenue
         R_j = sum_i F_ij, money w_i <- w_i - s_i + R_i (conserved; never negative).
    5.   Received signal a_i = sum_j alpha_ij v_j W_O (or v_{c_i} W_O), heads summed.
    6-7. Field theta_i = h_i + (1 - eta_i) x_i + eta_i a_i and new state
             expected: x_i <- f(theta_i - correction_i)   (none / tap / ffn, per population)
             sampled:  x_i ~ p(s) ∝ exp(theta_i . s / T_i) on |s| = R.
         The tap correction is m_i = f(theta_i - beta_i sigma_i^2 m_i) with
         sigma_i^2 = (1 - eta_i)^2 c_i + eta_i^2 Var(a_i) / d, see
         :mod:`econspin.corrections`.

    With a ``budget``, sampled mode's von Mises-Fisher draws make a fixed number of attempts
    and count the agents left unresolved on the device instead of asking the host
    (:class:`~econspin.wood.RejectionBudget`): a round that then needs no host at all.
    """
    sampled = economy.mode == "sampled"
    graphs = replays_cuda_graphs(economy.compile, state.states.device)
    if economy.compile == "off":
        new_states, money, outcome = play(state, economy, state.draws() if sampled else None, budget)
    else:
        tag = round_tag_tensor(state) if sampled else None
        if graphs:  # CUDA graphs: each round a new step of torch's graph tree
            torch.compiler.cudagraph_mark_step_begin()
        new_states, money, outcome = compiled_function(play_tagged, economy.compile, state.states.device.type)(
            state, economy, tag, budget
        )
    handed_on = {
        "states": new_states,
        "money": money,
        "revenue": outcome.revenue,
        "spending": outcome.spending,
        "entropy": outcome.entropy,
        "surplus": outcome.surplus,
    }
    if graphs:  # the next replay writes into this one's outputs: the state it hands on is copied out
        handed_on = {name: tensor.clone() for name, tensor in handed_on.items()}
    return state.replace(**handed_on, round=state.round + 1)


def round_tag_tensor(state: State) -> torch.Tensor:
    """The tag of the round after ``state`` as a 0-d int64 tensor on the state's device.

    The round enters the compiled round as a tensor, never as a traced Python number. Filled
    on the device (``torch.full``: the number travels as a kernel argument) rather than made
    from Python data (``torch.tensor``: built on the host and copied, which on a GPU makes the
    host wait for the device every round; econspin.host_syncs records it).
    """
    return torch.full((), round_tag(state.round), dtype=torch.int64, device=state.random_keys.device)


def play_tagged(
    state: State, economy: Economy, mixed_round: torch.Tensor | None, budget: RejectionBudget | None = None
) -> tuple[torch.Tensor, torch.Tensor, MarketOutcome]:
    """:func:`play` with the round's draws keyed from its tag (:func:`econspin.randomness.round_tag`).

    What ``run.compile`` compiles: the tag is a 0-d tensor, so one trace serves every round, and
    the keying of the agents fuses into the round's first loops instead of running eagerly.
    """
    switches_on(state.states.device)  # its value unused: read for the guards it gives this frame (its doc)
    draws = None if mixed_round is None else agent_draws(state.random_keys, mixed_round, state.states.shape[1])
    return play(state, economy, draws, budget)


def switches_on(device: torch.device) -> tuple[bool, bool, bool]:
    """Whether ``device`` is among the devices of each switch of econspin.compiled.SWITCHES.

    Read first by the compiled round, so that its first frame is guarded on every switch. TorchDynamo
    guards a frame on the globals its trace read, and the switches are read where the blocks are.
    Where a switch sends the blocks through a graph break, the frame compiled up to that break does
    not read the switch. That frame's code was then kept when the switch changed, break and all: the
    next way played its blocks in the previous way's frames. gpu_check's traced round on the H200
    ran as four graphs after the blocks-between-the-graphs way, where on its own it is one
    (docs/performance.md, "The traced round, one graph: the four graphs were the previous way's frames").
    """
    traced = device.type in traced_blocks.TRACED_DEVICES
    return eager_parts_as_operators(device), traced, stores_measured_values(device)


def play(
    state: State, economy: Economy, draws: Draws | None, budget: RejectionBudget | None = None
) -> tuple[torch.Tensor, torch.Tensor, MarketOutcome]:
    """Steps 1-7 as tensors: (new states, money, the market's outcome), given the round's draws.

    Everything of the round but its bookkeeping: it reads no Python number that changes from
    round to round (the round index enters through ``draws`` only); the compiled round
    (``run.compile``, :mod:`econspin.compiled`) is :func:`play_tagged`, one trace for every round.
    """
    sampled = economy.mode == "sampled"
    # c_i, each spin's variance: the expected mode's field variance, and the fused step's seller moments
    variances = None if sampled else spin_variance(state.states, economy.radius)
    outcome = market_step(state, economy, draws, variances)
    if sampled:
        field, _ = field_of(state, economy, outcome.received)
        new_states = economy.response.sample(field, state.temperature, draws, budget)
    else:
        field, field_variance = field_of(state, economy, outcome.received, variances, outcome.field_variance)
        context = FieldContext(
            field=field,
            state=state.states,
            temperature=state.temperature,
            field_variance=field_variance,
            choice_variance=outcome.choice_variance,
            impact=outcome.impact,
            response=economy.response,
        )
        new_states = _corrected_states(context, economy)
    return new_states, state.money - outcome.spending + outcome.revenue, outcome


def field_of(
    state: State,
    economy: Economy,
    received: torch.Tensor,
    variances: torch.Tensor | None = None,
    market_variance: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(theta_i, sigma_i^2): MODEL.md step 6's field from the received signal a_i, and its variance.

    theta_i = h_i + (1 - eta_i) x_i + eta_i a_i; given the spins' variances c_i and the market's
    part of the field variance, sigma_i^2 = (1 - eta_i)^2 c_i + eta_i^2 Var(a_i) / d (else None).

    A function of its own for ``run.compile``: TorchDynamo traces a frame only where an argument
    is a tensor (or its code names the torch module), and :func:`play` has neither (a state, an
    economy, draws). Where the round breaks the graph inside a call of ``play`` (the blocks and
    Wood's loop on CUDA, econspin.compiled.OPERATOR_DEVICES; on the CPU too until they became
    operators), TorchDynamo runs ``play`` eagerly and traces the functions it calls: written in
    ``play``, the field was four eager passes over (B, N, d) (0.26 ms of a sampled round at B = 128, N = 64,
    d = 32) and the field weights a compiled graph of their own every round (docs/performance_log.md,
    "The sampled round at d = 32"). Here, with the received signal an argument, one compiled loop.
    Eagerly the same operations in the same order.
    """
    rates = field_weights(economy)  # 1 - eta_i, eta_i and their squares, made once per economy
    field = state.fields + rates.kept * state.states + rates.adapted * received
    if variances is None:
        return field, None
    return field, rates.kept_squared * variances + rates.adapted_squared * market_variance


def market_step(state: State, economy: Economy, draws=None, variances: torch.Tensor | None = None):
    """Steps 1-5 on the kernel that applies (the one place that decides).

    Uniform choice in O(N) (:mod:`econspin.uniform`), the sparse network's edges, the
    FlexAttention passes (:mod:`econspin.flex`), the Triton programs (:mod:`econspin.triton_blocks`),
    the fused blocks (traced whole into a compiled round of one block, :mod:`econspin.traced_blocks`),
    or the reference blocks.
    ``variances``: the spins' variances c_i (market.spin_variance), where the round has them
    already (the fused expected step reads them instead of computing them again).
    """
    if uses_uniform(state, economy):
        return uniform_trade(state, economy, draws)
    if economy.trade_edges is not None and economy.couplings is None:
        return sparse_trade(state, economy, draws)
    if uses_flex(state, economy):
        return flex_trade(state, economy)
    if uses_triton(state, economy):
        if economy.mode == "sampled":
            return triton_sampled_trade(state, economy, draws)
        return triton_trade(state, economy, variances=variances)
    if uses_fused(state, economy):
        traced = traces(state, economy)  # a compiled round of one block: its blocks traced into the graph
        if economy.mode == "sampled":
            return fused_sampled_trade(state, economy, draws, blocks=traced_sampled_blocks if traced else None)
        return fused_trade(state, economy, variances=variances, blocks=traced_expected_blocks if traced else None)
    return trade(state, economy, draws)


def _corrected_states(context: FieldContext, economy: Economy) -> torch.Tensor:
    """Each population's correction applied to its own agents."""
    corrections = economy.corrections
    # none and tap carry no parameters: when every population uses the same one, one update serves all
    if all(type(correction) is type(corrections[0]) for correction in corrections) and corrections[0].name != "ffn":
        return corrections[0].update(context)
    new_states = corrections[0].update(context)
    for index, correction in enumerate(corrections[1:], start=1):
        mask = economy.population_mask(index)[None, :, None]
        new_states = torch.where(mask, correction.update(context), new_states)
    return new_states
