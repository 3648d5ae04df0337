"""The independent reference's spin laws: one agent's new state given the field it feels.

Part of the oracle (:mod:`econspin.reference`), written from MODEL.md step 7 and docs/model.md
section 3, importing nothing from the engine: the mean of a spin on the sphere |s| = R in the
field theta at temperature T (``sphere``, ``linear``, ``large_d``, and ``vmf`` from scipy's
scaled Bessel functions), the TAP state m = f(theta - sigma^2 m / T) by bisection, the ffn
shifts, and the Boltzmann law's samples and second moments for the sampled mode.
"""

from __future__ import annotations

import math

import numpy as np

BISECTION_STEPS = 200


def spin_variance(state_vector: np.ndarray, radius: float) -> float:
    """C = max(R^2 - |x|^2, 0) / d."""
    return max(radius**2 - float(state_vector @ state_vector), 0.0) / len(state_vector)


def bessel_ratio(concentration: float, dimension: int) -> float:
    """A_d(k) = I_{d/2}(k) / I_{d/2-1}(k) (tanh for d = 1), from scipy's scaled Bessel functions."""
    if dimension == 1:
        return math.tanh(concentration)
    if concentration == 0.0:
        return 0.0
    if math.isinf(concentration):
        return 1.0
    from scipy.special import ive

    return float(ive(dimension / 2.0, concentration) / ive(dimension / 2.0 - 1.0, concentration))


def magnitude(response: str, field_norm: float, temperature: float, dimension: int, radius: float) -> float:
    """g(|theta|, T), the length of the mean spin in a field of length |theta|."""
    if response == "linear":
        return field_norm
    if field_norm == 0.0:
        return 0.0
    if response == "sphere" or temperature == 0.0:
        return radius
    if math.isinf(temperature):
        return 0.0
    if response == "vmf":
        return radius * bessel_ratio(radius * field_norm / temperature, dimension)
    if response == "large_d":
        gain = 2.0 * radius**2 / dimension
        return gain * field_norm / (temperature + math.sqrt(temperature**2 + (gain * field_norm / radius) ** 2))
    raise ValueError(f"unknown response {response!r}")


def mean_state(response: str, field: np.ndarray, temperature: float, radius: float) -> np.ndarray:
    """f(theta, T) = g(|theta|, T) theta / |theta| (theta itself for ``linear``)."""
    if response == "linear":
        return field.copy()
    norm = float(np.linalg.norm(field))
    if norm == 0.0:
        return np.zeros_like(field)
    return magnitude(response, norm, temperature, len(field), radius) * field / norm


def tap_state(response: str, field: np.ndarray, temperature: float, variance: float, radius: float) -> np.ndarray:
    """M = f(theta - sigma^2 m / T), solved for mu = |m| along theta by bisection on [0, g(|theta|)]."""
    norm = float(np.linalg.norm(field))
    if norm == 0.0 or temperature == 0.0 or math.isinf(temperature):
        return mean_state(response, field, temperature, radius)
    reaction = variance / temperature
    direction = field / norm
    low, high = 0.0, magnitude(response, norm, temperature, len(field), radius)
    for _ in range(BISECTION_STEPS):
        middle = 0.5 * (low + high)
        # the mean state in the field theta - (sigma^2 / T) m, for m = middle * direction, along the direction
        along = float(mean_state(response, field - reaction * middle * direction, temperature, radius) @ direction)
        if middle - along > 0:
            high = middle
        else:
            low = middle
    return 0.5 * (low + high) * direction


def gelu(values: np.ndarray) -> np.ndarray:
    """The exact GELU, x Phi(x)."""
    return np.array([value * 0.5 * (1.0 + math.erf(value / math.sqrt(2.0))) for value in values])


def feed_forward_shift(weights: dict, state_vector: np.ndarray, choice_variance: float, impact: float) -> np.ndarray:
    """W2 gelu(W1 [x, V, kappa] + b1) + b2."""
    features = np.concatenate([state_vector, [choice_variance, impact]])
    hidden = gelu(features @ weights["w1"] + weights["b1"])
    return hidden @ weights["w2"] + weights["b2"]


def invariant_feed_forward_shift(
    weights: dict, response: str, field: np.ndarray, state_vector: np.ndarray, temperature: float,
    variance: float, choice_variance: float, impact: float, radius: float,
) -> np.ndarray:
    """The shift a theta + b x, [a, b] = W2 gelu(W1 s + b1) + b2 on the eight invariants s (docs/model.md 5.6)."""
    norm = float(np.linalg.norm(field))
    reaction = variance / temperature if 0.0 < temperature < math.inf else 0.0
    invariants = np.array([
        norm / radius,
        float(state_vector @ field) / (radius * norm) if norm > 0 else 0.0,
        float(np.linalg.norm(state_vector)) / radius,
        magnitude(response, norm, temperature, len(field), radius) / radius,
        reaction / (1.0 + reaction),
        choice_variance / radius**2,
        impact,
        temperature / (1.0 + temperature) if math.isfinite(temperature) else 1.0,
    ])
    gate, state_gate = gelu(invariants @ weights["w1"] + weights["b1"]) @ weights["w2"] + weights["b2"]
    return gate * field + state_gate * state_vector


def sample_spin(response: str, field: np.ndarray, temperature: float, radius: float, rng) -> np.ndarray:
    """A spin from p(s) ∝ exp(theta . s / T) on |s| = R (no draw for ``sphere`` and ``linear``)."""
    if response in ("sphere", "linear"):
        return mean_state(response, field, temperature, radius)
    norm = float(np.linalg.norm(field))
    dimension = len(field)
    if temperature == 0.0 and norm > 0:
        return radius * field / norm
    concentration = 0.0 if math.isinf(temperature) or norm == 0 else radius * norm / temperature
    if dimension == 1:
        up = 1.0 / (1.0 + math.exp(-2.0 * concentration))
        sign = 1.0 if norm == 0 else float(np.sign(field[0]))
        return np.array([radius * sign * (1.0 if rng.random() < up else -1.0)])
    if concentration == 0.0:
        gaussian = rng.standard_normal(dimension)
        return radius * gaussian / np.linalg.norm(gaussian)
    from scipy.stats import vonmises_fisher

    return radius * vonmises_fisher(field / norm, concentration).rvs(random_state=rng).reshape(dimension)


def spin_second_moment(spin_law: str, field: np.ndarray, temperature: float, radius: float) -> np.ndarray:
    """E[s_k^2] per component for the spin law in field theta (the diagonal of E[s s^T]).

    For von Mises-Fisher on the unit sphere with mean direction n and concentration k,
    E[u u^T] = (A_d(k) / k) I + (1 - d A_d(k) / k) n n^T (I / d at k = 0, n n^T at k = inf).
    """
    mean = mean_state(spin_law, field, temperature, radius)
    if spin_law in ("sphere", "linear"):
        return mean**2
    dimension, norm = len(field), float(np.linalg.norm(field))
    if dimension == 1:
        return np.full(1, radius**2)
    if norm == 0.0 or math.isinf(temperature):
        return np.full(dimension, radius**2 / dimension)
    if temperature == 0.0:
        return (radius * field / norm) ** 2
    concentration = radius * norm / temperature
    ratio = bessel_ratio(concentration, dimension) / concentration
    return radius**2 * (ratio + (1.0 - dimension * ratio) * (field / norm) ** 2)
