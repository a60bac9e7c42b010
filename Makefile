# The two commands of the README, and what they need. Each target sets itself up.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := mosquitto influxdb nats-server
# Arguments passed through, e.g. `make lab ARGS="--config lab.toml"` or `make test PYTEST="-k mppt"`.
ARGS ?=
PYTEST ?=

.PHONY: lab test bench bench-ingest bench-drain bench-labjack bench-fleet lint setup system clean

lab: setup
	$(PY) -m soclab.dev.lab $(ARGS)

test: setup
	$(PY) -m pytest $(PYTEST)

bench: bench-ingest bench-drain bench-labjack bench-fleet

bench-ingest: setup
	$(PY) bench/ingest.py $(ARGS)

bench-drain: setup
	$(PY) bench/drain.py $(ARGS)

bench-labjack: setup
	$(PY) bench/labjack_stream.py $(ARGS)

bench-fleet: setup
	$(PY) bench/fleet.py $(ARGS)

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

setup: system $(VENV)/.installed

# Debian/Ubuntu packages: the local broker and database, nats-server (the clustered broker tier)
# (not started as services here; soclab starts its own instances on free ports), what `python3
# -m venv` needs, openssl (the broker's CA script), debootstrap (the Ansible tests converge the
# roles on a Debian root they build), mosquitto-clients, jq and tmux (the tests of `soclab
# watch` and of the README's recipes) and chromium (the analysis tests render the run report to
# a PNG, headless).
system:
	@missing=""; \
	command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	command -v influxd >/dev/null || missing="$$missing influxdb"; \
	command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || missing="$$missing nats-server"; \
	python3 -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || missing="$$missing debootstrap"; \
	command -v mosquitto_sub >/dev/null || missing="$$missing mosquitto-clients"; \
	command -v jq >/dev/null || missing="$$missing jq"; \
	command -v tmux >/dev/null || missing="$$missing tmux"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  $$sudo apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing \
	    && { $$sudo systemctl disable --now mosquitto influxdb nats-server >/dev/null 2>&1 || true; }; \
	fi

$(VENV)/.installed: requirements/dev.txt requirements/constraints.txt $(wildcard */pyproject.toml)
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c requirements/constraints.txt -r requirements/dev.txt
	touch $@

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
