"""The engine on a CUDA GPU against the same engine on the CPU: same economy, same numbers.

Skipped without a GPU (CI has none); experiments/gpu_check.py runs this file on one. The
initial state and every quenched draw are made on the CPU and moved, and the sampled mode's
draws are counter-based (keyed by seed, round, agent, head), so a GPU run must give the CPU's
numbers up to the rounding of a different order of sums: 1e-12 relative in float64 and
1e-5 in float32 for one market step, the same sellers drawn in the sampled mode, and the
same metrics after a few rounds of every scenario kind (attention, sampled, uniform O(N),
sparse network).

``ECONSPIN_GPU_TEST_DEVICE=cpu`` runs the file with the CPU standing in for the GPU, which
checks the tests themselves (every comparison is then exact).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
import torch
from fused_cases import TOLERANCE, assert_equals_oracle, assert_outcomes_close, economies, on_device
from hypothesis import given, settings
from hypothesis import strategies as st

from econspin import Scenario
from econspin.fused import fused_trade
from econspin.fused_sampled import fused_sampled_trade
from econspin.simulate import Rollout

DEVICE = os.environ.get("ECONSPIN_GPU_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(
    DEVICE == "cuda" and not torch.cuda.is_available(),
    reason="needs a CUDA GPU (ECONSPIN_GPU_TEST_DEVICE=cpu checks the tests)",
)
SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"


def on_host(outcome):
    fields = (field.name for field in dataclasses.fields(outcome))
    return dataclasses.replace(outcome, **{name: getattr(outcome, name).cpu() for name in fields})


@given(economies())
@settings(max_examples=40, deadline=None, derandomize=True)
def test_the_expected_market_on_the_gpu_equals_the_cpu_and_the_oracle(drawn):
    state, economy = drawn
    gpu = on_host(fused_trade(on_device(state, DEVICE), on_device(economy, DEVICE)))
    assert_outcomes_close(fused_trade(state, economy), gpu, TOLERANCE[state.states.dtype])
    assert_equals_oracle(gpu, state, economy)
    spent, earned = gpu.spending.sum(1), gpu.revenue.sum(1)
    assert torch.allclose(spent, earned, rtol=1e-12 if state.money.dtype == torch.float64 else 1e-6)


# few examples: each new shape family compiles Triton kernels (seconds each), within gpu_check's tests step
@given(economies(), st.integers(1, 12))
@settings(max_examples=12, deadline=None, derandomize=True)
def test_the_compiled_block_pass_on_the_gpu_equals_the_cpu_and_the_oracle(drawn, rows):
    """econspin.block_pass's kernel (Triton on a GPU) against the CPU's eager passes, blocks of ``rows`` rows too."""
    from econspin import block_pass

    state, economy = drawn
    kept, block_pass.COMPILED_DEVICES = block_pass.COMPILED_DEVICES, (torch.device(DEVICE).type,)
    try:
        on_gpu = on_device(state, DEVICE), on_device(economy, DEVICE)
        assert block_pass.compiles(on_gpu[0].states)
        outcomes = [on_host(fused_trade(*on_gpu, block)) for block in (None, rows)]
    finally:
        block_pass.COMPILED_DEVICES = kept
    for gpu in outcomes:
        assert_outcomes_close(fused_trade(state, economy), gpu, TOLERANCE[state.states.dtype])
        assert_equals_oracle(gpu, state, economy)
        spent, earned = gpu.spending.sum(1), gpu.revenue.sum(1)
        assert torch.allclose(spent, earned, rtol=1e-12 if state.money.dtype == torch.float64 else 1e-6)


# fewer still: with the sellers' axis static every new N compiles its own kernels
@given(economies(), st.integers(1, 12))
@settings(max_examples=6, deadline=None, derandomize=True)
def test_the_compiled_block_pass_with_the_sellers_static_on_the_gpu_equals_the_cpu(drawn, rows):
    """econspin.block_pass.STATIC_SELLERS (a graph per N) on the GPU: the CPU's eager passes, money conserved."""
    from econspin import block_pass

    state, economy = drawn
    device_type = torch.device(DEVICE).type
    kept = block_pass.COMPILED_DEVICES, block_pass.STATIC_SELLERS
    block_pass.COMPILED_DEVICES = block_pass.STATIC_SELLERS = (device_type,)
    try:
        gpu = on_host(fused_trade(on_device(state, DEVICE), on_device(economy, DEVICE), rows))
    finally:
        block_pass.COMPILED_DEVICES, block_pass.STATIC_SELLERS = kept
    assert_outcomes_close(fused_trade(state, economy), gpu, TOLERANCE[state.states.dtype])
    spent, earned = gpu.spending.sum(1), gpu.revenue.sum(1)
    assert torch.allclose(spent, earned, rtol=1e-12 if state.money.dtype == torch.float64 else 1e-6)


