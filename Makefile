# igbeam developer commands. `make test` and `make demo` work from a fresh clone.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test lint browser demo bench bench-report bench-scale bench-memory bench-engine bench-adaptive bench-cnn bench-multi-output clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Headless Chromium for the report's browser tests: installed when missing and this machine
# can (root, apt-get, a network); otherwise those tests skip and pytest -rs prints why.
browser:
	@if [ -n "$$IGBEAM_CHROMIUM" ] || command -v chromium >/dev/null 2>&1 \
	    || command -v chromium-browser >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "make: installing chromium for the browser tests (apt-get)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
	    >/dev/null 2>&1 || echo "make: apt-get could not install chromium"; \
	fi; \
	command -v chromium >/dev/null 2>&1 \
	  || echo "make: no chromium here: the report's browser tests will skip"

test: lint browser
	$(PY) -m pytest -q -rs tests

demo: $(STAMP)
	$(PY) -m pipeline.demo

bench: $(STAMP)
	$(PY) benchmarks/bench_engine.py
	$(PY) benchmarks/bench_throughput.py
	$(PY) benchmarks/bench_adaptive.py
	$(PY) benchmarks/bench_scale.py
	$(PY) benchmarks/bench_report.py
	$(PY) benchmarks/bench_memory.py --examples 20000 --variants
	$(PY) benchmarks/bench_cnn.py
	$(PY) benchmarks/bench_cnn.py --encoding png
	$(PY) benchmarks/bench_multi_output.py

bench-report: $(STAMP)
	$(PY) benchmarks/bench_report.py

bench-scale: $(STAMP)
	$(PY) benchmarks/bench_scale.py

bench-engine: $(STAMP)
	$(PY) benchmarks/bench_engine.py

bench-adaptive: $(STAMP)
	$(PY) benchmarks/bench_adaptive.py

bench-memory: $(STAMP)
	$(PY) benchmarks/bench_memory.py --examples 20000 --variants

bench-cnn: $(STAMP)
	$(PY) benchmarks/bench_cnn.py
	$(PY) benchmarks/bench_cnn.py --encoding png

bench-multi-output: $(STAMP)
	$(PY) benchmarks/bench_multi_output.py

clean:
	rm -rf $(VENV) demo_out benchmarks/out
