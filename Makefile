# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test test-all lint clean

install: $(VENV)/.installed

# torch==2.13.0 first: on these machines it resolves to a CPU build from local disk,
# and the package's own torch requirement is then already met.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,mesa,viz]"
	-bash .ci/install-browser
	touch $@

demo: install
	$(VENV)/bin/econspin run scenarios/human_vs_ai.yaml --steps 200 --out runs/demo

test: install
	$(PY) -m pytest -q -n 2

test-all: install
	$(PY) -m pytest -q -n 2 -m "slow or not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
