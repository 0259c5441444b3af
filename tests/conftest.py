"""Shared fixtures: tiny randomly initialised models with a real (trained) BPE tokenizer, and real data paths."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from helpers import build_tiny_lm
from openai_server import serve

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A fresh datasets cache per session: pytest reuses tmp paths across sessions, and datasets would serve a file it
# cached under the same path from an earlier session.
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="persyn-hf-datasets-"))

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory) -> Path:
    """A tiny random Llama with a chat template, saved as a local HF directory."""
    return build_tiny_lm(tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture(scope="session")
def tiny_lm_dir_b(tmp_path_factory) -> Path:
    """A second tiny model with other weights, for two-teacher pools."""
    return build_tiny_lm(tmp_path_factory.mktemp("tiny_lm_b"), seed=1)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED} (tests that read ../shared/data skip without it)")
    return SHARED


@pytest.fixture(scope="module")
def server(tiny_lm_dir):
    """The project's OpenAI-compatible test server on the tiny model, one per test module."""
    with serve(tiny_lm_dir) as srv:
        yield srv


@pytest.fixture
def fresh_server(server):
    """The module's server with its faults, counts and settings reset for this test."""
    server.state.reset()
    server.state.api_key = None
    server.state.delay_s = 0.0
    server.state.prompt_logprobs = True
    return server


@pytest.fixture(scope="module")
def tiny_local(tiny_lm_dir):
    """The tiny model and tokenizer loaded in-process: the reference the server's numbers are checked against."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_lm_dir), AutoTokenizer.from_pretrained(tiny_lm_dir)
