# One-command setup. `make demo` and `make test` install what is missing, then run.
# `make device-setup` installs only what a device runs (no broker, no PostgreSQL, no dev tools).
# CMAKE_ARGS is passed through to the llama-cpp-python build:
#   CMAKE_ARGS="-DGGML_CUDA=on" make device-setup     # CUDA build on a Jetson
SHELL := /bin/bash
MIN_PYTHON := 3.11
# The newest interpreter on PATH that is at least MIN_PYTHON; `make PYTHON=...` overrides.
ifndef PYTHON
PYTHON := $(shell for p in python3.13 python3.12 python3.11 python3; do \
  command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  2>/dev/null && { echo $$p; break; }; done)
endif
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
LLAMA_VERSION := 0.3.36
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-deps venv llama demo lint test bench install clean python device-setup \
	device-system-deps device-venv device-llama wheel deb

setup: system-deps venv llama

# What a device needs: a compiler for llama.cpp, the core dependencies, `llm` (built from
# source, CMAKE_ARGS honoured) and `gpio`. Not mosquitto, PostgreSQL or the dev extras.
device-setup: device-system-deps device-venv device-llama

python:
	@[ -n "$(PYTHON)" ] || { echo "no Python >= $(MIN_PYTHON) on PATH (JetPack 6 ships 3.10:" \
	  "see the README's Jetson steps, or make PYTHON=/path/to/python3.11 ...)"; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	  echo "$(PYTHON) is older than $(MIN_PYTHON)"; exit 1; }

device-system-deps:
	@missing=""; \
	command -v cmake >/dev/null || missing="$$missing cmake"; \
	command -v g++ >/dev/null || missing="$$missing g++"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

$(VENV)/.device-installed: pyproject.toml | python
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q '.[gpio]'
	@touch $@

device-venv: $(VENV)/.device-installed

# The wheel that a device or a package installs: dist/edge_agent-VERSION-py3-none-any.whl
wheel: | python
	$(PYTHON) -m pip wheel --no-deps -q -w dist .

# A Debian package of the device side (dpkg-deb): dist/edge-agent_VERSION_ARCH.deb, carrying
# the wheels of the project and its dependencies for this architecture and Python version.
# LLAMA_WHEEL_DIR=dir adds a llama-cpp-python wheel (see scripts/build-llama.sh's WHEEL_DIR).
deb: | python
	sh scripts/build-deb.sh $(PYTHON)

# Debian packages the tests and the demo start for real: mosquitto, PostgreSQL, a compiler for
# llama.cpp, and headless Chromium with its driver for the console's browser test.
system-deps:
	@missing=""; \
	command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || missing="$$missing postgresql"; \
	command -v cmake >/dev/null || missing="$$missing cmake"; \
	command -v g++ >/dev/null || missing="$$missing g++"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	  $(SUDO) systemctl disable --now mosquitto >/dev/null 2>&1 || true; \
	fi

$(VENV)/.installed: pyproject.toml | python
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev,cloud,telemetry]'
	@touch $@

venv: $(VENV)/.installed

# Built once; re-running is a no-op when the pinned version is already installed.
define build_llama
	@if $(PY) -c "import importlib.metadata as m, sys; sys.exit(m.version('llama-cpp-python') != '$(LLAMA_VERSION)')" 2>/dev/null; then \
	  echo "llama-cpp-python $(LLAMA_VERSION) already installed"; \
	else \
	  echo "building llama-cpp-python $(LLAMA_VERSION) (CMAKE_ARGS=$(CMAKE_ARGS))"; \
	  CMAKE_ARGS="$(CMAKE_ARGS)" LLAMA_CPP_PYTHON_VERSION=$(LLAMA_VERSION) sh scripts/build-llama.sh $(PY); \
	fi
endef

llama: venv
	$(build_llama)

# The same build into the device's virtualenv, without the dev and cloud extras of `venv`.
device-llama: device-venv
	$(build_llama)

demo: setup
	$(PY) -m edge_agent.demo

# ruff (its rules are in pyproject.toml) and mypy --strict; `make test` runs them first.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy edge_agent sync hardware

test: setup lint
	$(VENV)/bin/pytest -q

bench: setup
	$(PY) -m bench

# Installs the service from this checkout's device virtualenv (a wheel installed into /opt is
# the hardened layout: see the README).
install: device-setup
	$(SUDO) $(VENV)/bin/edge-agent install-service

clean:
	rm -rf $(VENV) demo-data build dist *.egg-info
