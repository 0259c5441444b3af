"""Learnability (batched vs. naive reference), quality scorers on real data and real (tiny) models."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from helpers import PROMPTS, RESPONSES, build_tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

from persyn.config import QualityConfig
from persyn.errors import ConfigError, InputError
from persyn.scoring import learnability as lmod
from persyn.scoring.learnability import Encoder, learnability_scores, naive_learnability
from persyn.scoring.quality import (
    RewardModelScorer,
    answers_match,
    extract_answer,
    make_quality_scorer,
    reference_answer,
)


@pytest.fixture(scope="module")
def tiny(tiny_lm_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_lm_dir), AutoTokenizer.from_pretrained(tiny_lm_dir)


def _check_against_naive(model, tok, result, max_length, **kw):
    for p, r, v in zip(PROMPTS, RESPONSES, result.values, strict=True):
        if not r:
            assert v is None
            continue
        assert v == pytest.approx(naive_learnability(model, tok, p, r, max_length=max_length, **kw), abs=1e-4)


@pytest.mark.parametrize("batch_tokens", [4096, 300])  # one batch; several batches
def test_learnability_matches_naive(tiny, batch_tokens):
    model, tok = tiny
    res = learnability_scores(model, tok, PROMPTS, RESPONSES, max_length=160, batch_tokens=batch_tokens)
    assert res.truncated == 1
    assert all(isinstance(v, float) and v < 0 for v in res.values[:-1])
    assert len(set(res.values[:-1])) == len(RESPONSES) - 1  # in input order, not batch order
    _check_against_naive(model, tok, res, 160)
    assert res.tokens > sum(len(tok(r)["input_ids"]) for r in RESPONSES)  # prompts counted too


def test_cpu_streams_give_the_single_stream_values(tiny):
    """Several threads: batches run in parallel single-threaded streams; the values are those of one stream, the
    process's thread count comes back, and a failing batch raises instead of leaving a hole."""
    model, tok = tiny
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = learnability_scores(model, tok, PROMPTS, RESPONSES, max_length=160, batch_tokens=300)
        torch.set_num_threads(2)
        seen: set[str] = set()
        forward = model.model.forward

        def spy(*args, **kwargs):
            seen.add(threading.current_thread().name)
            return forward(*args, **kwargs)

        model.model.forward = spy
        try:
            two = learnability_scores(model, tok, PROMPTS, RESPONSES, max_length=160, batch_tokens=300)
        finally:
            del model.model.forward
        assert len([n for n in seen if n.startswith("persyn-score")]) == 2  # both streams took batches
        assert two.values == pytest.approx(one.values, abs=1e-6) and torch.get_num_threads() == 2
        model.model.forward = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("batch failed"))
        with pytest.raises(RuntimeError, match="batch failed"):
            learnability_scores(model, tok, PROMPTS, RESPONSES, max_length=160, batch_tokens=300)
        assert torch.get_num_threads() == 2
    finally:
        model.model.__dict__.pop("forward", None)
        torch.set_num_threads(threads)


def _greedy_longest_first(lengths: list[int], budget: int) -> list[list[int]]:
    """The batching persyn used before: longest first, a new batch when the next row would exceed the budget."""
    batches: list[list[int]] = []
    for length in sorted(lengths, reverse=True):
        if batches and (len(batches[-1]) + 1) * batches[-1][0] <= budget:
            batches[-1].append(length)
        else:
            batches.append([length])
    return batches


def _cost(batches: list[list[int]]) -> int:
    return sum(lmod._BATCH_COST_TOKENS + len(b) * max(b) - sum(b) for b in batches)


@pytest.mark.parametrize("seed", range(5))
def test_batches_cover_every_row_within_budget_with_least_padding(seed):
    import random

    rng = random.Random(seed)
    lengths = [rng.choice([rng.randint(20, 200), rng.randint(200, 1100)]) for _ in range(rng.randint(1, 90))]
    items = [(i, lmod.Encoded(ids=[0] * n, start=1, truncated=False)) for i, n in enumerate(lengths)]
    budget = rng.choice([1024, 4096])
    batches = [[len(e.ids) for _, e in b] for b in lmod._batches(items, budget)]
    assert sorted(i for b in lmod._batches(items, budget) for i, _ in b) == list(range(len(lengths)))
    assert all(len(b) == 1 or len(b) * max(b) <= budget for b in batches)
    assert max(batches[0]) == max(lengths)  # the longest batch first
    assert _cost(batches) <= _cost(_greedy_longest_first(lengths, budget))


