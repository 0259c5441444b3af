"""Packed learnability scoring (persyn.scoring.packed): the same values as the padded scorer, with no padding fed
and no attention across the sequences of a pack; on real tiny models and on SmolLM2."""

from __future__ import annotations

import pytest
import torch
from helpers import PROMPTS, RESPONSES, build_tokenizer
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from persyn.config import StudentConfig
from persyn.errors import ConfigError
from persyn.scoring import packed
from persyn.scoring.learnability import learnability_scores

# Mixed lengths: a long prompt, long and short responses, one cut at max_length=160, one empty.
MIXED_PROMPTS = [*PROMPTS, "Count to twenty. " * 12, "Hi"]
MIXED_RESPONSES = [*RESPONSES, "one two three four five six seven", "Hello! " * 30]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tok"))


def _tiny(cls, config_cls, tok, seed=0, **extra):
    torch.manual_seed(seed)
    config = config_cls(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
                        **extra)
    return cls(config).eval()


@pytest.fixture(scope="module")
def llama(tiny_lm_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_lm_dir), AutoTokenizer.from_pretrained(tiny_lm_dir)


@pytest.fixture(scope="module")
def qwen2(tok):
    return _tiny(Qwen2ForCausalLM, Qwen2Config, tok, seed=1), tok


def _both(model, tok, prompts=MIXED_PROMPTS, responses=MIXED_RESPONSES, **kw):
    padded = learnability_scores(model, tok, prompts, responses, pack=False, **kw)
    pack = learnability_scores(model, tok, prompts, responses, pack=True, **kw)
    return padded, pack


def _close(a: list, b: list, tol: float) -> None:
    assert [v is None for v in a] == [v is None for v in b]
    assert max(abs(x - y) for x, y in zip(a, b, strict=True) if x is not None) <= tol


@pytest.mark.parametrize("name", ["llama", "qwen2"])
@pytest.mark.parametrize("batch_tokens", [4096, 200])  # one pack; several, and a sequence longer than a pack
@pytest.mark.parametrize("few_shot", [None, True])
def test_packed_equals_padded(request, name, batch_tokens, few_shot):
    model, tok = request.getfixturevalue(name)
    padded, pack = _both(model, tok, max_length=160, batch_tokens=batch_tokens, few_shot=few_shot)
    assert pack.values[5] is None and pack.truncated == padded.truncated >= 1
    assert pack.tokens == padded.tokens
    _close(pack.values, padded.values, 1e-5)
    assert model.config._attn_implementation == "sdpa"  # put back


def _spy_decoder(model, calls: list):
    forward = model.model.forward

    def spy(*args, **kwargs):
        calls.append((kwargs["input_ids"].clone(), kwargs.get("position_ids")))
        return forward(*args, **kwargs)

    model.model.forward = spy


def test_packs_hold_no_padding_and_restart_positions(llama):
    """Every token fed is a real token: one row per pack, as many tokens in all as the sequences hold, and each
    sequence's position ids run from 0."""
    model, tok = llama
    calls: list = []
    _spy_decoder(model, calls)
    try:
        res = learnability_scores(model, tok, MIXED_PROMPTS, MIXED_RESPONSES, max_length=160, batch_tokens=600,
                                  pack=True)
    finally:
        del model.model.forward
    assert len(calls) >= 2 and all(ids.shape[0] == 1 for ids, _ in calls)
    assert sum(ids.numel() for ids, _ in calls) == res.tokens
    starts = sum(int((pos[0] == 0).sum()) for _, pos in calls)
    assert starts == sum(v is not None for v in res.values)  # one restart per sequence scored
    for _, pos in calls:
        steps = pos[0, 1:] - pos[0, :-1]
        assert bool(((steps == 1) | (pos[0, 1:] == 0)).all())


def test_no_attention_across_packed_sequences(llama):
    """With A and B in one pack, changing A's response changes A's score and not B's, and B scores as it does
    alone."""
    model, tok = llama
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one stream: the whole budget for one pack
    calls: list = []
    _spy_decoder(model, calls)
    try:
        b_prompt, b_resp = "Hi", "Hello."  # the shorter: packed after A, so that A is in B's causal past
        one = learnability_scores(model, tok, [PROMPTS[0], b_prompt], [RESPONSES[0], b_resp], pack=True)
        two = learnability_scores(model, tok, [PROMPTS[0], b_prompt], ["84, and a longer answer it is.", b_resp],
                                  pack=True)
        alone = learnability_scores(model, tok, [b_prompt], [b_resp], pack=True)
    finally:
        del model.model.forward
        torch.set_num_threads(threads)
    assert [ids.shape[0] for ids, _ in calls] == [1, 1, 1] and calls[0][0].shape[1] == one.tokens  # together
    b_ids = calls[2][0][0]
    assert all(torch.equal(ids[0, -len(b_ids):], b_ids) for ids, _ in calls[:2])  # B after A
    assert abs(one.values[0] - two.values[0]) > 1e-3
    assert one.values[1] == pytest.approx(two.values[1], abs=1e-6)
    assert one.values[1] == pytest.approx(alone.values[0], abs=1e-6)


def test_sliding_window_within_packed_sequences(tok):
    """A window shorter than the sequences: each sequence's window as the padded scorer's mask has it (Mistral: every
    layer; Gemma 3: sliding and full layers, its own attention scaling)."""
    model = _tiny(MistralForCausalLM, MistralConfig, tok, sliding_window=8)
    padded, pack = _both(model, tok, max_length=160)
    _close(pack.values, padded.values, 1e-5)
    gemma3 = _tiny(Gemma3ForCausalLM, Gemma3TextConfig, tok, head_dim=16, sliding_window=8, query_pre_attn_scalar=8,
                   layer_types=["sliding_attention", "full_attention"])
    assert packed.packable(gemma3)
    padded3, pack3 = _both(gemma3, tok, max_length=160)
    _close(pack3.values, padded3.values, 1e-5)
    no_window = _tiny(MistralForCausalLM, MistralConfig, tok, sliding_window=None)
    assert learnability_scores(no_window, tok, MIXED_PROMPTS, MIXED_RESPONSES, pack=True).values != pack.values


