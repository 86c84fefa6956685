# Two entry points for a newcomer: `make run` and `make test`.
# Both create .venv and install with constraints.txt (torch pinned to the CPU build).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
HOST ?= 127.0.0.1
PORT ?= 8000
MODEL ?= autoglm-demo

.PHONY: run test venv venv-test clean

$(VENV)/.base: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt -e .
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(PIP) install -q -c constraints.txt -e ".[test,gateway,train,kubeflow,recommend]"
	touch $@

venv: $(VENV)/.base
venv-test: $(VENV)/.test

run: venv
	$(VENV)/bin/autoglm serve --model $(MODEL) --host $(HOST) --port $(PORT)

test: venv-test
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

clean:
	rm -rf $(VENV)
