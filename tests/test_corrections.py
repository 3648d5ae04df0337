"""Self-impact corrections on hand-made cases, worked out here one agent at a time.

The tap form is checked against the Ising closed form in test_ising and against Monte Carlo
in the validation tests; these pin its limits, its solver and the ffn form. They were
written to kill the surviving mutants of ``make mutation`` (docs/testing.md): each expected
value is computed here by hand or by scipy, not by the engine's tensor code.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from econspin.corrections import FeedForwardCorrection, FieldContext, NoCorrection, TapCorrection, feed_forward_weights
from econspin.response import make_response


def _gelu(z: float) -> float:
    return 0.5 * z * (1.0 + math.erf(z / math.sqrt(2.0)))


# two agents, d = 2: state x_i, field theta_i, the variance V_i of what i receives, kappa_i
STATE = [[1.0, -1.0], [0.5, 2.0]]
FIELD = [[0.3, 1.1], [-0.8, 0.2]]
CHOICE_VARIANCE = [0.3, 1.2]
IMPACT = [0.5, 0.25]
# features f_i = (x_i1, x_i2, V_i, kappa_i); hidden unit 0 reads V_i, unit 1 reads x_i1 + 2 kappa_i
W1 = [[0.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]
B1 = [0.5, -1.0]
W2 = [[1.0, 0.5], [0.0, -1.0]]
B2 = [0.1, -0.2]


def _context(response_name: str, temperature: float = 0.7) -> FieldContext:
    tensor = lambda values: torch.tensor([values], dtype=torch.float64)  # noqa: E731  (batch of one)
    return FieldContext(
        field=tensor(FIELD),
        state=tensor(STATE),
        temperature=torch.full((1, 2), temperature, dtype=torch.float64),
        field_variance=torch.zeros(1, 2, dtype=torch.float64),
        choice_variance=tensor(CHOICE_VARIANCE),
        impact=tensor(IMPACT),
        response=make_response(response_name, 2, math.sqrt(2.0)),
    )


def _hand_shift(agent: int) -> list[float]:
    features = [*STATE[agent], CHOICE_VARIANCE[agent], IMPACT[agent]]
    hidden = [_gelu(sum(features[f] * W1[f][h] for f in range(4)) + B1[h]) for h in range(2)]
    return [sum(hidden[h] * W2[h][k] for h in range(2)) + B2[k] for k in range(2)]


def _ffn() -> FeedForwardCorrection:
    tensor = lambda values: torch.tensor([values], dtype=torch.float64)  # noqa: E731
    return FeedForwardCorrection(w1=tensor(W1), b1=tensor(B1), w2=tensor(W2), b2=tensor(B2))


def test_ffn_shift_is_the_two_layer_network_by_hand():
    shift = _ffn().shift(_context("linear"))[0]
    for agent in range(2):
        assert shift[agent].tolist() == pytest.approx(_hand_shift(agent), abs=1e-14)


def test_ffn_subtracts_its_shift_from_the_field():
    """The ffn update is m_i = f(theta_i - shift_i).

    For the linear response that is exactly theta_i - shift_i; on the sphere, its direction
    times R.
    """
    linear = _ffn().update(_context("linear"))[0]
    sphere = _ffn().update(_context("sphere"))[0]
    for agent in range(2):
        corrected = [FIELD[agent][k] - _hand_shift(agent)[k] for k in range(2)]
        assert linear[agent].tolist() == pytest.approx(corrected, abs=1e-14)
        length = math.hypot(*corrected)
        assert sphere[agent].tolist() == pytest.approx([math.sqrt(2.0) * c / length for c in corrected], abs=1e-14)


def test_ffn_with_zero_output_weights_is_no_correction():
    """With scale = 0 (the default) the ffn starts as the naive mean field."""
    weights = feed_forward_weights(2, 8, 0.0, torch.Generator().manual_seed(1), torch.float64)
    ffn = FeedForwardCorrection(**{key: value[None] for key, value in weights.items()})
    context = _context("vmf")
    assert torch.equal(ffn.update(context), NoCorrection().update(context))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ffn_weights_have_the_documented_shapes_dtype_and_zero_biases(dtype):
    weights = feed_forward_weights(5, 7, 0.3, torch.Generator().manual_seed(2), dtype)
    shapes = {"w1": (7, 7), "b1": (7,), "w2": (7, 5), "b2": (5,)}
    for key, shape in shapes.items():
        assert tuple(weights[key].shape) == shape, key
        assert weights[key].dtype == dtype, key
    assert torch.all(weights["b1"] == 0) and torch.all(weights["b2"] == 0)


def test_ffn_weights_follow_the_generator():
    """The scenario's seed fixes the ffn weights: same generator state, same weights."""
    def draw(seed):
        return feed_forward_weights(4, 6, 1.0, torch.Generator().manual_seed(seed), torch.float64)

    first, again, other = draw(7), draw(7), draw(8)
    for key in ("w1", "w2"):
        assert torch.equal(first[key], again[key]), key
        assert not torch.equal(first[key], other[key]), key


