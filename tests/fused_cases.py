"""Randomised economies and outcome comparison shared by the fused kernels' tests."""

import dataclasses
import math

import pytest
import torch
from helpers import rollout, scenario
from hypothesis import strategies as st

from econspin.market import MarketOutcome

FIELDS = [field.name for field in dataclasses.fields(MarketOutcome)]
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}


def assert_outcomes_close(reference: MarketOutcome, fused: MarketOutcome, tolerance: float) -> None:
    """Every field equal to ``tolerance`` relative to its own scale; infinities in the same places."""
    for name in FIELDS:
        want, got = getattr(reference, name), getattr(fused, name)
        assert want.shape == got.shape and want.dtype == got.dtype, name
        assert torch.equal(torch.isinf(want), torch.isinf(got)), name
        assert torch.equal(want[torch.isinf(want)], got[torch.isinf(got)]), name
        finite = torch.isfinite(want)
        assert torch.isfinite(got[finite]).all(), name
        want, got = want[finite].double(), got[finite].double()
        scale = want.abs().max() if want.numel() else 0.0
        error = (want - got).abs() / (want.abs() + scale + 1.0)
        assert error.numel() == 0 or float(error.max()) <= tolerance, f"{name}: {float(error.max()):.3g}"

def assert_equals_oracle(outcome: MarketOutcome, state, economy, tolerance: float = 1e-12) -> None:
    """Every field against econspin.reference (plain float64 numpy, one buyer at a time), element by element.

    Float64 states only (the oracle's precision); the test is skipped where the oracle is absent.
    """
    oracle = pytest.importorskip("econspin.reference")
    if state.states.dtype != torch.float64:
        return
    buyer = economy.buyer
    for element in range(state.states.shape[0]):
        expected = oracle.reference_round(*oracle.from_engine(economy, state, element))
        for name in FIELDS:
            got = getattr(outcome, name)[element]
            want = torch.as_tensor(getattr(expected, name), dtype=torch.float64)
            if name in ("entropy", "surplus"):  # the oracle reports these for buyers
                got, want = got[buyer], want[buyer]
            assert torch.equal(torch.isinf(got), torch.isinf(want)), name
            finite = torch.isfinite(want)
            scale = float(want[finite].abs().max()) if finite.any() else 0.0
            error = (got[finite] - want[finite]).abs() / (want[finite].abs() + scale + 1.0)
            assert error.numel() == 0 or float(error.max()) <= tolerance, f"{name}: {float(error.max()):.3g}"