def test_pack_choice(llama, tok, monkeypatch):
    """auto: padded on a CPU; attention soft-capping (Gemma 2) and models off the plain-head path are never packed;
    the attention setting comes back after a failed pass."""
    model, tok_l = llama
    calls: list = []
    _spy_decoder(model, calls)
    try:
        learnability_scores(model, tok_l, PROMPTS[:3], RESPONSES[:3], batch_tokens=100000)
    finally:
        del model.model.forward
    assert all(pos is None for _, pos in calls) and sum(ids.shape[0] for ids, _ in calls) == 3  # a row per sequence
    gemma2 = _tiny(Gemma2ForCausalLM, Gemma2Config, tok, head_dim=16)
    assert not packed.packable(gemma2) and packed.packable(model)
    padded, pack = _both(gemma2, tok, max_length=160)
    assert pack.values == padded.values
    with pytest.raises(ValueError, match="pack must be"):
        learnability_scores(model, tok_l, PROMPTS[:1], RESPONSES[:1], pack="yes")
    monkeypatch.setattr(packed, "score_packed", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("pack failed")))
    with pytest.raises(RuntimeError, match="pack failed"):
        learnability_scores(model, tok_l, PROMPTS[:2], RESPONSES[:2], pack=True)
    assert model.config._attn_implementation == "sdpa"


def test_student_pack_config_reaches_the_scorer(tiny_lm_dir, monkeypatch):
    from persyn.scoring.student import student_learnability

    assert StudentConfig(model="m").pack == "auto"
    with pytest.raises(ValueError, match="pack"):
        StudentConfig(model="m", pack="sometimes")
    packs: list[int] = []
    score = packed.score_packed
    monkeypatch.setattr(packed, "score_packed", lambda *a, **k: packs.append(len(a[3])) or score(*a, **k))
    student = StudentConfig(model=str(tiny_lm_dir), pack=True, max_length=160)
    res = student_learnability(student, PROMPTS, RESPONSES)
    assert sum(packs) == len(PROMPTS) - 1 and res.values[-1] is None
    packs.clear()
    student_learnability(student.model_copy(update={"pack": "auto"}), PROMPTS, RESPONSES)
    assert packs == []  # a CPU: padded


def test_bad_pack_in_yaml_names_the_key(tmp_path):
    from pathlib import Path

    from persyn.config import load_config

    demo = (Path(__file__).resolve().parents[1] / "examples" / "demo.yaml").read_text()
    path = tmp_path / "c.yaml"
    path.write_text(demo.replace("  max_length: 512\n", "  max_length: 512\n  pack: sometimes\n", 1))
    with pytest.raises(ConfigError, match="student.pack: Input should be 'auto', True or False"):
        load_config(path)


@pytest.mark.slow
def test_compiled_packed_decoder(llama):
    """torch.compile of the decoder: the same values; compiled once, and reused for packs of another layout."""
    model, tok = llama
    padded = learnability_scores(model, tok, MIXED_PROMPTS, MIXED_RESPONSES, max_length=160, pack=False)
    first = learnability_scores(model, tok, MIXED_PROMPTS, MIXED_RESPONSES, max_length=160, pack=True, compile=True)
    compiled = packed.compiled_decoder(model.model)
    from torch._dynamo.utils import counters

    frames = counters["stats"]["unique_graphs"]
    second = learnability_scores(model, tok, MIXED_PROMPTS[2:], MIXED_RESPONSES[2:], max_length=160,
                                 batch_tokens=300, pack=True, compile=True)
    assert packed.compiled_decoder(model.model) is compiled
    assert counters["stats"]["unique_graphs"] == frames  # no new graph for a new layout
    _close(first.values, padded.values, 1e-5)
    _close(second.values, padded.values[2:], 1e-5)


@pytest.mark.slow
def test_packed_smollm2_fp32_and_bf16(shared_data):
    """SmolLM2 on real GSM8K answers: packed fp32 equals padded fp32 within 1e-5; packed bf16 is as close to fp32
    as the padded scorer in bf16 is (bf16 activations, not packing, set that distance)."""
    import json

    from persyn.models import load_causal_lm

    rows = [json.loads(line) for line in (shared_data / "gsm8k" / "train.jsonl").read_text().splitlines()[:12]]
    prompts, responses = [r["question"] for r in rows] + ["Say hi."], [r["answer"] for r in rows] + [""]
    model, tok = load_causal_lm("smollm2-135m-instruct", dtype="float32", device="cpu")
    padded, pack = _both(model, tok, prompts, responses, max_length=256)
    assert padded.truncated >= 0 and pack.values[-1] is None
    _close(pack.values, padded.values, 1e-5)
    half, _ = load_causal_lm("smollm2-135m-instruct", dtype="bfloat16", device="cpu")
    padded16, pack16 = _both(half, tok, prompts, responses, max_length=256)
    err = max(abs(a - b) for a, b in zip(pack16.values[:-1], padded.values[:-1], strict=True))
    err_padded = max(abs(a - b) for a, b in zip(padded16.values[:-1], padded.values[:-1], strict=True))
    assert err <= max(2e-3, 1.5 * err_padded) and err < 0.05
