"""Run configuration: pydantic models mirrored by YAML. Unknown keys and wrong types are errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from persyn.errors import ConfigError

# "auto": bfloat16 on a GPU, float32 on a CPU. bfloat16 on a CPU with AVX512-BF16 or AMX generates about 2x faster.
Dtype = Literal["auto", "float32", "bfloat16", "float16"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class PromptsConfig(Strict):
    path: str  # .jsonl/.json/.csv/.parquet file, or hf:NAME[:SPLIT]
    field: str = "prompt"
    id_field: str | None = None
    reference_field: str | None = None
    limit: int | None = Field(default=None, gt=0)
    seed: int = 0  # shuffles before `limit` when a limit is set


class GenerationConfig(Strict):
    max_new_tokens: int = Field(default=256, gt=0)
    temperature: float = Field(default=0.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int = 0
    batch_size: int = Field(default=8, gt=0)
    dtype: Dtype = "auto"  # weights and activations of local teachers


class TeacherConfig(Strict):
    name: str
    backend: str = "transformers"
    model: str | None = None  # HF id, local dir, .gguf file or registry name; for `recorded`, the responses file
    family: str | None = None
    cost_per_1k_tokens: float = Field(default=0.0, ge=0)
    # Overrides of the run's generation defaults (None: use the default).
    max_new_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    batch_size: int | None = Field(default=None, gt=0)
    dtype: Dtype | None = None
    chat_template: str | None = None  # Jinja override; "few-shot" for base models
    few_shot: bool | None = None  # None: use the chat template when the tokenizer has one
    trust_remote_code: bool = False
    # recorded backend: field names in the responses file
    prompt_field: str = "instruction"
    response_field: str = "output"
    quality_field: str | None = "quality"
    learnability_field: str | None = "learnability"
    # openai backend
    base_url: str | None = None
    api_key_env: str | None = None
    max_concurrency: int = Field(default=8, gt=0)
    requests_per_minute: float | None = Field(default=None, gt=0)
    tokens_per_minute: float | None = Field(default=None, gt=0)
    timeout_s: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=5, ge=0)
    retry_after_max_s: float = Field(
        default=300.0, ge=0,
        description="Longest Retry-After waited out; a server asking for more fails the request, which the next "
                    "run retries.")
    extra: dict[str, Any] = Field(default_factory=dict)  # backend-specific settings


class StudentConfig(Strict):
    model: str
    chat_template: str | None = None  # Jinja override of the tokenizer's template
    few_shot: bool | None = None
    trust_remote_code: bool = False
    max_length: int = Field(default=1024, gt=8)  # prompt + response tokens; longer responses are truncated
    batch_tokens: int = Field(default=4096, gt=0)  # learnability scoring batch budget in tokens
    dtype: Dtype = "auto"
    server_url: str | None = None  # an OpenAI-compatible server that returns prompt log-probs
    api_key_env: str | None = Field(default=None, description="server_url: environment variable with the API key.")
    max_concurrency: int = Field(default=8, gt=0, description="server_url: requests in flight at once.")
    timeout_s: float = Field(default=120.0, gt=0, description="server_url: seconds one request may take.")
    max_retries: int = Field(default=5, ge=0, description="server_url: retries of a failed request.")
    retry_after_max_s: float = Field(
        default=300.0, ge=0,
        description="server_url: longest Retry-After waited out; a longer one leaves the score for the next run.")
    family: str | None = None  # model family (e.g. "qwen"); the family-strong baseline picks a teacher of it


class QualityConfig(Strict):
    kind: Literal["math_answer", "reward_model", "field"] = "math_answer"
    model: str | None = None  # reward_model: a sequence-classification model
    field: str = "quality"  # field: the per-response field of a recorded teacher
    batch_size: int = Field(default=8, gt=0)
    max_length: int = Field(default=2048, gt=8)
    trust_remote_code: bool = False


class RewardConfig(Strict):
    alpha: float = Field(default=0.4, ge=0, le=1)
    normalization: Literal["minmax", "zscore", "rank", "none"] = "minmax"


class ProbeConfig(Strict):
    size: int | None = Field(default=None, gt=0)
    fraction: float | None = Field(default=None, gt=0, le=1)
    seed: int = 0

    @model_validator(mode="after")
    def _one_of(self) -> ProbeConfig:
        if self.size is not None and self.fraction is not None:
            raise ValueError("give probe.size or probe.fraction, not both")
        if self.size is None and self.fraction is None:
            self.fraction = 0.05
        return self

    def resolve(self, n_prompts: int) -> int:
        if self.size is not None:
            return self.size
        return max(1, round(n_prompts * (self.fraction or 0.0)))


class RouterConfig(Strict):
    kind: str = "bt"
    backbone: str = "all-minilm-l6-v2"
    pooling: Literal["mean", "last"] = "mean"
    layers: list[int] = Field(default_factory=lambda: [-1])
    max_length: int = Field(default=256, gt=0)
    embed_batch_size: int = Field(default=32, gt=0)
    epochs: int = Field(default=200, gt=0)
    lr: float = Field(default=1e-2, gt=0)
    batch_size: int = Field(default=64, gt=0)
    weight_decay: float = Field(default=1e-2, ge=0)
    val_fraction: float = Field(default=0.2, ge=0, lt=1)
    patience: int = Field(default=20, gt=0)
    # The trained head is kept only if its held-out gain over every single teacher exceeds this many standard
    # errors; otherwise routing falls back to the best single teacher. Lower it to let a small probe route.
    min_gain_z: float = Field(default=1.64, ge=0)
    seed: int = 0
    trust_remote_code: bool = False

    def head_kwargs(self) -> dict[str, Any]:
        """The router's training hyperparameters, as make_router takes them."""
        return self.model_dump(include={"epochs", "lr", "batch_size", "weight_decay", "val_fraction", "patience",
                                        "seed", "min_gain_z"})


