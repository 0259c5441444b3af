"""Student fine-tuning on an exported PerSyn dataset with TRL's SFTTrainer.

Rows are `{"id", "messages": [{"role": "user", ...}, {"role": "assistant", ...}], "teacher", "source"}`. Each row
becomes a prompt-completion pair (prompt = every turn but the last, completion = the final assistant turn), so
TRL's `completion_only_loss` puts the loss on the response tokens only. That works with any chat template,
unlike `assistant_only_loss`, which needs `{% generation %}` markers that most templates lack. Base models
(no chat template, or `chat_template="few-shot"`) are trained on the same few-shot text format that
persyn.chat uses for learnability scoring and evaluation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from pydantic import Field

from persyn.chat import format_prompt, format_response, uses_few_shot
from persyn.config import TrainSettings
from persyn.errors import ConfigError, InputError
from persyn.files import sha256_file, write_atomic
from persyn.models import resolve, resolve_device, training_precision

log = logging.getLogger(__name__)

RESULT_FILE = "train_result.json"


class TrainConfig(TrainSettings):
    """How to fine-tune a student: the config's `train` settings plus what one training run needs.

    Defaults suit tiny CPU runs: fp32, no dataloader workers, no experiment trackers. On a GPU (e.g. one H100)
    for SmolLM2-135M/360M full fine-tuning, typical settings are `bf16=None` (auto: bf16 mixed precision when
    CUDA supports it; master weights stay fp32), `batch_size=16..32`, `grad_accum=1..4` (effective batch
    32..128), `max_length=1024`, `learning_rate=1e-5..5e-5`, `warmup_ratio=0.03`. For 1B+ students use
    `lora=True` (r=16, alpha=32, all linear layers; the adapter is merged into the saved checkpoint, so it
    loads as a plain model) with `learning_rate=1e-4..2e-4`, and `gradient_checkpointing=True` when
    activations do not fit.

    Measured (SmolLM2-135M shape, 256-token rows, full fine-tuning): one H100 takes ~0.13 s per 4-row step
    (bf16 and fp32 alike: a model this small is launch-bound) and ~0.26 s per 32-row step (16 x 2 accumulation),
    so use large batches there; LoRA is slower than full fine-tuning at this size (~0.31 s per 4-row step).
    A 2-core CPU takes ~95 s per 4-row step: CPU runs are for tests and smoke checks only.
    """

    model: str = Field(description="A spec for persyn.models.resolve: registry name, HF id or local dir.")
    max_length: int = Field(default=256, gt=8, description=(  # a standalone `persyn train` has no student to ask
        "Prompt + response tokens; longer rows are truncated at the end."))
    output_dir: str = Field(description="Where the checkpoint and train_result.json go.")
    seed: int = 0
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    lora_target: str | list[str] = "all-linear"
    logging_steps: int = Field(default=1, gt=0)
    trust_remote_code: bool = False

    def fingerprint(self) -> str:
        """What determines the trained weights (the output location does not)."""
        payload = json.dumps(self.model_dump(exclude={"output_dir"}), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class TrainResult:
    output_dir: str
    steps: int
    train_loss: float
    seconds: float


def read_sft_rows(path: Path) -> list[dict[str, Any]]:
    """Validated exported rows; bad rows raise InputError naming the file, line and field."""
    from persyn.prompts import read_rows

    rows: list[dict[str, Any]] = []
    for line_no, row in read_rows(str(path)):
        messages = row.get("messages") if isinstance(row, dict) else None
        if not isinstance(messages, list) or len(messages) < 2:
            raise InputError("needs a list of at least two messages", file=str(path), line=line_no,
                             field="messages")
        for i, m in enumerate(messages):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str)
                    and isinstance(m.get("content"), str)):
                raise InputError("each message needs string 'role' and 'content'", file=str(path),
                                 line=line_no, field=f"messages[{i}]")
        if messages[-1]["role"] != "assistant":
            raise InputError("the last message must be the assistant's", file=str(path), line=line_no,
                             field="messages")
        rows.append(row)
    if not rows:
        raise InputError("dataset is empty", file=str(path))
    return rows


def to_prompt_completion(rows: list[dict[str, Any]], tokenizer: Any, *, few_shot: bool,
                         source: str = "dataset") -> list[dict[str, Any]]:
    """Conversational pairs for chat models; few-shot text pairs (as persyn.chat formats them) for base models."""
    pairs = []
    for i, row in enumerate(rows):
        messages = [{"role": m["role"], "content": m["content"]} for m in row["messages"]]
        if not few_shot:
            pairs.append({"prompt": messages[:-1], "completion": messages[-1:]})
            continue
        if len(messages) != 2 or messages[0]["role"] != "user":
            raise InputError("few-shot (base model) training needs exactly one user and one assistant turn",
                             file=source, field=f"row {i} messages")
        prompt = format_prompt(tokenizer, messages[0]["content"], few_shot=True)
        pairs.append({"prompt": prompt,
                      "completion": format_response(prompt, messages[1]["content"], few_shot=True)})
    return pairs


def _chat_template_text(value: str) -> str:
    if value.endswith((".jinja", ".j2")) and Path(value).is_file():
        return Path(value).read_text(encoding="utf-8")
    return value


def build_trainer(cfg: TrainConfig, dataset_path: Path) -> Any:
    """An SFTTrainer ready to train (its train_dataset holds the tokenized, label-masked rows)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer

    rows = read_sft_rows(Path(dataset_path))
    model_dir = resolve(cfg.model, trust_remote_code=cfg.trust_remote_code)
    device = resolve_device()
    weights_dtype, bf16 = training_precision(cfg.bf16, device)
    set_seed(cfg.seed)  # before model loading: LoRA adapters are initialised inside SFTTrainer.__init__
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=cfg.trust_remote_code)
    few_shot = uses_few_shot(tokenizer, None, cfg.chat_template)
    if not few_shot and cfg.chat_template is not None:
        tokenizer.chat_template = _chat_template_text(cfg.chat_template)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=weights_dtype, use_safetensors=True,
                                                 trust_remote_code=cfg.trust_remote_code)
    dataset = Dataset.from_list(to_prompt_completion(rows, tokenizer, few_shot=few_shot, source=str(dataset_path)))
    args = SFTConfig(
        output_dir=cfg.output_dir,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        learning_rate=cfg.learning_rate,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        max_length=cfg.max_length,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=bf16,
        use_cpu=device == "cpu",
        logging_steps=cfg.logging_steps,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        **_warmup(SFTConfig, cfg.warmup_ratio),
        completion_only_loss=True,
        packing=False,
        dataloader_num_workers=0,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        # TRL's default is True; transformers 5 renamed the option.
        **{_checkpointing_field(SFTConfig): cfg.gradient_checkpointing},
    )
    peft_config = None
    if cfg.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                 target_modules=cfg.lora_target, task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config)
    dropped = len(rows) - len(trainer.train_dataset)  # TRL drops rows whose response was truncated away
    if dropped == len(rows):
        raise ConfigError(f"every prompt fills max_length={cfg.max_length} tokens, leaving no response to train "
                          "on: raise max_length", key="train.max_length")
    if dropped:
        log.warning("%d of %d rows have no response tokens within max_length=%d and are skipped",
                    dropped, len(rows), cfg.max_length)
    return trainer


