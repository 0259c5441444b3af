"""Security: safetensors only (no unpickling), trust_remote_code off unless asked, API keys never written down."""

from __future__ import annotations

import json
import logging
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import transformers
import yaml
from openai_server import serve
from safetensors import safe_open

from persyn.cli import main
from persyn.config import parse_config
from persyn.errors import ConfigError, InputError
from persyn.models import load_causal_lm, unload_all
from persyn.pipeline import run_stages
from persyn.router import load_router
from persyn.router.embed import Embedder

PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # a raw pickle, or torch.save's zip of pickles


class Trap:
    """Unpickling this creates a file: proof that a loader ran pickle's code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def pickle_only_dir(tmp_path_factory, tiny_lm_dir) -> Path:
    """A complete model directory whose weights exist only as a pickle (torch.save) pytorch_model.bin."""
    out = tmp_path_factory.mktemp("pickle_lm")
    for f in tiny_lm_dir.iterdir():
        if f.suffix != ".safetensors":
            shutil.copy(f, out / f.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    torch.save(model.state_dict(), out / "pytorch_model.bin")
    return out


def math_prompts(tmp_path: Path, n: int = 8) -> dict:
    rows = [{"q": f"What is {i} plus 1?", "a": str(i + 1)} for i in range(n)]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"path": str(tmp_path / "p.jsonl"), "field": "q", "reference_field": "a"}


def live_config(tmp_path: Path, a: Path, b: Path, **over) -> dict:
    cfg = {
        "run_dir": str(tmp_path / "run"),
        "prompts": math_prompts(tmp_path),
        "teachers": [{"name": "a", "model": str(a)}, {"name": "b", "model": str(b)}],
        "student": {"model": str(a)},
        "quality": {"kind": "math_answer"},
        "reward": {"alpha": 0.4},
        "probe": {"size": 4},
        "router": {"backbone": str(a), "pooling": "last", "bt": {"epochs": 5}},
        "generation": {"max_new_tokens": 4, "batch_size": 4},
    }
    cfg.update(over)
    return cfg


def cli_error(capsys, cfg: dict, tmp_path: Path) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


# ---- safetensors only ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("role", ["teacher", "student", "router"])
def test_a_pickle_only_model_is_refused_with_a_clear_error(tmp_path, capsys, tiny_lm_dir, tiny_lm_dir_b,
                                                           pickle_only_dir, role):
    cfg = live_config(tmp_path, tiny_lm_dir, tiny_lm_dir_b)
    key = {"teacher": "teachers.b.model", "student": "student.model", "router": "router.backbone"}[role]
    if role == "teacher":
        cfg["teachers"][1]["model"] = str(pickle_only_dir)
    elif role == "student":
        cfg["student"]["model"] = str(pickle_only_dir)
    else:
        cfg["router"]["backbone"] = str(pickle_only_dir)
    line = cli_error(capsys, cfg, tmp_path)
    assert f"{key}: model '{pickle_only_dir}' has no .safetensors weights" in line
    assert "never unpickles" in line


def test_loaders_never_unpickle(tmp_path, pickle_only_dir):
    """Below the CLI's check too: the shared model loader and the router backbone loader refuse a pickle."""
    unload_all()
    with pytest.raises(ConfigError, match="model.safetensors"):
        load_causal_lm(str(pickle_only_dir))
    with pytest.raises(ConfigError, match="router.backbone: cannot load embedding backbone"):
        Embedder(str(pickle_only_dir), cache_path=None).embed(["hello"])
    # A booby-trapped pickle is never opened.
    trapped = tmp_path / "trapped"
    shutil.copytree(pickle_only_dir, trapped)
    marker = tmp_path / "pickle-code-ran"
    (trapped / "pytorch_model.bin").write_bytes(pickle.dumps(Trap(marker)))
    with pytest.raises(ConfigError):
        load_causal_lm(str(trapped))
    with pytest.raises(ConfigError):
        Embedder(str(trapped), cache_path=None).embed(["hello"])
    assert not marker.exists()


class LoadSpy:
    """Records the keyword arguments of every from_pretrained call (model and tokenizer classes)."""

    def __init__(self, monkeypatch) -> None:
        self.calls: list[tuple[str, str, dict]] = []
        for cls in (transformers.AutoModelForCausalLM, transformers.AutoModel, transformers.AutoTokenizer,
                    transformers.AutoModelForSequenceClassification):
            monkeypatch.setattr(cls, "from_pretrained", self._wrap(cls.__name__, cls.from_pretrained))

    def _wrap(self, name: str, real):
        def from_pretrained(location, *args, **kwargs):
            self.calls.append((name, str(location), dict(kwargs)))
            return real(location, *args, **kwargs)

        return from_pretrained


