"""The sections of the experiments: `persyn compare`, `persyn router-eval`, student training and benchmarks."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from persyn.config.stages import Strict

STRATEGY_NAMES = ("persyn", "oracle", "strong", "family-strong", "mix", "car", "random")
TEACHER_STRATEGY = "teacher:"  # `teacher:NAME`: that one teacher for every prompt
VERIFIED_SUFFIX = "+verified"  # `NAME+verified`: that strategy's rows, those below export.min_quality dropped


ORACLE_AT = "oracle@"  # `oracle@ALPHA`: Generate-then-Select by the combined reward at that alpha


def strategy_base(name: str) -> str:
    """The selection rule a strategy name names: `teacher:` for every single teacher, `oracle@` for the oracle at
    any alpha, the `+verified` suffix dropped."""
    base = name.removesuffix(VERIFIED_SUFFIX)
    for prefix in (TEACHER_STRATEGY, ORACLE_AT):
        if base.startswith(prefix):
            return prefix
    return base


def oracle_alpha(name: str) -> float:
    """The alpha of `oracle@ALPHA` (ValueError unless a number in [0, 1])."""
    alpha = float(name.removesuffix(VERIFIED_SUFFIX).removeprefix(ORACLE_AT))
    if not 0 <= alpha <= 1:
        raise ValueError(f"{name!r}: alpha must lie in [0, 1]")
    return alpha


class RouterEvalConfig(Strict):
    """`persyn router-eval`: router quality on held-out prompts where every teacher's response exists."""

    held_out: int = Field(default=50, gt=0, description=(
        "Prompts outside the probe on which every teacher generates, to judge the router."))
    backbones: list[str] = Field(default_factory=list, description=(
        "Backbones to compare; empty: router.backbone; `student`: the student LM."))
    probe_sizes: list[int] = Field(default_factory=list, description=(
        "Probe sizes to compare; empty: the run's probe size."))
    seed: int = Field(default=0, description="Seed of the training pool and held-out split.")
    seeds: list[int] = Field(default_factory=list, description=(
        "Probe seeds of the cost-reward frontier (mean and spread over them); empty: [seed]."))
    budgets: list[float] = Field(default_factory=list, description=(
        "Generation budgets of the frontier; empty: 1, 1.5, 2, 3, ... up to the number of teachers."))
    kinds: list[str] = Field(default_factory=list, description="Router kinds on the frontier; empty: router.kind.")
    probe_strategies: list[Literal["random", "diverse", "adaptive"]] = Field(default_factory=list, description=(
        "Probe strategies on the frontier; empty: probe.strategy."))


class CompareConfig(Strict):
    """`persyn compare`: datasets from each selection strategy, one student trained and evaluated per strategy."""

    strategies: list[str] = Field(default_factory=lambda: ["persyn", "strong", "mix", "random"], description=(
        "Selection strategies, each gives one dataset: persyn, oracle, strong, family-strong, mix, car, random, "
        "`teacher:NAME` (that teacher alone on every prompt), `oracle@ALPHA` (the oracle by the combined reward at "
        "that alpha, e.g. oracle@0 for quality alone: alpha 0 needs quality, so reward.alpha < 1, and alpha > 0 "
        "needs learnability, so reward.alpha > 0); any of them with `+verified` appended keeps only the rows whose "
        "quality reaches export.min_quality (e.g. `persyn+verified`)."))
    strong_teacher: str | None = Field(default=None, description=(
        "The strong baseline's teacher; None: the highest mean probe quality."))
    weak_teacher: str | None = Field(default=None, description=(
        "mix's weak teacher; None: the lowest mean probe quality."))
    mix_strong_share: float = Field(default=0.2, gt=0, lt=1, description=(
        "mix: the strong teacher's share (0.2: strong:weak = 1:4)."))
    car_beta: float = Field(default=1.0, ge=0, description="car: weight of the learnability term.")
    seed: int = Field(default=0, description="Seed of the random and mix draws.")
    seeds: list[int] = Field(default_factory=lambda: [0], description=(
        "Training seeds; one student per strategy and seed."))
    seeds_for: list[str] | None = Field(default=None, description=(
        "Strategies trained with every seed (None: all); the others use seeds[0]."))
    train: bool = Field(default=True, description=(
        "Train and evaluate a student per dataset (false: build the datasets only)."))
    train_rows: int | None = Field(default=None, gt=0, description=(
        "Train each student on this many rows of its dataset, the same prompts for every strategy of a seed (an "
        "order set by the seed and the prompt id); None: the whole dataset. For when SFT on every row costs more "
        "than the experiment can pay."))
    pairs: list[tuple[str, str]] = Field(default_factory=list, description=(
        "Further paired differences reported beside those against strong and the best single teacher, each "
        "[STRATEGY, REFERENCE] (e.g. [oracle, oracle@0.0]: does learnability in the reward help the student?)."))
    router_eval: RouterEvalConfig = Field(default_factory=RouterEvalConfig, description=(
        "`persyn router-eval` settings."))

    @model_validator(mode="after")
    def _pairs_are_strategies(self) -> CompareConfig:
        for pair in self.pairs:
            if unknown := [n for n in pair if n not in self.strategies]:
                raise ValueError(f"compare.pairs: {unknown[0]!r} is not one of compare.strategies")
        return self

    @field_validator("strategies", "seeds_for")
    @classmethod
    def _known(cls, names: list[str] | None) -> list[str] | None:
        for n in names or []:
            if strategy_base(n) not in (*STRATEGY_NAMES, TEACHER_STRATEGY, ORACLE_AT):
                raise ValueError(f"unknown strategy {n!r} (known: {', '.join(STRATEGY_NAMES)}, teacher:NAME, "
                                 f"oracle@ALPHA; each may end in {VERIFIED_SUFFIX})")
            if strategy_base(n) == ORACLE_AT:
                try:
                    oracle_alpha(n)
                except ValueError:
                    raise ValueError(f"{n!r}: expected oracle@ALPHA with ALPHA in [0, 1]") from None
        return names

    @field_validator("seeds")
    @classmethod
    def _some_seed(cls, seeds: list[int]) -> list[int]:
        if not seeds:
            raise ValueError("give at least one seed")
        return seeds


