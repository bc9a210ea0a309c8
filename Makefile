# Two entry points: `make demo` (the main job) and `make test` (the suite).
# Each creates .venv with python3 (3.11+) and installs the project into it.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

.PHONY: demo test check
demo: $(STAMP)
	$(VENV)/bin/model-router demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

check: $(STAMP)
	$(VENV)/bin/model-router check -c config/router.yaml
