"""Learnability scoring throughput on SmolLM2-135M-Instruct (CPU, 2 threads by default).

Side by side in one run: persyn's scorer (length-sorted batches under a token budget, hidden states sliced to the
response positions before the head, no full-vocabulary log-softmax) against a naive loop that runs one forward
pass per response with full logits and log_softmax; and against a roofline: the forward pass's FLOPs divided by
the GEMM FLOP/s measured just before on this machine.

    python benchmarks/bench_scoring.py [--n 64] [--threads 2] [--model smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse

import torch
from common import forward_flops, gemm_peak, gsm8k_pairs, timed

from persyn.models import load_causal_lm
from persyn.scoring.learnability import _Encoder, learnability_scores, naive_learnability


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_causal_lm(args.model)
    prompts, responses = gsm8k_pairs(args.n)
    enc = _Encoder(tok, None, None, 1024)(prompts, responses)
    seqs = [(e.start, len(e.ids) - e.start) for e in enc if e is not None]
    tokens = sum(p + r for p, r in seqs)
    flops = forward_flops(model, seqs)
    h, f = model.config.hidden_size, model.config.intermediate_size
    peak = gemm_peak("cpu", torch.float32, [(args.batch_tokens, h, f), (args.batch_tokens, f, h), (1024, 1024, 1024)])
    print(f"{args.model}: {len(seqs)} GSM8K answers, {tokens} tokens, {flops / 1e9:.0f} GFLOP; "
          f"{args.threads} threads; measured fp32 GEMM peak {peak / 1e9:.1f} GFLOP/s")

    learnability_scores(model, tok, prompts[:4], responses[:4])  # warm-up
    t_fast = timed(lambda: learnability_scores(model, tok, prompts, responses, batch_tokens=args.batch_tokens))
    t_naive = timed(lambda: [naive_learnability(model, tok, p, r) for p, r in zip(prompts, responses, strict=True)])
    t_roof = flops / peak
    print(f"{'method':<28}{'seconds':>9}{'tokens/s':>10}{'ratio':>8}")
    print(f"{'naive loop (1 fwd/response)':<28}{t_naive:>9.2f}{tokens / t_naive:>10.0f}{1.0:>8.2f}")
    print(f"{'persyn scorer':<28}{t_fast:>9.2f}{tokens / t_fast:>10.0f}{t_naive / t_fast:>8.2f}")
    print(f"{'roofline (FLOPs / GEMM peak)':<28}{t_roof:>9.2f}{tokens / t_roof:>10.0f}{t_naive / t_roof:>8.2f}")
    print(f"persyn vs naive: {t_naive / t_fast:.2f}x faster (target >= 3x); "
          f"persyn vs roofline: {t_fast / t_roof:.2f}x the roofline time (target <= 2x)")


if __name__ == "__main__":
    main()