def test_learnability_fallback_path_matches(tiny, monkeypatch):
    model, tok = tiny
    fast = learnability_scores(model, tok, PROMPTS, RESPONSES, max_length=160)
    monkeypatch.setattr(lmod, "_PLAIN_HEAD_TYPES", frozenset())  # model's own forward with logits_to_keep
    slow = learnability_scores(model, tok, PROMPTS, RESPONSES, max_length=160, batch_tokens=500)
    assert slow.values[:-1] == pytest.approx(fast.values[:-1], abs=1e-4)
    assert slow.values[-1] is None


def test_few_shot_and_end_of_turn(tiny):
    model, tok = tiny
    [chat_e] = Encoder(tok, None, None, 512)(PROMPTS[:1], RESPONSES[:1])
    assert tok.decode(chat_e.ids[chat_e.start:]) == RESPONSES[0] + "<|im_end|>\n"  # as SFT trains it
    [few_e] = Encoder(tok, None, True, 512)(PROMPTS[:1], RESPONSES[:1])
    assert tok.decode(few_e.ids[few_e.start:]) == " " + RESPONSES[0] + tok.eos_token  # TRL appends the eos
    res = learnability_scores(model, tok, PROMPTS, RESPONSES, few_shot=True, max_length=512)
    _check_against_naive(model, tok, res, 512, few_shot=True)
    chat = learnability_scores(model, tok, PROMPTS[:1], RESPONSES[:1])
    assert chat.values[0] != pytest.approx(res.values[0], abs=1e-4)


def test_prompt_longer_than_max_length(tiny):
    model, tok = tiny
    prompt, response = "What is 12 times 7? " * 60, "84 is the answer."
    res = learnability_scores(model, tok, [prompt], [response], max_length=32)
    assert res.truncated == 1 and res.tokens == 32
    assert res.values[0] == pytest.approx(naive_learnability(model, tok, prompt, response, max_length=32), abs=1e-4)


def test_learnability_leaves_training_mode(tiny):
    model, tok = tiny
    model.train()
    try:
        learnability_scores(model, tok, PROMPTS[:2], RESPONSES[:2])
        assert model.training
    finally:
        model.eval()


@pytest.mark.slow
def test_learnability_smollm2():
    models = pytest.importorskip("persyn.models", reason="persyn.models (load_causal_lm) not available yet")
    model, tok = models.load_causal_lm("smollm2-135m-instruct", dtype="float32", device="cpu")
    prompts = ["What is 2 + 2?", "Name a colour."]
    good = ["2 + 2 = 4.", "Blue."]
    bad = ["Zebra purple quantum seventeen.", "Walrus forty the of and sixteen."]
    res = learnability_scores(model, tok, prompts + prompts, good + bad)
    for p, r, v in zip(prompts + prompts, good + bad, res.values, strict=True):
        assert v == pytest.approx(naive_learnability(model, tok, p, r), abs=1e-3)
    assert res.values[0] > res.values[2] and res.values[1] > res.values[3]  # a trained model prefers sense


# ---------------------------------------------------------------- math_answer

def test_extract_answer_forms():
    assert extract_answer("so 3 + 4 = 7\n#### 1,000") == "1000"
    assert extract_answer("We get \\boxed{\\frac{1}{2}}.") == "\\frac{1}{2}"
    assert extract_answer("Adding up, the answer is $72$. Then 5 more.") == "72"
    assert extract_answer("First 3, then 4, finally 12 apples") == "12"
    assert extract_answer("no digits here") is None
    assert reference_answer("work...\n#### 1,234") == "1234"
    assert answers_match("0.5", "\\frac{1}{2}") and answers_match("72.0", "72")
    assert not answers_match("71", "72") and not answers_match(None, "72")


