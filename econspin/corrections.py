"""Self-impact corrections: how an agent's update accounts for the signal it created itself.

The naive mean field feeds agent i the average field theta_i and sets m_i = f(theta_i). In
the stochastic economy the field fluctuates (which seller i draws, which spin that seller
draws), and a response averaged over those fluctuations is not the response to the average.
To second order (Plefka; the kinetic TAP equations of Roudi & Hertz 2011 and Kappen &
Spanjers 2000) the average is reproduced by the Onsager reaction term:

    m_i = f(theta_i - beta_i sigma_i^2 m_i),

implicit in the new m_i, with sigma_i^2 the per-component variance of agent i's field.
Everything in it is agent i's own: its field, its temperature, and the statistics of its own
row (docs/model.md derives sigma_i^2). Forms, by the names a scenario uses:

- ``none``: m_i = f(theta_i), the first-order (naive) kinetic mean field;
- ``tap``: the implicit equation above, solved per agent by safeguarded Newton along
  theta_i (the response is isotropic, so m_i is parallel to theta_i and only its length is
  unknown); for d = 1 and fixed couplings it is exactly
  m_i = tanh(beta (h_i + sum_j J_ij m_j) - beta^2 m_i sum_j J_ij^2 (1 - m_j^2));
- ``ffn``: m_i = f(theta_i - MLP_p(...)), a two-layer network per population, with weights
  from the scenario, a file or a fit, on one of two feature sets (``features``):
  ``state``, the agent's state x_i, the variance V_i of what it receives and its own-impact
  weight kappa_i = sum_j alpha_ij^2, the shift an arbitrary vector; or ``invariant``, scalars
  that mean the same in every disorder (lengths and angles of theta_i and x_i, V_i, kappa_i,
  the TAP coefficient, T_i), the shift a gated combination a_i theta_i + b_i x_i, so that it
  turns with the economy as tap's does (:class:`InvariantFeedForwardCorrection`).

Corrections are mean-field devices: the sampled mode draws every choice and needs none.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from econspin.registry import class_registrar
from econspin.response import SpinResponse

NEWTON_ITERATIONS = 40
HIDDEN_LAYER_BLOCK = 2**20  # entries of an ffn's hidden layer taken at once (4 MiB in float32), its buffers reused


@dataclass(frozen=True)
class FieldContext:
    """What a correction may use, all of agent i's own. Shapes: (B, N) unless noted.

    Attributes:
        field: theta_i, the naive field, (B, N, d).
        state: x_i, the agent's state before the update, (B, N, d).
        temperature: T_i.
        field_variance: sigma_i^2, per-component variance of the field.
        choice_variance: V_i, variance of what i receives over its own choice.
        impact: kappa_i = sum_j alpha_ij^2 (mean over markets).
        response: the spin response f.
    """

    field: torch.Tensor
    state: torch.Tensor
    temperature: torch.Tensor
    field_variance: torch.Tensor
    choice_variance: torch.Tensor
    impact: torch.Tensor
    response: SpinResponse


class SelfImpactCorrection:
    """Base: the new mean state of every agent (the caller keeps the rows of its population)."""

    name = "base"

    def update(self, context: FieldContext) -> torch.Tensor:
        raise NotImplementedError


CORRECTIONS: dict[str, type[SelfImpactCorrection]] = {}
register_correction = class_registrar(CORRECTIONS)  # @register_correction("name") on a class


@register_correction("none")
class NoCorrection(SelfImpactCorrection):
    """The naive (first-order) kinetic mean field, m_i = f(theta_i)."""

    def update(self, context):
        return context.response.mean(context.field, context.temperature)


@register_correction("tap")
class TapCorrection(SelfImpactCorrection):
    """The Onsager reaction term, m_i = f(theta_i - beta_i sigma_i^2 m_i), solved per agent."""

    def update(self, context):
        response, temperature = context.response, context.temperature
        norm = torch.linalg.vector_norm(context.field, dim=-1)
        direction = context.field / torch.where(norm > 0, norm, torch.ones_like(norm)).unsqueeze(-1)
        reaction = reaction_coefficient(context.field_variance, temperature)
        length = solve_reaction(response, norm, reaction, temperature)
        return length.unsqueeze(-1) * direction


def reaction_coefficient(field_variance: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """rho_i = sigma_i^2 / T_i, the Onsager term's coefficient; 0 at T_i = 0 and T_i = inf, where tap is none."""
    finite = (temperature > 0) & torch.isfinite(temperature)
    safe_temperature = torch.where(finite, temperature, torch.ones_like(temperature))
    return torch.where(finite, field_variance / safe_temperature, torch.zeros_like(field_variance))


