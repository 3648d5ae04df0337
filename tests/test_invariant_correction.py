"""The ffn correction on rotation invariants (``features: invariant``): what makes it transfer.

Its shift a_i theta_i + b_i x_i is built from scalars that a rotation of the economy leaves
unchanged, so the corrected mean field of a rotated economy is the rotated mean field, as for
none and tap; the ``state`` ffn, on the raw vector x_i, is not. The invariants are checked
against their definitions by hand, and zero output weights are exactly no correction.
(The whole round with it against the independent oracle: tests/test_oracle.py.)
"""

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from econspin import Scenario
from econspin.corrections import (
    FeedForwardCorrection,
    FieldContext,
    InvariantFeedForwardCorrection,
    NoCorrection,
    feed_forward_weights,
    invariants,
)
from econspin.response import make_response
from econspin.round import step
from econspin.simulate import Rollout

TEMPERATURES = [0.0, 0.05, 0.4, 1.0, 3.0, math.inf]


def _random_orthogonal(dimension: int, generator: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(dimension, dimension, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def _context(generator, agents, dimension, temperatures, response_name, rotation=None) -> FieldContext:
    def vectors():
        return torch.randn(1, agents, dimension, generator=generator, dtype=torch.float64)

    field, state = vectors(), vectors()
    if rotation is not None:
        field, state = field @ rotation, state @ rotation
    return FieldContext(
        field=field,
        state=state,
        temperature=torch.tensor([temperatures], dtype=torch.float64),
        field_variance=torch.rand(1, agents, generator=generator, dtype=torch.float64),
        choice_variance=torch.rand(1, agents, generator=generator, dtype=torch.float64) * 3,
        impact=torch.rand(1, agents, generator=generator, dtype=torch.float64),
        response=make_response(response_name, dimension, math.sqrt(dimension)),
    )


def _network(kind, dimension, seed, hidden=5):
    weights = feed_forward_weights(dimension, hidden, 1.0, torch.Generator().manual_seed(seed), torch.float64,
                                   kind.features)
    weights["b2"] = torch.randn(weights["b2"].shape, generator=torch.Generator().manual_seed(seed + 1),
                                dtype=torch.float64)
    return kind(**{key: value[None] for key, value in weights.items()})


@given(
    seed=st.integers(0, 2**16),
    dimension=st.integers(2, 6),
    agents=st.integers(1, 5),
    response_name=st.sampled_from(["sphere", "linear", "large_d", "vmf"]),
    temperature=st.sampled_from(TEMPERATURES),
)
@settings(max_examples=60, deadline=None)
def test_the_invariant_ffn_turns_with_the_economy_and_the_state_ffn_does_not(
    seed, dimension, agents, response_name, temperature
):
    """update(Q-rotated context) = update(context) Q for any rotation Q (the state ffn: not)."""
    rotation = _random_orthogonal(dimension, torch.Generator().manual_seed(seed + 7))
    temperatures = [temperature] * agents

    def contexts():
        return [_context(torch.Generator().manual_seed(seed), agents, dimension, temperatures, response_name, q)
                for q in (None, rotation)]

    plain, turned = contexts()
    invariant = _network(InvariantFeedForwardCorrection, dimension, seed)
    torch.testing.assert_close(invariant.update(turned), invariant.update(plain) @ rotation, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(invariants(turned), invariants(plain), rtol=1e-10, atol=1e-12)
    assert torch.isfinite(invariants(plain)).all()
    state_form = _network(FeedForwardCorrection, dimension, seed)
    assert not torch.allclose(state_form.shift(turned), state_form.shift(plain) @ rotation, atol=1e-6)


def test_the_invariants_are_the_documented_scalars():
    """s_i by hand for one agent: |theta|/R, x.theta/(R|theta|), |x|/R, g/R, rho/(1+rho), V/R^2, kappa, T/(1+T)."""
    radius = 2.0
    context = FieldContext(
        field=torch.tensor([[[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]], dtype=torch.float64),
        state=torch.tensor([[[1.0, 0.0, 0.0, 1.0], [0.0, 2.0, 0.0, 0.0]]], dtype=torch.float64),
        temperature=torch.tensor([[0.5, 0.0]], dtype=torch.float64),
        field_variance=torch.tensor([[0.2, 0.3]], dtype=torch.float64),
        choice_variance=torch.tensor([[1.2, 0.4]], dtype=torch.float64),
        impact=torch.tensor([[0.25, 1.0]], dtype=torch.float64),
        response=make_response("large_d", 4, radius),
    )
    gain = 2.0 * radius**2 / 4
    length = gain * 5.0 / (0.5 + math.sqrt(0.25 + (gain * 5.0 / radius) ** 2))  # the large_d response
    expected = [
        [5.0 / 2, 3.0 / (2 * 5), math.sqrt(2) / 2, length / 2, 0.4 / 1.4, 1.2 / 4, 0.25, 0.5 / 1.5],
        [0.0, 0.0, 1.0, 0.0, 0.0, 0.1, 1.0, 0.0],  # no field; T = 0: no reaction, T/(1+T) = 0
    ]
    torch.testing.assert_close(invariants(context)[0], torch.tensor(expected, dtype=torch.float64))


def test_the_invariant_ffn_with_zero_output_weights_is_no_correction():
    context = _context(torch.Generator().manual_seed(3), 4, 3, [0.0, 0.3, 1.0, math.inf], "vmf")
    weights = feed_forward_weights(3, 6, 0.0, torch.Generator().manual_seed(1), torch.float64, "invariant")
    assert {key: tuple(value.shape) for key, value in weights.items()} == {
        "w1": (8, 6), "b1": (6,), "w2": (6, 2), "b2": (2,)}
    correction = InvariantFeedForwardCorrection(**{key: value[None] for key, value in weights.items()})
    assert torch.equal(correction.update(context), NoCorrection().update(context))


def _turned_economy(economy, rotation):
    """The economy turned by Q: x -> x Q, W_Q, W_K, W_V -> Q^T W and W_O -> W_O Q keep every utility."""
    return dataclasses.replace(
        economy,
        query=rotation.T @ economy.query,
        key=rotation.T @ economy.key,
        value=rotation.T @ economy.value,
        output=economy.output @ rotation,
    )


@pytest.mark.parametrize("features, turns", [("invariant", True), ("state", False)])
def test_the_mean_field_of_a_turned_economy_is_the_turned_mean_field(features, turns):
    """Two populations at T = 1 and 0.2, large_d, 6 rounds of the expected mode, float64."""
    correction = {"form": "ffn", "features": features, "scale": 1.0, "hidden": 6}
    scenario = Scenario.from_dict({
        "populations": {"human": {"count": 7, "temperature": 1.0, "correction": correction},
                        "ai": {"count": 3, "temperature": 0.2, "correction": correction}},
        "market": {"d": 4, "response": "large_d"},
        "run": {"seed": 5, "device": "cpu", "kernel": "reference"},
    })
    rollout = Rollout.create([scenario], [0], "cpu", "float64")
    rotation = _random_orthogonal(4, torch.Generator().manual_seed(11))
    state, economy = rollout.state, rollout.economy
    turned_state = state.replace(states=state.states @ rotation, fields=state.fields @ rotation)
    turned_economy = _turned_economy(economy, rotation)
    for _ in range(6):
        state, turned_state = step(state, economy), step(turned_state, turned_economy)
    close = torch.allclose(turned_state.states, state.states @ rotation, rtol=1e-9, atol=1e-9)
    assert close == turns
    if turns:  # and the trade, read off invariants only, is the same
        torch.testing.assert_close(turned_state.money, state.money, rtol=1e-9, atol=1e-12)
