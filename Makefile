# One-command setup. `make demo` and `make test` install what is missing, then run.
# CMAKE_ARGS is passed through to the llama-cpp-python build:
#   CMAKE_ARGS="-DGGML_CUDA=on" make demo     # CUDA build on a Jetson
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
LLAMA_VERSION := 0.3.36
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-deps venv llama demo test bench install clean

setup: system-deps venv llama

# Debian packages the tests and the demo start for real: mosquitto, PostgreSQL, a compiler for llama.cpp.
system-deps:
	@missing=""; \
	command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || missing="$$missing postgresql"; \
	command -v cmake >/dev/null || missing="$$missing cmake"; \
	command -v g++ >/dev/null || missing="$$missing g++"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	  $(SUDO) systemctl disable --now mosquitto >/dev/null 2>&1 || true; \
	fi

$(VENV)/.installed: pyproject.toml
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev,cloud,telemetry]'
	@touch $@

venv: $(VENV)/.installed

# Built once; re-running is a no-op when the pinned version is already installed.
llama: venv
	@if $(PY) -c "import importlib.metadata as m, sys; sys.exit(m.version('llama-cpp-python') != '$(LLAMA_VERSION)')" 2>/dev/null; then \
	  echo "llama-cpp-python $(LLAMA_VERSION) already installed"; \
	else \
	  echo "building llama-cpp-python $(LLAMA_VERSION) (CMAKE_ARGS=$(CMAKE_ARGS))"; \
	  CMAKE_ARGS="$(CMAKE_ARGS)" LLAMA_CPP_PYTHON_VERSION=$(LLAMA_VERSION) sh scripts/build-llama.sh $(PY); \
	fi

demo: setup
	$(PY) -m edge_agent.demo

test: setup
	$(VENV)/bin/pytest -q

bench: setup
	$(PY) -m bench

install: setup
	$(VENV)/bin/edge-agent install-service

clean:
	rm -rf $(VENV) demo-data build *.egg-info