def solve_reaction(response: SpinResponse, norm, reaction, temperature) -> torch.Tensor:
    """The root mu >= 0 of mu = g(|theta| - a mu, T), a = sigma^2 / T >= 0.

    F(mu) = mu - g(|theta| - a mu) increases in mu and changes sign on [0, g(|theta|)], so a
    Newton step that leaves the bracket is replaced by bisection. The solve runs without
    autograd; one last Newton step with the slope held fixed carries the gradient of the
    implicit function theorem, d mu = -dF / F'(mu).
    """
    with torch.no_grad():
        low = torch.zeros_like(norm)
        high = response.magnitude(norm, temperature)
        length = high.clone()
        for _ in range(NEWTON_ITERATIONS):
            residual = length - response.magnitude(norm - reaction * length, temperature)
            slope = 1.0 + reaction * response.slope(norm - reaction * length, temperature)
            low = torch.where(residual < 0, length, low)
            high = torch.where(residual > 0, length, high)
            step = length - residual / slope
            inside = (step > low) & (step < high) & torch.isfinite(step)
            length = torch.where(inside, step, 0.5 * (low + high))
        slope = 1.0 + reaction * response.slope(norm - reaction * length, temperature)
        slope = torch.where(torch.isfinite(slope), slope, torch.ones_like(slope))
    residual = length - response.magnitude(norm - reaction * length, temperature)
    return length - residual / slope