def test_ffn_weights_have_the_documented_variances():
    """The weights are drawn as w1 ~ N(0, 1/(d + 2)) and w2 ~ N(0, scale^2 / hidden).

    Fan-in scaling, checked on a wide layer (the standard error of a sample variance is
    sqrt(2 / n), here under 0.4%).
    """
    dimension, hidden, scale = 6, 20_000, 0.7
    weights = feed_forward_weights(dimension, hidden, scale, torch.Generator().manual_seed(3), torch.float64)
    w1_variance = float(weights["w1"].pow(2).mean())
    w2_variance = float(weights["w2"].pow(2).mean())
    assert w1_variance * (dimension + 2) == pytest.approx(1.0, abs=0.03)
    assert w2_variance * hidden / scale**2 == pytest.approx(1.0, abs=0.03)
    assert abs(float(weights["w1"].mean())) < 5 / math.sqrt(weights["w1"].numel()) / math.sqrt(dimension + 2)


def _tap_context(field, temperature, variance, response_name="vmf"):
    field = torch.tensor([field], dtype=torch.float64)
    zeros = torch.zeros(field.shape[:2], dtype=torch.float64)
    return FieldContext(
        field=field,
        state=torch.zeros_like(field),
        temperature=torch.tensor([temperature], dtype=torch.float64),
        field_variance=torch.tensor([variance], dtype=torch.float64),
        choice_variance=zeros,
        impact=zeros,
        response=make_response(response_name, field.shape[-1], math.sqrt(field.shape[-1])),
    )


@pytest.mark.parametrize("response_name", ["vmf", "large_d"])
def test_tap_drops_the_reaction_term_at_zero_and_infinite_temperature(response_name):
    """At T = 0 and T = inf the reaction term a = sigma^2 / T is dropped (docs/model.md 5.5).

    There m = f(theta); at a finite temperature the reaction term shortens m, never
    lengthens it, and keeps its direction.
    """
    context = _tap_context([[0.6, -0.3, 0.2], [0.6, -0.3, 0.2], [0.6, -0.3, 0.2]], [0.0, math.inf, 0.8],
                           [0.4, 0.4, 0.4], response_name)
    tap, naive = TapCorrection().update(context)[0], NoCorrection().update(context)[0]
    assert torch.isfinite(tap).all()
    assert torch.equal(tap[:2], naive[:2])
    assert 0 < tap[2].norm() < naive[2].norm() - 1e-3
    assert torch.allclose(tap[2] / tap[2].norm(), naive[2] / naive[2].norm(), atol=1e-15)


def test_tap_without_a_field_gives_no_magnetisation():
    """With theta = 0 the isotropic spin has mean zero, with or without the reaction term."""
    context = _tap_context([[0.0, 0.0, 0.0], [0.5, 0.1, 0.0]], [0.7, 0.7], [0.3, 0.3])
    tap = TapCorrection().update(context)[0]
    assert torch.equal(tap[0], torch.zeros(3, dtype=torch.float64))
    assert torch.isfinite(tap).all() and tap[1].norm() > 0


