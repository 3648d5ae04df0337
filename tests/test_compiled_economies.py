"""The compiled round against the eager round over random economies (tests/fused_cases.py's ``economies``).

The fixed cases of tests/test_compiled_round.py take the compiled round's paths one at a time.
Here hypothesis draws the economies that every kernel's equivalence tests read: shapes, heads,
populations that only buy or only sell, budgets, networks with and without room for their
additive bias, rows at T = 0 and T = inf, exact ties; and the round's other settings (the
response, each population's correction and eta: ``round_kinds``). One round compiled (``run.compile:
default``: the blocks traced into the graph where one block holds the round, the blocks'
operator elsewhere) must give the eager round's states, money and trade.

Tolerances as in tests/test_compiled_round.py: 1e-12 of each tensor's largest value in float64;
in float32 1e-5 (states, choice statistics) and 1e-6 (money and revenue, float64 numbers that
carry the working precision's rounding). Sampled mode is drawn in float64 only: in float32 a
uniform within rounding of a boundary between two sellers may draw either of them, compiled or
eager (docs/performance_log.md, "The blocks traced into the compiled round").

Each example compiles afresh (seconds on the CPU): a few run by default, more marked slow.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from fused_cases import economies
from helpers import needs_compiler
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from test_compiled_round import FIELDS, close, fresh_compiler  # noqa: F401 (autouse)

from econspin.round import step

# float32 tolerances: float64 numbers carrying the working precision's rounding; every other field 1e-5
# (float64 takes 1e-12 for each)
FLOAT32_MONEY = {"money": 1e-6, "revenue": 1e-6, "spending": 1e-6}

DRAWN = st.sampled_from(["expected", "sampled"]).flatmap(lambda mode: economies(mode, round_kinds=True))


def assert_compiled_round_equals_eager(drawn) -> None:
    """One round of the drawn economy eager and compiled: every field within its tolerance."""
    state, economy = drawn
    float64 = state.states.dtype == torch.float64
    assume(float64 or economy.mode == "expected")
    torch._dynamo.reset()  # every example its own shapes: a fresh compile, no recompilation limit
    with torch.no_grad():
        eager = step(state, economy)
        compiled = step(state, dataclasses.replace(economy, compile="default"))
    for name in FIELDS:
        tolerance = FLOAT32_MONEY.get(name, 1e-5)
        want, got = getattr(eager, name), getattr(compiled, name)
        assert want.shape == got.shape and want.dtype == got.dtype, name
        assert close(want, got, 1e-12 if float64 else tolerance), f"{name}: {(want - got).abs().max()}"
    assert torch.allclose(compiled.money.sum(1), eager.money.sum(1), rtol=1e-12, atol=0)  # money conserved


@needs_compiler
@given(DRAWN)
@settings(max_examples=4, deadline=None, derandomize=True)
def test_a_compiled_round_equals_the_eager_round_over_random_economies(drawn):
    assert_compiled_round_equals_eager(drawn)


@needs_compiler
@pytest.mark.slow
@given(DRAWN)
@settings(max_examples=40, deadline=None, derandomize=True)
def test_a_compiled_round_equals_the_eager_round_over_many_random_economies(drawn):
    assert_compiled_round_equals_eager(drawn)
