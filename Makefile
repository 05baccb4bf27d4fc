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

bench: venv
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
