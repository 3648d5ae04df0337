"""Counter-based random numbers: the hash, the uniforms' statistics, and what draws depend on."""

import math

import numpy as np
import pytest
import torch
from helpers import generated_loops, needs_compiler, rollout, scenario
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from torch._inductor.utils import run_and_get_code
from typer.testing import CliRunner

from econspin import randomness
from econspin.cli import app
from econspin.gaussians import box_muller, cos_sin_of_turns
from econspin.output import CheckpointError, load_checkpoint, save_checkpoint
from econspin.randomness import (
    DRAW_CHOICE,
    DRAW_DIRECTION,
    DRAW_SPIN,
    ROUND_BLOCK,
    ROUND_BLOCK_ENTRIES,
    STREAM_DISORDER,
    STREAM_FIELDS,
    STREAM_FIT,
    STREAM_INITIAL,
    STREAM_NETWORK,
    Draws,
    agent_draws,
    derive_seed,
    dynamics_key,
    dynamics_keys,
    mix64,
    mix64_exact,
    mix64_unsigned,
    round_draws,
    round_tag,
    to_unit,
)
from econspin.round import step

runner = CliRunner()


def _splitmix64_finaliser(value: int) -> int:
    """Reference in Python integers: Stafford's Mix13, as in SplitMix64."""
    mask = 2**64 - 1
    value ^= value >> 30
    value = (value * 0xBF58476D1CE4E5B9) & mask
    value ^= value >> 27
    value = (value * 0x94D049BB133111EB) & mask
    return value ^ (value >> 31)


def _splitmix64_words(values: list[int]) -> list[int]:
    """The reference's words of int64 ``values``, as unsigned integers."""
    return [_splitmix64_finaliser(value % 2**64) for value in values]


def _as_int64(value: int) -> int:
    return value - 2**64 if value >= 2**63 else value


def test_mix64_is_the_splitmix64_finaliser_in_int64():
    rng = np.random.default_rng(0)
    values = [0, 1, 2, 2**31, 2**32 - 1, 2**63 - 1, 2**63, 2**64 - 1] + [int(v) for v in rng.integers(0, 2**63, 50)]
    values += [2**64 - 1 - value for value in values]
    mixed = mix64(torch.tensor([_as_int64(value) for value in values], dtype=torch.int64))
    assert [int(word) % 2**64 for word in mixed] == [_splitmix64_finaliser(value) for value in values]
    # SplitMix64 seeded 1234567: its first output (the generator's published test value)
    assert _splitmix64_finaliser(1234567 + 0x9E3779B97F4A7C15) == 6457827717110365317


EXTREMES = [0, -1, 2**63 - 1, -(2**63), 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, -(2**31), -(2**32)]
INT64 = st.integers(-(2**63), 2**63 - 1)


@pytest.mark.parametrize("form", [mix64_exact, mix64_unsigned], ids=["exact", "unsigned"])
@given(values=st.lists(INT64, min_size=1, max_size=40))
@settings(max_examples=60, deadline=None)
def test_the_traced_forms_of_the_hash_are_mix64_bit_for_bit(form, values):
    """What torch.compile traces gives mix64's words, extremes included, run eagerly.

    mix64_exact: products in 32-bit halves; mix64_unsigned: uint64 products (the Gaussians' words, on the CPU).
    """
    words = torch.tensor(EXTREMES + values, dtype=torch.int64)
    assert torch.equal(form(words), mix64(words))
    assert [int(word) % 2**64 for word in form(words)] == _splitmix64_words(EXTREMES + values)


COMPILED_UNSIGNED = []  # mix64_unsigned compiled once per test session, its sizes dynamic


@needs_compiler
@given(values=st.lists(INT64, min_size=1, max_size=40))
@settings(max_examples=25, deadline=None)
def test_the_unsigned_hash_compiled_is_mix64_bit_for_bit(values):
    """Compiled (Inductor's C++ for uint64 products), mix64_unsigned still gives mix64's words."""
    if not COMPILED_UNSIGNED:
        COMPILED_UNSIGNED.append(torch.compile(mix64_unsigned, dynamic=True))
    words = torch.tensor(EXTREMES + values, dtype=torch.int64)
    mixed = COMPILED_UNSIGNED[0](words)
    assert mixed.dtype == torch.int64
    expected = _splitmix64_words(EXTREMES + values)
    assert [int(word) % 2**64 for word in mixed] == expected