def test_tap_solver_finds_the_ising_root_for_weak_and_strong_reaction():
    """For d = 1, R = 1 the tap length solves mu = tanh((|theta| - a mu) / T), a = sigma^2 / T.

    Checked against scipy's brentq to 1e-12 from weak (a = 0.01) to strong (a = 30) reaction;
    the root is at most the naive tanh(|theta| / T): the reaction term damps the response.
    """
    from scipy.optimize import brentq

    from econspin.corrections import solve_reaction

    response = make_response("vmf", 1, 1.0)
    cases = [(norm, a, t) for norm in (0.05, 0.3, 0.65, 1.0, 3.0) for a in (0.01, 0.1, 0.3, 0.5, 0.7, 1.0, 3.0, 30.0)
             for t in (0.2, 1.0, 5.0)]
    norm, reaction, temperature = (torch.tensor(column, dtype=torch.float64) for column in zip(*cases))
    length = solve_reaction(response, norm, reaction, temperature)
    for (n, a, t), mu in zip(cases, length.tolist()):
        root = brentq(lambda m: m - math.tanh((n - a * m) / t), 0.0, 1.0, xtol=1e-15, rtol=1e-15)
        assert mu == pytest.approx(root, abs=1e-12), (n, a, t)
        assert 0 < mu <= math.tanh(n / t)


def test_ffn_shift_by_hand_also_one_agent_at_a_time(monkeypatch):
    """The wide-layer path (blocks of agents through reused buffers) on the hand case, one agent a block."""
    import econspin.corrections as corrections

    monkeypatch.setattr(corrections, "HIDDEN_LAYER_BLOCK", 2)  # one agent of the batch of one: two hidden units
    shift = _ffn().shift(_context("linear"))[0]
    for agent in range(2):
        assert shift[agent].tolist() == pytest.approx(_hand_shift(agent), abs=1e-14)


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 3), agents=st.integers(1, 40), features=st.integers(1, 6), width=st.integers(1, 24),
       outputs=st.integers(1, 5), block=st.integers(1, 400), seed=st.integers(0, 2**31 - 1),
       dtype=st.sampled_from([torch.float64, torch.float32]))
def test_ffn_network_in_blocks_is_the_network_whole(batch, agents, features, width, outputs, block, seed, dtype):
    """Blocks of agents of any size (the last one short) give the whole layer's shift; the weights untouched."""
    import econspin.corrections as corrections

    generator = torch.Generator().manual_seed(seed)
    draw = lambda *shape: torch.randn(*shape, generator=generator, dtype=dtype)  # noqa: E731
    ffn = FeedForwardCorrection(draw(batch, features, width), draw(batch, width), draw(batch, width, outputs),
                                draw(batch, outputs))
    inputs = draw(batch, agents, features)
    kept = [tensor.clone() for tensor in (inputs, ffn.w1, ffn.b1, ffn.w2, ffn.b2)]
    whole = ffn.network(inputs)
    original = corrections.HIDDEN_LAYER_BLOCK
    try:
        corrections.HIDDEN_LAYER_BLOCK = block
        blocked = ffn.network(inputs)
    finally:
        corrections.HIDDEN_LAYER_BLOCK = original
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    assert blocked.shape == (batch, agents, outputs)
    torch.testing.assert_close(blocked, whole, rtol=tolerance, atol=tolerance * float(whole.abs().max()))
    for before, after in zip(kept, (inputs, ffn.w1, ffn.b1, ffn.w2, ffn.b2)):
        assert torch.equal(before, after)


def test_ffn_network_takes_gradients_whatever_its_width(monkeypatch):
    """Where the weights take gradients the layer is one expression, however wide: float64 gradcheck."""
    import econspin.corrections as corrections

    monkeypatch.setattr(corrections, "HIDDEN_LAYER_BLOCK", 4)  # the wide-layer path for any larger layer
    generator = torch.Generator().manual_seed(5)
    weights = [torch.randn(*shape, generator=generator, dtype=torch.float64, requires_grad=True)
               for shape in ((2, 3, 5), (2, 5), (2, 5, 2), (2, 2))]
    features = torch.randn(2, 7, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z, *w: FeedForwardCorrection(*w).network(z), (features, *weights))
