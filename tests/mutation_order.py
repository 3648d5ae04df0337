"""pytest plugin for ``make mutation`` only (loaded by [tool.mutmut] in pyproject.toml).

mutmut hands each mutant's covering tests to pytest in no particular order and stops at the
first failure (-x). Sorting them by the durations mutmut measured on the clean code
(mutants/mutmut-stats.json; pytest runs inside mutants/) runs the fastest tests first, so a
mutant that any quick test catches dies in well under a second. It changes no verdict.
"""

from __future__ import annotations

import json
from pathlib import Path


def pytest_collection_modifyitems(session, config, items):
    stats = Path("mutmut-stats.json")
    if not stats.exists():
        return
    durations = json.loads(stats.read_text()).get("duration_by_test", {})
    items.sort(key=lambda item: durations.get(item.nodeid, 0.0))
