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

.PHONY: demo test test-fast check engines promtool proto
demo: $(STAMP)
	$(VENV)/bin/model-router demo

test: $(STAMP) engines
	$(VENV)/bin/python -m mypy
	$(VENV)/bin/python -m pytest -q

# The pure, in-process and quick loopback tiers: what to run while editing. Without the
# loopback tier too: .venv/bin/python -m pytest -m "not slow and not loopback"
test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m "not slow"

# The engines some tests run as child processes on 127.0.0.1: promtool (alert-rule unit tests),
# prometheus and redis-server (tests/fleet), and Debian's chromium (headless:
# tests/test_report.py renders `report --html` in it and checks the screenshot and the DOM).
# Debian packages are installed when a command is missing and apt-get is usable as root;
# otherwise the tests that need them are skipped with the reason. (The packages may try to start
# their system services; the tests never use those, they start their own on free ports.)
# A container engine for tests/test_docker.py is not installed here: building the image needs
# its base image from a container registry, which this project's machines (and CI) cannot
# reach, so the test would skip anyway after minutes of installing; where docker or podman
# (`apt-get install podman runc`) and a registry are available, the test builds and runs it.
ENGINE_COMMANDS := promtool:prometheus prometheus:prometheus redis-server:redis-server \
	chromium:chromium
engines:
	@missing=; for pair in $(ENGINE_COMMANDS); do \
	  command -v "$${pair%%:*}" >/dev/null 2>&1 || case " $$missing " in \
	    *" $${pair#*:} "*) ;; *) missing="$$missing $${pair#*:}" ;; esac; done; \
	[ -z "$$missing" ] || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -qq --no-install-recommends $$missing >/dev/null; } || \
	  echo "engines unavailable (Debian packages:$$missing): install them with apt-get as root;" \
	    "the tests that need them (alert rules, tests/fleet, the image, the HTML report)" \
	    "will be skipped"

# The old name of the target above.
promtool: engines

# Regenerate the gRPC V2 messages (router/dataplane/oip) from inference.proto; needs
# grpcio-tools, which nothing else needs (the generated files are committed).
proto: $(STAMP)
	$(VENV)/bin/pip install -q grpcio-tools
	cd router/dataplane/oip && ../../../$(VENV)/bin/python -m grpc_tools.protoc -I. \
	  --python_out=. --pyi_out=. inference.proto

check: $(STAMP)
	$(VENV)/bin/model-router check -c config/router.yaml
