"""Spin responses: an agent's new state given the field it feels.

An agent's state is a spin s on the sphere |s| = R in d dimensions, drawn from the
Boltzmann law of its field theta at its own temperature T,

    p(s) ∝ exp(theta . s / T)        (von Mises-Fisher, concentration k = R |theta| / T).

Every response is isotropic, m = g(|theta|, T) theta / |theta|, so it is fixed by its
magnitude g, which is what the TAP solver needs (with its slope dg/d|theta|):

- ``vmf``: the exact mean, g = R A_d(k), A_d(k) = I_{d/2}(k) / I_{d/2-1}(k). For d = 1 the
  sphere is {-R, +R} and g = R tanh(R |theta| / T): the Ising spin, Glauber's rule.
- ``large_d``: the large-d limit of the same mean, from the uniform asymptotics of the
  Bessel ratio, A_d(k) ≈ (2k/d) / (1 + sqrt(1 + (2k/d)^2)). Written with c = 2 R^2 / d,
      m = c theta / (T + sqrt(T^2 + c^2 |theta|^2 / R^2)),
  which is beta c theta / (1 + sqrt(1 + c^2 beta^2 |theta|^2 / R^2)). (c = 1, the form
  quoted in MODEL.md, is the case R^2 = d / 2; docs/model.md explains the choice.)
- ``sphere``: the T -> 0 limit of both, RMS normalisation onto the sphere, g = R.
- ``linear``: m = theta, no constraint at all; with tied projections it is the modern
  Hopfield update of the symmetric limit (not a spin law: it never fluctuates).

All are written in T rather than beta so that T = 0 and T = inf are exact limits.
"""

from __future__ import annotations

import math

import torch

from econspin.compiled import stored, stored_in_padded_rows, stored_where_measured
from econspin.randomness import DRAW_DIRECTION, DRAW_SPIN, Draws
from econspin.registry import class_registrar
from econspin.wood import (
    RejectionBudget,
    _wood_component_eagerly,
    _wood_first_traced,
    _wood_rest_compiled,
)

RESPONSES: dict[str, type["SpinResponse"]] = {}
register_response = class_registrar(RESPONSES)  # @register_response("name") on a class


def make_response(name: str, dimension: int, radius: float) -> "SpinResponse":
    """The response registered as ``name`` for spins of ``dimension`` on radius ``radius``."""
    if name not in RESPONSES:
        raise ValueError(f"unknown response {name!r}; choose one of {sorted(RESPONSES)}")
    return RESPONSES[name](dimension, radius)


def _norm_and_divisor(theta: torch.Tensor):
    """(|theta|, the divisor of theta_hat: |theta|, or 1 where theta = 0), each of theta's shape without d."""
    norm = torch.linalg.vector_norm(theta, dim=-1)
    return norm, torch.where(norm > 0, norm, 1.0)  # a Python number: no tensor of ones to fill


def _norm_and_direction(theta: torch.Tensor):
    norm, safe = _norm_and_divisor(theta)
    return norm, theta / safe.unsqueeze(-1)


