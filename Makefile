# Two entry points for a fresh clone: `make demo` and `make test` (`make docs` builds the site).
# Everything installs into a local virtualenv; torch is pinned first so that pip takes the
# CPU wheel on machines that have it instead of pulling a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-fast lint format demo docs docs-serve bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev,docs]'
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

format: install
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

# The documentation site into site/, offline, failing on any broken link or reference; the
# reference pages are generated from the code while it builds (docs/hooks/reference.py).
docs: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet

docs-serve: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve

# The whole suite, slow end-to-end tests included, after lint and the docs build (CI runs
# exactly this).
test: lint docs
	$(PY) -m pytest -q

# Unit tests only: seconds.
test-fast: install
	$(PY) -m pytest -q -m "not slow"

demo: install
	$(VENV)/bin/rpg demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache site
