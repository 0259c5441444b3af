"""Batched generation against batch 1 on the transformers backend (SmolLM2-135M-Instruct, CPU, greedy).

    python benchmarks/bench_generation.py [--n 16] [--max-new-tokens 64] [--threads 2]
"""

from __future__ import annotations

import argparse

import torch
from common import gsm8k_pairs, timed

from persyn.backends import GenParams, GenRequest, make_backend
from persyn.config import TeacherConfig


def run(backend, requests) -> int:
    return sum(r.completion_tokens for r in backend.generate(requests))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    questions, _ = gsm8k_pairs(args.n, seed=1)
    params = GenParams(max_new_tokens=args.max_new_tokens)
    requests = [GenRequest(f"k{i}", f"p{i}", q, params) for i, q in enumerate(questions)]
    results = {}
    for batch in (1, 8):
        backend = make_backend(TeacherConfig(name="t", model=args.model), batch_size=batch)
        run(backend, requests[:2])  # load and warm up
        tokens = 0

        def go(backend=backend):
            nonlocal tokens
            tokens = run(backend, requests)
        t = timed(go)
        results[batch] = (tokens, t)
    base = results[1][0] / results[1][1]
    print(f"{args.model}: {args.n} GSM8K questions, greedy, up to {args.max_new_tokens} new tokens, "
          f"{args.threads} threads")
    print(f"{'batch':<8}{'tokens':>8}{'seconds':>9}{'tok/s':>8}{'ratio':>8}")
    for batch, (tokens, t) in results.items():
        print(f"{batch:<8}{tokens:>8}{t:>9.2f}{tokens / t:>8.1f}{tokens / t / base:>8.2f}")
    print(f"batch 8 vs batch 1: {results[8][0] / results[8][1] / base:.2f}x tokens/s (target >= 3x)")


if __name__ == "__main__":
    main()
