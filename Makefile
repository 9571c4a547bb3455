# Two entry points for a fresh clone: `make demo` and `make test`.
# Everything installs into a local virtualenv; torch is pinned first so that pip takes the
# CPU wheel on machines that have it instead of pulling a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-fast lint format demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

format: install
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

# The whole suite, slow end-to-end tests included (CI runs exactly this).
test: lint
	$(PY) -m pytest -q

# Unit tests only: seconds.
test-fast: install
	$(PY) -m pytest -q -m "not slow"

demo: install
	$(VENV)/bin/rpg demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