def test_math_answer_on_gsm8k(shared_data):
    rows = [json.loads(line) for line in (shared_data / "gsm8k" / "test.jsonl").open()][:20]
    scorer = make_quality_scorer(QualityConfig(kind="math_answer"))
    prompts, refs = [r["question"] for r in rows], [r["answer"] for r in rows]
    finals = [reference_answer(a) for a in refs]
    assert scorer.score(prompts, refs, refs) == [1.0] * 20  # the worked solutions themselves
    boxed = [f"Working it out, the result is \\boxed{{{f}}}." for f in finals]
    said = [f"Thinking step by step... So the answer is {f}." for f in finals]
    wrong = [f"#### {int(f) + 1}" for f in finals]
    assert scorer.score(prompts, boxed, refs) == [1.0] * 20
    assert scorer.score(prompts, said, refs) == [1.0] * 20
    assert scorer.score(prompts, wrong, refs) == [0.0] * 20
    assert scorer.score(prompts[:1], [""], refs[:1]) == [0.0]
    with pytest.raises(InputError, match="prompt 2 .*reference"):
        scorer.score(prompts[:2], refs[:2], [refs[0], None])


# ---------------------------------------------------------------- reward_model and field

def test_reward_model_matches_direct_forward(tmp_path):
    tok = build_tokenizer(tmp_path)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tok.pad_token_id)
    model = LlamaForSequenceClassification(config).eval()
    scorer = RewardModelScorer(model, tok, batch_size=2)
    prompts, responses = PROMPTS[:5], RESPONSES[:4] + ["Blue."]
    scores = scorer.score(prompts, responses, [None] * 5)
    with torch.inference_mode():
        for p, r, s in zip(prompts, responses, scores, strict=True):
            enc = tok(scorer.conversation(p, r), add_special_tokens=False, return_tensors="pt")
            assert s == pytest.approx(model(**enc).logits[0, 0].item(), abs=1e-4)
    assert len(set(scores)) == 5
    with_empty = scorer.score(prompts[:3] + ["Hi"], responses[:3] + ["  "], [None] * 4)
    assert with_empty[3] == min(with_empty[:3])


def test_reward_model_needs_model():
    with pytest.raises(ConfigError, match="quality.model"):
        make_quality_scorer(QualityConfig(kind="reward_model"))


def test_unknown_kind():
    with pytest.raises(ConfigError, match="quality.kind"):
        make_quality_scorer(QualityConfig.model_construct(kind="nope"))


def test_gym_quality_uses_each_tasks_own_verifier_on_one_final_answer():
    pytest.importorskip("reasoning_gym")
    from persyn.config import PromptsConfig
    from persyn.prompts import load_prompts
    from persyn.scoring.quality import gym_final_answer, make_quality_scorer

    prompts = load_prompts(PromptsConfig(path="gym:family_relationships+chain_sum:2:4", reference_field="entry"))
    fam, chain = prompts
    fam_answer = json.loads(fam.reference)["answer"]
    chain_answer = json.loads(chain.reference)["answer"]
    scorer = make_quality_scorer(QualityConfig(kind="gym"))
    responses = [f"They are related.\nAnswer: {fam_answer.upper()}",  # the task's verifier ignores case
                 f"Step 1...\nAnswer: {chain_answer}",
                 f"Answer: {int(chain_answer) + 1}",
                 f"It could be {chain_answer} or {int(chain_answer) + 1}.\nAnswer: {int(chain_answer) + 1}",
                 ""]
    refs = [fam.reference, chain.reference, chain.reference, chain.reference, chain.reference]
    got = scorer.score([p.text for p in (fam, chain, chain, chain, chain)], responses, refs)
    assert got == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert gym_final_answer("x\n<answer>7</answer>\nAnswer: 8") == "7"
    assert gym_final_answer("so 3 + 4 = 7\n#### 7") == "7"
    assert gym_final_answer("The sum is 7.\n\n**7**") == "7"
    with pytest.raises(InputError, match="no gym entry"):
        scorer.score(["q"], ["Answer: 1"], ["7"])
