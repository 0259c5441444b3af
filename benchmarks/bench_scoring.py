"""Learnability scoring throughput on SmolLM2-135M-Instruct (CPU, 2 threads by default).

Side by side in one run: persyn's scorer (length-sorted batches under a token budget, hidden states sliced to the
response positions before the head, no full-vocabulary log-softmax) against the naive loop of the issue, one
forward pass per response padded to the scoring context (`--max-length`) with full logits and log_softmax; against
the same loop without padding (persyn's own reference, `naive_learnability`); and against a roofline: the forward
pass's FLOPs divided by the GEMM FLOP/s measured just before on this machine.

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
    ap.add_argument("--max-length", type=int, default=1024, help="the scoring context (student.max_length)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_causal_lm(args.model)
    prompts, responses = gsm8k_pairs(args.n)
    enc = _Encoder(tok, None, None, args.max_length)(prompts, responses)
    seqs = [(e.start, len(e.ids) - e.start) for e in enc if e is not None]
    tokens = sum(p + r for p, r in seqs)
    flops = forward_flops(model, seqs)
    h, f = model.config.hidden_size, model.config.intermediate_size
    peak = gemm_peak("cpu", torch.float32, [(args.batch_tokens, h, f), (args.batch_tokens, f, h), (1024, 1024, 1024)])
    print(f"{args.model}: {len(seqs)} GSM8K answers, {tokens} tokens, {flops / 1e9:.0f} GFLOP; "
          f"{args.threads} threads; measured fp32 GEMM peak {peak / 1e9:.1f} GFLOP/s")

    learnability_scores(model, tok, prompts[:4], responses[:4])  # warm-up
    t_fast = timed(lambda: learnability_scores(model, tok, prompts, responses, batch_tokens=args.batch_tokens))
    t_naive = timed(lambda: [naive_padded(model, tok, e, args.max_length) for e in enc if e is not None])
    t_unpadded = timed(lambda: [naive_learnability(model, tok, p, r) for p, r in zip(prompts, responses, strict=True)])
    t_roof = flops / peak
    rows = [("naive loop, padded (issue's)", t_naive), ("naive loop, unpadded", t_unpadded),
            ("persyn scorer", t_fast), ("roofline (FLOPs / GEMM peak)", t_roof)]
    print(f"{'method':<30}{'seconds':>9}{'tokens/s':>10}{'vs naive':>10}")
    for name, t in rows:
        print(f"{name:<30}{t:>9.2f}{tokens / t:>10.0f}{t_naive / t:>10.2f}")
    print(f"persyn vs naive padded loop: {t_naive / t_fast:.2f}x (target >= 3x); vs unpadded loop: "
          f"{t_unpadded / t_fast:.2f}x; persyn vs roofline: {t_fast / t_roof:.2f}x the roofline time (target <= 2x)")


def naive_padded(model, tok, e, max_length: int) -> float:
    """One forward pass per response, right-padded to the scoring context, full logits and log_softmax."""
    ids = torch.full((1, max_length), tok.pad_token_id or 0)
    ids[0, : len(e.ids)] = torch.tensor(e.ids)
    mask = (torch.arange(max_length) < len(e.ids)).long()[None]
    with torch.inference_mode():
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[0].float(), -1)
    targets = ids[0, e.start : len(e.ids)]
    return logp[e.start - 1 : len(e.ids) - 1].gather(-1, targets[:, None]).mean().item()


if __name__ == "__main__":
    main()