def _warmup(config_cls: type, ratio: float) -> dict[str, float]:
    """The warmup as a ratio of the total steps: transformers 4 has `warmup_ratio` (its `warmup_steps` is a count,
    and a float below 1 there means no warmup); transformers 5 removed it and reads a float below 1 in
    `warmup_steps` as the ratio."""
    names = {f.name for f in fields(config_cls)}
    return {"warmup_ratio": ratio} if "warmup_ratio" in names else {"warmup_steps": ratio}


def _checkpointing_field(config_cls: type) -> str:
    names = {f.name for f in fields(config_cls)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def finished_training(out: Path, config_hash: str, dataset_hash: str) -> TrainResult | None:
    """The result of a finished run in `out` with this config and dataset, else None."""
    try:
        data = json.loads((out / RESULT_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if data.get("config_hash") != config_hash or data.get("dataset_sha256") != dataset_hash:
        return None
    return TrainResult(output_dir=str(out), steps=data["steps"], train_loss=data["train_loss"],
                       seconds=data["seconds"])


def train_student(cfg: TrainConfig, dataset_path: Path) -> TrainResult:
    """Fine-tune, save a plain (merged) safetensors checkpoint + tokenizer and train_result.json to output_dir.

    A finished run with the same config and dataset in output_dir is returned without training again.
    """
    dataset_path = Path(dataset_path)
    out = Path(cfg.output_dir)
    if not dataset_path.is_file():
        raise InputError("dataset file not found", file=str(dataset_path))
    config_hash, dataset_hash = cfg.fingerprint(), sha256_file(dataset_path)
    if (done := finished_training(out, config_hash, dataset_hash)) is not None:
        log.info("reusing finished training in %s", out)
        return done

    started = time.perf_counter()
    trainer = build_trainer(cfg, dataset_path)
    output = trainer.train()
    model = trainer.model
    if cfg.lora:
        model = model.merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    trainer.processing_class.save_pretrained(out)
    seconds = time.perf_counter() - started

    loss = float(output.training_loss)
    result = TrainResult(output_dir=str(out), steps=int(output.global_step),
                         train_loss=loss if math.isfinite(loss) else float("nan"), seconds=seconds)
    record = {**asdict(result), "config_hash": config_hash, "dataset_sha256": dataset_hash,
              "dataset": str(dataset_path), "config": cfg.model_dump(),
              "log_history": trainer.state.log_history}
    # Written last: its presence marks a finished run.
    write_atomic(out / RESULT_FILE, json.dumps(record, indent=2))
    return result