def test_run_loads_safetensors_only_and_no_remote_code_unless_asked(tmp_path, monkeypatch, tiny_lm_dir,
                                                                    tiny_lm_dir_b):
    unload_all()  # make every model load for real, under the spy
    spy = LoadSpy(monkeypatch)
    cfg = live_config(tmp_path, tiny_lm_dir, tiny_lm_dir_b)
    cfg["teachers"][1]["trust_remote_code"] = True  # only b asks for it
    run_stages(parse_config(cfg))
    models = [c for c in spy.calls if c[0] != "AutoTokenizer"]
    loaded = {(name, loc) for name, loc, _ in models}
    assert ("AutoModelForCausalLM", str(tiny_lm_dir)) in loaded  # teacher a and the student
    assert ("AutoModelForCausalLM", str(tiny_lm_dir_b)) in loaded  # teacher b
    assert ("AutoModel", str(tiny_lm_dir)) in loaded  # the router backbone
    for name, loc, kwargs in models:
        assert kwargs.get("use_safetensors") is True, (name, loc)
    for name, loc, kwargs in spy.calls:
        assert kwargs.get("trust_remote_code") is (loc == str(tiny_lm_dir_b)), (name, loc)
    unload_all()

    # The router is saved as safetensors + JSON; nothing in the run_dir is a pickle.
    router_dir = tmp_path / "run" / "router"
    assert sorted(p.name for p in router_dir.iterdir()) == ["router.json", "router.safetensors"]
    json.loads((router_dir / "router.json").read_text())
    with safe_open(str(router_dir / "router.safetensors"), framework="pt") as f:
        assert set(f.keys()) == {"center", "scale", "weight", "bias"}  # the default ridge router
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file():
            assert not path.read_bytes().startswith(PICKLE_MAGIC), path
            assert path.suffix not in (".pt", ".pth", ".bin", ".pkl", ".pickle"), path
    # A router whose weights were swapped for a pickle is refused, and the pickle is never run.
    marker = tmp_path / "pickle-code-ran"
    (router_dir / "router.safetensors").write_bytes(pickle.dumps(Trap(marker)))
    with pytest.raises(InputError, match="not a saved ridge router"):
        load_router(router_dir)
    assert not marker.exists()


# ---- API keys ---------------------------------------------------------------------------------------------------

SECRET = "sk-test-5f3a9c0e1b7d4a2e8c6f0123456789ab"


@pytest.fixture(scope="module")
def keyed_server(tiny_lm_dir):
    with serve(tiny_lm_dir, api_key=SECRET) as srv:
        yield srv


def openai_config(tmp_path: Path, server, backbone: Path) -> dict:
    teachers = [{"name": name, "backend": "openai", "model": model, "base_url": server.base_url,
                 "api_key_env": "PERSYN_TEST_API_KEY", "max_retries": 2, "cost_per_1k_tokens": 0.5,
                 "extra": {"backoff_base_s": 0.01, "backoff_max_s": 0.02}}
                for name, model in (("big", "tiny-big"), ("small", "tiny-small"))]
    return {"run_dir": str(tmp_path / "run"), "prompts": math_prompts(tmp_path, 6), "teachers": teachers,
            "quality": {"kind": "math_answer"}, "reward": {"alpha": 0.0}, "probe": {"size": 3},
            "router": {"backbone": str(backbone), "pooling": "last", "bt": {"epochs": 5}},
            "generation": {"max_new_tokens": 4}}


def assert_no_secret_in(run_dir: Path, *texts: str) -> None:
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.name == "persyn.sqlite" for p in files)
    for path in files:  # the store with its WAL, exports, summary, router, embedding cache
        assert SECRET.encode() not in path.read_bytes(), path
    for text in texts:
        assert SECRET not in text


def test_api_key_never_reaches_store_logs_or_summary(tmp_path, capsys, caplog, monkeypatch, keyed_server,
                                                     tiny_lm_dir):
    monkeypatch.setenv("PERSYN_TEST_API_KEY", SECRET)
    keyed_server.state.reset()
    keyed_server.state.inject("500", 2)  # retried requests go through the error paths too
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(openai_config(tmp_path, keyed_server, tiny_lm_dir)))
    with caplog.at_level(logging.DEBUG):
        main(["run", str(path)])
    out, err = capsys.readouterr()
    summary_text = (tmp_path / "run" / "summary.json").read_text()
    summary = json.loads(summary_text)
    # The key was really used: every request passed the server's auth check.
    assert keyed_server.state.auth_failures == 0 and keyed_server.state.total == 3 * 2 + 3 + 2
    assert summary["generations_total"] == 3 * 2 + 3 and summary["failed_generations"] == []
    assert "PERSYN_TEST_API_KEY" not in summary_text
    assert_no_secret_in(tmp_path / "run", out, err, caplog.text, "\n".join(r.getMessage() for r in caplog.records))


def test_a_rejected_key_is_an_error_without_the_key(tmp_path, capsys, caplog, monkeypatch, keyed_server,
                                                   tiny_lm_dir):
    wrong = "sk-wrong-00112233445566778899aabbccdd"
    monkeypatch.setenv("PERSYN_TEST_API_KEY", wrong)
    keyed_server.state.reset()
    with caplog.at_level(logging.DEBUG):
        line = cli_error(capsys, openai_config(tmp_path, keyed_server, tiny_lm_dir), tmp_path)
    assert "teachers.big.api_key_env: the server rejected the API key from $PERSYN_TEST_API_KEY" in line
    assert keyed_server.state.auth_failures >= 1  # the server echoed the wrong key back in its 401 body
    for text in (line, caplog.text):
        assert wrong not in text and SECRET not in text
    for path in (tmp_path / "run").rglob("*"):
        if path.is_file():
            assert wrong.encode() not in path.read_bytes()
