"""The blocks traced into a compiled round of one block (econspin.traced_blocks) against the eager blocks.

The traced expressions are plain torch: run eagerly they must give what the cache-blocked
loops give (econspin.fused.expected_blocks, econspin.fused_sampled.sampled_blocks) to rounding,
and the same sellers; compiled, the same again. Whether a round takes them (:func:`traces`) is
decided once per trace from the shapes and settings.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from fused_cases import TOLERANCE, economies, on_device, two_populations
from helpers import COMPILED_ROUND_MODES, needs_compiler, rollout, scenario
from hypothesis import given, settings
from hypothesis import strategies as st
from test_compiled_round import close, compare_rounds, explain_round, fresh_compiler  # noqa: F401 (autouse)

from econspin import traced_blocks
from econspin.economy_terms import network_terms
from econspin.fused import BLOCK_ENTRIES, expected_blocks, round_terms
from econspin.fused_sampled import sampled_blocks
from econspin.round import step
from econspin.traced_blocks import traced_expected_blocks, traced_sampled_blocks, traces


def both_ways(state, economy, extra_seed: int, traced=None):
    """(eager terms, eager results, traced terms, traced results) of one round's blocks, from the same terms.

    ``traced``: the traced blocks as called (default: themselves, eagerly).
    """
    eager, other = round_terms(state, economy), round_terms(state, economy)
    generator = torch.Generator().manual_seed(extra_seed)
    groups, agents = eager.groups, eager.left.shape[1]
    dtype, device = eager.delivered.dtype, eager.delivered.device
    if economy.mode == "expected":
        moment_rows = torch.rand(groups, 2, agents, generator=generator, dtype=torch.float64).to(device, dtype)
        want = expected_blocks(eager, economy, moment_rows)
        got = (traced or traced_expected_blocks)(other, economy, moment_rows)
    else:
        uniforms = torch.rand(groups, agents, generator=generator, dtype=torch.float64).to(device, dtype)
        want = (sampled_blocks(eager, economy, uniforms),)
        got = ((traced or traced_sampled_blocks)(other, economy, uniforms),)
    return eager, want, other, got


def assert_blocks_agree(eager, want, other, got, tolerance: float) -> None:
    """m_i, s_i, sum e y and every result to ``tolerance`` of its scale; the sellers drawn equal."""
    for name in ("shifted_max", "total", "dot"):
        assert close(getattr(eager, name), getattr(other, name), tolerance), name
    for index, (wanted, result) in enumerate(zip(want, got, strict=True)):
        assert wanted.shape == result.shape and wanted.dtype == result.dtype, index
        if wanted.dtype == torch.long:  # the sellers drawn
            assert torch.equal(wanted, result)
        else:
            assert close(wanted, result, tolerance), index


@given(st.sampled_from(["expected", "sampled"]).flatmap(economies), st.integers(0, 2**16))
@settings(max_examples=60, deadline=None, derandomize=True)
def test_the_traced_blocks_run_eagerly_give_the_blocks_results(drawn, seed):
    """Shapes, heads, populations, networks, T = 0 / inf and exact ties: the eager blocks' numbers, the same sellers.

    1e-12 of each result's scale in float64, 1e-5 in float32 (the sums taken in another order;
    the sampled block laid out by sellers, its product summed in another order too).
    """
    state, economy = drawn
    with torch.no_grad():
        eager, want, other, got = both_ways(state, economy, seed)
    assert_blocks_agree(eager, want, other, got, TOLERANCE[state.states.dtype])


@pytest.mark.parametrize("agents", [64, 65, 200])
def test_the_traced_sampled_blocks_draw_in_two_levels_as_the_blocks_do(agents):
    """Past ONE_TILE sellers the traced inversion takes its tile first too: the same sellers at N = 65 and 200."""
    run = rollout(two_populations(mode="sampled", heads=2), dtype="float64")
    state, economy = run.state, run.economy
    if agents != state.states.shape[1]:
        populations = {"human": {"count": agents - agents // 3, "temperature": 1.0},
                       "ai": {"count": agents // 3, "temperature": 0.0}}
        run = rollout(scenario(mode="sampled", heads=2, populations=populations), dtype="float64")
        state, economy = run.state, run.economy
    with torch.no_grad():
        for seed in range(3):
            assert_blocks_agree(*both_ways(state, economy, seed), TOLERANCE[torch.float64])


def test_traces_only_a_compiled_round_of_one_full_precision_block(monkeypatch):
    """Eagerly never; compiling, on TRACED_DEVICES, with full-precision utilities and every row in one block."""
    run = rollout(scenario(), dtype="float32")
    state, economy = run.state, run.economy
    assert not traces(state, economy)  # not compiling
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert traces(state, economy)
    assert not traces(state, dataclasses.replace(economy, chunk=5))  # 12 agents in rows of 5: three blocks
    assert traces(state, dataclasses.replace(economy, chunk=12))
    assert not traces(state, dataclasses.replace(economy, utility_precision="bfloat16"))
    monkeypatch.setattr(traced_blocks, "TRACED_DEVICES", ())
    assert not traces(state, economy)
    monkeypatch.setattr(traced_blocks, "TRACED_DEVICES", ("cpu",))
    # a batch whose B N^2 entries pass one block (BLOCK_ENTRIES) is cut into blocks, and not traced
    agents = state.states.shape[1]
    many = BLOCK_ENTRIES // agents**2 + 1
    wide = state.replace(states=state.states.expand(many, -1, -1))
    assert traces(state.replace(states=state.states.expand(many - 1, -1, -1)), economy)
    assert not traces(wide, economy)
    # rows of more than MAX_SELLERS sellers keep the operator, even in one block
    long_rows = state.states.new_zeros(1, traced_blocks.MAX_SELLERS + 1, state.states.shape[-1])
    assert not traces(state.replace(states=long_rows), economy)
    assert traces(state.replace(states=long_rows[:, 1:]), economy)


@needs_compiler
@pytest.mark.parametrize("mode", ["expected", "sampled"])
def test_the_traced_blocks_compiled_give_the_blocks_results(mode):
    """torch.compile of the traced blocks alone, float32 with T = 0 and T = inf rows and a network: the eager blocks."""
    populations = {
        "human": {"count": 30, "temperature": 1.0, "spend": 0.2},
        "cold": {"count": 20, "temperature": 0.0, "spend": 0.3},
        "hot": {"count": 20, "temperature": float("inf"), "spend": 0.1},
    }
    network = {"generator": "gnp_random_graph", "params": {"p": 0.5}}
    run = rollout(scenario(mode=mode, heads=2, populations=populations, network=network), dtype="float32")
    function = traced_expected_blocks if mode == "expected" else traced_sampled_blocks
    compiled = torch.compile(function, fullgraph=True, dynamic=False)
    with torch.no_grad():
        for seed in range(2):
            assert_blocks_agree(*both_ways(run.state, run.economy, seed, compiled), TOLERANCE[torch.float32])


# The sampled cases at d = 1 by default, d = 4 slow, except the one whole vMF round the default run
# compiles: the one-block round, its blocks traced, as a compiled round takes them at small N
# (tests/helpers.py, COMPILED_ROUND_MODES).
ONE_BLOCK_ROUNDS = [  # (mode, d, run.chunk): chunk None, one block, its blocks traced; chunk 4, the operator
    pytest.param(("expected", 4, None), id="expected-traced"),
    pytest.param(("expected", 4, 4), id="expected-operator"),
    pytest.param(("sampled", 4, None), id="sampled-traced"),
    pytest.param(("sampled", 1, 4), id="sampled-d1-operator"),
    pytest.param(("sampled", 4, 4), id="sampled-operator", marks=pytest.mark.slow),
]


@needs_compiler
@pytest.mark.parametrize("case", ONE_BLOCK_ROUNDS)
def test_a_compiled_round_of_one_block_traces_its_blocks_and_several_blocks_call_the_operator(case):
    """No econspin:: block operator in the graph of a one-block round; with run.chunk cutting it, the operator.

    The round equals the eager round to 1e-12 (float64), three rounds, sampled draws included.
    """
    mode, dimension, chunk = case
    operator = {"expected": "econspin.expected_blocks", "sampled": "econspin.sampled_blocks"}[mode]
    run = rollout(scenario(mode=mode, heads=2, d=dimension, run={"chunk": chunk} if chunk else {}))
    explained = explain_round(run)
    code = "\n".join(str(graph.graph) for graph in explained.graphs)
    assert (operator not in code) == (chunk is None), (chunk, code[:2000])
    compare_rounds(run, rounds=3)


@needs_compiler
@pytest.mark.parametrize("case", COMPILED_ROUND_MODES)
def test_a_compiled_round_of_one_block_reads_a_network_without_room_for_its_bias(case):
    """A network whose additive bias has no room in run.memory_budget_mb: the traced blocks read the boolean mask.

    The compiled round (its blocks traced) equals the eager round over three rounds; before the traced blocks
    read the mask, they traded across the whole market there.
    """
    network = {"generator": "gnp_random_graph", "params": {"p": 0.3}}
    populations = {"human": {"count": 48, "temperature": 1.0}, "ai": {"count": 16, "temperature": 0.0}}
    # 100 KiB: room for the round's blocks of one row (64 KiB), not for a 32 KiB bias in a quarter of it
    settings = {"memory_budget_mb": 0.1}
    mode, dimension = case
    run = rollout(scenario(mode=mode, heads=2, d=dimension, populations=populations, network=network, run=settings))
    assert network_terms(run.economy, torch.float64, 1e300)[0] is None and not run.economy.trade_mask.all()
    compare_rounds(run, rounds=3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (gpu_check's tests step runs it)")
@pytest.mark.parametrize("mode", ["expected", "sampled"])
def test_the_traced_blocks_on_a_gpu_give_the_blocks_results_and_the_eager_round(mode, monkeypatch):
    """On CUDA (TRACED_DEVICES with it, as gpu_check's "blocks traced" way): compiled, the eager blocks' results.

    And a compiled round of 8 economies of 64 agents, its blocks traced into the graph, equals the eager round.
    """
    run = rollout([two_populations(mode=mode, heads=2)] * 8, dtype="float32")
    state, economy = on_device(run.state, "cuda"), on_device(run.economy, "cuda")
    function = traced_expected_blocks if mode == "expected" else traced_sampled_blocks
    compiled = torch.compile(function, fullgraph=True, dynamic=False)
    with torch.no_grad():
        assert_blocks_agree(*both_ways(state, economy, 0, compiled), TOLERANCE[torch.float32])
    monkeypatch.setattr(traced_blocks, "TRACED_DEVICES", ("cpu", "cuda"))
    with torch.no_grad():
        eager = step(state, economy)
        got = step(state, dataclasses.replace(economy, compile="default"))
    assert close(eager.states, got.states, 1e-5) and close(eager.money, got.money, 1e-6)