class TrainSettings(Strict):
    """Student fine-tuning settings shared by every strategy; `persyn train` and compare's runs extend them
    (persyn.experiments.train.TrainConfig, which also gives GPU advice)."""

    model: str | None = Field(default=None, description="The model to fine-tune; None: the student's model.")
    epochs: float = Field(default=1, gt=0, description="Training epochs over the dataset.")
    max_steps: int | None = Field(default=None, gt=0, description=(
        "Stop after this many optimizer steps (None: train for `epochs`)."))
    learning_rate: float = Field(default=5e-5, gt=0, description="Peak learning rate.")
    batch_size: int = Field(default=4, gt=0, description="Rows per device step.")
    grad_accum: int = Field(default=1, gt=0, description="Gradient accumulation steps.")
    max_length: int | None = Field(default=None, gt=8, description=(
        "Prompt + response tokens; longer rows are truncated at the end. None: student.max_length, the tokens "
        "learnability scored, so the reward judges what training sees; a different value trains on another "
        "length than was scored (compare warns)."))
    lora: bool = Field(default=False, description=(
        "Train a LoRA adapter (merged into a plain checkpoint) instead of every weight."))
    lora_r: int = Field(default=16, gt=0, description="LoRA rank.")
    lora_alpha: int = Field(default=32, gt=0, description="LoRA alpha.")
    bf16: bool | None = Field(default=None, description="bf16 mixed precision; None: when CUDA supports it, else fp32.")
    group_by_length: bool = Field(default=False, description=(
        "Batch rows of similar length together (transformers' LengthGroupedSampler): less padding, so fewer "
        "FLOPs per trained token when response lengths differ widely; the order stays seeded."))
    gradient_checkpointing: bool = Field(default=False, description=(
        "Recompute activations in the backward pass to save memory."))
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1, description=(
        "Share of the total steps with a linear learning-rate warmup."))
    chat_template: str | None = Field(default=None, description=(
        "Jinja override (text or a .jinja file), or `few-shot`; None: the student's."))


class BenchmarkSpec(BaseModel):
    """One benchmark: `name` (gsm8k, gym, ifeval, lm_eval), optional `label`, and the eval function's arguments."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(description=(
        "The benchmark: gsm8k, gym (`items: gym:TASK+TASK:N:SEED`, optional `template`, `exclude_prompts_path`), "
        "ifeval or lm_eval; further keys are the eval function's arguments (persyn.experiments.eval)."))
    label: str | None = Field(default=None, description="The name results are reported under; None: `name`.")


class EvalSection(Strict):
    benchmarks: list[BenchmarkSpec] = Field(default_factory=list, description=(
        "Benchmarks every trained student (and the base model) is evaluated on."))

