# Two commands a newcomer needs: `make demo` and `make test`. Both build the
# virtualenv from scratch when it is missing, so they work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-node test test-long test-fast bench bench-e2e bench-recovery bench-efficiency figures clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# a controller and three replicated NAT nodes under traffic; a primary worker, then a node, SIGKILLed
demo: $(STAMP)
	$(PY) -m deft.tools.demo_cluster

# one node: its stamping unit and ingress SIGKILLed under traffic (their hot standbys take over)
demo-node: $(STAMP)
	$(PY) -m deft.tools.demo

test: $(STAMP)
	$(PY) -m pytest -q --durations=20 tests

test-long: $(STAMP)
	DEFT_LONG=1 $(PY) -m pytest -q --durations=20 tests

test-fast: $(STAMP)
	$(PY) -m pytest -q tests -m "not slow"

bench: $(STAMP)
	$(PY) -m pytest -q benchmarks --benchmark-only --benchmark-columns=min,median,ops

bench-e2e: $(STAMP)
	$(PY) benchmarks/e2e_rates.py

bench-recovery: $(STAMP)
	$(PY) benchmarks/failover_recovery.py

# every target of the efficiency issue in one run beside the reference NAT (JSON in efficiency.json)
bench-efficiency: $(STAMP)
	$(PY) benchmarks/efficiency.py --json efficiency.json

# the paper's figures on examples/cluster, with the paper's numbers beside ours: docs/figures/*.png
figures: $(STAMP)
	$(PY) -m pip install -q -e '.[test,figures]'
	$(PY) benchmarks/figures.py $(if $(BEFORE),--before $(BEFORE))

clean:
	rm -rf $(VENV) build *.egg-info
