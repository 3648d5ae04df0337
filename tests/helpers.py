"""Small economies for tests."""

from __future__ import annotations

from econspin import Scenario
from econspin.randomness import STREAM_DYNAMICS, derive_seed, make_generator
from econspin.simulate import Rollout


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
    """``replicas`` copies of one economy in one initial state, each with its own sampling stream."""
    run = rollout([scenario] * replicas, replicas=[0] * replicas, dtype=dtype)
    seed = scenario.run.seed
    streams = tuple(make_generator(derive_seed(seed, STREAM_DYNAMICS, r)).get_state() for r in range(replicas))
    run.state = run.state.replace(random_states=streams)
    return run
