"""Batched generation against batch 1 on the transformers backend (SmolLM2-135M-Instruct, CPU, greedy).

    python benchmarks/bench_generation.py [--n 16] [--max-new-tokens 64] [--threads 2]
"""

from __future__ import annotations

import argparse

import torch
from common import gsm8k_pairs, timed

from persyn.backends import GenParams, GenRequest, make_backend
from persyn.config import TeacherConfig
from persyn.models import cpu_has_bf16


def run(backend, requests) -> int:
    return sum(r.completion_tokens for r in backend.generate(requests))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    questions, _ = gsm8k_pairs(args.n, seed=1)
    params = GenParams(max_new_tokens=args.max_new_tokens)
    requests = [GenRequest(f"k{i}", f"p{i}", q, params) for i, q in enumerate(questions)]
    configs = [(1, "float32"), (8, "float32"), (32, "float32")]
    if cpu_has_bf16():
        configs += [(8, "bfloat16"), (32, "bfloat16")]
    results = {}
    for batch, dtype in configs:
        backend = make_backend(TeacherConfig(name="t", model=args.model), batch_size=batch, dtype=dtype)
        run(backend, requests[:2])  # load and warm up
        subset = requests[: max(4, args.n // 4)] if batch == 1 else requests  # batch 1 is slow: tok/s is the measure
        tokens = 0

        def go(backend=backend, subset=subset):
            nonlocal tokens
            tokens = run(backend, subset)
        t = timed(go)
        results[(batch, dtype)] = (tokens, t)
    base = results[(1, "float32")][0] / results[(1, "float32")][1]
    print(f"{args.model}: {args.n} GSM8K questions, greedy, up to {args.max_new_tokens} new tokens, "
          f"{args.threads} threads")
    print(f"{'batch':<7}{'dtype':<10}{'tokens':>8}{'seconds':>9}{'tok/s':>8}{'vs b1':>8}")
    for (batch, dtype), (tokens, t) in results.items():
        print(f"{batch:<7}{dtype:<10}{tokens:>8}{t:>9.2f}{tokens / t:>8.1f}{tokens / t / base:>8.2f}")
    b8 = results[(8, "float32")]
    print(f"batch 8 vs batch 1 (float32): {b8[0] / b8[1] / base:.2f}x tokens/s (target >= 3x)")


if __name__ == "__main__":
    main()
