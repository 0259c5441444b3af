"""reasoning-gym problems (`gym:TASK[+TASK...]:SIZE[:SEED]`, the prompts' own reader), answered greedily in the
student's format and scored by each task's own verifier on one extracted final answer (persyn's quality kind
`gym`). Per-item records (id, task, correct) let persyn.experiments.stats compute intervals over items and seeds
later."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from persyn.errors import ConfigError, InputError
from persyn.experiments.eval.common import (
    Benchmark,
    format_for_student,
    generate_answers,
    load_generator,
    write_outputs,
)
from persyn.prompts import prompt_id


def gym_items(items: str, template: str | None = None) -> list[dict[str, Any]]:
    """The spec's problems, in the reader's order: {index, id, task, question, prompt, entry}. `prompt` is the
    question wrapped by `template` ("{prompt}" replaced, as prompts.template does); `id` is the prompt id persyn
    gives that text."""
    from persyn.prompts import read_rows

    if not items.startswith("gym:"):
        raise ConfigError("expected gym:TASK[+TASK...]:SIZE[:SEED]", key="items")
    out = []
    for i, (_, row) in enumerate(read_rows(items)):
        text = template.replace("{prompt}", row["prompt"]) if template is not None else row["prompt"]
        out.append({"index": i, "id": prompt_id(text), "task": row["task"], "question": row["prompt"],
                    "prompt": text, "entry": json.loads(row["entry"])})
    return out


def training_texts(path: str | Path, field: str = "prompt") -> set[str]:
    """Every prompt text of a training set: a prompts source (file, `hf:` or `gym:`; column `field`) or a
    dataset.jsonl with `messages` (the first user turn)."""
    from persyn.prompts import read_rows

    texts: set[str] = set()
    for line, row in read_rows(str(path)):
        if not isinstance(row, dict):
            raise InputError("expected an object", file=str(path), line=line)
        if isinstance(row.get(field), str):
            texts.add(row[field])
        elif isinstance(row.get("messages"), list):
            texts.update(m.get("content", "") for m in row["messages"][:1] if isinstance(m, dict))
        else:
            raise InputError("missing field (nor a `messages` list)", file=str(path), line=line, field=field)
    return texts


def overlapping(items: list[dict[str, Any]], texts: set[str]) -> list[dict[str, Any]]:
    """The items whose question, bare or wrapped by the template, is a training prompt."""
    return [it for it in items if it["question"] in texts or it["prompt"] in texts]


def first_of_each(items: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """The items with each id's first occurrence only, and how many repeats were dropped: a generator can draw
    the same question twice, and a repeat would count one answer twice and break pairing by id."""
    seen: set[str] = set()
    kept = []
    for it in items:
        if it["id"] not in seen:
            seen.add(it["id"])
            kept.append(it)
    return kept, len(items) - len(kept)


def score_gym(prediction: str, entry: dict[str, Any], scorer: Any = None) -> tuple[str | None, bool]:
    """(the extracted final answer, whether the task's verifier gives it full marks)."""
    from persyn.scoring.quality import GymScorer, gym_final_answer

    scorer = scorer or GymScorer()
    correct = bool(prediction.strip()) and scorer.verify(prediction, entry) == 1.0
    return gym_final_answer(prediction), correct


def per_task(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    tally: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in records:
        tally[r["task"]][0] += int(r["correct"])
        tally[r["task"]][1] += 1
    return {t: {"n": n, "correct": c, "accuracy": c / n} for t, (c, n) in tally.items()}


def eval_gym(model_spec: str, items: str, *, n: int | None = None, template: str | None = None,
             exclude_prompts_path: str | Path | None = None, exclude_field: str = "prompt",
             max_new_tokens: int = 256, batch_size: int = 8, seed: int = 0, chat_template: str | None = None,
             trust_remote_code: bool = False, dtype: str = "auto",
             output_path: str | Path | None = None) -> dict[str, Any]:
    """Accuracy by each task's verifier on `items` (a gym: spec), overall and per task.

    `n`: the first n items (after exclusion). `exclude_prompts_path`: a training prompt set; items whose question
    is one of its prompts (bare or wrapped by `template`) are left out and counted (`excluded`); a question drawn
    again is asked once (`repeated`)."""
    from transformers import set_seed

    from persyn.scoring.quality import GymScorer

    if n is not None and n <= 0:
        raise ConfigError("must be positive", key="n")
    rows = gym_items(items, template)
    excluded = overlapping(rows, training_texts(exclude_prompts_path, exclude_field)) if exclude_prompts_path else []
    skip = {it["index"] for it in excluded}
    rows, repeated = first_of_each([it for it in rows if it["index"] not in skip])
    rows = rows[:n]
    predictions, few_shot = [], False
    if rows:  # every item excluded: nothing to answer, no model to load
        set_seed(seed)
        model, tokenizer = load_generator(model_spec, trust_remote_code=trust_remote_code, dtype=dtype)
        formatted = [format_for_student(tokenizer, it["prompt"], chat_template) for it in rows]
        predictions, few_shot = generate_answers(model, tokenizer, formatted, max_new_tokens=max_new_tokens,
                                                 batch_size=batch_size)
    scorer = GymScorer()
    records = []
    for it, prediction in zip(rows, predictions, strict=True):
        extracted, correct = score_gym(prediction, it["entry"], scorer)
        records.append({"id": it["id"], "index": it["index"], "task": it["task"], "question": it["question"],
                        "answer": it["entry"]["answer"], "prediction": prediction, "extracted": extracted,
                        "correct": correct})
    n_correct = sum(r["correct"] for r in records)
    result = {"benchmark": "gym", "model": model_spec, "items": items, "n": len(records),
              "format": "few-shot" if few_shot else "chat", "template": template, "correct": n_correct,
              "accuracy": n_correct / len(records) if records else 0.0, "per_task": per_task(records),
              "excluded": len(excluded), "repeated": repeated, "excluded_ids": [it["id"] for it in excluded],
              "records": records}
    return write_outputs(result, output_path)


BENCHMARK = Benchmark("gym", eval_gym, required=("items",),
                      optional=("n", "template", "exclude_prompts_path", "exclude_field", "max_new_tokens",
                                "batch_size", "seed", "chat_template", "trust_remote_code", "dtype"))
