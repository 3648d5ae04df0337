"""The cases every other expected-mode kernel meets beside the fused one (tests/test_flex.py, tests/test_triton.py).

Each check takes the kernel's name (``run.kernel``) and ``outcome_of(state, economy)``, the
kernel's market step on an economy built for the fused kernel (the check's economies are built
once and compared with :func:`econspin.fused.fused_trade` on the same state).
"""

import dataclasses
import math

import pandas as pd
import pytest
import torch
from fused_cases import TOLERANCE, assert_outcomes_close, two_populations
from helpers import rollout, scenario
from typer.testing import CliRunner

from econspin import ScenarioError
from econspin.cli import app
from econspin.fused import fused_trade
from econspin.market import MarketOutcome

runner = CliRunner()


def check_zero_temperature_ties(outcome_of) -> MarketOutcome:
    """Exact ties at T = 0 (integer states: every utility exact), with utilities far from 0 and at 0.

    The argmax, ties split equally: received signal, revenue, impact and entropy as alpha says.
    Then :func:`near_tie`'s sellers within and beyond the tie width, at d_k = 1 and 4.
    """
    populations = {"a": {"count": 40, "temperature": 0.0, "projections": {"init": "identity"}}}
    run = rollout(scenario(populations=populations, output="identity"))  # d = d_k = 4: U = x_i . x_j / 2
    states = torch.randint(-2, 3, (1, 40, 4), generator=torch.Generator().manual_seed(3)).double()
    states[0, :2] = 0.0  # two buyers to whom every seller is worth 0: all tie, and z = 0
    state = run.state.replace(states=states)
    outcome = outcome_of(state, run.economy)
    assert_outcomes_close(fused_trade(state, run.economy), outcome, 1e-14)
    utilities = states[0] @ states[0].T / 2
    utilities.fill_diagonal_(-math.inf)
    best = utilities.max(1, keepdim=True).values
    alpha = (utilities == best).double()
    ties = alpha.sum(1, keepdim=True)
    assert (ties > 1).sum() > 5 and (best != 0).sum() > 5 and (best == 0).sum() > 0
    alpha = alpha / ties
    assert torch.equal(outcome.revenue[0] > 0, alpha.sum(0) > 0)  # nobody outside the argmax earns a cent
    assert torch.allclose(outcome.received[0], alpha @ states[0], rtol=0, atol=1e-14)
    assert torch.allclose(outcome.revenue[0], 0.1 * alpha.T @ state.money[0], rtol=1e-14, atol=0)
    assert torch.allclose(outcome.impact[0], 1 / ties.squeeze(1), rtol=1e-15, atol=0)
    assert torch.allclose(outcome.entropy[0], ties.squeeze(1).log() / math.log(39), rtol=1e-15, atol=0)
    for key_dimension, gap, shares in NEAR_TIES_BY_KEY_DIMENSION:
        assert_near_tie_revenue(outcome_of(*near_tie("float64", gap, key_dimension=key_dimension)), shares)
    return outcome


# (gap in eps, the three sellers' shares of the market) for near_tie: beyond the tie width, within it
NEAR_TIES = [(6, (1.0, 0.0, 0.0)), (2, (0.5, 0.5, 0.0))]
# the same for near_tie(..., key_dimension=4), width 8 eps u_i: 7 ties (a width with q_i not divided
# by sqrt(d_k) would tie 10 too; one divided by sqrt(N) = sqrt(6), 6.5 eps, would rank 7)
NEAR_TIES_WIDE = [(10, (1.0, 0.0, 0.0)), (7, (0.5, 0.5, 0.0))]
# both, as (key_dimension, gap, shares)
NEAR_TIES_BY_KEY_DIMENSION = [(1, *case) for case in NEAR_TIES] + [(4, *case) for case in NEAR_TIES_WIDE]


def assert_near_tie_revenue(outcome: MarketOutcome, shares) -> None:
    """The sellers of :func:`near_tie` earn these shares of what its three buyers spend, exactly."""
    spent = outcome.spending[0, :3].double().sum()
    assert torch.equal(outcome.revenue[0, 3:].double(), torch.tensor(shares, dtype=torch.float64) * spent)


