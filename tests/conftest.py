"""Test setup: the helpers module on the path, one torch thread per worker, fixed hypothesis examples."""

import os
import sys
from pathlib import Path

import torch
import torch._inductor.config
from hypothesis import Phase, settings

from econspin.inductor_setup import prepare_code_generation

sys.path.insert(0, str(Path(__file__).parent))
# pytest-xdist runs two workers on two cores: one thread each avoids oversubscription,
# which on a loaded machine makes small tensor work ten times slower
torch.set_num_threads(1)
# the compiled paths do this before they compile; tests that call torch.compile themselves get it too
prepare_code_generation()
# Inductor compiles in-process: its default pool of compile workers (one a core) only competes
# with the other pytest worker for the two cores, and each test process would start its own pool
torch._inductor.config.compile_threads = 1

# Property tests draw the same examples on every run by default ("fixed"), so that a run of the
# suite says the same thing twice and CI cannot fail on an example no one has seen; the
# "explore" profile draws new examples every run, to look for economies the fixed ones miss:
# HYPOTHESIS_PROFILE=explore make test (docs/testing.md). Settings a test names itself still apply.
settings.register_profile("fixed", derandomize=True)
settings.register_profile("explore", derandomize=False)
# mutation runs (tests/mutation_triage.py, make mutation): the fixed examples, but a failing one is
# neither shrunk nor searched past: a mutant only needs to fail (docs/testing.md, "Mutation testing")
settings.register_profile(
    "mutation", derandomize=True, phases=[Phase.explicit, Phase.generate], report_multiple_bugs=False
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fixed"))
