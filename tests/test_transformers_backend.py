"""The transformers teacher backend on a tiny random Llama (real tokenizer, real generate)."""

from __future__ import annotations

import json

import pytest
import torch

from persyn import models
from persyn.backends.base import GenParams, GenRequest, generation_key, make_backend
from persyn.chat import FEW_SHOT_STOP, format_prompt
from persyn.config import TeacherConfig
from persyn.errors import ConfigError

PROMPTS = [
    "What is 12 times 7?",
    "Write a short poem about the sea.",
    "Natalia sold clips to 48 of her friends in April. How many clips did she sell?",
    "Explain why the sky is blue.",
    "Hi",
]


@pytest.fixture(autouse=True)
def _fresh_models():
    models.unload_all()
    yield
    models.unload_all()


def _requests(backend, params: GenParams, prompts=PROMPTS) -> list[GenRequest]:
    fp = backend.fingerprint()
    return [GenRequest(generation_key(p, fp, params), f"p{i}", p, params) for i, p in enumerate(prompts)]


def _texts(backend, requests) -> dict[str, str]:
    results = list(backend.generate(requests))
    assert sorted(r.key for r in results) == sorted(r.key for r in requests)
    assert all(r.error is None and r.text is not None for r in results)
    return {r.key: r.text for r in results}


def _teacher(model, **kw) -> TeacherConfig:
    return TeacherConfig(name="tiny", backend="transformers", model=str(model), **kw)


def test_greedy_batched_equals_unbatched(tiny_lm_dir):
    params = GenParams(max_new_tokens=12, temperature=0.0)
    batched = make_backend(_teacher(tiny_lm_dir, batch_size=4))
    one = make_backend(_teacher(tiny_lm_dir, batch_size=1))
    reqs = _requests(batched, params)
    assert _texts(batched, reqs) == _texts(one, reqs)
    assert batched._model is one._model, "both backends share the cached model"


def test_sampling_is_reproducible_per_seed_and_independent_of_batching(tiny_lm_dir):
    backend = make_backend(_teacher(tiny_lm_dir, batch_size=3))
    single = make_backend(_teacher(tiny_lm_dir, batch_size=1))
    p0 = GenParams(max_new_tokens=16, temperature=1.0, top_p=0.95, seed=0)
    first = _texts(backend, _requests(backend, p0))
    assert first == _texts(backend, _requests(backend, p0))
    assert list(first.values()) == list(_texts(single, _requests(single, p0)).values())
    other = _texts(backend, _requests(backend, GenParams(max_new_tokens=16, temperature=1.0, top_p=0.95, seed=1)))
    assert list(first.values()) != list(other.values())
    greedy = _texts(backend, _requests(backend, GenParams(max_new_tokens=16)))
    assert list(first.values()) != list(greedy.values())


def test_token_counts_and_timing(tiny_lm_dir):
    backend = make_backend(_teacher(tiny_lm_dir, cost_per_1k_tokens=2.0), batch_size=8)
    params = GenParams(max_new_tokens=7)
    reqs = _requests(backend, params)
    results = {r.key: r for r in backend.generate(reqs)}
    tok = models.load_tokenizer(str(tiny_lm_dir))
    for req in reqs:
        r = results[req.key]
        prompt = format_prompt(tok, req.prompt)
        assert r.prompt_tokens == len(tok(prompt, add_special_tokens=False).input_ids)
        assert 1 <= r.completion_tokens <= 7
        assert r.extra["finish_reason"] in {"stop", "length"}
        if r.extra["finish_reason"] == "length":
            assert r.completion_tokens == 7
        assert r.cost == pytest.approx((r.prompt_tokens + r.completion_tokens) / 1000 * 2.0)
        assert r.seconds > 0
    # One batch: its time is split evenly.
    assert len({r.seconds for r in results.values()}) == 1


def test_few_shot_stops_at_the_next_question(tiny_lm_dir, monkeypatch):
    backend = make_backend(_teacher(tiny_lm_dir, few_shot=True))
    model, tok = backend._load()
    # Make the random model deterministic about one thing: after "Answer:" it writes " 84" then the stop text.
    continuation = tok(" 84" + FEW_SHOT_STOP + " more text", add_special_tokens=False).input_ids
    real_generate = model.generate
    seen: dict[str, object] = {}

    def scripted(**kwargs):
        seen.update(kwargs)
        ids = kwargs["input_ids"]
        extra = torch.tensor([continuation] * ids.shape[0], dtype=ids.dtype, device=ids.device)
        return torch.cat([ids, extra[:, :kwargs["max_new_tokens"]]], dim=1)

    monkeypatch.setattr(model, "generate", scripted)
    req = _requests(backend, GenParams(max_new_tokens=32), ["What is 12 times 7?"])
    (result,) = backend.generate(req)
    assert result.text == "84"
    assert result.extra["finish_reason"] == "stop"
    assert seen["stop_strings"] == [FEW_SHOT_STOP]
    assert tok.decode(seen["input_ids"][0]).endswith("Question: What is 12 times 7?\nAnswer:")
    monkeypatch.setattr(model, "generate", real_generate)
    # The real generate loop and its stop criterion, the model scripted through its logits to write " 84", the
    # stop text and more: generation must end at the stop text, not run on to max_new_tokens.
    head = tok(" 84" + FEW_SHOT_STOP, add_special_tokens=False).input_ids
    script = head + tok(" more text" * 20, add_special_tokens=False).input_ids
    real_forward, steps = model.forward, []

    def forced(*args, **kwargs):
        out = real_forward(*args, **kwargs)
        out.logits[:, -1, :] = -1e4
        out.logits[:, -1, script[min(len(steps), len(script) - 1)]] = 1e4
        steps.append(1)
        return out

    monkeypatch.setattr(model, "forward", forced)
    (real,) = backend.generate(req)
    assert real.text == "84" and real.extra["finish_reason"] == "stop"
    assert real.completion_tokens == len(steps) == len(head) < 32


def test_fingerprint_names_backend_model_and_prompting(tiny_lm_dir):
    chat = json.loads(make_backend(_teacher(tiny_lm_dir)).fingerprint())
    few = json.loads(make_backend(_teacher(tiny_lm_dir, few_shot=True)).fingerprint())
    assert chat["backend"] == "transformers" and chat["model"].startswith("dir:")
    assert chat["model"] == few["model"] and chat != few
    reg = json.loads(make_backend(TeacherConfig(name="s", model="smollm2-135m-instruct")).fingerprint())
    assert reg["model"].startswith("registry:smollm2-135m-instruct:")


def test_missing_model_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="needs `model`"):
        make_backend(TeacherConfig(name="t", backend="transformers"))
    backend = make_backend(_teacher(tmp_path / "absent"))
    with pytest.raises(ConfigError, match="not found"):
        list(backend.generate(_requests(backend, GenParams(), ["hi"])))


def test_dtype_from_the_teacher_or_the_run_default(tiny_lm_dir):
    params = GenParams(max_new_tokens=6, temperature=0.0)
    run_default = make_backend(_teacher(tiny_lm_dir), dtype="bfloat16")
    results = list(run_default.generate(_requests(run_default, params, PROMPTS[:2])))
    assert run_default._model.dtype == torch.bfloat16
    assert [r.error for r in results] == [None, None] and all(r.completion_tokens > 0 for r in results)
    override = make_backend(_teacher(tiny_lm_dir, dtype="float32"), dtype="bfloat16")
    override._load()
    assert override._model.dtype == torch.float32
    assert override.fingerprint() == run_default.fingerprint(), "a dtype change must not regenerate everything"
