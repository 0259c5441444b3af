"""Bounded memory (issue 11, item 4): the local executor keeps at most `max_resident_models` models loaded,
releases a teacher once its stage needs it no more, and `router.backbone: student` reuses the loaded student."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import build_tiny_lm
from transformers import AutoModel

from persyn import models
from persyn.backends.base import GenParams, GenRequest
from persyn.config import parse_config
from persyn.executors.local import LocalExecutor
from persyn.models import loading
from persyn.pipeline import run_stages
from persyn.router.embed import Embedder

PROMPTS = ["What is 12 times 7?", "Write a short poem about the sea.", "Why is the sky blue?",
           "How many clips did Natalia sell?", "The quick brown fox", "Explain light."]


@pytest.fixture(scope="module")
def tiny_lm_dir_c(tmp_path_factory):
    return build_tiny_lm(tmp_path_factory.mktemp("tiny_lm_c"), seed=2)


class PeakDict(dict):
    """The model cache itself, recording how many models it ever held at once."""

    peak = 0

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        PeakDict.peak = max(PeakDict.peak, len(self))


@pytest.fixture
def watched_cache(monkeypatch):
    models.unload_all()
    PeakDict.peak = 0
    monkeypatch.setattr(loading, "_LOADED", PeakDict())  # where load_causal_lm looks it up
    yield loading._LOADED
    models.unload_all()


def config(tmp_path, dirs, **extra) -> dict:
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return {
        "run_dir": str(tmp_path / "run"), "prompts": {"path": str(tmp_path / "p.jsonl")},
        "teachers": [{"name": f"t{i}", "model": str(d), "max_new_tokens": 3} for i, d in enumerate(dirs)],
        "student": {"model": str(dirs[0])}, "reward": {"alpha": 1.0}, "probe": {"size": 3},
        "router": {"backbone": str(dirs[0]), "bt": {"epochs": 3}}, **extra,
    }


def test_loading_past_the_cap_releases_the_least_recently_used(tmp_path, watched_cache, tiny_lm_dir,
                                                                 tiny_lm_dir_b, tiny_lm_dir_c):
    cfg = parse_config(config(tmp_path, [tiny_lm_dir, tiny_lm_dir_b, tiny_lm_dir_c], max_resident_models=2))
    ex = LocalExecutor(cfg)
    req = [GenRequest("k", "0", PROMPTS[0], GenParams(max_new_tokens=2))]
    t0, t1, t2 = cfg.teachers
    for t in (t0, t1, t0, t2):  # t0 used again before t2 arrives: t1 is the least recently used
        assert list(ex.generate(t, req))[0].text is not None
        assert len(watched_cache) <= 2
    assert set(ex.resident) == {ex.teacher_key(t0), ex.teacher_key(t2)} == set(watched_cache)
    assert ex.evictions == 1 and ex.backends["t1"]._model is None  # the backend let go of it too
    assert list(ex.generate(t1, req))[0].text is not None  # and loads it again on demand
    assert PeakDict.peak == 2
    ex.close()
    assert len(watched_cache) == 0


def test_a_run_holds_at_most_the_cap_and_frees_teachers_when_done(tmp_path, watched_cache, tiny_lm_dir,
                                                                   tiny_lm_dir_b, tiny_lm_dir_c):
    cfg = parse_config(config(tmp_path, [tiny_lm_dir, tiny_lm_dir_b, tiny_lm_dir_c]))
    assert cfg.max_resident_models == 2
    run = run_stages(cfg)
    assert run.generated == 3 * 3 + 3  # every teacher on the probe, then the three routed prompts
    assert PeakDict.peak <= 2
    # t0 is the student too: one model for both, so a teacher plus the student never exceeded two copies
    assert len(watched_cache) == 0  # closed


def test_max_resident_models_one_still_runs(tmp_path, watched_cache, tiny_lm_dir, tiny_lm_dir_b):
    cfg = parse_config(config(tmp_path, [tiny_lm_dir_b, tiny_lm_dir], max_resident_models=1))
    run = run_stages(cfg)
    assert PeakDict.peak == 1 and run.summary["dataset_rows"] == len(PROMPTS)


def test_student_backbone_reuses_the_loaded_student(tmp_path, watched_cache, tiny_lm_dir, tiny_lm_dir_b,
                                                     monkeypatch):
    loads = []
    real = AutoModel.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        loads.append(args[0] if args else kwargs)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModel, "from_pretrained", classmethod(counting))
    cfg = parse_config(config(tmp_path, [tiny_lm_dir, tiny_lm_dir_b],
                              router={"backbone": "student", "bt": {"epochs": 3}}))
    run_stages(cfg)
    assert loads == []  # the router embedded prompts with the student already loaded for learnability
    assert PeakDict.peak <= 2


def test_embeddings_from_the_loaded_student_equal_a_fresh_backbone(tiny_lm_dir):
    lm, _ = models.load_causal_lm(str(tiny_lm_dir), dtype="float32", device="cpu")
    fresh = Embedder(str(tiny_lm_dir), pooling="last").embed(PROMPTS)
    shared = Embedder(str(tiny_lm_dir), pooling="last", model=lm).embed(PROMPTS)
    assert fresh.shape == shared.shape and np.allclose(fresh, shared, atol=1e-5)
    assert not np.allclose(shared[0], shared[1])
