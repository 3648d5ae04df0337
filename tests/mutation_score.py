"""Mutation-testing bookkeeping for ``make mutation`` (reads mutmut's results under mutants/).

    python tests/mutation_score.py score [MODULE=FRACTION ...]      the score, per module
    python tests/mutation_score.py survivors [MODULE=FRACTION ...]  surviving mutants, one a line
    python tests/mutation_score.py sample MODULE=FRACTION ...       sampled mutants not yet checked

A full run of every mutant takes hours on a loaded 2-core machine, so a run may cover a
seeded random sample instead: ``response=0.3`` keeps 30% of response.py's mutants, drawn
with a fixed seed per module (the same sample on every machine, as long as the code is the
same); modules not named are kept whole. ``sample`` prints the names that mutmut still has
to run, ``score`` and ``survivors`` count only the sampled mutants.

Score = (killed + timeout) / (all mutants - skipped), the definition of ``mutmut badge``: a
mutant that makes the tests run past their time limit is noticed, and a mutant that no test
reaches ("no tests") counts as not caught. ``mutmut show NAME`` prints a mutant's diff.
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from pathlib import Path

# mutmut 3's exit codes (mutmut.stats.status_by_exit_code), repeated so that this script
# needs only the standard library
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped",
          35: "suspicious", 36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout",
          -11: "segfault", -9: "segfault", 2: "not checked", None: "not checked"}
COLUMNS = ["killed", "survived", "timeout", "no tests", "suspicious", "segfault", "skipped", "not checked"]


def results() -> dict[str, dict[str, int | None]]:
    """Exit code of every mutant, by module (``econspin/market.py``) and mutant name."""
    return {
        str(meta.relative_to("mutants"))[: -len(".meta")]: json.loads(meta.read_text())["exit_code_by_key"]
        for meta in sorted(Path("mutants").rglob("*.py.meta"))
    }


def sampled(module: str, names, fractions: dict[str, float]) -> list[str]:
    """The seeded sample of a module's mutant names (all of them unless its fraction is < 1)."""
    names = sorted(names)
    fraction = fractions.get(Path(module).stem, 1.0)
    if fraction >= 1:
        return names
    return sorted(random.Random(f"econspin-mutation-{Path(module).stem}").sample(names, round(fraction * len(names))))


def score(codes_by_module, fractions) -> None:
    rows, total = [], Counter()
    for module, codes in codes_by_module.items():
        names = sampled(module, codes, fractions)
        if not names:
            continue
        counts = Counter(STATUS.get(codes[name], "suspicious") for name in names)
        share = fractions.get(Path(module).stem, 1.0)
        label = module if share >= 1 else f"{module} ({share:.0%})"
        rows.append((label, counts))
        total += counts
    rows.append(("all", total))
    print(f"{'module':<32}" + "".join(f"{name:>12}" for name in COLUMNS) + f"{'score':>8}")
    for name, counts in rows:
        tested = sum(counts.values()) - counts["skipped"] - counts["not checked"]
        value = f"{100 * (counts['killed'] + counts['timeout']) / tested:.1f}%" if tested else "-"
        print(f"{name:<32}" + "".join(f"{counts[key]:>12}" for key in COLUMNS) + f"{value:>8}")


def main(argv: list[str]) -> int:
    command, specs = (argv[0], argv[1:]) if argv else ("score", [])
    fractions = {}
    for spec in specs:
        module, _, fraction = spec.partition("=")
        fractions[module] = float(fraction)
    codes_by_module = results()
    if not codes_by_module:
        print("no mutmut results under mutants/: run `make mutation` first", file=sys.stderr)
        return 1
    if command == "score":
        score(codes_by_module, fractions)
    elif command in ("survivors", "sample"):
        wanted = {"survivors": ("survived",), "sample": ("not checked",)}[command]
        for module, codes in codes_by_module.items():
            for name in sampled(module, codes, fractions):
                if STATUS.get(codes[name], "suspicious") in wanted:
                    print(name)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
