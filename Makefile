# The README's two commands: `make run` (set up everything, build the default recipe) and `make test`.
# Every target is idempotent: Debian packages are installed only when missing, pip only when pyproject.toml changed.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tinykd-installed
RECIPE ?= pipelines/fashion_mnist.yaml
APT_PACKAGES := dataset-fashion-mnist gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm espeak-ng flite
PYTEST_ARGS ?=

.PHONY: setup system-packages run test test-all bench clean

setup: system-packages $(STAMP)

# Debian packages: the Fashion-MNIST IDX files, the Cortex-M cross-compiler that checks the generated C and QEMU,
# which runs it on emulated Cortex-M cores (tinykd firmware check).
system-packages:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if ! command -v apt-get >/dev/null; then \
	    echo "apt-get not found: install$$missing yourself (see README)"; \
	  elif [ "$$(id -u)" = 0 ]; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	  else \
	    sudo apt-get update -q && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	  fi; \
	fi

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

# tinykd lives in .venv, not on PATH: say how to call it, since the README's examples start with `tinykd`.
run: setup
	$(BIN)/tinykd build $(RECIPE)
	@echo
	@echo "tinykd is installed in $(VENV), not on your PATH. Call it by its path, or activate $(VENV) once per shell:"
	@echo "  $(BIN)/tinykd --help"
	@echo "  . $(BIN)/activate    # then: tinykd --help"

# The suite CI runs (under 15 minutes). pytest's own exit code is kept: 5 (no tests ran) fails the target.
test: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# The same suite plus the tests marked slow: the firmware runs on emulated cores, which need a TFLM tree with its
# third-party code (tinykd firmware check); the full recipes are built by `make run` and `make bench`.
test-all: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: setup
	$(BIN)/python bench/fashion_mnist.py

clean:
	rm -rf runs build *.egg-info
