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

.PHONY: demo test test-fast check promtool
demo: $(STAMP)
	$(VENV)/bin/model-router demo

test: $(STAMP) promtool
	$(VENV)/bin/python -m mypy
	$(VENV)/bin/python -m pytest -q

# The pure, in-process and quick loopback tiers: what to run while editing. Without the
# loopback tier too: .venv/bin/python -m pytest -m "not slow and not loopback"
test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m "not slow"

# promtool runs the alert-rule unit tests; installed from Debian's prometheus package when
# missing and apt-get can (otherwise those tests are skipped with the reason).
promtool:
	@command -v promtool >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
	  [ "$$(id -u)" = 0 ] && (apt-get update -qq && \
	  apt-get install -y -qq --no-install-recommends prometheus >/dev/null) || \
	  echo "promtool unavailable: alert rule tests will be skipped"; }

check: $(STAMP)
	$(VENV)/bin/model-router check -c config/router.yaml