STRATEGY_NAMES = ("persyn", "oracle", "strong", "family-strong", "mix", "car", "random")


class RouterEvalConfig(Strict):
    """`persyn router-eval`: router quality on held-out prompts where every teacher's response exists."""

    held_out: int = Field(default=50, gt=0)  # prompts outside the probe, every teacher generated on each
    backbones: list[str] = Field(default_factory=list)  # empty: router.backbone; "student" = the student LM
    probe_sizes: list[int] = Field(default_factory=list)  # empty: the run's probe size
    seed: int = 0


class CompareConfig(Strict):
    """`persyn compare`: datasets from each selection strategy, one student trained and evaluated per strategy."""

    strategies: list[str] = Field(default_factory=lambda: ["persyn", "strong", "mix", "random"])
    strong_teacher: str | None = None  # None: the highest mean probe quality
    weak_teacher: str | None = None  # mix's weak teacher; None: the lowest mean probe quality
    mix_strong_share: float = Field(default=0.2, gt=0, lt=1)  # strong:weak = 1:4
    car_beta: float = Field(default=1.0, ge=0)
    seed: int = 0  # random and mix draws
    seeds: list[int] = Field(default_factory=lambda: [0])  # training seeds
    seeds_for: list[str] | None = None  # strategies trained with every seed (None: all); others use seeds[0]
    train: bool = True
    router_eval: RouterEvalConfig = Field(default_factory=RouterEvalConfig)

    @field_validator("strategies", "seeds_for")
    @classmethod
    def _known(cls, names: list[str] | None) -> list[str] | None:
        for n in names or []:
            if n not in STRATEGY_NAMES:
                raise ValueError(f"unknown strategy {n!r} (known: {', '.join(STRATEGY_NAMES)})")
        return names

    @field_validator("seeds")
    @classmethod
    def _some_seed(cls, seeds: list[int]) -> list[int]:
        if not seeds:
            raise ValueError("give at least one seed")
        return seeds


class TrainSection(Strict):
    """Student fine-tuning settings shared by every strategy (see persyn.train.TrainConfig for GPU advice)."""

    model: str | None = None  # None: the student's model
    epochs: float = Field(default=1, gt=0)
    max_steps: int | None = Field(default=None, gt=0)
    learning_rate: float = Field(default=5e-5, gt=0)
    batch_size: int = Field(default=4, gt=0)
    grad_accum: int = Field(default=1, gt=0)
    max_length: int = Field(default=256, gt=8)
    lora: bool = False
    lora_r: int = Field(default=16, gt=0)
    lora_alpha: int = Field(default=32, gt=0)
    bf16: bool | None = None
    gradient_checkpointing: bool = False
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    chat_template: str | None = None


class BenchmarkSpec(BaseModel):
    """One benchmark: `name` (gsm8k, ifeval, lm_eval), optional `label`, and the eval function's arguments."""

    model_config = ConfigDict(extra="allow")
    name: str
    label: str | None = None


class EvalSection(Strict):
    benchmarks: list[BenchmarkSpec] = Field(default_factory=list)


class RunConfig(Strict):
    run_dir: str
    prompts: PromptsConfig
    teachers: list[TeacherConfig]
    student: StudentConfig | None = None
    quality: QualityConfig = Field(default_factory=QualityConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    router: RouterConfig = Field(default_factory=RouterConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    executor: Literal["local", "ray"] = "local"
    max_resident_models: int = Field(
        default=2, ge=1,
        description="Local executor: most models (local teachers and the student) loaded at once; loading one "
                    "more releases the least recently used.")
    ray: dict[str, Any] = Field(default_factory=dict)
    compare: CompareConfig = Field(default_factory=CompareConfig)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)

    @field_validator("teachers")
    @classmethod
    def _unique_teachers(cls, teachers: list[TeacherConfig]) -> list[TeacherConfig]:
        seen: set[str] = set()
        for t in teachers:
            if t.name in seen:
                raise ValueError(f"teacher name {t.name!r} given twice")
            seen.add(t.name)
        if len(teachers) < 2:
            raise ValueError("routing needs at least two teachers")
        return teachers

    @model_validator(mode="after")
    def _needs(self) -> RunConfig:
        if self.reward.alpha > 0 and self.student is None:
            raise ValueError("reward.alpha > 0 needs a student (learnability is the student's log-probability)")
        return self

    def teacher(self, name: str) -> TeacherConfig:
        return next(t for t in self.teachers if t.name == name)

    @property
    def path(self) -> Path:
        return Path(self.run_dir)


def _loc(loc: tuple[Any, ...], data: Any) -> str:
    """Dotted key path; list items of teachers are named by their `name` when present."""
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int) and isinstance(node, list) and item < len(node):
            name = node[item].get("name") if isinstance(node[item], dict) else None
            parts[-1:] = [f"{parts[-1]}[{name or item}]"] if parts else [f"[{item}]"]
            node = node[item]
            continue
        parts.append(str(item))
        node = node.get(item) if isinstance(node, dict) else None
    return ".".join(parts)


def parse_config(data: Any, *, source: str | None = None) -> RunConfig:
    if not isinstance(data, dict):
        raise ConfigError("the configuration must be a mapping", file=source)
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        raise ConfigError(msg, key=_loc(err["loc"], data) or None, file=source) from None
    return cfg


def load_config(path: str | Path) -> RunConfig:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("config file not found", file=str(p)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 (byte {exc.start})", file=str(p)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        raise ConfigError(f"invalid YAML: {getattr(exc, 'problem', exc)}", file=where) from None
    return parse_config(data, source=str(p))
