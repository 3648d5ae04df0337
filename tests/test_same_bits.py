"""An element's bits do not depend on what else is in its tensor: econspin.same_bits, and the kernels that use it."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from helpers import rollout, scenario
from hypothesis import given, settings
from hypothesis import strategies as st

from econspin import same_bits
from econspin.fused import fused_trade
from econspin.randomness import agent_draws, round_tag
from econspin.response import sample_von_mises_fisher
from econspin.wood import _wood_constants


def in_whole_spans(values: torch.Tensor) -> torch.Tensor:
    """torch.exp2 of each element in a tensor of whole VECTOR_SPANs: torch's vector code for every one."""
    padded = values.new_zeros(-(-values.numel() // same_bits.VECTOR_SPAN) * same_bits.VECTOR_SPAN)
    padded[: values.numel()] = values
    return torch.exp2(padded)[: values.numel()]


@contextlib.contextmanager
def with_threads(threads: int):
    """Run torch on ``threads`` threads inside the block, as before after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_exp2_rounds_its_remainder_otherwise_which_is_why_same_bits_exists(dtype):
    """The premise: torch.exp2's scalar remainder differs from its vector code on some elements.

    If a torch release makes them agree, this fails, and econspin.same_bits.exp2 can go.
    """
    values = -20 * torch.rand(4096, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)
    whole = torch.exp2(values)  # 4096: whole spans, the vector code throughout
    with with_threads(1):
        remainders = [torch.exp2(values[start : start + 31]) for start in range(0, 4000, 31)]  # 15 in each remainder
    assert any(not torch.equal(part, whole[start : start + 31]) for start, part in zip(range(0, 4000, 31), remainders))


@settings(max_examples=40, deadline=None)
@given(
    count=st.integers(1, 3000),
    start=st.integers(0, 200),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    threads=st.sampled_from([1, 2, 3]),
)
def test_exp2_gives_every_element_the_vector_codes_bits(count, start, dtype, threads):
    values = -30 * torch.rand(start + count, generator=torch.Generator().manual_seed(count), dtype=torch.float64)
    values = values.to(dtype)[start:]  # an offset into its storage, as a block's view
    out = torch.empty_like(values)
    with with_threads(threads):
        assert same_bits.exp2(values, out) is out
    assert torch.equal(out, in_whole_spans(values))


@pytest.mark.parametrize("threads", [1, 2, 3, 4])
@pytest.mark.parametrize("count", [32768, 32769, 65536 + 200, 100_003, 3 * 32768 + 64 * 5 + 7])
def test_exp2_of_blocks_that_torch_shares_among_threads(threads, count):
    """Above ATen's grain each thread takes a share: the body's shares are whole spans, every element vector code."""
    values = -10 * torch.rand(count, generator=torch.Generator().manual_seed(count), dtype=torch.float32)
    out = torch.empty_like(values)
    with with_threads(threads):
        same_bits.exp2(values, out)
        body = same_bits.vector_body(count, threads)
    assert count - body < same_bits.VECTOR_SPAN * (threads + 1)
    assert torch.equal(out, in_whole_spans(values))


def test_vector_body_makes_every_share_whole_spans():
    span, grain = same_bits.VECTOR_SPAN, same_bits.PARALLEL_GRAIN
    for threads in (1, 2, 3, 4, 7, 16):
        for count in [*range(0, 200), grain - 1, grain, grain + 1, 2 * grain + 65, 5 * grain + 1000, 10**6 + 3]:
            body = same_bits.vector_body(count, threads)
            assert 0 <= body <= count and body % span == 0
            assert count - body < span * (threads + 1)  # the padded remainder stays small
            if threads == 1 or count <= grain:
                assert body == count - count % span  # one share: every whole span
            if body > grain and threads > 1:
                shares = min(threads, math.ceil(body / grain))
                assert math.ceil(body / shares) % span == 0  # each share (the last one too) whole spans


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hypot_is_torchs_within_two_ulps_and_keeps_its_limits(dtype):
    generator = torch.Generator().manual_seed(1)
    x = torch.cat([10 ** (60 * torch.rand(2000, generator=generator, dtype=torch.float64) - 30), torch.tensor([0.0])])
    y = torch.cat([10 ** (60 * torch.rand(2000, generator=generator, dtype=torch.float64) - 30), torch.tensor([0.0])])
    x, y = x.to(dtype), y.to(dtype)
    if dtype == torch.float32:  # within float32's range
        x, y = x.clamp(max=1e30), y.clamp(max=1e30)
    expected = torch.hypot(x, y)
    assert torch.allclose(same_bits.hypot(x, y), expected, rtol=2 * torch.finfo(dtype).eps, atol=0)
    assert same_bits.hypot(x, y)[-1] == 0
    big = torch.finfo(dtype).max
    limits = [[math.inf, 3.0], [3.0, math.inf], [math.inf, math.inf], [math.nan, 3.0], [big, big]]
    limits = torch.tensor(limits, dtype=dtype)
    result = same_bits.hypot(limits[:, 0], limits[:, 1])
    assert result[:4].tolist()[:3] == [math.inf] * 3 and math.isnan(result[3]) and result[4] == math.inf


def test_wood_constants_of_an_agent_do_not_depend_on_the_others():
    """Wood's b = m / (2 k + hypot(2 k, m)): torch.hypot's float64 remainder gave 10 of 2000 agents other bits."""
    kappa = 10 ** (8 * torch.rand(2003, generator=torch.Generator().manual_seed(2), dtype=torch.float64) - 3)
    constants, _ = _wood_constants(kappa, 32)
    for start in range(0, 2000, 7):
        alone, _ = _wood_constants(kappa[start : start + 5], 32)
        assert torch.equal(alone, constants[:, start : start + 5])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("agents", "dimension"), [(5, 5), (7, 5), (13, 32), (21, 3)])
def test_a_batch_elements_spins_are_the_spins_it_draws_alone(dtype, agents, dimension):
    """The vMF draw of a batch of 5 and of each element alone: the same bits, Wood's constants included."""
    generator = torch.Generator().manual_seed(agents)
    scale = 10 ** (3 * torch.rand(5, agents, 1, generator=generator, dtype=torch.float64) - 1)  # kappa 0.01 to 1e3
    theta = (scale * torch.randn(5, agents, dimension, generator=generator, dtype=torch.float64)).to(dtype)
    temperature = (torch.rand(5, agents, generator=generator, dtype=torch.float64) + 0.05).to(dtype)
    keys = torch.arange(5, dtype=torch.int64) * 7919 + 3
    for round_index in range(12):
        together = sample_von_mises_fisher(theta, temperature, 1.0, agent_draws(keys, round_tag(round_index), agents))
        for element in range(5):
            draws = agent_draws(keys[element : element + 1], round_tag(round_index), agents)
            own = slice(element, element + 1)
            alone = sample_von_mises_fisher(theta[own], temperature[own], 1.0, draws)
            assert torch.equal(alone[0], together[element]), (round_index, element)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("sizes", [(3, 2), (4, 3), (9, 4), (11, 6), (15, 6)])
def test_a_batch_elements_weights_are_the_weights_it_gets_alone(dtype, sizes):
    """Three economies batched and each alone: the rows' reductions of e = 2^y, bit for bit.

    N = 5, 7, 13, 17 and 21 agents: blocks whose size is no whole number of vectors, so that the
    batch puts other entries in exp2's remainder than an element alone. (The products with e,
    received, the moments and revenue, are MKL's, which may sum a batch element's product in
    another order than the same product alone: not held here, docs/testing.md.)
    """
    humans, ais = sizes
    populations = {
        "human": {"count": humans, "temperature": 1.0, "spend": 0.3, "money": {"distribution": "pareto"}},
        "ai": {"count": ais, "temperature": 0.1, "spend": 0.9},
    }
    economy = scenario(populations=populations)
    together = rollout([economy] * 3, replicas=[0, 1, 2], dtype=dtype)
    outcome = fused_trade(together.state, together.economy)
    for replica in range(3):
        alone = rollout([economy], replicas=[replica], dtype=dtype)
        own = fused_trade(alone.state, alone.economy)
        for name in ("entropy", "impact", "surplus", "spending"):
            assert torch.equal(getattr(outcome, name)[replica : replica + 1], getattr(own, name)), (replica, name)
