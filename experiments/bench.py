"""The full `econspin bench` (N up to 16384, B in {1, 16}), its JSON kept in experiments/results/bench/.

    OMP_WAIT_POLICY=PASSIVE python -m experiments.bench --threads 2

Thin wrapper over :mod:`econspin.bench`; the same as ``econspin bench --json FILE``. On a
machine shared with other work, OMP_WAIT_POLICY=PASSIVE keeps OpenMP workers from spinning
against each other (docs/performance.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

from econspin.cli import app

if __name__ == "__main__":
    if "--json" not in sys.argv:
        target = Path(__file__).parent / "results" / "bench" / "bench_cpu.json"
        sys.argv += ["--json", str(target)]
    app(["bench", *sys.argv[1:]])