class SpinResponse:
    """Mean of a spin in field theta at temperature T; subclasses give the magnitude g."""

    name = "base"
    finite_temperature = True  # False where the spin never fluctuates (no TAP term)

    def __init__(self, dimension: int, radius: float):
        self.dimension = int(dimension)
        self.radius = float(radius)

    def magnitude(self, field_norm: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
        """g(|theta|, T), odd in |theta|; shapes broadcast."""
        raise NotImplementedError

    def slope(self, field_norm: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
        """dg/d|theta|."""
        raise NotImplementedError

    def mean(self, theta: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
        """M = g(|theta|, T) theta/|theta| for theta (..., d) and T (...)."""
        norm, direction = _norm_and_direction(theta)
        return self.magnitude(norm, temperature).unsqueeze(-1) * direction

    def sample(
        self, theta: torch.Tensor, temperature: torch.Tensor, draws: Draws, budget: "RejectionBudget | None" = None
    ) -> torch.Tensor:
        """A spin per agent from p(s) ∝ exp(theta . s / T) on |s| = R, from the agents' ``draws``.

        With a ``budget``, Wood's sampler makes a fixed number of attempts and never waits on
        the host (see :class:`RejectionBudget`).
        """
        return sample_von_mises_fisher(theta, temperature, self.radius, draws, budget)


@register_response("sphere")
class SphereResponse(SpinResponse):
    """RMS normalisation onto the sphere of radius R: the zero-temperature spin."""

    finite_temperature = False

    def magnitude(self, field_norm, temperature):
        return self.radius * torch.sign(field_norm)

    def slope(self, field_norm, temperature):
        return torch.zeros_like(field_norm)

    def mean(self, theta, temperature):
        """R theta / |theta|, 0 where theta = 0: the base class's arithmetic with the norm kept as a column.

        The same bits (R sign|theta| times theta / |theta|) in three operations fewer, which a
        round of the O(N) path at N = 1000 notices (econspin.uniform).
        """
        norm = torch.linalg.vector_norm(theta, dim=-1, keepdim=True)
        direction = theta / torch.where(norm > 0, norm, 1.0)
        return self.magnitude(norm, temperature) * direction

    def sample(self, theta, temperature, draws, budget=None):
        return self.mean(theta, temperature)


@register_response("linear")
class LinearResponse(SpinResponse):
    """m = theta: no spin constraint (the modern-Hopfield update of the symmetric limit)."""

    finite_temperature = False

    def magnitude(self, field_norm, temperature):
        return field_norm

    def slope(self, field_norm, temperature):
        return torch.ones_like(field_norm)

    def mean(self, theta, temperature):
        return theta  # exactly, not |theta| times the direction (stored patterns must not drift)

    def sample(self, theta, temperature, draws, budget=None):
        return theta


@register_response("large_d")
class LargeDimensionResponse(SpinResponse):
    """The large-d mean c theta / (T + sqrt(T^2 + c^2 |theta|^2 / R^2)), c = 2 R^2 / d."""

    def __init__(self, dimension, radius):
        super().__init__(dimension, radius)
        self.gain = 2.0 * self.radius**2 / self.dimension

    def _root(self, field_norm, temperature):
        c, r = self.gain, self.radius
        return torch.sqrt(temperature**2 + (c * field_norm / r) ** 2)

    def magnitude(self, field_norm, temperature):
        root = self._root(field_norm, temperature)
        denominator = temperature + root
        safe = torch.where(denominator > 0, denominator, 1.0)
        value = self.gain * field_norm / safe
        return torch.where(denominator > 0, value, 0.0)

    def slope(self, field_norm, temperature):
        # d/dr [c r / (T + S)] with S = sqrt(T^2 + c^2 r^2 / R^2) equals c T / (S (T + S))
        root = self._root(field_norm, temperature)
        denominator = root * (temperature + root)
        safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
        cold_limit = torch.full_like(field_norm, math.inf)  # T = 0, |theta| = 0: a step
        value = torch.where(denominator > 0, self.gain * temperature / safe, cold_limit)
        return torch.where(torch.isinf(temperature), torch.zeros_like(value), value)


@register_response("vmf")
class VonMisesFisherResponse(SpinResponse):
    """The exact mean R A_d(R |theta| / T) of the von Mises-Fisher law."""

    def _concentration(self, field_norm, temperature):
        cold = temperature == 0
        safe = torch.where(cold, torch.ones_like(temperature), temperature)
        kappa = self.radius * field_norm / safe
        return torch.where(cold & (field_norm > 0), torch.full_like(kappa, math.inf), kappa)

    def magnitude(self, field_norm, temperature):
        # A_d is odd in k; the recurrence is written for k >= 0
        kappa = self._concentration(field_norm.abs(), temperature)
        return self.radius * torch.sign(field_norm) * bessel_ratio(kappa, self.dimension)

    def slope(self, field_norm, temperature):
        kappa = self._concentration(field_norm.abs(), temperature)
        ratio = bessel_ratio(kappa, self.dimension)
        safe_temperature = torch.where(temperature > 0, temperature, torch.ones_like(temperature))
        value = self.radius**2 * _bessel_ratio_slope(kappa, ratio, self.dimension) / safe_temperature
        return torch.where(temperature > 0, value, torch.zeros_like(value))


def _bessel_ratio_slope(kappa, ratio, dimension):
    """dA_d/dk = 1 - A^2 - (d - 1) A / k, with the k -> 0 limit 1/d."""
    safe = torch.where(kappa > 0, kappa, torch.ones_like(kappa))
    value = 1.0 - ratio**2 - (dimension - 1) * ratio / safe
    return torch.where(kappa > 0, value, torch.full_like(value, 1.0 / dimension))


def _bessel_ratio_value(kappa: torch.Tensor, dimension: int) -> torch.Tensor:
    """A_d(k) = I_{d/2}(k) / I_{d/2-1}(k) by backward recurrence from a high order.

    r_nu = I_{nu+1}/I_nu obeys r_{nu-1} = 1 / (2 nu / k + r_nu); downward it is stable
    (Miller). It starts at order mu = d/2 - 1 + K from the Amos-type estimate
    r_mu ≈ k / (mu + 1/2 + sqrt((mu + 1)^2 + k^2)). Against scipy's ive, for d in 2..1024 and
    k in 1e-4..1e7: K = 128 steps (float64) within 2.2e-9 relative; K = 48 steps (float32)
    within 1.5e-6 in float32 arithmetic, below what float32 states resolve anyway. Written
    in 1/k so that k = 0 (A = 0) and k = inf (A = 1) are exact.

    Each step is two or three operations on a round's agents, which at a few thousand agents
    cost mostly their dispatch: ``reciprocal`` rather than ``1.0 / x`` (torch's number over a
    tensor is reciprocal(x) * 1.0, two operations), and the terms 2 (mu' + j) / k made by outer
    products, as many steps' at once as fit in BESSEL_TERMS_AT_ONCE entries (all K for a few
    thousand agents, one at a time for millions): the same products, each coefficient
    2 (mu' + j) = d - 2 + 2 j an integer, exact in float32 (as is mu' + j on the way), times 1 / k
    rounded once, as a number times the tensor rounds it. The same bits however many at once
    (docs/performance.md, "Fewer operations a step of the Bessel ratio"). Traced by run.compile,
    each step is that product and sum as one expression, fused into one loop over the agents.
    """
    steps = 128 if kappa.dtype == torch.float64 else 48
    order = dimension / 2.0 - 1.0
    inverse = kappa.reciprocal()
    top = order + steps
    ratio = ((top + 0.5) * inverse + torch.sqrt(((top + 1.0) * inverse) ** 2 + 1.0)).reciprocal_()
    if torch.compiler.is_compiling():
        # traced: each step a pointwise expression of constants, all K fused into one loop. The eager form's
        # steps, in place on views of the outer product, were traced as K writes of the whole product back
        # (the compiled expected round at B = 128, N = 64, d = 32 took 9.1 ms against 4.8 ms before them)
        for step in range(steps, 0, -1):
            ratio = torch.reciprocal(2.0 * (order + step) * inverse + ratio)
    else:
        coefficients = torch.arange(steps, 0, -1, dtype=kappa.dtype, device=kappa.device).add_(order).mul_(2.0)
        at_once = max(1, BESSEL_TERMS_AT_ONCE // max(kappa.numel(), 1))
        for chunk in coefficients.split(at_once):
            for term in torch.outer(chunk, inverse.reshape(-1)).view(-1, *inverse.shape).unbind(0):
                ratio = term.add_(ratio).reciprocal_()  # term + ratio, in the term's own memory
    return torch.where(kappa == 0, torch.zeros_like(ratio), ratio)


BESSEL_TERMS_AT_ONCE = 1 << 19  # the recurrence's terms made by one outer product: at most this many (2-4 MiB)


class _BesselRatio(torch.autograd.Function):
    @staticmethod
    def forward(ctx, kappa, dimension):
        ratio = _bessel_ratio_value(kappa, dimension)
        ctx.save_for_backward(kappa, ratio)
        ctx.dimension = dimension
        return ratio

    @staticmethod
    def backward(ctx, grad_output):
        kappa, ratio = ctx.saved_tensors
        return grad_output * _bessel_ratio_slope(kappa, ratio, ctx.dimension), None


def bessel_ratio(kappa: torch.Tensor, dimension: int) -> torch.Tensor:
    """A_d(k) = I_{d/2}(k) / I_{d/2-1}(k), the vMF mean length on the unit sphere; d = 1 gives tanh."""
    if dimension == 1:
        return torch.tanh(kappa)
    return _BesselRatio.apply(kappa, int(dimension))


# traced under run.compile (econspin.compiled), all but the loop of Wood's step over the agents
# left without an accepted attempt (wood._wood_rest_compiled: an operator of the graph on the CPU) and
# the budgeted step (wood._wood_component_eagerly):
# the concentration, Wood's first attempts, the Box-Muller Gaussians with their hashes and the
# direction fuse into the round
def sample_von_mises_fisher(
    theta: torch.Tensor, temperature: torch.Tensor, radius: float, draws: Draws, budget: "RejectionBudget | None" = None
) -> torch.Tensor:
    """Draw s with |s| = R from p(s) ∝ exp(theta . s / T); theta (..., d), T (...).

    ``draws`` holds one key per agent (shape of T); every number agent i uses is a hash of
    its key, so the spins of a batch are drawn at once, with no loop over elements, and an
    agent's spin does not depend on which others are drawn beside it.

    d = 1 is Glauber's rule, P(s = +R) = 1 / (1 + exp(-2 R theta / T)), with one uniform.
    For d >= 2, Wood's (1994) rejection sampler for the component w = s . theta_hat / R (see
    :func:`econspin.wood._wood_component`), then a uniform direction orthogonal to theta_hat from d
    Box-Muller Gaussians. At theta = 0 the spin is uniform on the sphere; at T = 0 it is
    R theta_hat.

    Precision: w is float64. The Gaussians, theta_hat and g_perp are float32 where theta is
    float32 (econspin.gaussians: the same hashed words, the float64 Gaussians to float32
    rounding of their uniforms), float64 otherwise; the coefficients R w and
    R sqrt(1 - w^2) / |g_perp| are float64, cast once. A float32 spin is thus the float64 draw
    of the same field within 1e-5 of R at d >= 3 (tests/test_response.py). Where g_perp = 0 (no
    Gaussian left orthogonal) the spin is R w theta_hat.

    With a ``budget``, Wood's sampler runs without host synchronisation (:class:`RejectionBudget`).
    """
    dimension, dtype = theta.shape[-1], theta.dtype
    if dimension == 1:
        norm, direction = _norm_and_direction(theta)
        kappa = _concentration(norm, temperature, radius)
        uniform = draws.uniform(DRAW_SPIN, 1)[0]
        # aligned when U < 1 / (1 + exp(-2 kappa)); written with exp, which (unlike torch's
        # sigmoid) gives the same bits for an agent whatever the tensor it sits in
        aligned = uniform * (1.0 + torch.exp(-2.0 * kappa.double())) < 1.0
        sign = torch.where(norm > 0, direction[..., 0], torch.ones_like(norm))
        spin = torch.where(aligned, 1.0, -1.0).to(dtype) * sign
        return radius * spin.unsqueeze(-1)
    compiling = torch.compiler.is_compiling()
    # the Gaussians, theta_hat and the projection in the state's precision where it is float32
    # (docs/performance_log.md, "The spin's direction in float32"); Wood's w and the coefficients in float64
    working = torch.float32 if dtype == torch.float32 else torch.float64
    norm, unit = _norm_and_unit(theta, compiling, working)
    kappa = _concentration(norm, temperature, radius)
    if budget is None and compiling:
        along = _wood_rest_compiled(*_wood_first_traced(kappa.double(), dimension, draws), dimension, draws)
    else:
        along = _wood_component_eagerly(kappa.double(), dimension, draws, budget)
    along = torch.where(norm > 0, along, torch.zeros_like(along))  # no field: all of it orthogonal
    if compiling:
        return _direction_by_components(theta, unit, along, radius, draws)
    return _direction_by_agents(theta, unit, along, radius, draws)


def _direction_by_agents(
    theta: torch.Tensor, unit: torch.Tensor, along: torch.Tensor, radius: float, draws: Draws
) -> torch.Tensor:
    """The spin R (w theta_hat + sqrt(1 - w^2) g_perp / |g_perp|) eagerly, each agent's d components contiguous.

    ``unit`` is theta_hat (..., d) in the working precision, ``along`` w (...). The sums over d
    are torch's over the last axis: an agent's terms are added in an order that depends on d
    alone, whatever batch it is drawn in. Laid out (d, ...) instead, as compiled, a transposing
    division and a transposed copy back took about 1 ms of the draw at B = 128, N = 64,
    d = 32 (docs/performance.md, "The direction drawn agent by agent").
    Out of place where the field's gradient flows (a sampled round stays differentiable); in
    place otherwise, the same arithmetic.
    """
    gaussian = draws.normal(DRAW_DIRECTION, theta.shape[-1], unit.dtype, axis=-1)  # (..., d)
    out_of_place = torch.is_grad_enabled() and unit.requires_grad
    products = gaussian * unit
    dot = products.sum(-1, keepdim=True)
    if out_of_place:
        orthogonal = torch.addcmul(gaussian, unit, dot, value=-1.0)
        squares = orthogonal * orthogonal
    else:
        orthogonal = gaussian.addcmul_(unit, dot, value=-1.0)
        squares = torch.mul(orthogonal, orthogonal, out=products)
    sideways, along_scaled = _coefficients(along, torch.sqrt(squares.sum(-1)), radius, unit.dtype)
    if out_of_place:
        spin = torch.addcmul(orthogonal * sideways.unsqueeze(-1), unit, along_scaled.unsqueeze(-1))
    else:
        spin = orthogonal.mul_(sideways.unsqueeze(-1)).addcmul_(unit, along_scaled.unsqueeze(-1))
    return spin.to(theta.dtype)


def _direction_by_components(
    theta: torch.Tensor, unit: torch.Tensor, along: torch.Tensor, radius: float, draws: Draws
) -> torch.Tensor:
    """:func:`_direction_by_agents` as torch.compile is given it: laid out (d, ...), sums over d by halving.

    The reductions over d run across contiguous rows of agents, elementwise, in an order that
    depends on d alone; the spins are the eager ones to rounding (the sums' order differs).
    Out of place: Inductor fuses it and plans its own buffers.
    """
    gaussian = draws.normal(DRAW_DIRECTION, theta.shape[-1], unit.dtype)  # (d, ...)
    # stored: inlined, the last halvings of the sum were redone for each of the d components
    dot = stored(_sum_leading(gaussian * unit))
    orthogonal = torch.addcmul(gaussian, unit, dot, value=-1.0)
    length = torch.sqrt(_sum_leading(orthogonal * orthogonal))
    sideways, along_scaled = _coefficients(along, length, radius, unit.dtype)
    # each agent's two coefficients stored once (inlined into the loop over its components, they
    # were scalar code, three square roots per agent and block of components)
    spin = torch.addcmul(orthogonal * stored(sideways), unit, stored(along_scaled))
    # cast in the (d, ...) layout and stored, so that the transposing copy moves the state's precision
    spin_rows = torch.empty(theta.shape, dtype=theta.dtype, device=theta.device)
    return spin_rows.copy_(stored(spin.to(theta.dtype)).movedim(0, -1))


def _coefficients(
    along: torch.Tensor, length: torch.Tensor, radius: float, working: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(R sqrt(1 - w^2) / |g_perp|, R w) in ``working`` precision, from w = ``along`` and |g_perp| = ``length``.

    s = R (w theta_hat + sqrt(1 - w^2) g_perp / |g_perp|) with the radius folded into the
    coefficients, taken in float64 (1 - w ~ 1 / kappa: float32 would round sqrt(1 - w^2) away
    at large kappa) and cast once.
    """
    sideways = torch.sqrt((1.0 - along * along).clamp(min=0.0)) * (radius / length.double().clamp(min=1e-300))
    if working != torch.float64:  # no Gaussian left orthogonal (g_perp = 0): 0 times the largest float, not inf
        sideways = sideways.clamp(max=torch.finfo(working).max).to(working)
    return sideways, (radius * along).to(working)


def _concentration(norm: torch.Tensor, temperature: torch.Tensor, radius: float) -> torch.Tensor:
    """The concentration kappa = R |theta| / T: infinite at T = 0, zero where there is no field."""
    cold = temperature == 0
    kappa = radius * norm / torch.where(cold, torch.ones_like(temperature), temperature)
    kappa = torch.where(cold, torch.full_like(kappa, math.inf), kappa)
    return torch.where(norm > 0, kappa, torch.zeros_like(kappa))


def _norm_and_unit(
    theta: torch.Tensor, compiling: bool, precision: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """(|theta|, theta_hat in ``precision``), theta_hat the zero vector where theta = 0.

    Eagerly theta_hat has theta's shape, divided in theta's precision and cast where
    ``precision`` is not theta's. Compiled, it is laid out (d, ...) as the compiled draw takes
    it: theta laid out once in its own precision and stored, in rows padded where they would
    conflict in the cache (econspin.compiled.stored_in_padded_rows),
    |theta|^2 summed over d by halving (elementwise over rows of agents, as the draw's other
    sums), and theta_hat stored in theta's precision, read in ``precision`` (float64: the same
    values). Left to Inductor, the norm was a horizontal sum per agent and theta_hat was
    transposed, with a scalar square root per agent, in every loop that read it; the compiled
    norm may differ from torch's in its last place (so did Inductor's own sum), as compiled
    arithmetic does (econspin.compiled).
    """
    if not compiling:
        norm, direction = _norm_and_direction(theta)
        return norm, direction.to(precision)
    # stored in rows padded where B N agents would lie a multiple of 1 KiB apart (econspin.compiled)
    laid_out = stored_in_padded_rows(theta.reshape(-1, theta.shape[-1]).t()).unflatten(1, theta.shape[:-1])
    # inlined, a square root per component (on the devices where the store was measured)
    norm = stored_where_measured(torch.sqrt(_sum_leading(laid_out * laid_out)))
    direction = stored(laid_out / torch.where(norm > 0, norm, 1.0))
    return norm, direction.to(precision)


def _sum_leading(values: torch.Tensor) -> torch.Tensor:
    """Sum over the leading axis by halving it, elementwise additions only (the compiled draw's sums).

    torch's reductions over an outer axis may group the terms differently with the sizes of
    the other axes; this order depends on the leading axis alone, so an agent gets the same
    bits whatever batch it is drawn in.
    """
    while values.shape[0] > 1:
        half = values.shape[0] // 2
        first, second = values[:half], values[half : 2 * half]
        folded = first + second
        if values.shape[0] % 2:
            folded[-1] += values[-1]
        values = folded
    return values[0]