@register_correction("ffn")
class FeedForwardCorrection(SelfImpactCorrection):
    """m_i = f(theta_i - [W2 gelu(W1 [x_i, V_i, kappa_i] + b1) + b2]), weights per batch element.

    Weights: w1 (B, d + 2, hidden), b1 (B, hidden), w2 (B, hidden, d), b2 (B, d). The shift is
    a fixed function of the direction of x_i (and b2 a fixed vector): it means something only
    in the disorder it was fitted to (docs/validation.md 10).
    """

    features = "state"

    def __init__(self, w1, b1, w2, b2):
        self.w1, self.b1, self.w2, self.b2 = w1, b1, w2, b2

    @staticmethod
    def weight_shapes(dimension: int, hidden: int) -> dict[str, tuple[int, ...]]:
        """The shape of each weight of one population (no batch axis)."""
        return {"w1": (dimension + 2, hidden), "b1": (hidden,), "w2": (hidden, dimension), "b2": (dimension,)}

    def network(self, features: torch.Tensor) -> torch.Tensor:
        """W2 gelu(W1 z + b1) + b2 for every agent's features z, (B, N, F) -> (B, N, outputs).

        A wide layer (B N hidden entries over HIDDEN_LAYER_BLOCK) is taken in blocks of agents,
        through two layer buffers written in place: fresh (B, N, hidden) tensors every round left
        their freed space unusable to the next ones (the C allocator pads an aligned request
        beyond a freed block of the same size), and a run kept 1.7x its memory estimate
        (tests/test_memory.py). Where weights or features take gradients, or a round is
        compiled, the layer is one expression, as autograd and Inductor want it.
        """
        batch, agents, _ = features.shape
        width = self.w1.shape[-1]
        agents_per_block = max(1, HIDDEN_LAYER_BLOCK // (batch * width))
        differentiated = torch.is_grad_enabled() and any(
            tensor.requires_grad for tensor in (features, self.w1, self.b1, self.w2, self.b2))
        if agents <= agents_per_block or differentiated or torch.compiler.is_compiling():
            hidden = torch.nn.functional.gelu(torch.baddbmm(self.b1[:, None], features, self.w1))
            return torch.baddbmm(self.b2[:, None], hidden, self.w2)
        return self._network_in_blocks(features, agents_per_block)

    def _network_in_blocks(self, features: torch.Tensor, agents_per_block: int) -> torch.Tensor:
        batch, agents, _ = features.shape
        width, outputs = self.w1.shape[-1], self.w2.shape[-1]
        layer = features.new_empty(2, batch * agents_per_block * width)
        shift = features.new_empty(batch, agents, outputs)
        for start in range(0, agents, agents_per_block):
            block = features[:, start:start + agents_per_block]
            pre, hidden = layer[:, :batch * block.shape[1] * width].view(2, batch, block.shape[1], width)
            torch.baddbmm(self.b1[:, None], block, self.w1, out=pre)
            # torch's gelu kernel, written where it is kept (functional.gelu has no out=; the same bits;
            # formed from erf_ and products in place it took 1.4 against 0.28 ms a block of 2^20)
            torch.ops.aten.gelu.out(pre, out=hidden)
            torch.baddbmm(self.b2[:, None], hidden, self.w2, out=shift[:, start:start + block.shape[1]])
        return shift

    def shift(self, context: FieldContext) -> torch.Tensor:
        """The correction subtracted from the field, (B, N, d)."""
        features = torch.cat(
            [context.state, context.choice_variance.unsqueeze(-1), context.impact.unsqueeze(-1)], dim=-1
        )
        return self.network(features)

    def update(self, context):
        return context.response.mean(context.field - self.shift(context), context.temperature)


class InvariantFeedForwardCorrection(FeedForwardCorrection):
    """The ffn on rotation invariants: the shift is a_i theta_i + b_i x_i, gated by a network.

        s_i = [ |theta_i| / R,  (x_i . theta_i) / (R |theta_i|),  |x_i| / R,  g(|theta_i|, T_i) / R,
                rho_i / (1 + rho_i),  V_i / R^2,  kappa_i,  T_i / (1 + T_i) ],
        [a_i, b_i] = W2 gelu(W1 s_i + b1) + b2,
        m_i = f(theta_i - a_i theta_i - b_i x_i),

    with R the spin radius, g the response's length (|f(theta_i)|, the naive mean state's),
    rho_i = sigma_i^2 / T_i the coefficient of tap's Onsager term (0 at T_i = 0 and inf),
    V_i the variance of what i receives and kappa_i = sum_j alpha_ij^2 its own impact. Every
    s_i is a length, an angle or a scalar of agent i, unchanged when states, fields and
    projections are turned by one rotation, and bounded or O(1) at any temperature (T_i = 0
    gives 0, T_i = inf gives 1), so that one set of weights can mean the same thing in every
    disorder, temperature and population mix. The shift then turns with the economy: the
    corrected mean field of a rotated economy is the rotated mean field, as for none and tap.
    tap itself has this form: its m_i is parallel to theta_i, so its shift rho_i |m_i| theta_i / |theta_i|
    is a_i theta_i with a_i a function of |theta_i|, rho_i and T_i. Still local and
    position-wise: every input is agent i's own (MODEL.md step 6).

    Weights: w1 (B, 8, hidden), b1 (B, hidden), w2 (B, hidden, 2), b2 (B, 2), any market.d.
    """

    features = "invariant"
    INVARIANTS = 8

    @staticmethod
    def weight_shapes(dimension: int, hidden: int) -> dict[str, tuple[int, ...]]:
        invariant_count = InvariantFeedForwardCorrection.INVARIANTS
        return {"w1": (invariant_count, hidden), "b1": (hidden,), "w2": (hidden, 2), "b2": (2,)}

    def shift(self, context: FieldContext) -> torch.Tensor:
        gates = self.network(invariants(context))
        return gates[..., :1] * context.field + gates[..., 1:] * context.state


def invariants(context: FieldContext) -> torch.Tensor:
    """The eight rotation-invariant scalars s_i of :class:`InvariantFeedForwardCorrection`, (B, N, 8)."""
    radius, temperature = context.response.radius, context.temperature
    field_norm = torch.linalg.vector_norm(context.field, dim=-1)
    safe_norm = torch.where(field_norm > 0, field_norm, torch.ones_like(field_norm))
    reaction = reaction_coefficient(context.field_variance, temperature)
    columns = [
        field_norm / radius,
        (context.state * context.field).sum(-1) / (radius * safe_norm),  # 0 where the field is 0
        torch.linalg.vector_norm(context.state, dim=-1) / radius,
        context.response.magnitude(field_norm, temperature) / radius,
        reaction / (1.0 + reaction),
        context.choice_variance / radius**2,
        context.impact,
        1.0 / (1.0 + 1.0 / temperature),  # T / (1 + T): 0 at T = 0, 1 at T = inf
    ]
    return torch.stack(columns, dim=-1)


FEED_FORWARD_FEATURES: dict[str, type[FeedForwardCorrection]] = {
    "state": FeedForwardCorrection,
    "invariant": InvariantFeedForwardCorrection,
}


def feed_forward_weights(dimension: int, hidden: int, scale: float, generator: torch.Generator, dtype,
                         features: str = "state"):
    """Random ffn weights: w1 ~ N(0, 1/fan_in), w2 ~ N(0, scale^2 / hidden), zero biases.

    fan_in is d + 2 (``state``) or 8 (``invariant``).
    """
    shapes = FEED_FORWARD_FEATURES[features].weight_shapes(dimension, hidden)
    w1 = torch.randn(*shapes["w1"], generator=generator, dtype=torch.float64) / shapes["w1"][0] ** 0.5
    w2 = torch.randn(*shapes["w2"], generator=generator, dtype=torch.float64) * scale / hidden**0.5
    return {
        "w1": w1.to(dtype),
        "b1": torch.zeros(shapes["b1"], dtype=dtype),
        "w2": w2.to(dtype),
        "b2": torch.zeros(shapes["b2"], dtype=dtype),
    }