@given(economies(mode="sampled"))
@settings(max_examples=12, deadline=None, derandomize=True)
def test_the_compiled_weights_on_the_gpu_draw_the_cpu_sellers(drawn):
    """econspin.block_pass.weigh compiled (Triton on a GPU): the sampled blocks draw the CPU's eager sellers."""
    from econspin import block_pass

    state, economy = drawn
    kept, block_pass.COMPILED_DEVICES = block_pass.COMPILED_DEVICES, (torch.device(DEVICE).type,)
    try:
        gpu = on_host(fused_sampled_trade(on_device(state, DEVICE), on_device(economy, DEVICE)))
    finally:
        block_pass.COMPILED_DEVICES = kept
    assert_outcomes_close(fused_sampled_trade(state, economy), gpu, TOLERANCE[state.states.dtype])


@given(economies(mode="sampled"))
@settings(max_examples=40, deadline=None, derandomize=True)
def test_the_sampled_market_on_the_gpu_draws_the_cpu_sellers(drawn):
    """Counter-based draws: the same seller for every buyer, so the same flows to rounding."""
    state, economy = drawn
    gpu = on_host(fused_sampled_trade(on_device(state, DEVICE), on_device(economy, DEVICE)))
    assert_outcomes_close(fused_sampled_trade(state, economy), gpu, TOLERANCE[state.states.dtype])


def played(path: str, device: str, rounds: int, **overrides) -> Rollout:
    scenario = Scenario.from_yaml(SCENARIOS / path).with_overrides(overrides)
    run = Rollout.create([scenario] * 2, [0, 1], device, "float64")
    run.advance(rounds)
    return run


@pytest.mark.parametrize(
    "path, overrides",
    [
        ("human_vs_ai.yaml", {}),
        ("human_vs_ai.yaml", {"market.mode": "sampled"}),
        ("human_vs_ai_ffn.yaml", {}),
        ("boltzmann_wealth.yaml", {"populations.agents.count": 300}),
        ("network_market.yaml", {}),
        ("sparse_network.yaml", {"populations.human.count": 1600, "populations.ai.count": 400}),
        ("ai_capability_shock.yaml", {}),
    ],
)
def test_a_run_on_the_gpu_ends_where_the_cpu_run_ends(path, overrides):
    """Ten rounds in float64 with schedules, events, corrections, both modes and every kernel path."""
    cpu, gpu = played(path, "cpu", 10, **overrides), played(path, DEVICE, 10, **overrides)
    for name in ("states", "money"):
        want, got = getattr(cpu.state, name), getattr(gpu.state, name).cpu()
        scale = float(want.abs().max())
        assert float((want - got).abs().max()) <= 1e-9 * max(scale, 1.0), name
    want, got = cpu.metrics(), gpu.metrics()
    assert list(want.columns) == list(got.columns)
    numbers = want.select_dtypes("number").columns
    difference = (want[numbers] - got[numbers]).abs().max().max()
    assert difference <= 1e-9, f"metrics differ by {difference:.3g}"
