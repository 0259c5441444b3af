"""The sections a run's stages read: prompts, teachers, student, quality, export, reward, probe, router and
generation."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Resolved by persyn.models.device.resolve_dtype, the one policy for every model persyn loads.
Dtype = Literal["auto", "float32", "bfloat16", "float16"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class PromptsConfig(Strict):
    path: str = Field(description=(
        "The prompts: a .jsonl, .json, .csv or .parquet file, `hf:NAME[:SPLIT]` (a Hugging Face dataset) or "
        "`gym:TASK[+TASK...]:SIZE[:SEED]` (reasoning-gym problems)."))
    field: str = Field(default="prompt", description="The column that holds each prompt's text.")
    id_field: str | None = Field(default=None, description=(
        "The column that holds a stable prompt id; None: the id is a hash of the text, so an edited text is a new "
        "prompt."))
    reference_field: str | None = Field(default=None, description=(
        "The column with the reference answer (needed by quality `math_answer`)."))
    template: str | None = Field(default=None, description=(
        "Wrap each prompt: `{prompt}` is replaced by its text (e.g. an answer-format instruction after it). Ids "
        "without `id_field` hash the wrapped text. None: the text as read."))
    limit: int | None = Field(default=None, gt=0, description=(
        "Use at most this many prompts (a seeded sample); None: all."))
    seed: int = Field(default=0, description="Seed of the shuffle before `limit` when a limit is set.")


class GenerationConfig(Strict):
    max_new_tokens: int = Field(default=256, gt=0, description=(
        "Longest response, in tokens; part of the generation key."))
    temperature: float = Field(default=0.0, ge=0, description=(
        "Sampling temperature (0: greedy); part of the generation key."))
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling mass; part of the generation key.")
    seed: int = Field(default=0, description=(
        "Sampling seed; each request is seeded by it and its key, so an output does not depend on its batch."))
    batch_size: int = Field(default=8, gt=0, description="Requests per batch of a local teacher; not part of any key.")
    dtype: Dtype = Field(default="auto", description=(
        "Weights and activations of local teachers. auto: bfloat16 on a GPU that supports it, float32 on a CPU "
        "(bfloat16 on a CPU with AVX512-BF16 or AMX generates about 2x faster). Not part of any key."))
    budget: float = Field(default=1.0, ge=1, description=(
        "Average generations per routed prompt: 1 is Route then Generate, the number of teachers is Generate then "
        "Select. Extra generations go to the prompts where the router's margin is smallest; the best candidate is "
        "kept by the combined reward (see persyn.stages.budget)."))
    accept_quality: float | None = Field(default=None, description=(
        "Cascade: ask the router's next teacher only while the best quality so far is below this (e.g. 1 for a "
        "correct math answer), within `budget`. None: the budget goes to the smallest margins."))


class TeacherConfig(Strict):
    name: str = Field(description=(
        "The teacher's display name (unique); not part of any key, so renaming redoes nothing."))
    backend: str = Field(default="transformers", description=(
        "How it generates: `transformers` (local model), `openai` (an OpenAI-compatible server) or `recorded` "
        "(responses on disk)."))
    model: str | None = Field(default=None, description=(
        "transformers: registry name, HF id, local directory or .gguf file; openai: the served model name; recorded: "
        "the responses file."))
    family: str | None = Field(default=None, description="Model family (e.g. `qwen`), for the family-strong baseline.")
    cost_per_1k_tokens: float = Field(default=0.0, ge=0, description=(
        "Price per 1000 prompt + completion tokens, for the cost columns of the summary; the input and output "
        "prices below replace it where given."))
    cost_per_1k_input_tokens: float | None = Field(default=None, ge=0, description=(
        "Price per 1000 prompt tokens (None: cost_per_1k_tokens)."))
    cost_per_1k_output_tokens: float | None = Field(default=None, ge=0, description=(
        "Price per 1000 completion tokens, reasoning tokens included (None: cost_per_1k_tokens)."))
    batch_discount: float = Field(default=0.5, ge=0, le=1, description=(
        "Share of the price taken off results imported from the Batch API (OpenAI's: 0.5, half price)."))
    license: str | None = Field(default=None, description=(
        "The licence of this teacher's outputs (SPDX id or terms), listed in the dataset card; not part of any key."))
    # Overrides of the run's generation defaults (None: use the default).
    max_new_tokens: int | None = Field(default=None, gt=0, description=(
        "Overrides generation.max_new_tokens for this teacher (None: the run default)."))
    temperature: float | None = Field(default=None, ge=0, description=(
        "Overrides generation.temperature for this teacher (None: the run default)."))
    top_p: float | None = Field(default=None, gt=0, le=1, description=(
        "Overrides generation.top_p for this teacher (None: the run default)."))
    batch_size: int | None = Field(default=None, gt=0, description=(
        "Overrides generation.batch_size for this teacher (None: the run default)."))
    dtype: Dtype | None = Field(default=None, description=(
        "Overrides generation.dtype for this teacher (None: the run default)."))
    chat_template: str | None = Field(default=None, description=(
        "Jinja chat template, inline or a .jinja file (its content is part of the key); `few-shot` for base models."))
    few_shot: bool | None = Field(default=None, description=(
        "Prompt with the few-shot format instead of a chat template; None: the chat template when the tokenizer has "
        "one."))
    trust_remote_code: bool = Field(default=False, description=(
        "Allow the model's own Python code (transformers backend)."))
    # recorded backend: field names in the responses file
    prompt_field: str = Field(default="instruction", description="recorded: the field that holds the prompt text.")
    response_field: str = Field(default="output", description="recorded: the field that holds the response.")
    quality_field: str | None = Field(default="quality", description=(
        "recorded: a per-response quality that replaces the computed one (None: none)."))
    learnability_field: str | None = Field(default="learnability", description=(
        "recorded: a per-response learnability that replaces the computed one (None: none)."))
    # openai backend
    base_url: str | None = Field(default=None, description=(
        "openai: the server's base URL, e.g. http://localhost:8000/v1; part of the key."))
    api_key_env: str | None = Field(default=None, description=(
        "openai: the environment variable that holds the API key (never stored or logged)."))
    max_concurrency: int = Field(default=8, gt=0, description="openai: requests in flight at once.")
    requests_per_minute: float | None = Field(default=None, gt=0, description=(
        "openai: request rate limit (token bucket); None: unlimited."))
    tokens_per_minute: float | None = Field(default=None, gt=0, description=(
        "openai: token rate limit (token bucket); None: unlimited."))
    timeout_s: float = Field(default=120.0, gt=0, description="openai: seconds to wait for one response.")
    max_retries: int = Field(default=5, ge=0, description=(
        "openai: retries of a failed request (429, 5xx, timeouts, unusable replies) with exponential backoff."))
    retry_after_max_s: float = Field(
        default=300.0, ge=0,
        description="Longest Retry-After waited out; a server asking for more fails the request, which the next "
                    "run retries.")
    max_tokens_param: Literal["auto", "max_tokens", "max_completion_tokens"] = Field(default="auto", description=(
        "openai: the request field that carries max_new_tokens on chat completions. auto: `max_completion_tokens` "
        "for OpenAI's reasoning models (o1, o3, o4-mini, gpt-5...), which refuse `max_tokens`; `max_tokens` "
        "elsewhere (vLLM, SGLang, TGI, llama-server)."))
    empty_response: Literal["fail", "keep"] = Field(default="fail", description=(
        "openai: an empty reply (a reasoning model that spent max_new_tokens before answering) or a refusal "
        "(`content: null` with `refusal`). fail: stored as a failure, sent again by the next run (never retried "
        "within one); keep: stored as the response (empty, or the refusal's text) with its finish_reason."))
    truncated_response: Literal["keep", "fail"] = Field(default="keep", description=(
        "openai: a reply cut at max_new_tokens (finish_reason `length`). keep: stored with its finish_reason, as a "
        "local teacher's; fail: stored as a failure, sent again by the next run."))
    extra: dict[str, Any] = Field(default_factory=dict, description=(
        "Backend-specific settings. openai: `body` (merged into every request body; part of the key), `headers`, "
        "`backoff_base_s`, `backoff_max_s`."))

    def cost(self, prompt_tokens: int, completion_tokens: int, *, batch: bool = False) -> float:
        """The price of one generation: input and output tokens at their own prices, less the Batch API's
        discount for a batch result."""
        per_in = self.cost_per_1k_tokens if self.cost_per_1k_input_tokens is None else self.cost_per_1k_input_tokens
        per_out = (self.cost_per_1k_tokens if self.cost_per_1k_output_tokens is None
                   else self.cost_per_1k_output_tokens)
        full = (prompt_tokens * per_in + completion_tokens * per_out) / 1000
        return full * (1 - self.batch_discount) if batch else full


class StudentConfig(Strict):
    model: str = Field(description=(
        "The student: registry name, HF id, local directory or .gguf file; its weights' identity keys the "
        "learnability scores."))
    chat_template: str | None = Field(default=None, description=(
        "Jinja override of the tokenizer's chat template (part of the learnability key)."))
    few_shot: bool | None = Field(default=None, description=(
        "Score with the few-shot format (base models); None: the chat template when the tokenizer has one."))
    trust_remote_code: bool = Field(default=False, description="Allow the model's own Python code.")
    max_length: int = Field(default=1024, gt=8, description=(
        "Prompt + response tokens scored; longer responses are truncated and counted."))
    batch_tokens: int = Field(default=4096, gt=0, description="Token budget of one learnability scoring batch.")
    pack: Literal["auto", True, False] = Field(default="auto", description=(
        "Learnability batches packed into one row without padding (varlen attention, position ids per sequence): "
        "`auto` packs on CUDA only, true on any device; families with a plain head and causal attention only. "
        "The values are the same."))
    compile: bool = Field(default=False, description=(
        "torch.compile the student's decoder for packed scoring, once per process (meant for CUDA)."))
    dtype: Dtype = Field(default="auto", description="Weights and activations of the student while scoring.")
    server_url: str | None = Field(default=None, description=(
        "A server that returns prompt log-probs for token-id prompts (vLLM, SGLang; not llama-server or TGI), used "
        "instead of the local model; see docs/servers.md."))
    server_model: str | None = Field(default=None, description=(
        "server_url: the served model name (vLLM's --served-model-name); None: `model`. Part of the learnability "
        "key when set (one server may serve several adapters)."))
    server_check: bool = Field(default=True, description=(
        "server_url: before the first score, score a few known sequences with the local student and on the "
        "server, and stop when they differ by more than server_check_tolerance (the server runs other weights). "
        "Done once per learnability key, remembered in the store; false skips it (a student too large to load "
        "here)."))
    server_check_tolerance: float = Field(default=0.1, gt=0, description=(
        "server_check: largest mean |difference| of the known pairs' token log-probs, local against server, in "
        "nats/token. SmolLM2-135M served by vLLM in bfloat16 against the local float32 model: 0.020; in "
        "float32: 0.00001 (docs/servers.md)."))
    api_key_env: str | None = Field(default=None, description="server_url: environment variable with the API key.")
    max_concurrency: int = Field(default=8, gt=0, description="server_url: requests in flight at once.")
    timeout_s: float = Field(default=120.0, gt=0, description="server_url: seconds one request may take.")
    max_retries: int = Field(default=5, ge=0, description="server_url: retries of a failed request.")
    retry_after_max_s: float = Field(
        default=300.0, ge=0,
        description="server_url: longest Retry-After waited out; a longer one leaves the score for the next run.")
    family: str | None = Field(default=None, description=(
        "Model family (e.g. `qwen`); the family-strong baseline picks a teacher of it."))


class QualityConfig(Strict):
    kind: Literal["math_answer", "gym", "reward_model", "field"] = Field(default="math_answer", description=(
        "`math_answer` (final answer against the reference), `gym` (the reasoning-gym task's own verifier on the "
        "`entry` reference of `gym:` prompts), `reward_model` (a sequence-classification model) or `field` (a "
        "recorded per-response field)."))
    model: str | None = Field(default=None, description=(
        "reward_model: the sequence-classification model; its weights' identity keys the scores."))
    field: str = Field(default="quality", description="field: the recorded per-response field that holds the quality.")
    batch_size: int = Field(default=8, gt=0, description="reward_model: responses per batch.")
    max_length: int = Field(default=2048, gt=8, description=(
        "reward_model: tokens of (prompt, response) scored; part of the key."))
    trust_remote_code: bool = Field(default=False, description="reward_model: allow the model's own Python code.")

    @property
    def model_free(self) -> bool:
        """Scored without a model (an answer check or a recorded field): cheap enough to score every response."""
        return self.kind in MODEL_FREE_QUALITY


MODEL_FREE_QUALITY = ("math_answer", "gym", "field")


class ExportConfig(Strict):
    min_quality: float | None = Field(default=None, description=(
        "Verified filtering (rejection sampling): keep only dataset rows whose quality is at least this (1: a "
        "verified correct answer for math_answer and gym). Rows whose quality is unknown (a recorded response "
        "without its field) are dropped too, as unverified. The dropped counts go into summary.json, the report "
        "and the card. Every routed response is then scored for quality, with any kind (model-free kinds always "
        "are). None: keep every row."))


class RewardConfig(Strict):
    alpha: float = Field(default=0.4, ge=0, le=1, description=(
        "Weight of learnability in the combined reward r = (1-alpha) quality + alpha learnability (Eq. 2)."))
    normalization: Literal["minmax", "zscore", "rank", "none"] = Field(default="minmax", description=(
        "How quality and learnability are normalised across the teachers' responses to one prompt."))

    # What a run computes: every other module asks these rather than reading alpha.
    @property
    def needs_quality(self) -> bool:
        """Quality is part of the reward (alpha < 1): scored, and the quality scorer loaded."""
        return self.alpha < 1

    @property
    def needs_learnability(self) -> bool:
        """Learnability is part of the reward (alpha > 0): scored, and the student loaded."""
        return self.alpha > 0


class ProbeConfig(Strict):
    size: int | None = Field(default=None, gt=0, description=(
        "Probe prompts (every teacher answers each); give size or fraction."))
    fraction: float | None = Field(default=None, gt=0, le=1, description=(
        "Probe share of the prompts; 0.05 when neither size nor fraction is given."))
    seed: int = Field(default=0, description=(
        "Seed of the probe draw: prompts ranked by a hash of (seed, id). Appended prompts leave the drawn probe "
        "as it was (a `fraction` probe only grows, by the best-ranked prompts outside it)."))
    strategy: Literal["random", "diverse", "adaptive"] = Field(default="random", description=(
        "random: the seeded draw; diverse: greedy k-center over the router's prompt embeddings; adaptive: the "
        "draw grown by `size` prompts a round while the router's cross-validated gain improves, up to max_size."))
    max_size: int | None = Field(default=None, gt=0, description=(
        "adaptive: the largest probe (None: 4 x size)."))

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


class RidgeSettings(Strict):
    """router.kind ridge: the reward regression's cross-validation."""

    folds: int = Field(default=5, ge=2, description="Folds of the cross-validation over the probe.")
    lambdas: list[float] = Field(default_factory=lambda: [0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0], description=(
        "Strengths tried by cross-validation (per feature of the standardised embedding)."))


