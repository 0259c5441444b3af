"""IFEval: instruction following, judged by if-verifiable's verifiers (strict and loose, per prompt and per
instruction)."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

from persyn.errors import ConfigError, InputError
from persyn.experiments.eval.common import (
    Benchmark,
    format_for_student,
    generate_answers,
    load_generator,
    read_jsonl,
    write_outputs,
)

log = logging.getLogger(__name__)

IFEVAL_HF = "hf:google/IFEval"


@functools.cache
def ensure_punkt() -> str:
    """NLTK's trained English Punkt model (punkt_tab), which two IFEval verifiers use to split sentences.

    nltk's data is not on PyPI, so where it is not installed (`python -m nltk.downloader punkt_tab`) we fall
    back to an untrained Punkt model (the same algorithm without learned abbreviations) and say so in the
    result: only `length_constraints:number_sentences` and `change_case:capital_word_frequency` can differ.
    """
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
        return "punkt_tab"
    except LookupError:
        pass
    root = Path(os.environ.get("PERSYN_CACHE", "~/.cache/persyn")).expanduser() / "nltk_data"
    lang_dir = root / "tokenizers" / "punkt_tab" / "english"
    lang_dir.mkdir(parents=True, exist_ok=True)
    for name in ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab"):
        (lang_dir / name).touch()
    if str(root) not in nltk.data.path:
        nltk.data.path.append(str(root))
    log.warning("NLTK punkt_tab is not installed; IFEval sentence counts use an untrained Punkt model")
    return "punkt-untrained"


def load_ifeval_rows(source: str | Path, n: int | None = None) -> list[dict[str, Any]]:
    """IFEval rows {key, prompt, instruction_id_list, kwargs}: the first n of a JSONL file or hf:google/IFEval."""
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    source = str(source)
    if source.startswith("hf:"):
        from datasets import load_dataset

        try:
            rows = [dict(r) for r in load_dataset(source[3:], split="train")]
        except Exception as exc:  # offline, unknown name, ...: the user's environment, not a bug
            raise InputError(f"cannot load the dataset: {exc}", file=source) from None
    else:
        rows = read_jsonl(Path(source), ("prompt", "instruction_id_list", "kwargs"))
    rows = rows[:n]
    for i, row in enumerate(rows):
        ids, kwargs = row["instruction_id_list"], row["kwargs"]
        if not isinstance(ids, list) or not isinstance(kwargs, list) or len(ids) != len(kwargs):
            raise InputError("instruction_id_list and kwargs must be lists of equal length", file=source,
                             field=f"row {i}")
        unknown = [x for x in ids if x not in INSTRUCTION_DICT]
        if unknown:
            raise InputError(f"unknown instruction ids {unknown}", file=source, field=f"row {i}")
    return rows


def score_ifeval(row: dict[str, Any], response: str) -> dict[str, Any]:
    """Strict and loose verdicts for one response, per instruction and for the whole prompt."""
    import langdetect
    from if_verifiable import IFEvalSample, evaluate_output_for_sample

    langdetect.DetectorFactory.seed = 0  # langdetect is random otherwise
    ensure_punkt()
    sample = IFEvalSample(key=row.get("key", 0), prompt=row["prompt"],
                          instruction_id_list=list(row["instruction_id_list"]),
                          kwargs=[dict(k or {}) for k in row["kwargs"]])
    results, _ = evaluate_output_for_sample("ifeval", sample, response)
    # if-verifiable returns no verdicts for an empty response: every instruction then fails.
    strict = [r.strict_pass for r in results] or [False] * len(sample.instruction_id_list)
    loose = [r.loose_pass for r in results] or [False] * len(sample.instruction_id_list)
    return {"instruction_ids": sample.instruction_id_list, "strict": strict, "loose": loose,
            "prompt_strict": all(strict), "prompt_loose": all(loose)}


def ifeval_metrics(scored: list[dict[str, Any]]) -> dict[str, float]:
    """Prompt-level (all instructions followed) and instruction-level accuracy, strict and loose."""
    inst_strict = [v for s in scored for v in s["strict"]]
    inst_loose = [v for s in scored for v in s["loose"]]

    def mean(values: list[bool]) -> float:
        return sum(values) / len(values) if values else 0.0

    return {"prompt_level_strict_acc": mean([s["prompt_strict"] for s in scored]),
            "inst_level_strict_acc": mean(inst_strict),
            "prompt_level_loose_acc": mean([s["prompt_loose"] for s in scored]),
            "inst_level_loose_acc": mean(inst_loose)}


def eval_ifeval(model_spec: str, prompts_path: str | Path = IFEVAL_HF, *, n: int | None = None,
                max_new_tokens: int = 1280, batch_size: int = 8, seed: int = 0, chat_template: str | None = None,
                trust_remote_code: bool = False, dtype: str = "auto",
                output_path: str | Path | None = None) -> dict[str, Any]:
    """IFEval on the first `n` prompts (all when None); max_new_tokens matches lm-evaluation-harness's 1280."""
    from transformers import set_seed

    if n is not None and n <= 0:
        raise ConfigError("must be positive", key="n")
    rows = load_ifeval_rows(prompts_path, n)
    splitter = ensure_punkt()
    set_seed(seed)
    model, tokenizer = load_generator(model_spec, trust_remote_code=trust_remote_code, dtype=dtype)
    formatted = [format_for_student(tokenizer, r["prompt"], chat_template) for r in rows]
    responses, few_shot = generate_answers(model, tokenizer, formatted, max_new_tokens=max_new_tokens,
                                           batch_size=batch_size)
    records = []
    for row, response in zip(rows, responses, strict=True):
        verdict = score_ifeval(row, response.strip())
        records.append({"key": row.get("key"), "prompt": row["prompt"], "response": response, **verdict})
    result = {"benchmark": "ifeval", "model": model_spec, "n": len(records),
              "format": "few-shot" if few_shot else "chat", "sentence_splitter": splitter,
              **ifeval_metrics(records), "records": records}
    return write_outputs(result, output_path)


BENCHMARK = Benchmark("ifeval", eval_ifeval, required=(),
                      optional=("prompts_path", "n", "max_new_tokens", "batch_size", "seed", "chat_template",
                                "trust_remote_code", "dtype"))