@st.composite
def economies(draw, mode="expected", round_kinds=False):
    """A random small economy and state in ``mode``: shapes, flags, budgets, masks, temperatures, ties.

    ``round_kinds``: the round's other settings drawn too (the market's response, each
    population's correction, none, tap or a random ffn, and its eta), for tests of a whole round;
    without, the scenario's defaults (the market's tests draw the same examples as before).

    In half of the draws (``lattice``) states are integers and projections powers of two
    times the identity, with d = d_k in {1, 4}: every utility is then exact in floating
    point, so sellers that tie, tie bitwise in both paths whatever the order of the sums.
    (With general floats a matrix product may round equal columns differently by position,
    in either path, and a T = 0 row then has no well-defined set of ties to compare.)
    """
    dtype = draw(st.sampled_from(["float64", "float32"]))
    lattice = draw(st.booleans())
    count = draw(st.integers(1, 3))
    sells = [draw(st.booleans()) for _ in range(count)]
    sells[draw(st.integers(0, count - 1))] = True
    populations = {
        f"p{index}": {
            "count": draw(st.integers(1, 9)),
            "buys": draw(st.booleans()) or index == 0,
            "sells": sells[index],
            "spend": draw(st.floats(0.05, 1.0)),
            "money": {"distribution": draw(st.sampled_from(["equal", "exponential", "pareto"]))},
            "state": {"scale": draw(st.floats(0.2, 2.0))},
            "projections": {"init": "identity", "scale": draw(st.sampled_from([0.5, 1.0, 2.0]))} if lattice else {},
        }
        for index in range(count)
    }
    d = draw(st.sampled_from([1, 4])) if lattice else draw(st.integers(1, 6))
    market = {
        "d": d,
        "heads": draw(st.integers(1, 3)),
        "d_k": d if lattice else draw(st.integers(1, 5)),
        "d_v": d if lattice else draw(st.integers(1, 5)),
        "visibility": 0.0 if lattice else draw(st.floats(-2.0, 2.0)),
        "spend_rule": draw(st.sampled_from(["share", "unit"])),
        "unit": draw(st.floats(0.2, 2.0)),
        "mode": mode,
    }
    if round_kinds:
        market["response"] = draw(st.sampled_from(["large_d", "vmf", "sphere", "linear"]))
        forms = ["none", "ffn", "tap"] if market["response"] in ("large_d", "vmf") else ["none", "ffn"]
        for population in populations.values():
            form = draw(st.sampled_from(forms))
            population["correction"] = {"form": form, "hidden": 8, "scale": 0.5} if form == "ffn" else {"form": form}
            population["eta"] = draw(st.sampled_from([0.0, 0.5, 1.0]))
    seed = draw(st.integers(0, 2**31))
    batch = draw(st.integers(1, 3))
    built = rollout([scenario(populations=populations, run={"seed": seed}, **market)] * batch, dtype=dtype)
    state, economy = built.state, built.economy
    batch, agents, d = state.states.shape
    generator = torch.Generator().manual_seed(seed)
    lowest = 0.05 if dtype == "float64" else 0.25
    temperature = lowest + (5.0 - lowest) * torch.rand(batch, agents, generator=generator, dtype=torch.float64)
    kind = torch.rand(batch, agents, generator=generator)
    temperature = torch.where(kind < draw(st.floats(0, 0.6 if lattice else 0.3)), 0.0, temperature)
    temperature = torch.where(kind > 1 - draw(st.floats(0, 0.3)), math.inf, temperature)
    money = torch.where(torch.rand(batch, agents, generator=generator, dtype=torch.float64) < 0.15, 0.0, state.money)
    states = state.states
    if lattice:
        states = torch.randint(-2, 3, (batch, agents, d), generator=generator).to(states.dtype)
    state = state.replace(states=states, money=money, temperature=temperature.to(state.temperature.dtype))
    if draw(st.booleans()):  # a trade network, with agents who have nobody to buy from
        mask = torch.rand(agents, agents, generator=generator) < draw(st.floats(0.1, 0.9))
        mask[torch.rand(agents, generator=generator) < 0.2] = False
        economy = dataclasses.replace(economy, trade_mask=mask)
        if draw(st.booleans()):  # no room for the network's additive bias: the kernels read the boolean mask
            economy = dataclasses.replace(economy, memory_budget=float(agents))
    return state, economy


def on_device(frozen, device):
    """The same dataclass with every tensor field moved to ``device`` (the market step reads no other)."""
    fields = (field.name for field in dataclasses.fields(frozen))
    tensors = {name: getattr(frozen, name) for name in fields if isinstance(getattr(frozen, name), torch.Tensor)}
    return dataclasses.replace(frozen, **{name: tensor.to(device) for name, tensor in tensors.items()})


def on_meta(frozen):
    """The same dataclass with every tensor moved to the meta device (shapes only, no data)."""
    moved = {
        field.name: getattr(frozen, field.name).to("meta")
        for field in dataclasses.fields(frozen)
        if isinstance(getattr(frozen, field.name), torch.Tensor)
    }
    return dataclasses.replace(frozen, **moved)


def two_populations(**market):
    """40 humans at T = 1 and 24 AI agents at T = 0.1, unequal money, with market settings overridden."""
    populations = {
        "human": {"count": 40, "temperature": 1.0, "spend": 0.3, "money": {"distribution": "pareto"}},
        "ai": {"count": 24, "temperature": 0.1, "spend": 0.9, "money": {"distribution": "exponential"}},
    }
    return scenario(populations=populations, **market)
