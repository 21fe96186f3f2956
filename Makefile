# tuckerflow developer entry points (GNU make). Works from a fresh clone:
# the first target that needs the virtual environment creates it.
#
#   make test    lint + format check + types + import layering + backend probe + tests
#   make demo    run the demo (python -m tuckerflow.demo)
#   make docs    build the HTML docs, warnings are errors
#   make bench   run all benchmarks into bench-results/
#   make gpu-check  CUDA/CuPy tests and GPU benchmarks into bench-results/ (one line without a GPU)
#   make format  apply ruff's formatter and autofixes
#   make clean   remove build outputs and caches (keeps .venv)

VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
LINT_PATHS := tuckerflow tests backends conftest.py

.PHONY: all install test lint typecheck layers probe pytest fuzz demo docs bench gpu-check format clean distclean

all: test

# Pins first (torch must come from backends/torch.txt: an unpinned torch
# requirement would pull the CUDA build), then the package itself.
$(STAMP): pyproject.toml $(wildcard backends/*.txt)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -r backends/numpy.txt -r backends/torch.txt -r backends/test.txt
	$(PIP) install -q -e '.[test,docs]'
	touch $@

install: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

typecheck: $(STAMP)
	$(VENV)/bin/mypy

layers: $(STAMP)
	$(VENV)/bin/lint-imports

# the bad-input fuzz with its figures (10,000 calls; the test suite runs a few hundred)
fuzz: $(STAMP)
	$(PY) -m tuckerflow.testing.fuzz --calls 10000

probe: $(STAMP)
	$(PY) backends/probe.py --backend all

pytest: $(STAMP)
	HYPOTHESIS_PROFILE=ci $(PY) -m pytest -n 2 -q

test: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(PY) backends/probe.py --backend all
	HYPOTHESIS_PROFILE=ci $(PY) -m pytest -n 2 -q

demo: $(STAMP)
	$(PY) -m tuckerflow.demo

docs: $(STAMP)
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html

bench: $(STAMP)
	$(PY) -m tuckerflow.bench all --out bench-results

# No install step: a GPU machine brings its own CUDA build of torch (and CuPy). Set
# GPU_PY to its interpreter; GPU_CHECK_FLAGS=--require makes a missing GPU an error.
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))
gpu-check:
	@$(GPU_PY) backends/gpu_check.py --out bench-results $(GPU_CHECK_FLAGS)

format: $(STAMP)
	$(VENV)/bin/ruff check --fix $(LINT_PATHS)
	$(VENV)/bin/ruff format $(LINT_PATHS)

clean:
	rm -rf docs/_build docs/generated build dist bench-results .pytest_cache .ruff_cache .mypy_cache .hypothesis
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
	find . -path ./$(VENV) -prune -o -name '*.egg-info' -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
