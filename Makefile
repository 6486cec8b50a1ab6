# casgate: `make demo` runs a complete demo organisation, `make test` runs the test suite.
# Both set up what they need first (as root on Debian they install the system packages).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_PACKAGES := dovecot-imapd dovecot-pop3d dovecot-lmtpd dovecot-managesieved dovecot-sieve slapd ldap-utils chromium fonts-dejavu-core
BENCH_APT_PACKAGES := wrk
PYTEST_ARGS ?=
# The mitmproxy inspect addon's own virtualenv: mitmproxy's pins would hold back casgate's dependencies in $(VENV).
INSPECT_VENV := .venv-inspect
INSPECT_STAMP := $(INSPECT_VENV)/.installed

.PHONY: install demo test bench system-packages test-services clean help
.PHONY: test-inspect

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
	@$(MAKE) --no-print-directory test-inspect

# mitmproxy, and of casgate only what the addon imports (lxml); tests/conftest.py needs the whole suite's
# back ends, hence --noconftest. The .gitignore keeps the folder out of git status.
$(INSPECT_STAMP): pyproject.toml
	@test -x $(INSPECT_VENV)/bin/python || $(PYTHON) -m venv $(INSPECT_VENV)
	@echo '*' > $(INSPECT_VENV)/.gitignore
	$(INSPECT_VENV)/bin/python -m pip install -q --upgrade pip
	$(INSPECT_VENV)/bin/python -m pip install -q 'mitmproxy>=10' 'lxml>=5' 'pytest>=8' 'hypothesis>=6'
	$(INSPECT_VENV)/bin/python -m pip install -q --no-deps -e .
	@touch $(INSPECT_STAMP)

test-inspect: system-packages $(INSPECT_STAMP)
	$(INSPECT_VENV)/bin/python -m pytest -q --noconftest -W ignore::pytest.PytestConfigWarning $(PYTEST_ARGS) tests/test_eas_inspect.py

bench: install
	@PACKAGES="$(BENCH_APT_PACKAGES)" PYTHON="$(PYTHON)" bash tools/system-packages.sh
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .casgate-demo *.egg-info
