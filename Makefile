# One venv, torch pinned first (a CPU wheel on this machine's disk; an unpinned torch pulls a multi-GB CUDA build).
VENV ?= .venv
PY := $(VENV)/bin/python
PERSYN := $(VENV)/bin/persyn
TORCH ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test lint fetch bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,demo]"
	touch $@

fetch: install
	$(PERSYN) models fetch smollm2-135m-instruct gemma3-270m qwen2.5-coder-0.5b-instruct

demo: fetch
	$(PERSYN) run examples/demo.yaml

test: install
	$(PY) -m pytest -q -ra

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

bench: install
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) runs