class BTSettings(Strict):
    """router.kind bt: the Bradley-Terry coefficient head's training."""

    epochs: int = Field(default=200, gt=0, description="Most training epochs of the head.")
    lr: float = Field(default=1e-2, gt=0, description="Learning rate of the head.")
    batch_size: int = Field(default=64, gt=0, description="Probe prompts per training batch.")
    weight_decay: float = Field(default=1e-2, ge=0, description="AdamW weight decay of the head.")
    val_fraction: float = Field(default=0.2, ge=0, lt=1, description=(
        "Probe share held out to pick the epoch and check the head against every single teacher (0: no check)."))
    patience: int = Field(default=20, gt=0, description="Epochs without validation improvement before training stops.")


KIND_SETTINGS = {"ridge": RidgeSettings, "bt": BTSettings}


class RouterConfig(Strict):
    kind: str = Field(default="ridge", description=(
        "The router. ridge (default): each teacher's probe mean plus a ridge-regressed, prompt-dependent residual, "
        "its strength and the fallback chosen by K-fold cross-validation over the whole probe; it beats the best "
        "single teacher on held-out prompts where bt does not (docs/routing.md). bt: the paper's Bradley-Terry "
        "coefficient head (Eq. 3)."))
    backbone: str = Field(default="all-minilm-l6-v2", description=(
        "Prompt encoder: registry name, HF encoder or causal LM, local directory, or `student`."))
    pooling: Literal["mean", "last"] = Field(default="mean", description=(
        "How token states become one embedding: mean, or the last token (causal LMs)."))
    layers: list[int] = Field(default_factory=lambda: [-1], description=(
        "Hidden layers averaged into the embedding (-1: the last)."))
    max_length: int = Field(default=256, gt=0, description="Prompt tokens embedded.")
    embed_batch_size: int = Field(default=32, gt=0, description="Prompts per embedding batch.")
    min_gain_z: float | None = Field(default=None, ge=0, description=(
        "The trained router is kept only if its held-out gain over the best single teacher exceeds this many "
        "standard errors; otherwise routing falls back to that teacher. None: the kind's default (bt: 1.64 on its "
        "one validation split, against every single teacher; ridge: 1 on out-of-fold predictions, a margin for "
        "the ridge strength being picked on the same folds)."))
    seed: int = Field(default=0, description="Seed of the validation split and the head's training.")
    trust_remote_code: bool = Field(default=False, description="Allow the backbone's own Python code.")
    ridge: RidgeSettings = Field(default_factory=RidgeSettings, description="Settings of the ridge router.")
    bt: BTSettings = Field(default_factory=BTSettings, description="Settings of the bt router.")

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        """Settings of one kind live in its own section: name the new key for a flat one."""
        if isinstance(data, dict):
            for kind, section in KIND_SETTINGS.items():
                if moved := [k for k in section.model_fields if k in data]:
                    raise ValueError(f"router.{moved[0]} is now router.{kind}.{moved[0]} (settings of one router "
                                     "kind live in its own section)")
        return data

    def head_kwargs(self) -> dict[str, Any]:
        """The router's training hyperparameters, as make_router takes them for this kind."""
        section = getattr(self, self.kind, None) if self.kind in KIND_SETTINGS else None
        out = {**(section.model_dump() if section is not None else {}), "seed": self.seed}
        if self.min_gain_z is not None:
            out["min_gain_z"] = self.min_gain_z
        return out
