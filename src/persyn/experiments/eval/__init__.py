"""Student evaluation, one module per benchmark; each `eval_*` returns a JSON-able dict and, given `output_path`,
writes it there (per-item records go to a `.records.jsonl` file beside it).

    common.py    reading items, loading the model, batched greedy answers, writing results; the Benchmark interface
    gsm8k.py     GSM8K: exact numeric match of the final answer
    gym.py       reasoning-gym problems (gym: specs), each task's own verifier, per task and per item
    ifeval.py    IFEval: if-verifiable's instruction verifiers
    harness.py   lm-evaluation-harness tasks
    dispatch.py  evaluate(): benchmark specs by name, checked against what each benchmark declares
"""

from persyn.experiments.eval.common import Benchmark, Formatted, generate_greedy, load_generator, read_jsonl
from persyn.experiments.eval.dispatch import BENCHMARKS, evaluate
from persyn.experiments.eval.gsm8k import (
    GSM8K_BUILTIN_SHOTS,
    eval_gsm8k,
    gsm8k_prompt,
    gsm8k_reference,
    gsm8k_shots,
    score_gsm8k,
)
from persyn.experiments.eval.gym import eval_gym, gym_items, score_gym
from persyn.experiments.eval.harness import eval_lm_eval
from persyn.experiments.eval.ifeval import (
    IFEVAL_HF,
    ensure_punkt,
    eval_ifeval,
    ifeval_metrics,
    load_ifeval_rows,
    score_ifeval,
)

__all__ = [
    "BENCHMARKS", "GSM8K_BUILTIN_SHOTS", "IFEVAL_HF", "Benchmark", "Formatted", "ensure_punkt", "eval_gsm8k",
    "eval_gym", "eval_ifeval", "eval_lm_eval", "evaluate", "generate_greedy", "gsm8k_prompt", "gsm8k_reference",
    "gsm8k_shots", "gym_items", "ifeval_metrics", "load_generator", "load_ifeval_rows", "read_jsonl", "score_gsm8k",
    "score_gym", "score_ifeval",
]
