"""GSM8K: exact numeric match of the final answer, zero-shot in the student's format or with exemplars."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from persyn.chat import uses_few_shot
from persyn.errors import ConfigError, InputError
from persyn.experiments.eval.common import (
    Benchmark,
    Formatted,
    format_for_student,
    generate_answers,
    load_generator,
    read_jsonl,
    write_outputs,
)
from persyn.scoring.quality import answers_match, extract_answer, reference_answer

# Wei et al. (2022) chain-of-thought exemplars, written in GSM8K's "#### answer" format.
GSM8K_BUILTIN_SHOTS: list[tuple[str, str]] = [
    ("There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, "
     "there will be 21 trees. How many trees did the grove workers plant today?",
     "There are 15 trees originally. Then there were 21 trees after some more were planted. "
     "So there must have been 21 - 15 = 6.\n#### 6"),
    ("If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
     "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5.\n#### 5"),
    ("Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
     "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. "
     "After eating 35, they had 74 - 35 = 39.\n#### 39"),
    ("Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. "
     "How many lollipops did Jason give to Denny?",
     "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. "
     "So he gave Denny 20 - 12 = 8.\n#### 8"),
    ("Shawn has five toys. For Christmas, he got two toys each from his mom and dad. "
     "How many toys does he have now?",
     "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 2 + 2 = 4 more toys. "
     "5 + 4 = 9.\n#### 9"),
]


def gsm8k_reference(answer: str) -> str:
    """The final answer of a GSM8K solution: what follows '#### ' on its last line."""
    return reference_answer(answer)


def score_gsm8k(prediction: str, reference: str) -> tuple[str | None, bool]:
    """(extracted answer, correct) for a model's output against a reference final answer (exact numeric match,
    with persyn.scoring.quality's extraction, the same as teacher quality scoring)."""
    extracted = extract_answer(prediction)
    return extracted, answers_match(extracted, reference)


def gsm8k_shots(shots: int, shots_path: str | Path | None) -> list[tuple[str, str]]:
    """The first `shots` rows of a GSM8K train file (calculator annotations removed), or the built-in set."""
    if shots == 0:
        return []
    if shots_path is None:
        if shots > len(GSM8K_BUILTIN_SHOTS):
            raise ConfigError(f"only {len(GSM8K_BUILTIN_SHOTS)} built-in exemplars; give shots_path",
                              key="shots")
        return GSM8K_BUILTIN_SHOTS[:shots]
    rows = read_jsonl(Path(shots_path), ("question", "answer"))[:shots]
    if len(rows) < shots:
        raise InputError(f"needs {shots} exemplars, has {len(rows)}", file=str(shots_path))
    return [(r["question"], re.sub(r"<<[^>]*>>", "", r["answer"])) for r in rows]


def gsm8k_prompt(tokenizer: Any, question: str, exemplars: list[tuple[str, str]],
                 chat_template: str | None = None) -> Formatted:
    """(text, few_shot). No exemplars: the student's own format (persyn.chat). Exemplars: chat turns for chat
    models, "Question:/Answer:" text for base models."""
    if not exemplars:
        return format_for_student(tokenizer, question, chat_template)
    if uses_few_shot(tokenizer, None, chat_template):
        prefix = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in exemplars)
        return Formatted(f"{prefix}Question: {question}\nAnswer:", True)
    messages = [turn for q, a in exemplars
                for turn in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
    messages.append({"role": "user", "content": question})
    template = chat_template if chat_template not in (None, "few-shot") else None
    return Formatted(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                   chat_template=template), False)


def eval_gsm8k(model_spec: str, test_path: str | Path, *, n: int | None = None, shots: int = 0,
               shots_path: str | Path | None = None, max_new_tokens: int = 256, batch_size: int = 8,
               seed: int = 0, chat_template: str | None = None, trust_remote_code: bool = False, dtype: str = "auto",
               output_path: str | Path | None = None) -> dict[str, Any]:
    """Exact numeric match of the final answer on the first `n` test rows (all rows when n is None).

    The subset is fixed (the file's first n rows, no shuffling) so that runs compare on the same items.
    """
    from transformers import set_seed

    if n is not None and n <= 0:
        raise ConfigError("must be positive", key="n")
    if shots < 0:
        raise ConfigError("must be >= 0", key="shots")
    rows = read_jsonl(Path(test_path), ("question", "answer"))[:n]
    exemplars = gsm8k_shots(shots, shots_path)
    set_seed(seed)
    model, tokenizer = load_generator(model_spec, trust_remote_code=trust_remote_code, dtype=dtype)
    formatted = [gsm8k_prompt(tokenizer, r["question"], exemplars, chat_template) for r in rows]
    predictions, few_shot = generate_answers(model, tokenizer, formatted, max_new_tokens=max_new_tokens,
                                             batch_size=batch_size)
    records = []
    for row, prediction in zip(rows, predictions, strict=True):
        reference = gsm8k_reference(row["answer"])
        extracted, correct = score_gsm8k(prediction, reference)
        records.append({"question": row["question"], "reference": reference, "prediction": prediction,
                        "extracted": extracted, "correct": correct})
    n_correct = sum(r["correct"] for r in records)
    result = {"benchmark": "gsm8k", "model": model_spec, "n": len(records), "shots": shots,
              "format": "few-shot" if few_shot else "chat", "correct": n_correct,
              "accuracy": n_correct / len(records) if records else 0.0, "records": records}
    return write_outputs(result, output_path)


BENCHMARK = Benchmark("gsm8k", eval_gsm8k, required=("test_path",),
                      optional=("n", "shots", "shots_path", "max_new_tokens", "batch_size", "seed", "chat_template",
                                "trust_remote_code", "dtype"))
