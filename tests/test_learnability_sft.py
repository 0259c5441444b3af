"""Learnability scores exactly the tokens `persyn train` trains on (issue 11, item 2).

The reference is TRL's own SFTTrainer, built by persyn.experiments.train.build_trainer from an exported-style dataset:
its `input_ids` and `labels` are compared token for token with what learnability scores, for SmolLM2's ChatML
template and for a base model in few-shot mode (Gemma-3-270M), and Eq. 1 is checked against the model's own
loss on TRL's labels. A second, independent reference (plain `apply_chat_template` ids and a plain forward)
checks the truncation that keeps the prompt's head and a minimum response budget.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from persyn.scoring.learnability import MIN_RESPONSE_TOKENS, Encoder, learnability_scores

PROMPTS = ["What is 2 + 2?", "Name a colour.", "Write one sentence about the sea.",
           "Natalia sold clips to 48 of her friends in April. How many clips did she sell?"]
RESPONSES = ["2 + 2 = 4.", "Blue, like the sea.", "The sea is wide, grey and restless. " * 12,
             "She sold 48 clips in April.\n#### 48"]
# SFT's keep_start cuts the long third row; every prompt still leaves more than the minimum response budget.
MAX_LENGTH = {"smollm2-135m-instruct": 96, "gemma3-270m": 240}


@pytest.fixture(scope="module", params=sorted(MAX_LENGTH))
def sft(request, tmp_path_factory):
    """(registry name, TRL's tokenised rows, TRL's model and tokenizer) for one student."""
    from persyn.experiments.train import TrainConfig, build_trainer

    name = request.param
    tmp = tmp_path_factory.mktemp(name)
    rows = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": r}]}
            for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    (tmp / "dataset.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    trainer = build_trainer(TrainConfig(model=name, output_dir=str(tmp / "out"), max_length=MAX_LENGTH[name]),
                            tmp / "dataset.jsonl")
    assert len(trainer.train_dataset) == len(rows)  # no row dropped
    yield name, list(trainer.train_dataset), trainer.model.eval(), trainer.processing_class
    del trainer


def scored_positions(labels: list[int]) -> list[int]:
    return [i for i, label in enumerate(labels) if label != -100]


@pytest.mark.slow
def test_the_scored_tokens_are_trls_input_ids_and_labels(sft):
    from persyn.models import load_tokenizer

    name, rows, _, _ = sft
    tok = load_tokenizer(name)  # the tokenizer learnability scoring uses (left padding, pad token set)
    encoded = Encoder(tok, None, None, MAX_LENGTH[name])(PROMPTS, RESPONSES)
    for e, row in zip(encoded, rows, strict=True):
        assert e.ids == row["input_ids"]
        assert list(range(e.start, len(e.ids))) == scored_positions(row["labels"])
    assert [e.truncated for e in encoded] == [False, False, True, False]
    ends = [tok.decode(e.ids[-2:]) for e in encoded if not e.truncated]
    if name == "gemma3-270m":  # few-shot: TRL appends the eos to the completion, and it is scored
        assert tok.chat_template is None and encoded[0].ids[0] == tok.bos_token_id
        assert all(e.endswith(tok.eos_token) for e in ends)
    else:  # ChatML: the scored completion is `answer<|im_end|>\n`
        assert all(e == ".<|im_end|>\n" or e.endswith("<|im_end|>\n") for e in ends)


@pytest.mark.slow
def test_eq1_equals_minus_the_models_sft_loss_on_trls_labels(sft):
    """Independent of persyn's encoder: HF's own shifted cross-entropy over TRL's labels."""
    from persyn.models import load_tokenizer

    name, rows, model, _ = sft
    got = learnability_scores(model, load_tokenizer(name), PROMPTS, RESPONSES, max_length=MAX_LENGTH[name])
    assert got.truncated == 1
    with torch.inference_mode():
        for value, row in zip(got.values, rows, strict=True):
            loss = model(input_ids=torch.tensor([row["input_ids"]]), labels=torch.tensor([row["labels"]])).loss
            assert value == pytest.approx(-loss.item(), abs=1e-4)


@pytest.fixture(scope="module")
def tiny(tiny_lm_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_lm_dir).eval(), AutoTokenizer.from_pretrained(tiny_lm_dir)


def plain_mean_logprob(model, ids: list[int], start: int) -> float:
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logprobs = torch.log_softmax(logits[start - 1:-1], dim=-1)
    return logprobs.gather(-1, torch.tensor(ids[start:])[:, None]).mean().item()


def test_a_long_prompt_keeps_its_head_and_a_response_budget(tiny):
    model, tok = tiny
    prompt, response = "What is 12 times 7? " * 40, "84 is the answer, since 12 * 7 = 84. " * 4
    chat = [{"role": "user", "content": prompt}]
    p_ids = tok.apply_chat_template(chat, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
    full = tok.apply_chat_template([*chat, {"role": "assistant", "content": response}], tokenize=True,
                                   return_dict=True)["input_ids"]
    completion = full[len(p_ids):]
    max_length = 64
    budget = min(MIN_RESPONSE_TOKENS, max_length // 2)
    assert len(p_ids) > max_length and len(completion) > budget
    res = learnability_scores(model, tok, [prompt], [response], max_length=max_length)
    assert res.truncated == 1 and res.tokens == max_length
    expected_ids = p_ids[: max_length - budget] + completion[:budget]  # BOS/template/question head, then answer
    assert tok.decode(expected_ids).startswith("<|im_start|>user\nWhat is 12 times 7?")
    assert res.values[0] == pytest.approx(plain_mean_logprob(model, expected_ids, max_length - budget), abs=1e-4)


def test_a_short_response_is_scored_whole_under_truncation(tiny):
    model, tok = tiny
    prompt, response = "What is 12 times 7? " * 40, "84."
    chat = [{"role": "user", "content": prompt}]
    p_ids = tok.apply_chat_template(chat, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
    full = tok.apply_chat_template([*chat, {"role": "assistant", "content": response}], tokenize=True,
                                   return_dict=True)["input_ids"]
    completion = full[len(p_ids):]  # "84." then "<|im_end|>\n"
    res = learnability_scores(model, tok, [prompt], [response], max_length=40)
    expected_ids = p_ids[: 40 - len(completion)] + completion
    assert res.truncated == 1 and res.tokens == 40
    assert res.values[0] == pytest.approx(plain_mean_logprob(model, expected_ids, 40 - len(completion)), abs=1e-4)
