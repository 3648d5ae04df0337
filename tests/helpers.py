"""Small economies for tests."""

from __future__ import annotations

import pytest
import torch

from econspin import Scenario
from econspin.compiled import missing_compiler
from econspin.randomness import dynamics_keys
from econspin.simulate import Rollout
from econspin.triton_blocks import triton_missing

MISSING_COMPILER = missing_compiler(torch.device("cpu"))  # why torch.compile cannot build CPU kernels here, or None
needs_compiler = pytest.mark.skipif(MISSING_COMPILER is not None, reason=MISSING_COMPILER or "")
# run.kernel: triton's programs, interpreted on a CPU (econspin.triton_blocks.triton_missing says why not)
needs_triton = pytest.mark.skipif(triton_missing() is not None, reason="needs the triton package")

# A sampled round at d >= 2 draws its spins by Wood's von Mises-Fisher sampler, whose traced draw takes
# most of the ~100 s Inductor spends on such a round with an empty cache; at d = 1 (Glauber) the round
# compiles in about a third of that. Compiled-round tests about something other than the spin draw (the
# blocks traced or an operator, a network's mask, the Triton programs' break) take their sampled case at
# d = 1 by default and at d = 4 in the slow set; the default run compiles one whole vMF round
# (tests/test_traced_blocks.py, ONE_BLOCK_ROUNDS).
COMPILED_ROUND_MODES = [  # (mode, d)
    pytest.param(("expected", 4), id="expected"),
    pytest.param(("sampled", 1), id="sampled-d1"),
    pytest.param(("sampled", 4), id="sampled", marks=pytest.mark.slow),
]


def scenario(**market) -> Scenario:
    """Two populations of a few agents each, with market settings overridden."""
    populations = market.pop("populations", None) or {
        "human": {"count": 7, "temperature": 1.0, "spend": 0.2},
        "ai": {"count": 5, "temperature": 0.2, "spend": 0.3},
    }
    run = market.pop("run", {})
    return Scenario.from_dict(
        {"populations": populations, "market": {"d": 4, **market}, "run": {"device": "cpu", **run}}
    )


def rollout(scenarios, replicas=None, dtype="float64") -> Rollout:
    """A CPU rollout of the given scenarios (one batch element each)."""
    if not isinstance(scenarios, list):
        scenarios = [scenarios]
    replicas = replicas if replicas is not None else list(range(len(scenarios)))
    return Rollout.create(scenarios, replicas, "cpu", dtype)


def shared_start_ensemble(scenario: Scenario, replicas: int, dtype="float64") -> Rollout:
    """``replicas`` copies of one economy in one initial state, each with its own sampling stream.

    Every element starts from replica 0's initial state; its random key is that of replica r,
    so element r draws what replica r of a run would draw.
    """
    run = rollout([scenario] * replicas, replicas=[0] * replicas, dtype=dtype)
    keys = dynamics_keys([scenario.run.seed] * replicas, list(range(replicas)))
    run.state = run.state.replace(random_keys=keys)
    return run


def generated_loops(code: list[str], extent: int) -> list[str]:
    """The top-level loops over ``extent`` values in Inductor's generated C++ (``run_and_get_code``'s sources)."""
    source = "\n".join(code)
    loops = source[source.index('extern "C"') :].split("\n    {\n")
    return [loop for loop in loops if f"x0<static_cast<int64_t>({extent}L)" in loop]
