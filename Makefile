# igbeam developer commands. `make test` and `make demo` work from a fresh clone.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test lint demo bench clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) -m pipeline.demo

bench: $(STAMP)
	$(PY) benchmarks/bench_throughput.py

clean:
	rm -rf $(VENV) demo_out benchmarks/out
