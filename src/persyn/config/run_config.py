"""The whole run configuration (RunConfig), read from YAML: unknown keys and wrong types are one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from persyn.config.experiments import TEACHER_STRATEGY, VERIFIED_SUFFIX, CompareConfig, EvalSection, TrainSettings
from persyn.config.stages import (
    ExportConfig,
    GenerationConfig,
    ProbeConfig,
    PromptsConfig,
    QualityConfig,
    RewardConfig,
    RouterConfig,
    Strict,
    StudentConfig,
    TeacherConfig,
)
from persyn.errors import ConfigError


class RunConfig(Strict):
    run_dir: str = Field(description=(
        "Where the store (persyn.sqlite), outputs and config.resolved.yaml go; a re-run resumes from it."))
    prompts: PromptsConfig = Field(description="The prompts to route.")
    teachers: list[TeacherConfig] = Field(description="The teacher pool (at least two).")
    student: StudentConfig | None = Field(default=None, description=(
        "The student whose learnability shapes the reward; needed when reward.alpha > 0."))
    quality: QualityConfig = Field(default_factory=QualityConfig, description="How a response's quality is scored.")
    reward: RewardConfig = Field(default_factory=RewardConfig, description="How quality and learnability combine.")
    probe: ProbeConfig = Field(default_factory=ProbeConfig, description=(
        "The probe: the prompts every teacher answers, on which the router learns."))
    router: RouterConfig = Field(default_factory=RouterConfig, description="The router and its prompt encoder.")
    generation: GenerationConfig = Field(default_factory=GenerationConfig, description=(
        "Run-wide generation defaults (teachers may override)."))
    executor: Literal["local", "ray"] = Field(default="local", description=(
        "Where generation and scoring run: this process (`local`) or a Ray cluster (`ray`)."))
    max_resident_models: int = Field(
        default=2, ge=1,
        description="Local executor: most models (local teachers and the student) loaded at once; loading one "
                    "more releases the least recently used.")
    ray: dict[str, Any] = Field(default_factory=dict, description="Ray executor settings (see docs/ray.md).")
    compare: CompareConfig = Field(default_factory=CompareConfig, description="`persyn compare` settings.")
    train: TrainSettings = Field(default_factory=TrainSettings, description=(
        "Student fine-tuning settings shared by every strategy."))
    eval: EvalSection = Field(default_factory=EvalSection, description=(
        "Benchmarks for `persyn compare` and `persyn eval`."))
    export: ExportConfig = Field(default_factory=ExportConfig, description=(
        "What goes into the dataset: verified filtering."))

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
        if self.reward.needs_learnability and self.student is None:
            raise ValueError("reward.alpha > 0 needs a student (learnability is the student's log-probability)")
        return self

    def teacher(self, name: str) -> TeacherConfig:
        return next(t for t in self.teachers if t.name == name)

    @property
    def scores_routed_quality(self) -> bool:
        """Whether every routed response gets a quality score, not only the probe's: when the kind needs no
        model (so the dataset, summary and report say how many routed rows are right), or when
        export.min_quality filters on it. Never at alpha 1, which computes no quality."""
        return self.reward.needs_quality and (self.quality.model_free or self.export.min_quality is not None)

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
    _check_settings(cfg, source)
    return cfg


def _check_settings(cfg: RunConfig, source: str | None) -> None:
    """Checks that span sections, each naming the key to change."""
    n, g = len(cfg.teachers), cfg.generation
    if g.budget > n:
        raise ConfigError(f"must be between 1 and the number of teachers ({n}), got {g.budget:g}",
                          key="generation.budget", file=source)
    if g.accept_quality is not None and not cfg.reward.needs_quality:
        raise ConfigError("needs a quality scorer to judge answers, but reward.alpha = 1 never computes quality",
                          key="generation.accept_quality", file=source)
    if cfg.export.min_quality is not None and not cfg.reward.needs_quality:
        raise ConfigError("needs a quality scorer to verify rows, but reward.alpha = 1 never computes quality",
                          key="export.min_quality", file=source)
    teachers = {t.name for t in cfg.teachers}
    for name in cfg.compare.strategies + (cfg.compare.seeds_for or []):
        base = name.removesuffix(VERIFIED_SUFFIX)
        if base.startswith(TEACHER_STRATEGY) and base.removeprefix(TEACHER_STRATEGY) not in teachers:
            raise ConfigError(f"{name!r} names no teacher (teachers: {', '.join(sorted(teachers))})",
                              key="compare.strategies", file=source)
        if name.endswith(VERIFIED_SUFFIX) and cfg.export.min_quality is None:
            raise ConfigError(f"{name!r} drops rows below export.min_quality: set it (e.g. 1)",
                              key="export.min_quality", file=source)
    if cfg.probe.max_size is not None and cfg.probe.strategy != "adaptive":
        raise ConfigError("only probe.strategy 'adaptive' grows the probe", key="probe.max_size", file=source)


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
