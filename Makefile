# Two commands on a fresh Debian machine (see README):
#   make demo   creates the virtualenv, installs svcdoctor, explains svc-nodeport on the demo bundle
#   make test   installs what the tests need (apt packages as root, the virtualenv) and runs every suite,
#               the lab (real dockerd, real containers, real netfilter) included
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test lint venv system-deps bench clean

$(VENV)/.installed: pyproject.toml
	@# a fresh Debian has python3 but not its venv module (package python3-venv)
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv; \
	  else echo "python3 has no venv module: sudo apt-get install python3-venv" >&2; exit 1; fi; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/svcdoctor explain svc-nodeport --demo

system-deps:
	./scripts/install-system-deps.sh

test: system-deps venv lint
	$(PY) -m pytest -q -ra $(PYTEST_ARGS) tests

# pyflakes' checks: unused imports and variables, undefined names
lint: venv
	$(VENV)/bin/ruff check --select F --output-format concise svcdoctor tests benchmarks tools

# every benchmark runs; the ones that missed their goal are named at the end (and make fails)
bench: venv
	@missed=""; for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || missed="$$missed $$b"; done; \
	if [ -n "$$missed" ]; then echo "missed their goal:$$missed"; exit 1; fi; echo "every benchmark met its goal"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
