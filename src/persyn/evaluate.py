"""Student evaluation: GSM8K (exact numeric match), IFEval (if-verifiable's verifiers) and lm-evaluation-harness.

Each `eval_*` returns a JSON-able dict and, given `output_path`, writes it there (per-item records go to a
`.records.jsonl` file beside it). Generation is batched greedy decoding with left padding.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from persyn.chat import FEW_SHOT_STOP, format_prompt, uses_few_shot
from persyn.errors import ConfigError, InputError, PersynError
from persyn.models import dtype_name, resolve, resolve_device, resolve_dtype
from persyn.scoring.quality import answers_match, extract_answer, reference_answer

log = logging.getLogger(__name__)

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

IFEVAL_HF = "hf:google/IFEval"


# ---------------------------------------------------------------- shared helpers

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


def _write_outputs(result: dict[str, Any], output_path: str | Path | None) -> dict[str, Any]:
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


def load_generator(model_spec: str, *, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer) on persyn.models.device's device and dtype, tokenizer left-padding. Not kept in
    load_causal_lm's cache: each evaluated checkpoint is loaded once and dropped."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = resolve(model_spec, trust_remote_code=trust_remote_code)
    device = resolve_device()
    dtype = resolve_dtype("auto", device)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, trust_remote_code=trust_remote_code,
                                                 use_safetensors=True)
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


def _format(tokenizer: Any, prompt: str, chat_template: str | None) -> tuple[str, bool]:
    """(text, few_shot) as the student sees a prompt: its chat template, or persyn.chat's few-shot format."""
    few_shot = uses_few_shot(tokenizer, None, chat_template)
    return format_prompt(tokenizer, prompt, chat_template=chat_template), few_shot


# ---------------------------------------------------------------- GSM8K

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
                 chat_template: str | None = None) -> tuple[str, bool]:
    """(text, few_shot). No exemplars: the student's own format (persyn.chat). Exemplars: chat turns for chat
    models, "Question:/Answer:" text for base models."""
    if not exemplars:
        return _format(tokenizer, question, chat_template)
    if uses_few_shot(tokenizer, None, chat_template):
        prefix = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in exemplars)
        return f"{prefix}Question: {question}\nAnswer:", True
    messages = [turn for q, a in exemplars
                for turn in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
    messages.append({"role": "user", "content": question})
    template = chat_template if chat_template not in (None, "few-shot") else None
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                         chat_template=template), False


def eval_gsm8k(model_spec: str, test_path: str | Path, *, n: int | None = None, shots: int = 0,
               shots_path: str | Path | None = None, max_new_tokens: int = 256, batch_size: int = 8,
               seed: int = 0, chat_template: str | None = None, trust_remote_code: bool = False,
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
    model, tokenizer = load_generator(model_spec, trust_remote_code=trust_remote_code)
    formatted = [gsm8k_prompt(tokenizer, r["question"], exemplars, chat_template) for r in rows]
    few_shot = bool(formatted) and formatted[0][1]
    predictions = generate_greedy(model, tokenizer, [t for t, _ in formatted], max_new_tokens=max_new_tokens,
                                  batch_size=batch_size, add_special_tokens=few_shot,
                                  stop=FEW_SHOT_STOP if few_shot else None)
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
    return _write_outputs(result, output_path)


# ---------------------------------------------------------------- IFEval

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
                trust_remote_code: bool = False, output_path: str | Path | None = None) -> dict[str, Any]:
    """IFEval on the first `n` prompts (all when None); max_new_tokens matches lm-evaluation-harness's 1280."""
    from transformers import set_seed

    if n is not None and n <= 0:
        raise ConfigError("must be positive", key="n")
    rows = load_ifeval_rows(prompts_path, n)
    splitter = ensure_punkt()
    set_seed(seed)
    model, tokenizer = load_generator(model_spec, trust_remote_code=trust_remote_code)
    formatted = [_format(tokenizer, r["prompt"], chat_template) for r in rows]
    few_shot = bool(formatted) and formatted[0][1]
    responses = generate_greedy(model, tokenizer, [t for t, _ in formatted], max_new_tokens=max_new_tokens,
                                batch_size=batch_size, add_special_tokens=few_shot,
                                stop=FEW_SHOT_STOP if few_shot else None)
    records = []
    for row, response in zip(rows, responses, strict=True):
        verdict = score_ifeval(row, response.strip())
        records.append({"key": row.get("key"), "prompt": row["prompt"], "response": response, **verdict})
    result = {"benchmark": "ifeval", "model": model_spec, "n": len(records),
              "format": "few-shot" if few_shot else "chat", "sentence_splitter": splitter,
              **ifeval_metrics(records), "records": records}
    return _write_outputs(result, output_path)


