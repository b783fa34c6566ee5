# Entry points. `make setup` then `make benchmark`; `make test` is what CI runs.
PY_SYS ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch 2.13.0 is the CPU build on this project's machines; GPU users: see README "GPU".
TORCH_SPEC ?= torch==2.13.0
OMNIGLOT_ROOT ?= ../shared/data/omniglot
export OMNIGLOT_ROOT

.PHONY: setup test perf benchmark paper-tables readme-results gpu-results clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY_SYS) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

test: setup
	$(PY) -m pytest -q

perf: setup
	$(PY) -m pytest -q tests/perf --benchmark-only --benchmark-json=results/perf/cpu-benchmarks.json
	$(PY) -m benchmarks.limits

benchmark: setup
	$(PY) -m benchmarks.cli run --suite default
	$(MAKE) paper-tables

paper-tables: setup
	$(PY) -m benchmarks.cli tables

gpu-results: setup
	bash benchmarks/gpu_results.sh

clean:
	rm -rf $(VENV) .pytest_cache .benchmarks
