# Two entry points for a newcomer: `make run` and `make test`.
# Both create .venv and install with constraints.txt (torch pinned to the CPU build).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
HOST ?= 127.0.0.1
PORT ?= 8000
MODEL ?= autoglm-demo

.PHONY: run test venv venv-test clean llamacpp-if-built llamacpp-wheel

$(VENV)/.base: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt -e .
	touch $@

$(VENV)/.test: $(VENV)/.base $(VENV)/.system
	$(PIP) install -q -c constraints.txt -e ".[test,gateway,train,kubeflow,recommend,batch,grpc-dev,k8s,guided,vision]"
	$(PIP) install -q -c constraints.txt -e apps/risk
	@$(MAKE) --no-print-directory llamacpp-if-built
	touch $@

# The llamacpp extra: PyPI has llama-cpp-python only as source, and compiling llama.cpp takes ~20 minutes on
# 2 cores, more than the whole test run. `make llamacpp-wheel` compiles it once into LLAMACPP_WHEELS; every
# later `make test` (any checkout on this machine) installs that wheel in seconds and runs the llama.cpp
# tests (GGUF families, bare GGUF, the CPU probe), which skip, saying so, where no wheel was built.
LLAMACPP_WHEELS ?= $(HOME)/.cache/autoglm-wheels
llamacpp-if-built:
	@if ls $(LLAMACPP_WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1; then \
	  $(PIP) install -q -c constraints.txt --find-links $(LLAMACPP_WHEELS) --only-binary llama-cpp-python -e ".[llamacpp]" \
	  || echo "note: the llama-cpp-python wheel in $(LLAMACPP_WHEELS) did not install; the llama.cpp tests will skip"; \
	else echo "note: no llama-cpp-python wheel in $(LLAMACPP_WHEELS) (make llamacpp-wheel builds one, ~20 min on 2 cores); the llama.cpp tests will skip"; fi

llamacpp-wheel: venv
	$(PIP) wheel --no-deps -c constraints.txt -w $(LLAMACPP_WHEELS) llama-cpp-python
	@$(MAKE) --no-print-directory llamacpp-if-built

# Tools the suite drives besides Python: Debian's chromium (console tests) and promtool (alert-rule
# tests). Installed with apt-get when missing and this is root; otherwise their tests say they skip.
SYSTEM_PKGS := chromium prometheus
$(VENV)/.system: $(VENV)/.base
	@if command -v chromium >/dev/null && command -v promtool >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing $(SYSTEM_PKGS) (Debian packages) for the browser and alert-rule tests"; \
	  apt-get install -y -q --no-install-recommends $(SYSTEM_PKGS) >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends $(SYSTEM_PKGS) >/dev/null; } || \
	  echo "note: could not install $(SYSTEM_PKGS); the tests that need them will skip"; \
	else echo "note: chromium/promtool missing (apt-get install $(SYSTEM_PKGS)); the tests that need them will skip"; fi
	touch $@

venv: $(VENV)/.base
venv-test: $(VENV)/.test

run: venv
	$(VENV)/bin/autoglm serve --model $(MODEL) --host $(HOST) --port $(PORT)

# three workers (pytest-xdist), a test file per worker at a time (module fixtures stay shared), longest files
# first (tests/conftest.py; --no-loadscope-reorder keeps that order: xdist would sort files by test count):
# the suite waits on server processes as much as it computes; one torch thread per process (OMP_NUM_THREADS=1):
# three workers of two spinning threads each on 2 cores burnt 2x the CPU for the same tests
test: venv-test
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider -n 3 --dist loadfile --no-loadscope-reorder --durations=15 $(PYTEST_ARGS)

clean:
	rm -rf $(VENV)