# ---------------------------------------------------------------- lm-evaluation-harness

def eval_lm_eval(model_spec: str, tasks: list[str], *, num_fewshot: int | None = None, limit: int | None = None,
                 batch_size: int | str = 8, trust_remote_code: bool = False,
                 include_path: str | list[str] | None = None, output_path: str | Path | None = None,
                 **kwargs: Any) -> dict[str, Any]:
    """Tasks of lm-evaluation-harness (`pip install 'persyn[lmeval]'`) on a local HF checkpoint. `include_path`:
    folders (or one folder) of extra task YAMLs, e.g. tasks over local JSONL files that run offline."""
    try:
        import lm_eval
    except ImportError:
        raise PersynError("lm-evaluation-harness is not installed: pip install 'persyn[lmeval]' "
                          "(or pip install lm-eval)") from None
    model_dir = resolve(model_spec, trust_remote_code=trust_remote_code)
    device = resolve_device()
    model_args = f"pretrained={model_dir},dtype={dtype_name('auto', device)},trust_remote_code={trust_remote_code}"
    if include_path:
        from lm_eval.tasks import TaskManager

        paths = [include_path] if isinstance(include_path, str) else list(include_path)
        for p in paths:
            if not Path(p).exists():
                raise ConfigError(f"lm-eval include path not found: {p}", key="include_path")
        meta = {"pretrained": str(model_dir)}
        manager = TaskManager(include_path=paths, include_defaults=False, metadata=meta)
        if not set(tasks) <= set(manager.all_tasks):  # built-in tasks too: index lm-eval's own (~10 s)
            manager = TaskManager(include_path=paths, metadata=meta)
        kwargs["task_manager"] = manager
    out = lm_eval.simple_evaluate(model="hf", model_args=model_args, tasks=list(tasks), num_fewshot=num_fewshot,
                                  limit=limit, batch_size=batch_size,
                                  device=device, **kwargs)
    results = json.loads(json.dumps(out.get("results", {}), default=str))
    return _write_outputs({"benchmark": "lm_eval", "model": model_spec, "tasks": list(tasks),
                           "results": results}, output_path)


# ---------------------------------------------------------------- dispatch

BENCHMARKS: dict[str, Callable[..., dict[str, Any]]] = {
    "gsm8k": eval_gsm8k, "ifeval": eval_ifeval, "lm_eval": eval_lm_eval,
}


def evaluate(model_spec: str, benchmarks: list[dict[str, Any]], *,
             output_dir: str | Path | None = None) -> dict[str, Any]:
    """Run each benchmark `{"name": ..., **arguments}` (an optional "label" names its result)."""
    results: dict[str, Any] = {}
    for i, spec in enumerate(benchmarks):
        where = f"eval.benchmarks[{i}]"
        if not isinstance(spec, dict) or "name" not in spec:
            raise ConfigError("each benchmark needs a name", key=where)
        args = dict(spec)
        name, label = args.pop("name"), args.pop("label", None)
        fn = BENCHMARKS.get(name)
        if fn is None:
            raise ConfigError(f"unknown benchmark {name!r} (known: {', '.join(BENCHMARKS)})", key=f"{where}.name")
        params = inspect.signature(fn).parameters
        accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        for key in args:
            if key in ("model_spec", "output_path") or (key not in params and not accepts_any):
                raise ConfigError("unknown key", key=f"{where}.{key}")
        for key, p in params.items():
            if key != "model_spec" and p.default is inspect.Parameter.empty and p.kind in (
                    inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY) and key not in args:
                raise ConfigError("missing key", key=f"{where}.{key}")
        label = label or (name if name not in results else f"{name}_{i}")
        if output_dir is not None:
            args["output_path"] = Path(output_dir) / f"{label}.json"
        result = fn(model_spec, **args)
        results[label] = {k: v for k, v in result.items() if k != "records"}
    summary = {"model": model_spec, "results": results}
    if output_dir is not None:
        (Path(output_dir) / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary
