"""Student evaluation: GSM8K answer matching, IFEval verdicts, and tiny end-to-end runs on real data."""

from __future__ import annotations

import json
import sys

import pytest
from transformers import AutoTokenizer

from persyn.errors import ConfigError, PersynError
from persyn.experiments.eval import (
    GSM8K_BUILTIN_SHOTS,
    eval_gsm8k,
    eval_gym,
    eval_ifeval,
    eval_lm_eval,
    evaluate,
    gsm8k_prompt,
    gsm8k_reference,
    gsm8k_shots,
    gym_items,
    ifeval_metrics,
    score_gsm8k,
    score_gym,
    score_ifeval,
)

NO_COMMA = {"key": 1, "prompt": "Describe the sea. Do not use any commas.",
            "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}


def test_gsm8k_scoring_counts_a_correct_final_answer():
    reference = gsm8k_reference("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n"
                                "She makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18")
    assert reference == "18"
    assert score_gsm8k("She makes 9 * 2 = $18 every day.\n#### 18", reference) == ("18", True)
    assert score_gsm8k("9 * 2 = 18 dollars. The answer is 18.", reference)[1]
    assert score_gsm8k("The answer is 1,000.", gsm8k_reference("#### 1,000"))[1]
    assert not score_gsm8k("#### 17", reference)[1]
    assert not score_gsm8k("I do not know.", reference)[1]


def test_gsm8k_prompts_for_chat_and_base_models(tiny_lm_dir, shared_data):
    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    shots = gsm8k_shots(2, shared_data / "gsm8k" / "train.jsonl")
    assert len(shots) == 2 and "<<" not in shots[0][1] and shots[0][1].endswith("#### 72")
    chat, few_shot = gsm8k_prompt(tok, "What is 2+2?", shots)
    assert not few_shot and chat.count("<|im_start|>user") == 3 and chat.count("<|im_start|>assistant") == 3
    assert chat.endswith("What is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    base, few_shot = gsm8k_prompt(tok, "What is 2+2?", gsm8k_shots(5, None), chat_template="few-shot")
    assert few_shot and base.count("Question: ") == 6 and base.endswith("Question: What is 2+2?\nAnswer:")
    assert GSM8K_BUILTIN_SHOTS[0][0] in base
    zero, _ = gsm8k_prompt(tok, "What is 2+2?", [])
    assert zero == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"


def test_eval_gsm8k_on_a_tiny_model(tiny_lm_dir, shared_data, tmp_path):
    test_path = shared_data / "gsm8k" / "test.jsonl"
    out = tmp_path / "gsm8k.json"
    result = eval_gsm8k(str(tiny_lm_dir), test_path, n=4, max_new_tokens=12, batch_size=3, output_path=out)
    assert result["n"] == 4 and 0.0 <= result["accuracy"] <= 1.0 and result["format"] == "chat"
    first_rows = [json.loads(line) for line in test_path.read_text().splitlines()[:4]]
    assert [r["question"] for r in result["records"]] == [r["question"] for r in first_rows]
    assert result["records"][0]["reference"] == "18"
    assert all(set(r) >= {"question", "reference", "prediction", "correct"} for r in result["records"])
    assert result["accuracy"] == sum(r["correct"] for r in result["records"]) / 4
    summary = json.loads(out.read_text())
    assert summary["accuracy"] == result["accuracy"] and "records" not in summary
    assert len(out.with_suffix(".records.jsonl").read_text().splitlines()) == 4


def test_ifeval_scoring_verdicts():
    clean = score_ifeval(NO_COMMA, "The sea is wide and blue and deep.")
    assert clean["strict"] == [True] and clean["prompt_strict"] and clean["prompt_loose"]
    commas = score_ifeval(NO_COMMA, "The sea is wide, blue, and deep.")
    assert commas["strict"] == [False] and commas["loose"] == [False]
    # Loose scoring also tries the response without its first line (a chatty preamble).
    preamble = score_ifeval(NO_COMMA, "Sure, here it is:\nThe sea is wide and blue and deep.")
    assert preamble["strict"] == [False] and preamble["loose"] == [True]
    assert score_ifeval(NO_COMMA, "")["strict"] == [False]

    two = {"key": 2, "prompt": "p", "instruction_id_list": ["punctuation:no_comma", "change_case:english_lowercase"],
           "kwargs": [{}, {}]}
    half = score_ifeval(two, "The sea is wide and blue.")
    assert half["strict"] == [True, False] and not half["prompt_strict"]
    metrics = ifeval_metrics([clean, commas, half])
    assert metrics["prompt_level_strict_acc"] == pytest.approx(1 / 3)
    assert metrics["inst_level_strict_acc"] == pytest.approx(2 / 4)


def test_ifeval_sentence_count_verifier_runs():
    row = {"key": 3, "prompt": "p", "instruction_id_list": ["length_constraints:number_sentences"],
           "kwargs": [{"relation": "less than", "num_sentences": 3}]}
    assert score_ifeval(row, "One sentence here. Two sentences here.")["strict"] == [True]
    assert score_ifeval(row, "One. Two. Three. Four.")["strict"] == [False]


def test_eval_ifeval_on_a_tiny_model(tiny_lm_dir, shared_data, tmp_path):
    result = eval_ifeval(str(tiny_lm_dir), shared_data / "ifeval" / "input_data.jsonl", n=3, max_new_tokens=8,
                         output_path=tmp_path / "ifeval.json")
    assert result["n"] == 3 and [r["key"] for r in result["records"]] == [1000, 1001, 1005]
    for key in ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc",
                "inst_level_loose_acc"):
        assert 0.0 <= result[key] <= 1.0
    assert result["inst_level_loose_acc"] >= result["inst_level_strict_acc"]
    assert all(len(r["strict"]) == len(r["instruction_ids"]) for r in result["records"])
    assert (tmp_path / "ifeval.records.jsonl").is_file()


def test_lm_eval_without_the_package_is_a_clear_error(tiny_lm_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # the dev extras install it: make its import fail
    with pytest.raises(PersynError, match=r"pip install 'persyn\[lmeval\]'"):
        eval_lm_eval(str(tiny_lm_dir), ["hellaswag"])


def test_evaluate_dispatches_and_rejects_bad_entries(tiny_lm_dir, shared_data, tmp_path):
    test_path = str(shared_data / "gsm8k" / "test.jsonl")
    summary = evaluate(str(tiny_lm_dir), [{"name": "gsm8k", "test_path": test_path, "n": 2, "max_new_tokens": 4}],
                       output_dir=tmp_path)
    assert summary["results"]["gsm8k"]["n"] == 2 and (tmp_path / "summary.json").is_file()
    with pytest.raises(ConfigError, match=r"eval.benchmarks\[0\].name: unknown benchmark 'mmlu'"):
        evaluate(str(tiny_lm_dir), [{"name": "mmlu"}])
    with pytest.raises(ConfigError, match=r"eval.benchmarks\[0\].nn: unknown key"):
        evaluate(str(tiny_lm_dir), [{"name": "gsm8k", "test_path": test_path, "nn": 2}])
    with pytest.raises(ConfigError, match=r"eval.benchmarks\[0\].test_path: missing key"):
        evaluate(str(tiny_lm_dir), [{"name": "gsm8k"}])


def test_each_benchmark_declares_exactly_its_functions_arguments():
    """evaluate checks specs against the declarations, never the signatures: the two must agree."""
    import inspect

    from persyn.experiments.eval import BENCHMARKS

    assert set(BENCHMARKS) == {"gsm8k", "gym", "ifeval", "lm_eval"}
    for name, benchmark in BENCHMARKS.items():
        params = inspect.signature(benchmark.run).parameters
        required = {k for k, p in params.items() if p.default is inspect.Parameter.empty
                    and p.kind is not inspect.Parameter.VAR_KEYWORD} - {"model_spec"}
        optional = {k for k, p in params.items() if p.default is not inspect.Parameter.empty} - {"output_path"}
        assert set(benchmark.required) == required, name
        assert set(benchmark.optional) == optional, name
        var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        assert benchmark.passes_others_on == var_kw, name


GYM = "gym:basic_arithmetic+chain_sum:12:5"


def test_gym_items_are_the_prompt_readers_and_scored_by_their_task():
    items = gym_items(GYM, template="{prompt}\nEnd with <answer>N</answer>.")
    assert [it["task"] for it in items] == ["basic_arithmetic"] * 6 + ["chain_sum"] * 6
    assert gym_items(GYM)[0]["question"] == items[0]["question"] != items[0]["prompt"]
    assert items[0]["prompt"].endswith("End with <answer>N</answer>.")
    assert len({it["id"] for it in items}) == 12
    for it in items:
        answer = str(it["entry"]["answer"])
        assert score_gym(f"So:\n<answer>{answer}</answer>", it["entry"]) == (answer, True)
        assert score_gym(f"Answer: {answer}1", it["entry"]) == (f"{answer}1", False)
        assert score_gym("", it["entry"]) == (None, False)


def test_eval_gym_per_task_per_item_and_training_overlap(tiny_lm_dir, tmp_path):
    items = gym_items(GYM)
    train = tmp_path / "dataset.jsonl"  # two test questions were training prompts
    train.write_text("".join(json.dumps({"messages": [{"role": "user", "content": it["question"]},
                                                      {"role": "assistant", "content": "x"}]}) + "\n"
                             for it in (items[1], items[7])))
    out = tmp_path / "gym.json"
    result = eval_gym(str(tiny_lm_dir), GYM, exclude_prompts_path=train, max_new_tokens=6, batch_size=4,
                      output_path=out)
    assert result["excluded"] == 2 and result["excluded_ids"] == [items[1]["id"], items[7]["id"]]
    records = result["records"]
    assert [r["id"] for r in records] == [it["id"] for i, it in enumerate(items) if i not in (1, 7)]
    for r, it in zip(records, [it for i, it in enumerate(items) if i not in (1, 7)], strict=True):
        assert r["correct"] == score_gym(r["prediction"], it["entry"])[1] and r["task"] == it["task"]
    assert result["per_task"]["chain_sum"]["n"] == result["per_task"]["basic_arithmetic"]["n"] == 5
    assert result["accuracy"] == sum(r["correct"] for r in records) / 10
    saved = [json.loads(line) for line in out.with_suffix(".records.jsonl").read_text().splitlines()]
    assert [(r["id"], r["task"], r["correct"]) for r in saved] == [(r["id"], r["task"], r["correct"]) for r in records]
    # the same training questions given as a prompts source (a gym: spec) overlap as well
    same = eval_gym("no-such-model", GYM, n=3, exclude_prompts_path=GYM)  # nothing left: no model is loaded
    assert same["excluded"] == 12 and same["n"] == 0 and same["accuracy"] == 0.0


def test_eval_gym_asks_a_repeated_question_once(tiny_lm_dir):
    spec = "gym:lcm(max_value=6):20:3"  # a small space: the generator draws 9 of its 20 questions again
    items = gym_items(spec)
    firsts = [it for i, it in enumerate(items) if it["id"] not in {x["id"] for x in items[:i]}]
    assert len(firsts) == 11
    result = eval_gym(str(tiny_lm_dir), spec, max_new_tokens=2, batch_size=8)
    assert result["repeated"] == 9 and result["n"] == 11
    assert [r["id"] for r in result["records"]] == [it["id"] for it in firsts]
    assert [r["index"] for r in result["records"]] == [it["index"] for it in firsts]
