"""The sweep grammar."""

import math

import pytest

from econspin.scenario import ScenarioError
from econspin.sweep import Grid, parse_grid, parse_values


def test_linear_log_and_list_grids():
    assert parse_values("0:1:5", "x") == (0.0, 0.25, 0.5, 0.75, 1.0)
    values = parse_values("log:0.01:1:3", "x")
    assert all(math.isclose(a, b) for a, b in zip(values, (0.01, 0.1, 1.0)))
    assert parse_values("0.5,2,sphere,true", "x") == (0.5, 2, "sphere", True)
    assert parse_values("3", "x") == (3,)
    assert parse_grid("populations.ai.temperature=1:2:2") == Grid("populations.ai.temperature", (1.0, 2.0))


@pytest.mark.parametrize("spec", ["log:-1:1:3", "log:1:2", "0:1:0", "a:b:c", "1,,2", "1:2:3:4:5"])
def test_bad_specs_raise(spec):
    with pytest.raises(ScenarioError):
        parse_values(spec, "--grid key")