def near_tie(dtype: str, gap: float, network: dict | None = None, key_dimension: int = 1):
    """(state, economy): three T = 0 buyers and sellers at utilities u_i, u_i (1 - gap eps), u_i / 2.

    d = 8, d_k = 1 and four populations: each utility is one exact product of powers of two and
    the row's tie width is (d_k + 4) eps |q_i| max_j |k_j| = 5 eps q_i (market.tie_widths). A gap
    of 6 is a ranking (the best seller takes the market); 2 is a tie (the two split it); widths
    counted with d (12 eps) or the populations (8 eps) would tie 6 too. With ``key_dimension``
    d_k > 1 the queries and keys are the state's first component padded with zeros: u_i =
    q_i / sqrt(d_k) and the width (d_k + 4) eps u_i (NEAR_TIES_WIDE for d_k = 4).
    """
    populations = {
        "buyers": {"count": 3, "temperature": 0.0, "sells": False},
        "best": {"count": 1, "buys": False},
        "close": {"count": 1, "buys": False},
        "far": {"count": 1, "buys": False},
    }
    market = {"populations": populations, "d": 8, "d_k": key_dimension, "output": "random", "visibility": 0.0}
    run = rollout(scenario(**market, **({"network": network} if network else {})), dtype=dtype)
    first = torch.zeros(8, key_dimension, dtype=run.state.states.dtype)
    first[0, 0] = 1.0  # q_i = k_j = the state's first component
    economy = dataclasses.replace(
        run.economy, query=first.expand_as(run.economy.query), key=first.expand_as(run.economy.key)
    )
    eps = torch.finfo(run.state.states.dtype).eps
    states = torch.zeros(1, 6, 8, dtype=torch.float64)
    states[0, :3, 0] = torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64)  # max_j |k_j| = 1 (buyers too)
    states[0, 3:, 0] = torch.tensor([1.0, 1.0 - gap * eps, 0.5], dtype=torch.float64)
    return run.state.replace(states=states.to(run.state.states.dtype)), economy


def check_infinite_temperature_uniform(outcome_of) -> MarketOutcome:
    """T = inf buyers: entropy 1, infinite surplus, every allowed seller the same revenue."""
    populations = {
        "buyers": {"count": 5, "temperature": math.inf, "sells": False},
        "sellers": {"count": 7, "buys": False},
    }
    run = rollout(scenario(populations=populations, heads=2, visibility=1.0))
    outcome = outcome_of(run.state, run.economy)
    assert torch.allclose(outcome.entropy[0, :5], torch.ones(5, dtype=torch.float64), rtol=1e-15, atol=0)
    assert torch.all(torch.isinf(outcome.surplus[0, :5]))
    per_seller = outcome.revenue[0, 5:]
    assert torch.allclose(per_seller, per_seller.mean().expand(7), rtol=1e-15, atol=0)
    assert_outcomes_close(fused_trade(run.state, run.economy), outcome, 1e-14)
    return outcome


def check_isolated_buyers(outcome_of, memory_budget_scale: float = 1.0) -> MarketOutcome:
    """Buyers with no seller (a network) spend and receive nothing; some have a single seller, some T = 0 or inf.

    ``memory_budget_scale``: 0 leaves the network no room for its additive bias (the kernels
    then read the boolean mask itself).
    """
    run = rollout(two_populations(heads=2))
    mask = torch.ones(64, 64, dtype=torch.bool)
    mask[:10] = False  # isolated buyers
    mask[10:20, 21:] = False  # buyers with a single seller
    budget = run.economy.memory_budget * memory_budget_scale
    economy = dataclasses.replace(run.economy, trade_mask=mask, memory_budget=budget)
    state = run.state.replace(temperature=run.state.temperature.index_fill(1, torch.tensor([12, 15]), math.inf))
    state = state.replace(temperature=state.temperature.index_fill(1, torch.tensor([30, 31]), 0.0))
    outcome = outcome_of(state, economy)
    for name in ("received", "spending", "entropy", "surplus", "choice_variance", "impact"):
        assert torch.all(getattr(outcome, name)[0, :10] == 0), name
    assert_outcomes_close(fused_trade(state, economy), outcome, 1e-13)
    return outcome


