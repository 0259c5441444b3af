"""Run configuration: pydantic models mirrored by YAML. Unknown keys and wrong types are errors.

`stages` holds the sections the pipeline reads, `experiments` those of compare, router-eval, train and eval, and
`run_config` the whole RunConfig and its loading; every name is importable from `persyn.config`."""

from persyn.config.experiments import (
    ORACLE_AT,
    STRATEGY_NAMES,
    TEACHER_STRATEGY,
    VERIFIED_SUFFIX,
    BenchmarkSpec,
    CompareConfig,
    EvalSection,
    RouterEvalConfig,
    TrainSettings,
    oracle_alpha,
    strategy_base,
)
from persyn.config.run_config import RunConfig, load_config, parse_config
from persyn.config.stages import (
    MODEL_FREE_QUALITY,
    Dtype,
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

__all__ = [
    "MODEL_FREE_QUALITY", "ORACLE_AT", "STRATEGY_NAMES", "TEACHER_STRATEGY", "VERIFIED_SUFFIX", "BenchmarkSpec",
    "CompareConfig", "Dtype", "EvalSection", "ExportConfig", "GenerationConfig", "ProbeConfig", "PromptsConfig",
    "QualityConfig", "RewardConfig", "RouterConfig", "RouterEvalConfig", "RunConfig", "Strict", "StudentConfig",
    "TeacherConfig", "TrainSettings", "load_config", "parse_config", "oracle_alpha", "strategy_base",
]
