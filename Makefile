# casgate: `make demo` runs a complete demo organisation, `make test` runs the test suite.
# Both set up what they need first (as root on Debian they install the system packages).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_PACKAGES := dovecot-imapd dovecot-pop3d dovecot-lmtpd dovecot-managesieved dovecot-sieve
BENCH_APT_PACKAGES := wrk
PYTEST_ARGS ?=

.PHONY: install demo test bench system-packages test-services clean help

help:
	@echo "make install  set up .venv, the project and the system packages it needs (starts nothing)"
	@echo "make demo     install, then run 'casgate demo' (Ctrl-C stops everything)"
	@echo "make test     install, make sure PostgreSQL is reachable, run the whole test suite"
	@echo "make bench    install, run the benchmarks, write docs/benchmarks.md"

install: system-packages $(STAMP)

system-packages:
	@PACKAGES="$(APT_PACKAGES)" PYTHON="$(PYTHON)" bash tools/system-packages.sh

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $(STAMP)

demo: install
	$(BIN)/casgate demo

test-services:
	@bash tools/test-services.sh

test: install test-services
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: install
	@PACKAGES="$(BENCH_APT_PACKAGES)" PYTHON="$(PYTHON)" bash tools/system-packages.sh
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .casgate-demo *.egg-info
