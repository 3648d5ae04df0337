"""The Triton kernel's programs compiled: for an sm_90 GPU on this machine, and on a CUDA GPU against the fused kernel.

The PTX tests compile the programs for an H100 without one (Triton's own ptxas); the CUDA
tests run only where a GPU is (experiments/gpu_check.py's ``triton_tests`` step). The
interpreted programs, the same bodies, are tests/test_triton.py's.
"""

import dataclasses

import pytest
import torch
from fused_cases import FIELDS, TOLERANCE, assert_outcomes_close, economies, on_device, two_populations
from helpers import needs_triton, rollout, scenario
from hypothesis import given, settings
from kernel_cases import few_hundred_agents
from test_compiled_round import compare_rounds

# imported here, not in the test: a module imported inside a running @given test applies its own @given
# decorators then, which hypothesis fails as nested (the H200's triton_tests step, third session)
from test_fused_sampled import assert_the_same_draws, reference_rows
from test_reduced_precision import assert_within_the_bf16_bound, triton_kernel
from test_triton import assert_money_conserved, triton_economy

from econspin.bench import relative_difference
from econspin.fused import fused_trade
from econspin.market import MarketOutcome
from econspin.triton_blocks import Tiles, triton_trade


@needs_triton
@pytest.mark.parametrize("case", ["fp32", "fp64", "bf16", "tf32"])
@pytest.mark.parametrize(
    "network", [1, pytest.param(0, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)]
)
def test_the_programs_compile_for_an_h100_at_the_default_tiles(case, network):
    """What a GPU would compile, checked here: d_k = 32 (the benchmark's), within an H100's shared memory.

    run.utility_precision's products (bf16, tf32) run on the tensor cores: every program's PTX
    has Hopper's warp-group matrix instructions on those operands; at full precision none with
    rounded operands.
    """
    from econspin.triton_blocks import DEFAULT_TILES
    from econspin.triton_programs import programs
    from experiments.triton_compile_check import (
        H100_SHARED_MEMORY,
        PROGRAMS,
        compiled_for_sm90,
        program_constants,
        tensor_core_instructions,
    )

    pytest.importorskip("triton.backends.nvidia")
    tiles, kernels = DEFAULT_TILES["cuda"], programs(False)
    constants = program_constants(case, network, tiles.rows, tiles.columns)
    for name in PROGRAMS:
        compiled = compiled_for_sm90(getattr(kernels, name), case, constants, tiles.warps)
        assert compiled.asm["cubin"] and compiled.metadata.shared <= H100_SHARED_MEMORY, (
            name,
            compiled.metadata.shared,
        )
        kinds = set(tensor_core_instructions(compiled))
        if case in ("fp32", "fp64"):  # fp64 may take the tensor cores' exact DMMA (m8n8k4.f64)
            assert not any(".bf16" in kind or ".tf32" in kind for kind in kinds), (name, kinds)
        else:
            operands = ".bf16.bf16" if case == "bf16" else ".tf32.tf32"
            assert kinds and any(kind.endswith(operands) for kind in kinds), (name, kinds)
            # the received product on bf16 too (m64n32: e @ u, d = 32 columns); with tf32 it stays exact
            received = any(".m64n32k" in kind for kind in kinds)
            assert received == (case == "bf16" and name == "row_sums_program"), (name, kinds)


@needs_triton
def test_the_rows_pass_in_one_loop_costs_a_few_instructions_more_a_tile_on_an_h100():
    """The sm_90 PTX of the rows' pass (fp32, no network, default tiles), with ONE_PASS and without.

    Both programs have the maximum's loop (with ONE_PASS run only by tiles of rows with a T = 0
    row) and the sums' loop, the same but for the rescaling in the one-pass loop: a few FMAs a
    thread and one exp2 a row, against the 2 x 1056 FMAs of the score tile the maximum's loop
    computes (its two branches, interior and edge) and a one-pass tile no longer runs.
    """
    from econspin.triton_blocks import DEFAULT_TILES
    from econspin.triton_programs import programs
    from experiments.triton_compile_check import compiled_for_sm90, loop_instructions, program_constants

    pytest.importorskip("triton.backends.nvidia")
    tiles, program = DEFAULT_TILES["cuda"], programs(False).row_sums_program
    loops = {}
    for one_pass in (True, False):
        constants = program_constants("fp32", 0, tiles.rows, tiles.columns, one_pass=one_pass)
        loops[one_pass] = loop_instructions(compiled_for_sm90(program, "fp32", constants, tiles.warps).asm["ptx"])
    (maximum, one_loop), (same_maximum, sums) = loops[True], loops[False]
    # the same FMAs, exp2s and tensor-core instructions; triton 3.6 (an H200's image) placed one instruction more
    # in one of the two maximum's loops (3331 against 3330), triton 3.9 none
    assert {**maximum, "instructions": 0} == {**same_maximum, "instructions": 0}
    assert abs(maximum["instructions"] - same_maximum["instructions"]) <= 8
    assert maximum["ex2"] == 0 and maximum["fma"] >= 2 * 1024
    assert 0 < one_loop["fma"] - sums["fma"] <= 16  # the rescaling
    assert 0 < one_loop["ex2"] - sums["ex2"] <= 16  # the rows' 2^(-delta), spread over the threads


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the compiled Triton programs")
@given(economies())
@settings(max_examples=30, deadline=None, derandomize=True)
def test_the_compiled_programs_on_a_gpu_equal_the_fused_kernel(drawn):
    """The same economies as on the CPU, compiled by triton.jit (default tiles: each size is compiled apart)."""
    state, economy = drawn
    outcome = triton_trade(on_device(state, "cuda"), on_device(triton_economy(economy), "cuda"))
    moved = MarketOutcome(**{name: getattr(outcome, name).cpu() for name in FIELDS})
    assert_outcomes_close(fused_trade(state, economy), moved, TOLERANCE[state.states.dtype])
    assert_money_conserved(moved)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the compiled Triton programs")