def _every_draw(keys: torch.Tensor):
    """Every level of the hash from element keys (3,): the round's agents, then words, uniforms, Gaussians."""
    draws = round_draws(keys, 7, 19)  # the agents' tags: a traced arange, as in the miscompiled case
    return (
        draws.keys,
        draws.words(DRAW_SPIN, 5, start=2**32 - 2),
        draws.words(DRAW_CHOICE, 1),
        draws.uniform(DRAW_CHOICE, 3),
        draws.normal(DRAW_SPIN, 7),
        Draws(keys).words(DRAW_SPIN, 4),  # element keys used directly as agent keys
        draws.normal(DRAW_SPIN, 7, torch.float32),
        draws.normal(DRAW_SPIN, 7, axis=-1),  # the index last (compiled: the axis-0 Gaussians moved)
    )


COMPILED_DRAWS = []  # compiled once per test session: the hypothesis examples below reuse it


@needs_compiler
@given(keys=st.lists(INT64, min_size=3, max_size=3), extreme=st.sampled_from(EXTREMES))
@settings(max_examples=25, deadline=None)
def test_compiled_draws_are_the_eager_draws(keys, extreme):
    """torch.compile (Inductor, CPU) hashes as eagerly: the same integer words and uniforms bit for bit.

    The Gaussians go through compiled log, cos and sin, which may round differently in the last
    place: equal to 4 ulps of their largest value (6.7). In float32 the compiled angle is reduced
    exactly on its integer and the eager one rounded to float32 (up to 2π: 2.4e-7 and 1.9e-7 for
    the integer's rounding), with cos and sin to an ulp: within 1e-6 radians times the radius.
    """
    if not COMPILED_DRAWS:
        COMPILED_DRAWS.append(torch.compile(_every_draw, dynamic=False))
    keys = torch.tensor([keys[0], extreme, keys[2]], dtype=torch.int64)
    compiled, eager = COMPILED_DRAWS[0](keys), _every_draw(keys)
    normal, single, last = 4, 6, 7  # the Gaussians' places in _every_draw's tuple
    for index, (want, got) in enumerate(zip(eager, compiled)):
        if index not in (normal, single, last):
            assert torch.equal(want, got), f"draw {index} differs"
    torch.testing.assert_close(compiled[normal], eager[normal], rtol=0, atol=4 * 8 * 2.0**-52)
    assert compiled[last].shape == (3, 19, 7)
    torch.testing.assert_close(compiled[last], eager[last], rtol=0, atol=4 * 8 * 2.0**-52)
    assert compiled[single].dtype == torch.float32
    torch.testing.assert_close(compiled[single], eager[single], rtol=0, atol=1e-6 * 6.7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (gpu_check's tests step runs it)")
def test_the_traced_hashes_compiled_for_a_gpu_give_the_cpus_words_and_gaussians(monkeypatch):
    """Inductor's Triton code for both traced forms of the hash gives mix64's words on CUDA, bit for bit.

    And the Gaussians' words hashed in uint64 there (UNSIGNED_HASH_DEVICES with CUDA, which it
    names once this passes on a GPU): the eager CPU Gaussians, to the tolerances of the CPU's
    compiled draws (test_compiled_draws_are_the_eager_draws).
    """
    rng = np.random.default_rng(5)
    values = EXTREMES + [int(value) for value in rng.integers(-(2**63), 2**63 - 1, 500, dtype=np.int64)]
    words = torch.tensor(values, dtype=torch.int64)
    want = _splitmix64_words(values)
    for form in (mix64_exact, mix64_unsigned):
        torch._dynamo.reset()
        got = torch.compile(form, dynamic=False)(words.cuda()).cpu()
        assert [int(word) % 2**64 for word in got] == want, form.__name__
    monkeypatch.setattr(randomness, "UNSIGNED_HASH_DEVICES", frozenset({"cpu", "cuda"}))

    def gaussians(keys: torch.Tensor):
        draws = round_draws(keys, 7, 19)
        return draws.normal(DRAW_SPIN, 7), draws.normal(DRAW_SPIN, 7, torch.float32)

    torch._dynamo.reset()
    keys = torch.tensor([3, -(2**63), 2**62 + 5], dtype=torch.int64)
    compiled, eager = torch.compile(gaussians, dynamic=False)(keys.cuda()), gaussians(keys)
    torch.testing.assert_close(compiled[0].cpu(), eager[0], rtol=0, atol=4 * 8 * 2.0**-52)
    torch.testing.assert_close(compiled[1].cpu(), eager[1], rtol=0, atol=1e-6 * 6.7)


def test_uniforms_are_in_the_open_interval_with_52_bits():
    extremes = torch.tensor([0, -1, 2**12 - 1, _as_int64(2**64 - 2**12)], dtype=torch.int64)
    values = to_unit(extremes)
    assert values.dtype == torch.float64
    assert values[0] == 2.0**-53 and values[1] == 1 - 2.0**-53
    assert values[2] == values[0] and values[3] == values[1]  # the low 12 bits are dropped
    draws = round_draws(dynamics_keys([0, 1], [0, 3]), 5, 1000).uniform(DRAW_SPIN, 50)
    assert torch.all((draws > 0) & (draws < 1))
    # every value is (m + 1/2) 2^-52 for an integer m
    scaled = draws * 2.0**52 - 0.5
    assert torch.equal(scaled, scaled.round())


def _reference_word(key: int, round_index: int, agent: int, stream: int, index: int) -> int:
    """The documented chain in Python integers: key' = mix(key ^ mix(tag + value)), level by level."""

    def keyed(value, tag):
        return _splitmix64_finaliser(value ^ _splitmix64_finaliser(tag))

    round_key = keyed(key % 2**64, (1 << 60) + round_index)
    agent_key = keyed(round_key, (2 << 60) + agent)
    return keyed(agent_key, (3 << 60) + (stream << 32) + index)


def test_words_follow_the_documented_hash_chain_and_stay_pinned():
    """The numbers of a (key, round, agent, stream, index) are fixed: changing them breaks reproducibility."""
    key = dynamics_key(7, 2)
    words = round_draws(torch.tensor([key, 12345]), 11, 4).words(DRAW_SPIN, 3, start=5)
    for element, element_key in enumerate((key, 12345)):
        for agent in range(4):
            for offset in range(3):
                expected = _reference_word(element_key, 11, agent, DRAW_SPIN, 5 + offset)
                assert int(words[offset, element, agent]) % 2**64 == expected
    uniform = round_draws(torch.tensor([12345]), 0, 1).uniform(DRAW_CHOICE, 1)
    assert float(uniform) == ((_reference_word(12345, 0, 0, DRAW_CHOICE, 0) >> 12) + 0.5) * 2.0**-52
    assert float(uniform) == PINNED_UNIFORM


PINNED_UNIFORM = 0.5795639633397028  # computed once; must never change


def _uniforms(count_keys=64, rounds=4, agents=64, words=16):
    keys = dynamics_keys([3] * count_keys, list(range(count_keys)))
    return torch.stack([round_draws(keys, t, agents).uniform(DRAW_SPIN, words).movedim(0, -1) for t in range(rounds)])


def test_uniform_moments_and_bins():
    u = _uniforms().flatten()  # 262144 numbers
    n = u.numel()
    assert abs(float(u.mean()) - 0.5) < 5 * math.sqrt(1 / 12 / n)
    assert abs(float(u.var()) - 1 / 12) < 5 * math.sqrt(1 / 180 / n)  # Var(u^2 - ...) of U(0,1) squares
    counts = torch.bincount((u * 256).long(), minlength=256).numpy()
    assert stats.chisquare(counts).pvalue > 1e-4
    assert stats.kstest(u.numpy(), "uniform").pvalue > 1e-4
    # pairs of consecutive words: a 16 x 16 serial test
    pairs = _uniforms(words=2).reshape(-1, 2)
    cells = (pairs[:, 0] * 16).long() * 16 + (pairs[:, 1] * 16).long()
    assert stats.chisquare(torch.bincount(cells, minlength=256).numpy()).pvalue > 1e-4


@pytest.mark.parametrize("axis", ["index", "agent", "key", "round"])
def test_no_correlation_between_adjacent_counters(axis):
    u = _uniforms(count_keys=64, rounds=8, agents=64, words=32)  # (round, key, agent, index)
    dim = {"round": 0, "key": 1, "agent": 2, "index": 3}[axis]
    length = u.shape[dim]
    first, second = u.narrow(dim, 0, length - 1), u.narrow(dim, 1, length - 1)
    centred = (first - 0.5) * (second - 0.5)
    correlation = float(centred.mean() * 12)
    assert abs(correlation) < 5 / math.sqrt(centred.numel())
    # and no relation between the top bits of neighbours (equal top byte as often as chance)
    same = ((first * 256).long() == (second * 256).long()).double().mean()
    assert abs(float(same) - 1 / 256) < 5 * math.sqrt(1 / 256 / centred.numel())


def test_consecutive_small_keys_give_unrelated_streams():
    keys = torch.arange(256, dtype=torch.int64)  # the worst case for a weak hash: keys differing in one bit
    u = round_draws(keys, 0, 8).uniform(DRAW_CHOICE, 8).transpose(0, 1).reshape(256, -1)
    correlation = torch.corrcoef(u)  # 256 x 256, each from 64 numbers
    off_diagonal = correlation[~torch.eye(256, dtype=torch.bool)]
    assert abs(float(off_diagonal.mean())) < 5 / math.sqrt(64 * off_diagonal.numel() / 2)
    assert float(off_diagonal.std()) == pytest.approx(1 / math.sqrt(64), rel=0.05)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_normals_by_box_muller(dtype):
    z = round_draws(dynamics_keys([1] * 32, list(range(32))), 0, 256).normal(DRAW_SPIN, 7, dtype).flatten()
    assert z.shape == (32 * 256 * 7,) and z.dtype == dtype
    assert abs(float(z.mean())) < 5 / math.sqrt(z.numel())
    assert abs(float(z.var()) - 1) < 5 * math.sqrt(2 / z.numel())
    assert stats.kstest(z.numpy(), "norm").pvalue > 1e-4


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("count", [1, 2, 7, 32])
def test_normals_with_their_index_last_are_the_same_numbers_each_agents_contiguous(dtype, count):
    """Draws.normal(axis=-1) is (..., count), the (count, ...) Gaussians moved, bit for bit, for keys of any rank."""
    draws = round_draws(dynamics_keys([3, 3, 4], [0, 1, 0]), 5, 9)
    for chosen in (draws, draws[1], draws[2, 4]):
        leading, last = chosen.normal(DRAW_SPIN, count, dtype), chosen.normal(DRAW_SPIN, count, dtype, axis=-1)
        assert last.shape == (*chosen.keys.shape, count) and last.is_contiguous() and last.dtype == dtype
        assert torch.equal(last, leading.movedim(0, -1))
        assert torch.equal(chosen.words(DRAW_SPIN, count, 3, axis=-1), chosen.words(DRAW_SPIN, count, 3).movedim(0, -1))
    with pytest.raises(ValueError, match="axis must be 0 or -1"):
        box_muller(draws.words(DRAW_SPIN, 2), 3, axis=1)


def test_float64_normals_are_box_muller_of_the_two_halves_bit_for_bit():
    """The float64 pair of a word: sqrt(-2 ln u) (cos a, sin a), u and a/2π the halves' (h + 1/2) 2^-32, as written."""
    draws = round_draws(dynamics_keys([3, 3], [0, 1]), 5, 40)
    words = draws.words(DRAW_SPIN, 4)
    radius = ((((words >> 32) & (2**32 - 1)).double() + 0.5) * 2.0**-32).log() * -2.0
    angle = (((words & (2**32 - 1)).double() + 0.5) * (2 * math.pi * 2.0**-32))
    want = torch.cat([torch.cos(angle) * radius.sqrt(), torch.sin(angle) * radius.sqrt()])
    assert torch.equal(draws.normal(DRAW_SPIN, 7), want[:7])
    assert torch.equal(draws.normal(DRAW_SPIN, 8, torch.float64), want)


def _float64_and_float32_pairs(words: torch.Tensor):
    """The pairs of ``words`` (W,) in float64 and float32 (2, W), and the float64 radii."""
    wide, narrow = box_muller(words[None].clone(), 2), box_muller(words[None].clone(), 2, torch.float32)
    return wide, narrow, wide.norm(dim=0)


def test_float32_normals_are_the_float64_ones_to_rounding():
    """The same words: within 2^-23 / r (u's two roundings) + 1e-6 r (the angle's) of the float64 pair.

    At the top of the radius's half (h >= 2^32 - 384), where float32 rounds u to 1 - 2^-24 or 1,
    the radius is kept at sqrt(-2 ln(1 - 2^-24)) = 3.5e-4: never a pair (0, 0), whatever the angle.
    """
    generator = torch.Generator().manual_seed(5)
    words = torch.cat([torch.tensor(EXTREMES), torch.randint(-(2**63), 2**63 - 1, (200_000,), generator=generator)])
    wide, narrow, radius = _float64_and_float32_pairs(words)
    assert narrow.dtype == torch.float32
    error = (narrow.double() - wide).abs().max(dim=0).values
    assert torch.all(error <= 2.0**-23 / radius + 1e-6 * radius)
    top = torch.arange(2**32 - 400, 2**32, dtype=torch.int64)
    _, narrow, radius = _float64_and_float32_pairs((top << 32) | (top & 7) << 29)  # every eighth of the turn
    narrow_radius = narrow.double().norm(dim=0)
    assert float(narrow_radius.min()) == pytest.approx(math.sqrt(-2 * math.log1p(-(2.0**-24))), rel=1e-6)
    assert torch.all((narrow_radius - radius).abs() <= 3.4e-4)


def test_cos_sin_of_turns_in_float32_is_within_an_ulp_of_one():
    """The compiled float32 angles: every eighth's edges and random integers, against the float64 ones (2^-52).

    Within 1.2e-7 (2 ulps of 1): the offset's three roundings and the polynomials (degrees 9
    and 8; a term fewer in either is 3.7e-7 or 3.6e-6 off).
    """
    edges = [e * 2**29 + offset for e in range(8) for offset in (0, 1, 2**28, 2**29 - 2, 2**29 - 1)]
    generator = torch.Generator().manual_seed(12)
    low = torch.cat([torch.tensor(edges), torch.randint(0, 2**32, (100_000,), generator=generator)])
    cosine, sine = cos_sin_of_turns(low, torch.float32)
    assert cosine.dtype == sine.dtype == torch.float32
    want_cosine, want_sine = cos_sin_of_turns(low)
    torch.testing.assert_close(cosine.double(), want_cosine, rtol=0, atol=1.2e-7)
    torch.testing.assert_close(sine.double(), want_sine, rtol=0, atol=1.2e-7)
    with pytest.raises(ValueError, match="float64 or float32"):
        cos_sin_of_turns(low, torch.float16)
    with pytest.raises(ValueError, match="52-bit angles in float64 only"):  # the 52-bit turns are float64's
        cos_sin_of_turns(low, torch.float32, bits=52)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cos_sin_of_turns_near_an_axis_has_the_small_value_to_relative_precision(dtype):
    """Within 1000 units of each axis q pi / 2, on both sides, the vanishing one of (cos, sin) is sin of the offset.

    The reduction is exact on the integer: the offset (k + 1/2) 2 pi 2^-32 from the axis is
    rounded once or twice, so the small value keeps its relative precision (a few ulps), where
    an absolute tolerance of 2 ulps of 1 could not tell an offset of k + 1/2 from k - 1/2.
    """
    import mpmath

    mpmath.mp.dps = 40
    offsets = torch.arange(1000, dtype=torch.int64)
    # k units past each axis, and k + 1 units before it: offsets (k + 1/2) either way
    low = torch.cat([(axis * 2**30 + side) % 2**32 for axis in range(4) for side in (offsets, -1 - offsets)])
    cosine, sine = cos_sin_of_turns(low, dtype)
    small = torch.where((low + 2**29) // 2**30 % 2 == 0, sine, cosine).double()  # near 0 and pi: sin, else cos
    ulp = torch.finfo(dtype).eps
    for index in range(0, low.numel(), 7):
        exact = 2 * mpmath.pi * (mpmath.mpf(int(low[index])) + mpmath.mpf(1) / 2) / 2**32
        want = mpmath.sin(exact) if (int(low[index]) + 2**29) // 2**30 % 2 == 0 else mpmath.cos(exact)
        assert abs(float(small[index]) - want) <= 4 * ulp * abs(want), (int(low[index]), dtype)

def test_cos_sin_of_turns_is_torch_cos_and_sin_to_rounding():
    """The compiled Box-Muller's angles: every eighth of the turn, its edges and random integers.

    Against torch's cos and sin of the rounded float64 angle (what the eager draws use) within
    1e-15, and within 4.5e-16 (2 ulps of 1) of the exact values (mpmath at 40 digits) on a sample.
    """
    import mpmath

    edges = [e * 2**29 + offset for e in range(8) for offset in (0, 1, 2**28, 2**29 - 2, 2**29 - 1)]
    generator = torch.Generator().manual_seed(11)
    low = torch.cat([torch.tensor(edges), torch.randint(0, 2**32, (20000,), generator=generator)])
    cosine, sine = cos_sin_of_turns(low)
    angle = (low.double() + 0.5) * (2 * math.pi * 2.0**-32)
    torch.testing.assert_close(cosine, torch.cos(angle), rtol=0, atol=1e-15)
    torch.testing.assert_close(sine, torch.sin(angle), rtol=0, atol=1e-15)
    mpmath.mp.dps = 40
    for index in range(0, low.numel(), 97):
        exact = 2 * mpmath.pi * (mpmath.mpf(int(low[index])) + mpmath.mpf(1) / 2) / 2**32
        assert abs(float(cosine[index]) - mpmath.cos(exact)) <= 4.5e-16
        assert abs(float(sine[index]) - mpmath.sin(exact)) <= 4.5e-16


def test_cos_sin_of_turns_of_a_uniforms_52_bits_is_torch_cos_to_rounding():
    """Wood's compiled proposals: the angle 2 pi U of a uniform's integer m, U = (m + 1/2) 2^-52.

    Against torch's cos and sin of 2 pi U (what the eager sampler computes) within 1e-15, every
    eighth of the turn, its edges and random integers.
    """
    edges = [e * 2**49 + offset for e in range(8) for offset in (0, 1, 2**48, 2**49 - 2, 2**49 - 1)]
    generator = torch.Generator().manual_seed(12)
    mantissa = torch.cat([torch.tensor(edges), torch.randint(0, 2**52, (20000,), generator=generator)])
    cosine, sine = cos_sin_of_turns(mantissa, bits=52)
    uniform = (mantissa.double() + 0.5) * 2.0**-52
    torch.testing.assert_close(cosine, torch.cos(2.0 * math.pi * uniform), rtol=0, atol=1e-15)
    torch.testing.assert_close(sine, torch.sin(2.0 * math.pi * uniform), rtol=0, atol=1e-15)


def test_draws_depend_only_on_key_round_agent():
    keys = dynamics_keys([5, 5, 9], [0, 1, 0])
    together = round_draws(keys, 3, 10)
    for element in range(3):
        alone = round_draws(keys[element : element + 1], 3, 10)
        assert torch.equal(alone.keys[0], together.keys[element])
    # an agent's numbers do not depend on how many agents there are, nor on selection
    assert torch.equal(round_draws(keys, 3, 4).keys, together.keys[:, :4])
    mask = torch.rand(3, 10, generator=torch.Generator().manual_seed(0)) > 0.5
    assert torch.equal(together[mask].uniform(DRAW_SPIN, 5), together.uniform(DRAW_SPIN, 5)[:, mask])
    # a range of indices is the slice of a longer range
    assert torch.equal(together.uniform(DRAW_SPIN, 4, start=6), together.uniform(DRAW_SPIN, 10)[6:])
    # other round, other replica, other stream: other numbers
    base = together.uniform(DRAW_CHOICE, 3)
    assert not torch.equal(base, round_draws(keys, 4, 10).uniform(DRAW_CHOICE, 3))
    assert not torch.equal(base[:, 0], base[:, 1])
    assert not torch.equal(base, together.uniform(DRAW_SPIN, 3))


def test_state_keys_come_from_seed_and_replica():
    run = rollout([scenario(run={"seed": 4}), scenario(run={"seed": 4}), scenario(run={"seed": 5})], [0, 1, 0])
    assert run.state.random_keys.tolist() == [dynamics_key(4, 0), dynamics_key(4, 1), dynamics_key(5, 0)]
    assert isinstance(run.state.draws(), Draws) and run.state.draws().keys.shape == (3, 12)


def test_each_seed_and_replica_has_its_own_rounds_key_apart_from_the_other_streams():
    """Distinct (seed, replica) pairs give distinct keys, none of them a seed of another stream of the run.

    The test above compares the state's keys with dynamics_key itself: a key that ignored the
    seed would pass it, and give runs seeded apart the same sampled rounds. A key without its
    stream would be the seed of replica r's path (r,): for r = 1 the shared disorder's.
    """
    seeds, replicas = (0, 4, 5, -3, 2**40), range(6)
    keys = {dynamics_key(seed, replica) for seed in seeds for replica in replicas}
    assert len(keys) == len(seeds) * len(replicas)
    paths = [(stream,) for stream in (STREAM_DISORDER, STREAM_INITIAL, STREAM_FIELDS, STREAM_NETWORK, STREAM_FIT)]
    paths += [(stream, replica) for stream in (STREAM_DISORDER, STREAM_INITIAL) for replica in replicas]
    other_streams = {derive_seed(seed, *path) for seed in seeds for path in paths}
    assert not keys & other_streams


def _old_checkpoint(path):
    """Rewrite a checkpoint as the generator-state design wrote it."""
    old = torch.load(path, weights_only=True)
    old["random_states"] = [torch.Generator().get_state() for _ in old["replicas"]]
    del old["random_keys"]
    torch.save(old, path)


def test_checkpoint_keeps_the_keys_and_refuses_generator_states(tmp_path):
    run = rollout(scenario(mode="sampled", run={"seed": 3}))
    state = step(run.state, run.economy)
    save_checkpoint(tmp_path / "checkpoint.pt", state, [0], 1)
    loaded, rows = load_checkpoint(tmp_path / "checkpoint.pt", run.state)
    assert rows == 1 and loaded.round == 1 and torch.equal(loaded.random_keys, state.random_keys)
    assert torch.equal(step(loaded, run.economy).states, step(state, run.economy).states)
    _old_checkpoint(tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="generator states") as error:
        load_checkpoint(tmp_path / "checkpoint.pt", run.state)
    assert "\n" not in str(error.value)


def test_resuming_an_old_checkpoint_is_refused_in_one_line(tmp_path):
    path = tmp_path / "scenario.yaml"
    path.write_text("populations: {a: {count: 6}}\nmarket: {d: 2, mode: sampled}\nrun: {steps: 3, device: cpu}\n")
    out = tmp_path / "run"
    assert runner.invoke(app, ["run", str(path), "--out", str(out), "--quiet"]).exit_code == 0
    _old_checkpoint(out / "checkpoint.pt")
    result = runner.invoke(app, ["run", "--resume", str(out), "--steps", "5", "--quiet"])
    assert result.exit_code == 2
    assert "generator states" in result.output and "Traceback" not in result.output


def test_the_traced_tags_are_the_arange_they_replace():
    """The form torch.compile traces ((i | high) + low) is start + i, at every level and near 2^32 counters."""
    from econspin.randomness import _LEVEL_AGENT, _LEVEL_DRAW, _LEVEL_ROUND, _traced_tags

    starts = [0, 2**31 + 5, _LEVEL_ROUND, _LEVEL_AGENT, _LEVEL_DRAW + (5 << 32) + 7]
    starts += [_LEVEL_DRAW + ((2**27 - 1) << 32) + 2**32 - 10, _LEVEL_DRAW + 2**32 - 1]
    for start in starts:
        assert torch.equal(_traced_tags(start, 300, "cpu"), torch.arange(start, start + 300, dtype=torch.int64))


def test_a_block_of_rounds_gives_each_round_its_own_keys_and_uniforms():
    """round_draws reads a block of rounds (RoundBlock): the keys and uniforms agent_draws hashes for the round alone.

    Rounds across block boundaries and out of order, a second agent count on the same keys, a
    round of too many keys for a block, keys changed in place (never read stale), streams a
    block keeps and one it does not, and a caller writing into the uniforms it was given.
    """
    keys = dynamics_keys([0, 7], [0, 2])
    for round_index in [0, 1, ROUND_BLOCK - 1, ROUND_BLOCK, 3 * ROUND_BLOCK + 5, 2, 10**6]:
        for agents in (1, 37):
            want = agent_draws(keys, round_tag(round_index), agents).keys
            assert torch.equal(round_draws(keys, round_index, agents).keys, want), (round_index, agents)
    many = ROUND_BLOCK_ENTRIES // 2 + 1  # a round of more than half the entries: a block of one round
    assert torch.equal(round_draws(keys[:1], 3, many).keys, agent_draws(keys[:1], round_tag(3), many).keys)
    before = round_draws(keys, 4, 37).keys.clone()
    keys[1] += 1  # changed in place: the block kept for the old keys must not be read
    assert torch.equal(round_draws(keys, 4, 37).keys, agent_draws(keys, round_tag(4), 37).keys)
    assert torch.equal(round_draws(keys, 4, 37).keys[0], before[0]) and not torch.equal(
        round_draws(keys, 4, 37).keys[1], before[1]
    )
    for round_index in (5, ROUND_BLOCK + 9):  # uniforms a block keeps (a few an agent) and those it does not
        alone = agent_draws(keys, round_tag(round_index), 37)
        for stream, count, start in ((DRAW_CHOICE, 1, 0), (DRAW_CHOICE, 3, 0), (DRAW_SPIN, 1, 0), (DRAW_SPIN, 6, 3)):
            want = alone.uniform(stream, count, start)
            got = round_draws(keys, round_index, 37).uniform(stream, count, start)
            assert torch.equal(got, want), (round_index, stream, count, start)
            got.fill_(0.5)  # what a caller does to its uniforms stays its own: the round played again reads the same
            assert torch.equal(round_draws(keys, round_index, 37).uniform(stream, count, start), want)
    # the documented chain, one agent's word, through a kept block
    word = round_draws(keys[:1], ROUND_BLOCK + 3, 37).words(DRAW_CHOICE, 1)[0, 0, 36]
    assert int(word) % 2**64 == _reference_word(int(keys[0]), ROUND_BLOCK + 3, 36, DRAW_CHOICE, 0)


def test_a_block_of_rounds_is_hashed_once_within_its_size_and_goes_with_its_keys():
    """What the block is for, beyond its values (which the test above holds).

    Its rounds share one block and one hash of each kept stream's uniforms; it holds at most
    ROUND_BLOCK_ENTRIES keys and as many rounds as fit; and it goes when the keys it was made for go.
    """
    from econspin import randomness

    keys = dynamics_keys([1, 2], [0, 0])
    first, later = round_draws(keys, ROUND_BLOCK + 1, 37), round_draws(keys, ROUND_BLOCK + 5, 37)
    assert first.block is not None and later.block is first.block, "the rounds of a block share it"
    assert (first.place, later.place) == (1, 5)
    assert round_draws(keys, 2 * ROUND_BLOCK, 37).block is not first.block  # the next block is another
    uniforms = first.block.uniforms(DRAW_CHOICE, 1, 0)
    assert uniforms.shape == (ROUND_BLOCK, 1, 2, 37)
    assert later.block.uniforms(DRAW_CHOICE, 1, 0) is uniforms, "a kept stream is hashed once a block"
    assert torch.equal(later.uniform(DRAW_CHOICE, 1), uniforms[5])
    sizes = ((2, 37), (2, 5000), (1, 3000), (1, ROUND_BLOCK_ENTRIES // 3 + 1), (1, ROUND_BLOCK_ENTRIES // 2 + 1))
    sizes += ((1, ROUND_BLOCK_ENTRIES + 3),)  # blocks of 64, 26, 64, 2 and 1 rounds, and a round past the bound
    for batch, agents in sizes:
        draws = round_draws(keys[:batch], 3, agents)
        rounds = 1 if draws.block is None else draws.block.keys.shape[0]
        per_round = batch * agents
        assert rounds <= ROUND_BLOCK and (rounds == 1 or rounds * per_round <= ROUND_BLOCK_ENTRIES), (batch, agents)
        # as many rounds as fit
        assert rounds == ROUND_BLOCK or (rounds + 1) * per_round > ROUND_BLOCK_ENTRIES, (batch, agents)
    transient = dynamics_keys([9], [0])
    round_draws(transient, 0, 5)
    kept_for = id(transient)
    assert kept_for in randomness._ROUND_BLOCKS
    del transient  # the last reference: the block goes with it
    assert kept_for not in randomness._ROUND_BLOCKS


def test_the_cross_sum_bound_bounds_the_cross_sum_and_nearly_reaches_it():
    """_times_exact's guard: |a e + b c + (b e >> 32)| over a in [-2^31, 2^31), b in [0, 2^32) is at most the bound.

    The sum is linear in a and monotone in b (where c != 0, |c| >= 1 outweighs e / 2^32 < 1), so its extremes are
    at the box's corners; the bound exceeds them by at most 2 e (it takes each term's largest size).
    """
    from econspin.randomness import _MULTIPLIER_1, _MULTIPLIER_2, _cross_sum_bound

    generator = np.random.default_rng(4)
    pairs = [(multiplier >> 32, multiplier & (2**32 - 1)) for multiplier in (_MULTIPLIER_1, _MULTIPLIER_2)]
    highs, lows = generator.integers(-(2**31), 2**31, 200), generator.integers(0, 2**32, 200)
    pairs += [(int(high), int(low)) for high, low in zip(highs, lows)]
    pairs += [(0, 2**32 - 1), (-(2**31), 0), (2**31 - 1, 1)]
    for high, low in pairs:
        largest = max(
            abs(a * low + b * high + ((b * low) >> 32)) for a in (-(2**31), 2**31 - 1) for b in (0, 2**32 - 1)
        )
        bound = _cross_sum_bound(high, low)
        assert largest <= bound <= largest + 2 * low, (high, low)
    assert all(_cross_sum_bound(high, low) < 2**63 for high, low in pairs[:2])  # the SplitMix multipliers fit


def _direction_words(keys: torch.Tensor, tag: torch.Tensor) -> torch.Tensor:
    return agent_draws(keys, tag, 64).words(DRAW_DIRECTION, 8)


@needs_compiler
def test_compiled_words_read_the_agents_keys_instead_of_hashing_them_again():
    """Compiled, the agents' keys are hashed once a round and stored: a stream's words hash their own level only.

    Left to Inductor, the keys of (element, round, agent) were recomputed in every loop over
    the draws of a stream, one mix64 (two exact products) more per word (docs/performance_log.md,
    "The agents' keys stored"). The loop writing the (8, B, N) words holds two mix64s, its
    tag's and the word's: four exact products, each a left shift by 32. The words are the eager ones.
    """
    keys, tag = torch.tensor([3, 4]), torch.tensor(round_tag(5))
    torch._dynamo.reset()
    words, code = run_and_get_code(torch.compile(_direction_words, dynamic=False), keys, tag)
    assert torch.equal(words, _direction_words(keys, tag))
    words_loop = generated_loops(code, 8)
    assert len(words_loop) == 1
    assert words_loop[0].count(" << ") == 4
