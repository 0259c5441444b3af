"""Kept for `from persyn.evaluate import ...`: the benchmarks live in persyn.experiments.eval, one module each."""

from persyn.experiments.eval import (
    BENCHMARKS,
    GSM8K_BUILTIN_SHOTS,
    IFEVAL_HF,
    Benchmark,
    Formatted,
    ensure_punkt,
    eval_gsm8k,
    eval_ifeval,
    eval_lm_eval,
    evaluate,
    generate_greedy,
    gsm8k_prompt,
    gsm8k_reference,
    gsm8k_shots,
    ifeval_metrics,
    load_generator,
    load_ifeval_rows,
    read_jsonl,
    score_gsm8k,
    score_ifeval,
)

__all__ = [
    "BENCHMARKS", "GSM8K_BUILTIN_SHOTS", "IFEVAL_HF", "Benchmark", "Formatted", "ensure_punkt", "eval_gsm8k",
    "eval_ifeval", "eval_lm_eval", "evaluate", "generate_greedy", "gsm8k_prompt", "gsm8k_reference", "gsm8k_shots",
    "ifeval_metrics", "load_generator", "load_ifeval_rows", "read_jsonl", "score_gsm8k", "score_ifeval",
]
