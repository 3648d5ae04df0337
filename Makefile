# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test test-all mutation mutation-sample mutation-triage mutation-score lint clean

install: $(VENV)/.installed

# torch==2.13.0 first: on these machines it resolves to a CPU build from local disk,
# and the package's own torch requirement is then already met.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,mesa,viz,ray]"
	-bash .ci/install-browser
	touch $@

demo: install
	$(VENV)/bin/econspin run scenarios/human_vs_ai.yaml --steps 200 --out runs/demo

test: install
	$(PY) -m pytest -q -n 2

test-all: install
	$(PY) -m pytest -q -n 2 -m "slow or not slow"

# Mutation testing (docs/testing.md): slow, and not part of `make test` or CI. mutmut copies the
# code into mutants/, runs the default (non-slow) suite against every mutant of the modules that
# [tool.mutmut] in pyproject.toml lists, keeps the results there (a second run tests only what
# changed; rm -rf mutants for a fresh score) and prints the score per module.
#   make mutation                          every mutant (hours on a busy 2-core machine)
#   make mutation MUTATE='econspin.metrics.*'    only these mutant names (globs; always re-run)
#   make mutation-sample                   a seeded sample of the large modules (SAMPLE)
#   make mutation-score                    the score of every mutant run so far, nothing more
#   make mutation-triage MODULE=fused_sampled TESTS='tests/test_fused_sampled.py tests/test_fused.py'
#                                          every mutant of one module against those files only (leads)
MUTATE ?=
MUTATION_CHILDREN ?= 2
SAMPLE ?= response=0.3 market=0.15 choice=0.15 round=0.15 fused=0.15 fused_sampled=0.3 wood=0.3
MUTMUT := nice -n 19 $(VENV)/bin/mutmut run --max-children $(MUTATION_CHILDREN)

mutation: $(VENV)/.mutation-installed
	$(MUTMUT) $(MUTATE)
	$(PY) tests/mutation_score.py score

# mutmut makes the mutants and times the tests on its first run, so that run is kept to the one
# mutant of metrics.metric_names (metrics.py is in every sample); then the sampled mutants not
# yet checked are run
mutation-sample: $(VENV)/.mutation-installed
	test -d mutants/econspin || $(MUTMUT) 'econspin.metrics.x_metric_names__mutmut_*'
	names="$$($(PY) tests/mutation_score.py sample $(SAMPLE))"; \
	if [ -n "$$names" ]; then $(MUTMUT) $$names; fi
	$(PY) tests/mutation_score.py score $(SAMPLE)

# the module's mutants against its own test files, pytest -x, in children forked from one clean
# process: minutes where `make mutation` takes hours; a survivor is a lead for `mutmut run NAME`
MODULE ?= fused_sampled
TESTS ?= tests/test_fused_sampled.py tests/test_fused.py
mutation-triage: $(VENV)/.mutation-installed
	nice -n 19 $(PY) tests/mutation_triage.py $(MODULE) $(TESTS) --children $(MUTATION_CHILDREN)

mutation-score:
	$(PY) tests/mutation_score.py score

$(VENV)/.mutation-installed: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[test,mesa,mutation]"
	touch $@

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis mutants
