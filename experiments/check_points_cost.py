"""What a sweep's point check costs: the previous check_points (every point compiled) against this one.

The 64-point temperature-gap sweep (500 agents): the previous body compiled every point alone
(economy and round-0 state), keyed by its whole scenario as YAML, before the sweep compiled
every point again in its batch; now one point is compiled per set of compile inputs
(``econspin.economy.compile_inputs``), one for this sweep. The two are timed interleaved, the
median of 7 each; then the previous body's two parts alone.

Usage::

    python -m experiments.check_points_cost
"""

from __future__ import annotations

import statistics
import time

from econspin.scenario import Scenario, ScenarioError
from econspin.simulate import Rollout
from econspin.sweep import check_points, parse_grid, point_name, sweep_points

REPEATS = 7


def previous_check_points(points, dtype):
    """check_points as it was (main at b419bf9), verbatim but for this docstring."""
    checked = set()
    for overrides, scenario in points:
        text = scenario.to_yaml()
        if text in checked:
            continue
        checked.add(text)
        try:
            Rollout.create([scenario], [0], "cpu", dtype)
        except ScenarioError as error:
            raise ScenarioError(f"{point_name(overrides)}: {error}") from None


def median_seconds(function) -> float:
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    base = Scenario.from_yaml("scenarios/temperature_gap_sweep.yaml")
    points = sweep_points(base, [parse_grid("populations.ai.temperature=log:0.02:2:64")])
    times = {"previous": [], "now": []}
    for _ in range(REPEATS):
        for name, check in (("previous", previous_check_points), ("now", check_points)):
            started = time.perf_counter()
            check(points, "float32")
            times[name].append(time.perf_counter() - started)
    previous, now = statistics.median(times["previous"]), statistics.median(times["now"])
    print(f"median of {REPEATS} interleaved: previous {previous * 1e3:.0f} ms, now {now * 1e3:.1f} ms, "
          f"ratio {previous / now:.0f}x")
    keys = median_seconds(lambda: [scenario.to_yaml() for _, scenario in points])
    builds = median_seconds(lambda: [Rollout.create([scenario], [0], "cpu", "float32") for _, scenario in points])
    print(f"the previous body's parts: YAML keys {keys * 1e3:.0f} ms, 64 compilations {builds * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