@given(economies())
@settings(max_examples=20, deadline=None, derandomize=True)
def test_the_compiled_programs_in_bf16_on_a_gpu_keep_within_the_bound(drawn):
    """bf16 utilities on the tensor cores (wgmma): within the bound of bf16 rounding against the CPU's float64."""

    def on_the_gpu(state, economy):
        outcome = triton_kernel(on_device(state, "cuda"), on_device(economy, "cuda"))
        return MarketOutcome(**{name: getattr(outcome, name).cpu() for name in FIELDS})

    assert_within_the_bf16_bound(drawn, on_the_gpu)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the compiled Triton programs")
@pytest.mark.parametrize("precision", ["bfloat16", "tf32"])
def test_the_compiled_programs_with_reduced_precision_at_a_few_hundred_agents(precision):
    """The tensor cores' products at 460 agents, two tile sizes: money conserved, close to full precision."""
    populations = {"human": {"count": 300, "temperature": 0.8, "spend": 0.2}, "ai": {"count": 160, "temperature": 2.0}}
    run = rollout([scenario(populations=populations, heads=2, d=32, visibility=0.4)] * 2, dtype="float32")
    state, economy = (on_device(frozen, "cuda") for frozen in (run.state, triton_economy(run.economy)))
    full = triton_trade(state, economy)
    for tiles in (None, Tiles(128, 64, 8)):
        outcome = triton_trade(state, dataclasses.replace(economy, utility_precision=precision), tiles=tiles)
        assert_money_conserved(outcome)
        assert relative_difference(full.received, outcome.received) < 0.05
        assert relative_difference(full.revenue, outcome.revenue) < 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the compiled Triton programs")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_compiled_programs_at_a_few_hundred_agents(dtype):
    """Several tiles each way, partial tiles, a network, T = 0 and inf rows: the GPU against the CPU's fused kernel."""
    run = few_hundred_agents(dtype)
    mask = torch.rand(460, 460, generator=torch.Generator().manual_seed(2)) < 0.7
    for economy in (run.economy, dataclasses.replace(run.economy, trade_mask=mask)):
        state, moved_economy = (on_device(frozen, "cuda") for frozen in (run.state, triton_economy(economy)))
        for tiles in (None, Tiles(32, 16, 2), Tiles(64, 32, 4), Tiles(64, 64, 4, one_pass=False)):  # (not 128 x 64:
            # in float64 it needs more shared memory)
            outcome = triton_trade(state, moved_economy, tiles=tiles)
            moved = MarketOutcome(**{name: getattr(outcome, name).cpu() for name in FIELDS})
            assert_outcomes_close(fused_trade(run.state, economy), moved, TOLERANCE[run.state.states.dtype])
            assert_money_conserved(moved)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the compiled Triton programs")
@given(economies(mode="sampled"))
@settings(max_examples=20, deadline=None, derandomize=True)
def test_the_compiled_programs_draw_the_fused_kernels_sellers_on_a_gpu(drawn):
    """Sampled mode (econspin.triton_draws) compiled, against the fused kernel's draws on the CPU."""
    from econspin.fused_sampled import sampled_choices
    from econspin.triton_blocks import triton_sampled_blocks

    state, economy = drawn
    want, _ = sampled_choices(state, economy)
    moved = (on_device(frozen, "cuda") for frozen in (state, economy))
    got = sampled_choices(*moved, blocks=triton_sampled_blocks)[0].cpu()
    alpha, uniforms, _ = reference_rows(state, economy)
    assert_the_same_draws(got, want, alpha, uniforms)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the compiled Triton programs")
@pytest.mark.parametrize("compile_mode", ["default", "reduce-overhead"])
@pytest.mark.parametrize("mode", ["expected", "sampled"])
def test_the_compiled_programs_under_run_compile_equal_the_eager_rounds(compile_mode, mode):
    """On CUDA, run.compile traces the operators econspin::triton_blocks and ::triton_draws (CUDA graphs too)."""
    from econspin.simulate import Rollout

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    scenarios = [two_populations(heads=2, mode=mode, run={"kernel": "triton"})] * 2
    run = Rollout.create(scenarios, [0, 1], "cuda", "float64")
    compare_rounds(run, rounds=3, compile_mode=compile_mode)
    torch._dynamo.reset()
