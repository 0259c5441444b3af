"""What every benchmark shares: reading JSONL items, loading the evaluated model, batched greedy answers in the
student's own prompt format, and writing the summary and per-item records."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from persyn.chat import FEW_SHOT_STOP, format_prompt, uses_few_shot
from persyn.errors import InputError
from persyn.models import resolve, resolve_device, resolve_dtype


@dataclass(frozen=True)
class Benchmark:
    """What `evaluate` needs to run a benchmark from a spec `{"name": ..., **arguments}`: the function, called as
    run(model_spec, **arguments, output_path=...), and the argument names a spec must and may give."""

    name: str
    run: Callable[..., dict[str, Any]]
    required: tuple[str, ...]
    optional: tuple[str, ...]
    passes_others_on: bool = False  # other keys go on to the library underneath (lm-eval's simple_evaluate)

    def accepts(self, key: str) -> bool:
        return key in self.required or key in self.optional or self.passes_others_on


class Formatted(NamedTuple):
    """A prompt as the evaluated model sees it, and whether that is the few-shot text format (base models)."""

    text: str
    few_shot: bool


def read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict[str, Any]]:
    from persyn.prompts import read_rows

    rows = []
    for line_no, row in read_rows(str(path)):
        if not isinstance(row, dict):
            raise InputError("each line must be a JSON object", file=str(path), line=line_no)
        for key in required:
            if key not in row:
                raise InputError("missing field", file=str(path), line=line_no, field=key)
        rows.append(row)
    return rows


def write_outputs(result: dict[str, Any], output_path: str | Path | None) -> dict[str, Any]:
    """Summary JSON at output_path, records as JSONL beside it; the returned dict keeps the records."""
    if output_path is None:
        return result
    out = Path(output_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    records = result.get("records", [])
    records_path = out.with_suffix(".records.jsonl")
    with records_path.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    summary = {k: v for k, v in result.items() if k != "records"} | {"records_file": str(records_path)}
    out.write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    result["records_file"] = str(records_path)
    return result


def load_generator(model_spec: str, *, trust_remote_code: bool = False, dtype: str = "auto") -> tuple[Any, Any]:
    """(model, tokenizer) on persyn.models' device, in `dtype` (auto: bfloat16 on a GPU that has it, else float32),
    the tokenizer left-padding. Not kept in load_causal_lm's cache: each evaluated checkpoint is loaded once and
    dropped."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = resolve(model_spec, trust_remote_code=trust_remote_code)
    device = resolve_device()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=resolve_dtype(dtype, device),
                                                 trust_remote_code=trust_remote_code, use_safetensors=True)
    model.to(device).eval()
    return model, tokenizer


def generate_greedy(model: Any, tokenizer: Any, texts: list[str], *, max_new_tokens: int, batch_size: int,
                    add_special_tokens: bool, stop: str | None = None) -> list[str]:
    """Greedy continuations of `texts`, batched by similar length; cut at `stop` when given."""
    import torch

    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    outputs: list[str] = [""] * len(texts)
    extra: dict[str, Any] = {"stop_strings": [stop], "tokenizer": tokenizer} if stop else {}
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True,
                        add_special_tokens=add_special_tokens).to(model.device)
        with torch.inference_mode():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, **extra)
        new = gen[:, enc["input_ids"].shape[1]:]
        for i, ids in zip(idx, new, strict=True):
            text = tokenizer.decode(ids, skip_special_tokens=True)
            outputs[i] = text.split(stop)[0] if stop else text
    return outputs


def format_for_student(tokenizer: Any, prompt: str, chat_template: str | None) -> Formatted:
    """A prompt as the student sees it: its chat template, or persyn.chat's few-shot format."""
    few_shot = uses_few_shot(tokenizer, None, chat_template)
    return Formatted(format_prompt(tokenizer, prompt, chat_template=chat_template), few_shot)


def generate_answers(model: Any, tokenizer: Any, prompts: list[Formatted], *, max_new_tokens: int,
                     batch_size: int) -> tuple[list[str], bool]:
    """(greedy answers, few_shot): few-shot text keeps special tokens and stops at the next exemplar."""
    few_shot = bool(prompts) and prompts[0].few_shot
    answers = generate_greedy(model, tokenizer, [p.text for p in prompts], max_new_tokens=max_new_tokens,
                              batch_size=batch_size, add_special_tokens=few_shot,
                              stop=FEW_SHOT_STOP if few_shot else None)
    return answers, few_shot
