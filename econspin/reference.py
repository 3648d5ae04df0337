"""An independent reference for one round: MODEL.md in plain float64 numpy, one buyer at a time.

This module exists to check the engine. It is written from the equations of MODEL.md and
docs/model.md, not from the engine's code, and it imports nothing from the engine's market,
choice, round, corrections or response modules: a wrong formula there cannot hide behind a
copy of itself here. It is slow on purpose (a Python loop over buyers and heads, numpy over
each buyer's sellers) and meant for small economies; one agent's response to its field (the
spin laws, the TAP state) is in :mod:`econspin.reference_spins`. For buyer i, market h and seller j:

    q_i = x_i W_Q^{p(i),h},  k_j = x_j W_K^{p(j),h},  v_j = x_j W_V^{p(j),h},  u_j = v_j W_O^h
    U_ij = q_i . k_j / sqrt(d_k) + gamma log(w_j / mean w)       over allowed j only
    alpha_ij = exp(U_ij / T_i) / sum_l exp(U_il / T_i)           (argmax at T = 0, uniform at T = inf)
    s_i = sigma_i w_i (share) or unit [w_i >= unit] (unit); 0 for non-buyers and buyers with no partner
    F_ij = (s_i / H) alpha_ij,  R_j = sum_i F_ij,  w_i <- w_i - s_i + R_i
    a_i = sum_h sum_j alpha_ij u_j,  theta_i = h_i + (1 - eta_i) x_i + eta_i a_i
    x_i <- f(theta_i)                                  (none)
    x_i <- mu theta_i / |theta_i|,  mu = g(|theta_i| - sigma_i^2 mu / T_i)     (tap)
    x_i <- f(theta_i - MLP_p(x_i, V_i, kappa_i))       (ffn)
    sigma_i^2 = (1 - eta_i)^2 c_i + eta_i^2 / d sum_h [V_i^h + sum_j alpha_ij c_j |W_V^{p(j),h} W_O^h|_F^2]
    V_i^h = sum_j alpha_ij |u_j|^2 - |sum_j alpha_ij u_j|^2,  c_j = max(R^2 - |x_j|^2, 0) / d,
    kappa_i = mean_h sum_j alpha_ij^2,  V_i = sum_h V_i^h.

Allowed: j's population sells, j != i, and the trade network (if any) has the edge i -> j.
Conventions shared with the engine where MODEL.md leaves a choice open: the premium uses
log(max(w_j / mean w, 1e-12)) so that a seller with no money stays finite; a T = 0 buyer ties
the sellers within (d_k + 4) eps (|q_i| max_j |k_j| / sqrt(d_k) + max_j |b_j|) of its best
utility (maxima over every agent, eps the unit roundoff of the precision the economy is played
in: docs/model.md, section 2.2), since a tie is equality of the utilities, not of their
rounding; the TAP term is
dropped at T = 0 and T = inf; entropy is divided by log(number of allowed partners) and is 0
with at most one partner; a buyer with no partner has alpha = 0, surplus 0, entropy 0.

In sampled mode each buyer draws one seller per market from alpha and every agent's new
state is a spin drawn from p(s) ∝ exp(theta . s / T) on |s| = R (the von Mises-Fisher law;
Glauber's rule for d = 1), whatever mean-field response the scenario names, except that the
``sphere`` response never fluctuates and ``linear`` is no spin law at all (x = theta).
:func:`sampled_state_moments` gives that law's exact mean and second moments after one round,
by enumerating every combination of sellers: no sampling noise on the reference side.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from econspin.reference_spins import (
    feed_forward_shift,
    invariant_feed_forward_shift,
    mean_state,
    sample_spin,
    spin_second_moment,
    spin_variance,
    tap_state,
)

PREMIUM_FLOOR = 1e-12


@dataclass(frozen=True)
class ReferenceEconomy:
    """What does not change between rounds, for one economy of N agents and P populations.

    Attributes:
        population: (N,) int, agent i's population.
        buys, sells: (P,) bool, whether a population buys / sells.
        spend: (N,) share sigma_i (share rule) or the unit (unit rule).
        eta: (N,) adaptation rates.
        query, key: (P, H, d, d_k); value: (P, H, d, d_v); output: (H, d_v, d).
        visibility: gamma.
        network: (N, N) bool, True where i may buy from j, or None for everyone.
        spend_rule: ``share`` or ``unit``; unit: the unit.
        response: ``sphere``, ``linear``, ``large_d`` or ``vmf``; radius: R.
        corrections: one of ``none``, ``tap``, ``ffn`` per population.
        ffn: per population, None or a dict of w1, b1, w2, b2 and ``features`` (state: w1 (d + 2,
            hidden), w2 (hidden, d); invariant: w1 (8, hidden), w2 (hidden, 2)).
        epsilon: the unit roundoff of the precision the economy is played in (float64's by
            default), which sets how near two utilities of a T = 0 buyer tie.
    """

    population: np.ndarray
    buys: np.ndarray
    sells: np.ndarray
    spend: np.ndarray
    eta: np.ndarray
    query: np.ndarray
    key: np.ndarray
    value: np.ndarray
    output: np.ndarray
    visibility: float
    network: np.ndarray | None
    spend_rule: str
    unit: float
    response: str
    radius: float
    corrections: tuple[str, ...]
    ffn: tuple[dict | None, ...]
    epsilon: float = float(np.finfo(np.float64).eps)

    @property
    def agent_count(self) -> int:
        return len(self.population)

    @property
    def heads(self) -> int:
        return self.output.shape[0]


@dataclass(frozen=True)
class ReferenceState:
    """States x (N, d), fields h (N, d), money w (N,) and temperatures T (N,)."""

    states: np.ndarray
    fields: np.ndarray
    money: np.ndarray
    temperature: np.ndarray


@dataclass(frozen=True)
class ReferenceRound:
    """One round's outcome; per-agent arrays of shape (N,) unless noted.

    ``states`` (N, d) is the new state: the mean-field update in expected mode, the drawn
    spins in sampled mode. ``alpha`` is (H, N, N). ``choices`` (H, N) holds the drawn sellers
    (-1 for no draw) in sampled mode, None in expected mode.
    """

    states: np.ndarray
    money: np.ndarray
    revenue: np.ndarray
    spending: np.ndarray
    received: np.ndarray
    entropy: np.ndarray
    surplus: np.ndarray
    choice_variance: np.ndarray
    field_variance: np.ndarray
    impact: np.ndarray
    alpha: np.ndarray
    choices: np.ndarray | None


@dataclass(frozen=True)
class Offers:
    """What every agent shows the market this round, computed one agent at a time from its own state.

    Attributes:
        queries, keys: (H, N, d_k), q_j and k_j per market.
        goods: (H, N, d), u_j = v_j W_O^h, what seller j delivers, in state space.
        noise: (H, N), c_j |W_V^{p(j),h} W_O^h|_F^2, the spread a fluctuating spin adds to its good.
        premium: (N,), gamma log(max(w_j / mean w, 1e-12)).
        key_sizes: (H,), max_j |k_j| per market; premium_size: max_j |premium_j| (the tie's width).
    """

    queries: np.ndarray
    keys: np.ndarray
    goods: np.ndarray
    noise: np.ndarray
    premium: np.ndarray
    key_sizes: np.ndarray
    premium_size: float


@dataclass(frozen=True)
class BuyerChoice:
    """One buyer's row: its allowed sellers, alpha (H, sellers), and what it spends and receives."""

    sellers: np.ndarray
    alpha: np.ndarray
    spending: float
    received: np.ndarray
    entropy: float
    surplus: float
    choice_variance: float
    field_variance: float
    impact: float


def offers(economy: ReferenceEconomy, state: ReferenceState) -> Offers:
    """Every agent's query, key, good and premium, one agent and market at a time."""
    agents, dimension = state.states.shape
    heads, key_dimension = economy.heads, economy.key.shape[-1]
    queries, keys = np.zeros((heads, agents, key_dimension)), np.zeros((heads, agents, key_dimension))
    goods, noise = np.zeros((heads, agents, dimension)), np.zeros((heads, agents))
    mean_money = max(state.money.mean(), 1e-300)
    premium = np.zeros(agents)
    for agent in range(agents):
        population, x = economy.population[agent], state.states[agent]
        for head in range(heads):
            queries[head, agent] = x @ economy.query[population, head]
            keys[head, agent] = x @ economy.key[population, head]
            goods[head, agent] = x @ economy.value[population, head] @ economy.output[head]
            gain = economy.value[population, head] @ economy.output[head]
            noise[head, agent] = spin_variance(x, economy.radius) * float((gain**2).sum())
        if economy.visibility != 0.0:
            premium[agent] = economy.visibility * math.log(max(state.money[agent] / mean_money, PREMIUM_FLOOR))
    key_sizes = np.linalg.norm(keys, axis=-1).max(axis=-1)
    return Offers(queries, keys, goods, noise, premium, key_sizes, float(np.abs(premium).max()))


def allowed_sellers(economy: ReferenceEconomy, buyer: int) -> np.ndarray:
    """The sellers buyer i may choose: j sells, j != i, and the network has i -> j."""
    allowed = economy.sells[economy.population].copy()
    allowed[buyer] = False
    if economy.network is not None:
        allowed &= economy.network[buyer]
    return np.flatnonzero(allowed)


def logit(utilities, temperature: float, tie_width: float = 0.0) -> np.ndarray:
    """Logit choice probabilities over the given utilities at temperature T (exact limits).

    At T = 0 the utilities within ``tie_width`` of the best tie and share the choice equally.
    """
    values = np.asarray(utilities, dtype=np.float64)
    if len(values) == 0:
        return values
    if temperature == 0.0:
        best = values >= values.max() - tie_width
        return best / best.sum()
    if math.isinf(temperature):
        return np.full(len(values), 1.0 / len(values))
    weights = np.exp((values - values.max()) / temperature)
    return weights / weights.sum()


def inclusive_value(utilities, temperature: float) -> float:
    """T log sum_j exp(U_j / T): the maximum at T = 0, +inf at T = inf with two or more partners."""
    values = np.asarray(utilities, dtype=np.float64)
    if len(values) == 0:
        return 0.0
    best = float(values.max())
    if temperature == 0.0 or len(values) == 1:
        return best
    if math.isinf(temperature):
        return math.inf
    return best + temperature * math.log(float(np.exp((values - best) / temperature).sum()))


def tie_width(economy: ReferenceEconomy, market: Offers, head: int, buyer: int) -> float:
    """How far below its best utility a T = 0 buyer's seller still ties (docs/model.md, section 2.2).

    (d_k + 4) eps (|q_i| max_j |k_j| / sqrt(d_k) + max_j |b_j|), the maxima over every agent:
    a bound on the rounding of any utility of the row, whatever order its sums are taken in.
    """
    key_dimension = market.keys.shape[-1]
    query_size = float(np.linalg.norm(market.queries[head, buyer])) / math.sqrt(key_dimension)
    return (key_dimension + 4) * economy.epsilon * (query_size * market.key_sizes[head] + market.premium_size)


def normalised_entropy(probabilities: np.ndarray) -> float:
    """-sum p log p / log n over n allowed partners; 0 when n <= 1."""
    if len(probabilities) <= 1:
        return 0.0
    positive = probabilities[probabilities > 0]
    return float(-(positive * np.log(positive)).sum() / math.log(len(probabilities)))


def budget(economy: ReferenceEconomy, state: ReferenceState, agent: int) -> float:
    """s_i before the partner check: sigma_i w_i or the unit where affordable; 0 for non-buyers."""
    if not economy.buys[economy.population[agent]]:
        return 0.0
    if economy.spend_rule == "unit":
        return economy.unit if state.money[agent] >= economy.unit else 0.0
    return economy.spend[agent] * state.money[agent]


def buyer_choice(economy: ReferenceEconomy, state: ReferenceState, market: Offers, buyer: int) -> BuyerChoice:
    """Buyer i's logit rows over its allowed sellers in every market, and their statistics.

    A non-buyer, or a buyer with nobody to buy from, has no row: it spends and receives nothing.
    """
    heads, dimension = economy.heads, state.states.shape[1]
    sellers = allowed_sellers(economy, buyer)
    alpha = np.zeros((heads, len(sellers)))
    received = np.zeros(dimension)
    if not economy.buys[economy.population[buyer]] or len(sellers) == 0:
        return BuyerChoice(sellers, alpha, 0.0, received, 0.0, 0.0, 0.0, 0.0, 0.0)
    temperature = state.temperature[buyer]
    key_dimension = market.keys.shape[-1]
    entropy = surplus = choice_variance = field_variance = impact = 0.0
    for head in range(heads):
        utilities = market.keys[head, sellers] @ market.queries[head, buyer] / math.sqrt(key_dimension)
        utilities = utilities + market.premium[sellers]
        width = tie_width(economy, market, head, buyer) if temperature == 0.0 else 0.0
        probabilities = logit(utilities, temperature, width)
        alpha[head] = probabilities
        goods = market.goods[head, sellers]
        mean_good = probabilities @ goods
        variance = float(probabilities @ (goods**2).sum(1)) - float(mean_good @ mean_good)
        received += mean_good
        choice_variance += variance
        field_variance += (variance + float(probabilities @ market.noise[head, sellers])) / dimension
        impact += float((probabilities**2).sum()) / heads
        entropy += normalised_entropy(probabilities) / heads
        surplus += inclusive_value(utilities, temperature) / heads
    spending = budget(economy, state, buyer)
    return BuyerChoice(sellers, alpha, spending, received, entropy, surplus, choice_variance, field_variance, impact)


def draw_sellers(
    choice: BuyerChoice, market: Offers, rng: np.random.Generator | None = None, uniforms: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Sampled mode: one seller per market drawn from alpha, and the sum of their goods.

    With ``uniforms`` (one per market) the draw is the inverse of alpha's cumulative sum at
    u: the first seller whose cumulative weight exceeds u (given the engine's uniforms, the
    same sellers as the engine's, draw for draw). Otherwise ``rng`` draws.
    """
    heads = choice.alpha.shape[0]
    if uniforms is None:
        picks = [rng.choice(len(choice.sellers), p=choice.alpha[head]) for head in range(heads)]
    else:
        last = len(choice.sellers) - 1
        picks = [
            min(int(np.searchsorted(np.cumsum(choice.alpha[head]), uniforms[head], side="right")), last)
            for head in range(heads)
        ]
    sellers = choice.sellers[np.array(picks)]
    return sellers, sum(market.goods[head, pick] for head, pick in enumerate(sellers))


def agent_update(
    economy: ReferenceEconomy,
    state: ReferenceState,
    agent: int,
    received: np.ndarray,
    choice: BuyerChoice,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Agent i's new state from the field h_i + (1 - eta_i) x_i + eta_i a_i (steps 6-7).

    Expected mode (no ``rng``): its population's correction of the mean response. Sampled
    mode: a spin drawn from the Boltzmann law of the field.
    """
    eta, temperature, x = economy.eta[agent], state.temperature[agent], state.states[agent]
    field = state.fields[agent] + (1.0 - eta) * x + eta * received
    if rng is not None:
        return sample_spin(economy.response, field, temperature, economy.radius, rng)
    form = economy.corrections[economy.population[agent]]
    if form == "tap":
        variance = (1.0 - eta) ** 2 * spin_variance(x, economy.radius) + eta**2 * choice.field_variance
        return tap_state(economy.response, field, temperature, variance, economy.radius)
    if form == "ffn" and economy.ffn[economy.population[agent]]["features"] == "invariant":
        variance = (1.0 - eta) ** 2 * spin_variance(x, economy.radius) + eta**2 * choice.field_variance
        field = field - invariant_feed_forward_shift(
            economy.ffn[economy.population[agent]], economy.response, field, x, temperature, variance,
            choice.choice_variance, choice.impact, economy.radius,
        )
    elif form == "ffn":
        weights = economy.ffn[economy.population[agent]]
        field = field - feed_forward_shift(weights, x, choice.choice_variance, choice.impact)
    return mean_state(economy.response, field, temperature, economy.radius)


def reference_round(
    economy: ReferenceEconomy,
    state: ReferenceState,
    rng: np.random.Generator | None = None,
    choice_uniforms: np.ndarray | None = None,
) -> ReferenceRound:
    """One round: the expected mode (mean field) without ``rng``, the sampled mode with it.

    Synchronous: every agent reads the old state; the new one is written after all have chosen.
    ``choice_uniforms`` (H, N), if given, fix the sampled sellers by inversion (see
    :func:`draw_sellers`); the spins are still drawn from ``rng``.
    """
    agents, dimension = state.states.shape
    heads = economy.heads
    market = offers(economy, state)
    choices = [buyer_choice(economy, state, market, buyer) for buyer in range(agents)]
    alpha = np.zeros((heads, agents, agents))
    revenue = np.zeros(agents)
    received = np.zeros((agents, dimension))
    picks = np.full((heads, agents), -1) if rng is not None else None
    for buyer, choice in enumerate(choices):
        alpha[:, buyer, choice.sellers] = choice.alpha
        if len(choice.sellers) == 0 or not choice.alpha.any():
            continue
        if rng is None:
            received[buyer] = choice.received
            for head in range(heads):
                revenue[choice.sellers] += choice.spending / heads * choice.alpha[head]
        else:
            uniforms = None if choice_uniforms is None else choice_uniforms[:, buyer]
            picks[:, buyer], received[buyer] = draw_sellers(choice, market, rng, uniforms)
            for pick in picks[:, buyer]:
                revenue[pick] += choice.spending / heads
    new_states = np.stack(
        [agent_update(economy, state, agent, received[agent], choices[agent], rng) for agent in range(agents)]
    )
    spending = np.array([choice.spending for choice in choices])
    return ReferenceRound(
        states=new_states,
        money=state.money - spending + revenue,
        revenue=revenue,
        spending=spending,
        received=received,
        entropy=np.array([choice.entropy for choice in choices]),
        surplus=np.array([choice.surplus for choice in choices]),
        choice_variance=np.array([choice.choice_variance for choice in choices]),
        field_variance=np.array([choice.field_variance for choice in choices]),
        impact=np.array([choice.impact for choice in choices]),
        alpha=alpha,
        choices=picks,
    )


def sampled_state_moments(economy: ReferenceEconomy, state: ReferenceState) -> tuple[np.ndarray, np.ndarray]:
    """E[x_i] and E[x_i^2] (per component) after one sampled round, exactly.

    Buyer i draws c^h independently in each market with probability alpha^h_ic; its spin is
    then drawn from the Boltzmann law of its field. The moments are sums over every
    combination (c^1..c^H) of prod_h alpha^h_{ic^h} times the spin law's moments in the field
    h_i + (1 - eta_i) x_i + eta_i sum_h u^h_{c^h}: no sampling noise on the reference side.
    """
    market = offers(economy, state)
    spin_law = "vmf" if economy.response in ("vmf", "large_d") else economy.response
    means, squares = np.zeros_like(state.states), np.zeros_like(state.states)
    for agent in range(state.states.shape[0]):
        choice = buyer_choice(economy, state, market, agent)
        eta, temperature = economy.eta[agent], state.temperature[agent]
        own = state.fields[agent] + (1.0 - eta) * state.states[agent]
        # a non-buyer, or a buyer with no partner, has one outcome: its own field
        per_head = [range(len(choice.sellers))] * economy.heads if choice.alpha.any() else []
        for combination in itertools.product(*per_head):
            weight = math.prod(choice.alpha[head, index] for head, index in enumerate(combination))
            picks = choice.sellers[list(combination)]
            good = sum((market.goods[head, pick] for head, pick in enumerate(picks)), np.zeros_like(own))
            field = own + eta * good
            means[agent] += weight * mean_state(spin_law, field, temperature, economy.radius)
            squares[agent] += weight * spin_second_moment(spin_law, field, temperature, economy.radius)
    return means, squares


def from_engine(economy, state, element: int = 0, network=None) -> tuple[ReferenceEconomy, ReferenceState]:
    """Batch element ``element`` of an engine Economy and State as plain float64 arrays.

    Only quenched parameters and the state are read (nothing the engine computes in a round).
    ``network`` (a networkx graph) gives the adjacency from the graph itself; without it the
    economy's trade mask is used.
    """
    import torch  # the engine's tensors are read, never its code

    def array(tensor):
        return tensor.detach().cpu().double().numpy()

    population = economy.population.cpu().numpy()
    count = int(population.max()) + 1
    buys = np.array([bool(economy.buyer[population == p][0]) for p in range(count)])
    sells = np.array([bool(economy.seller[population == p][0]) for p in range(count)])
    if network is not None:
        import networkx as nx

        adjacency = nx.to_numpy_array(network, nodelist=range(len(population))) != 0
    elif economy.trade_mask is not None:
        adjacency = economy.trade_mask.cpu().numpy().astype(bool)
    elif economy.trade_edges is not None:
        adjacency = economy.trade_edges.dense().cpu().numpy()
    else:
        adjacency = None
    ffn = []
    for correction in economy.corrections:
        if correction.name == "ffn":
            weights = {name: array(getattr(correction, name)[element]) for name in ("w1", "b1", "w2", "b2")}
            ffn.append({**weights, "features": correction.features})
        else:
            ffn.append(None)
    reference_economy = ReferenceEconomy(
        population=population,
        buys=buys,
        sells=sells,
        spend=array(economy.spend[element]),
        eta=array(economy.eta[element]),
        query=array(economy.query[element]),
        key=array(economy.key[element]),
        value=array(economy.value[element]),
        output=array(economy.output[element]),
        visibility=float(economy.visibility[element]),
        network=adjacency,
        spend_rule=economy.spend_rule,
        unit=float(economy.unit),
        response=economy.response.name,
        radius=float(economy.radius),
        corrections=tuple(correction.name for correction in economy.corrections),
        ffn=tuple(ffn),
        epsilon=float(torch.finfo(state.states.dtype).eps),
    )
    reference_state = ReferenceState(
        states=array(state.states[element]),
        fields=array(state.fields[element]),
        money=array(state.money[element]),
        temperature=array(state.temperature[element]),
    )
    return reference_economy, reference_state