def check_several_populations_in_float32(outcome_of) -> MarketOutcome:
    """Three populations (T = 0.8, 0 and inf; one sells only), three heads, three batch elements, float32."""
    populations = {
        "human": {"count": 30, "temperature": 0.8, "spend": 0.2},
        "ai": {"count": 10, "temperature": 0.0, "spend": 0.5},
        "firm": {"count": 8, "temperature": math.inf, "buys": False},
    }
    run = rollout([scenario(populations=populations, heads=3, d=5, d_k=3, d_v=2, visibility=0.4)] * 3, dtype="float32")
    outcome = outcome_of(run.state, run.economy)
    assert_outcomes_close(fused_trade(run.state, run.economy), outcome, TOLERANCE[torch.float32])
    return outcome


def few_hundred_agents(dtype: str):
    """Three economies of 460 agents (T = 0.8 buyers, T = 0 buyers, T = inf sellers), two heads: the GPU tests' size."""
    populations = {
        "human": {"count": 300, "temperature": 0.8, "spend": 0.2},
        "ai": {"count": 100, "temperature": 0.0, "spend": 0.5},
        "firm": {"count": 60, "temperature": math.inf, "buys": False},
    }
    return rollout([scenario(populations=populations, heads=2, d=8, visibility=0.4)] * 3, dtype=dtype)


def check_kernel_switch_and_rollout(kernel: str, uses, rounds: int, tolerance: float, sampled: str = "fused") -> None:
    """run.kernel resolves, and a whole rollout on ``kernel`` ends where the fused kernel's does.

    Sampled mode resolves to ``sampled`` (the kernel's own sampled step, or fused), couplings
    are refused, a round that asks for gradients takes the reference path (``uses``: the
    kernel's own test), and ``rounds`` rounds end at the fused kernel's states (to
    ``tolerance``) and money (relative), money conserved.
    """
    assert rollout(two_populations(run={"kernel": kernel})).economy.kernel == kernel
    assert rollout(two_populations(mode="sampled", run={"kernel": kernel})).economy.kernel == sampled
    with pytest.raises(ScenarioError, match=f"run.kernel: {kernel}"):
        two_populations(couplings={"curie_weiss": 1.0}, run={"kernel": kernel})
    run = rollout(two_populations(run={"kernel": kernel}))
    assert uses(run.state, run.economy)
    fields = run.state.fields.clone().requires_grad_(True)
    assert not uses(run.state.replace(fields=fields), run.economy)  # gradients take the reference path
    populations = {
        "human": {"count": 20, "temperature": 0.8, "spend": 0.2, "correction": {"form": "tap"}},
        "ai": {"count": 8, "temperature": 0.0, "spend": 0.5, "eta": 0.5},
        "firm": {"count": 6, "temperature": math.inf, "buys": False},
    }
    runs = [
        rollout(scenario(populations=populations, heads=2, visibility=0.4, response="vmf", run={"kernel": name}))
        for name in ("fused", kernel)
    ]
    start = runs[1].state.money.sum(1)
    for run in runs:
        run.advance(rounds)
    fused, other = (run.state for run in runs)
    assert torch.allclose(fused.states, other.states, rtol=0, atol=tolerance)
    assert torch.allclose(fused.money, other.money, rtol=tolerance, atol=0)
    assert float((other.money.sum(1) / start - 1).abs().max()) < 1e-12  # money conserved


SCENARIO = """
name: KERNEL
populations:
  human: {count: 12, temperature: 1.0, spend: 0.2}
  ai: {count: 4, temperature: 0.0, spend: 0.3}
market: {d: 4, heads: 2, visibility: 0.5}
run: {steps: STEPS, replicas: 2, seed: 3, device: cpu, dtype: float64, kernel: KERNEL}
"""


def scenario_text(kernel: str, steps: int = 6) -> str:
    """A small scenario file on ``kernel``."""
    return SCENARIO.replace("KERNEL", kernel).replace("STEPS", str(steps))


def check_command_line_equals_fused(kernel: str, tmp_path, steps: int = 6) -> None:
    """``econspin run`` on the kernel writes the fused kernel's metrics (to 1e-9), and no warning."""
    tables = {}
    for name in ("fused", kernel):
        path = tmp_path / f"{name}.yaml"
        path.write_text(scenario_text(name, steps))
        result = runner.invoke(app, ["run", str(path), "--out", str(tmp_path / name), "--quiet"])
        assert result.exit_code == 0, result.output
        assert "Warning" not in result.output
        tables[name] = pd.read_parquet(tmp_path / name / "metrics.parquet")
    assert tables["fused"].columns.tolist() == tables[kernel].columns.tolist()
    assert (tables["fused"] - tables[kernel]).abs().max().max() < 1e-9
