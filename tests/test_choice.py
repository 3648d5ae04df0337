"""Logit choice: limits, sampling law, inclusive value."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from econspin.choice import EULER_GAMMA, gumbel_max_choice, logit_rows, sample_choice
from econspin.randomness import DRAW_CHOICE, dynamics_keys, round_draws


def _rows(seed, rows=6, columns=9):
    generator = torch.Generator().manual_seed(seed)
    utilities = torch.randn(rows, columns, generator=generator, dtype=torch.float64)
    allowed = torch.rand(rows, columns, generator=generator) > 0.3
    allowed[:, 0] = True
    return utilities, allowed


@given(seed=st.integers(0, 10_000), temperature=st.floats(1e-3, 1e3))
@settings(max_examples=40, deadline=None)
def test_rows_are_probabilities_on_allowed_partners(seed, temperature):
    utilities, allowed = _rows(seed)
    rows = logit_rows(utilities, allowed, torch.full((6, 1), temperature, dtype=torch.float64))
    assert torch.all(rows.probabilities[~allowed] == 0)
    assert torch.allclose(rows.probabilities.sum(-1), torch.ones(6, dtype=torch.float64))
    assert torch.all((rows.entropy >= -1e-12) & (rows.entropy <= 1 + 1e-12))


def test_zero_temperature_is_the_argmax_without_nan():
    utilities, allowed = _rows(3)
    alpha = logit_rows(utilities, allowed, torch.zeros(6, 1, dtype=torch.float64)).probabilities
    assert not torch.isnan(alpha).any()
    best = utilities.masked_fill(~allowed, -math.inf).argmax(-1)
    assert torch.equal(alpha, torch.nn.functional.one_hot(best, 9).double())
    tiny = logit_rows(utilities, allowed, torch.full((6, 1), 1e-6, dtype=torch.float64)).probabilities
    assert torch.allclose(tiny, alpha, atol=1e-12)


def test_zero_temperature_splits_ties_equally():
    utilities = torch.tensor([[1.0, 2.0, 2.0, 0.0]], dtype=torch.float64)
    allowed = torch.ones(1, 4, dtype=torch.bool)
    alpha = logit_rows(utilities, allowed, torch.zeros(1, 1, dtype=torch.float64)).probabilities
    assert torch.equal(alpha, torch.tensor([[0.0, 0.5, 0.5, 0.0]], dtype=torch.float64))


@pytest.mark.parametrize("temperature", [1e12, math.inf])
def test_very_large_temperature_is_uniform_over_allowed(temperature):
    utilities, allowed = _rows(5)
    rows = logit_rows(utilities * 100, allowed, torch.full((6, 1), temperature, dtype=torch.float64))
    uniform = allowed.double() / allowed.sum(-1, keepdim=True)
    assert torch.allclose(rows.probabilities, uniform, atol=1e-9)
    assert torch.allclose(rows.entropy, torch.ones(6, dtype=torch.float64), atol=1e-9)


def test_row_without_partner_chooses_nobody():
    utilities = torch.randn(2, 3, dtype=torch.float64)
    allowed = torch.tensor([[False, False, False], [True, True, False]])
    rows = logit_rows(utilities, allowed, torch.ones(2, 1, dtype=torch.float64))
    assert torch.all(rows.probabilities[0] == 0) and rows.inclusive_value[0] == 0
    assert sample_choice(rows.probabilities, torch.tensor([0.5, 0.5]))[0] == -1


@pytest.mark.parametrize("sampler", ["inversion", "gumbel_max", "counter"])
def test_sampled_frequencies_match_alpha_chi_square(sampler):
    utilities = torch.tensor([0.3, -1.0, 1.2, 0.0, 0.7, -0.4], dtype=torch.float64)
    allowed = torch.tensor([True, True, True, False, True, True])
    temperature = torch.tensor([[0.8]], dtype=torch.float64)
    draws = 40_000
    u = utilities.expand(draws, -1)
    mask = allowed.expand(draws, -1)
    alpha = logit_rows(u[:1], mask[:1], temperature).probabilities[0]
    generator = torch.Generator().manual_seed(11)
    if sampler == "inversion":
        chosen = sample_choice(alpha.expand(draws, -1), torch.rand(draws, generator=generator, dtype=torch.float64))
    elif sampler == "counter":  # the round's uniforms: 40 replicas x 1000 agents
        keys = dynamics_keys([11] * 40, list(range(40)))
        uniforms = round_draws(keys, 3, 1000).uniform(DRAW_CHOICE, 1).reshape(draws)
        chosen = sample_choice(alpha.expand(draws, -1), uniforms)
    else:
        chosen = gumbel_max_choice(u, mask, temperature.expand(draws, 1), generator)
    counts = np.bincount(chosen.numpy(), minlength=6)
    assert counts[3] == 0
    keep = allowed.numpy()
    result = stats.chisquare(counts[keep], draws * alpha.numpy()[keep])
    assert result.pvalue > 1e-3


def test_inclusive_value_is_expected_maximum_with_gumbel_noise():
    utilities = torch.tensor([0.5, -0.2, 1.0, 0.1], dtype=torch.float64)
    allowed = torch.ones(4, dtype=torch.bool)
    temperature = 0.7
    temperatures = torch.tensor([[temperature]], dtype=torch.float64)
    value = logit_rows(utilities[None], allowed[None], temperatures).inclusive_value
    generator = torch.Generator().manual_seed(2)
    uniform = torch.rand(400_000, 4, generator=generator, dtype=torch.float64)
    gumbel = -torch.log(-torch.log(uniform))
    best = (utilities + temperature * gumbel).max(-1).values
    standard_error = best.std() / math.sqrt(best.numel())
    assert abs(best.mean() - temperature * EULER_GAMMA - value[0]) < 5 * standard_error
    cold = logit_rows(utilities[None], allowed[None], torch.zeros(1, 1, dtype=torch.float64)).inclusive_value
    assert cold[0] == utilities.max()


def test_infinite_temperature_with_one_partner_has_a_finite_surplus():
    utilities = torch.tensor([[0.7, 2.0, -1.0]], dtype=torch.float64)
    allowed = torch.tensor([[False, True, False]])
    rows = logit_rows(utilities, allowed, torch.full((1, 1), math.inf, dtype=torch.float64))
    assert rows.inclusive_value[0] == 2.0
    assert torch.equal(rows.probabilities, allowed.double())


def test_inversion_never_selects_a_column_without_weight():
    probabilities = torch.tensor([[0.0, 0.3, 0.0, 0.7, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]])
    almost_one = torch.tensor([1.0 - 2.0**-53, 1.0 - 2.0**-53], dtype=torch.float64)
    assert sample_choice(probabilities, almost_one).tolist() == [3, 5]
    assert sample_choice(probabilities, torch.zeros(2, dtype=torch.float64)).tolist() == [1, 5]
