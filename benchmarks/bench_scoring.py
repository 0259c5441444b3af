"""Learnability scoring throughput on SmolLM2-135M-Instruct (CPU, 2 threads by default), on real GSM8K answers and
real AlpacaEval responses.

Side by side in one process, each the best of `--repeat` interleaved runs: persyn's scorer (padded batches, and
packed into rows without padding) against the plain loop anyone would write (length-sorted batches of 8,
right-padded with an attention mask, full logits and log_softmax) and against one unpadded sequence at a time
(persyn's own reference, `naive_learnability`). It checks that all of them agree within 1e-3 and prints tokens/s,
the ratios, and a roofline (the forward FLOPs over the GEMM FLOP/s measured just before). Wall and CPU (process)
seconds are both shown: on a shared machine the CPU seconds are steadier.

    python benchmarks/bench_scoring.py [--alpaca 48] [--gsm8k 64] [--threads 2] [--repeat 2] [--bf16]
"""

from __future__ import annotations

import argparse
import time

import torch
from common import alpaca_eval_pairs, forward_flops, gemm_peak, gsm8k_pairs

from persyn.models import load_causal_lm
from persyn.scoring.learnability import Encoded, Encoder, learnability_scores, naive_learnability


def plain_loop(model, tok, enc: list[Encoded], batch: int = 8) -> list[float]:
    """Length-sorted batches of `batch`, right-padded with a mask, full logits, log_softmax; in input order."""
    order = sorted(range(len(enc)), key=lambda i: len(enc[i].ids))
    out = [0.0] * len(enc)
    with torch.inference_mode():
        for s in range(0, len(order), batch):
            idx = order[s : s + batch]
            width = max(len(enc[i].ids) for i in idx)
            ids = torch.full((len(idx), width), tok.pad_token_id or 0)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, : len(enc[i].ids)] = torch.tensor(enc[i].ids)
                mask[row, : len(enc[i].ids)] = 1
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
            for row, i in enumerate(idx):
                e = enc[i]
                targets = ids[row, e.start : len(e.ids)]
                out[i] = logp[row, e.start - 1 : len(e.ids) - 1].gather(-1, targets[:, None]).mean().item()
    return out


def best_of(fn, repeat: int) -> tuple[float, float, list[float]]:
    """(best wall seconds, best CPU seconds, values) over `repeat` runs."""
    walls, cpus, values = [], [], []
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        values = fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus), values


def bench(name: str, model, tok, prompts: list[str], responses: list[str], args, peak: float) -> None:
    enc_all = Encoder(tok, None, None, args.max_length)(prompts, responses)
    keep = [i for i, e in enumerate(enc_all) if e is not None]
    prompts, responses = [prompts[i] for i in keep], [responses[i] for i in keep]
    enc = [enc_all[i] for i in keep]
    seqs = [(e.start, len(e.ids) - e.start) for e in enc]
    tokens = sum(p + r for p, r in seqs)
    flops = forward_flops(model, seqs)
    print(f"\n{name}: {len(enc)} responses, {tokens} tokens (longest {max(len(e.ids) for e in enc)}), "
          f"{flops / 1e12:.2f} TFLOP")
    methods = {
        "plain loop, batches of 8": lambda: plain_loop(model, tok, enc),
        "persyn scorer": lambda: learnability_scores(model, tok, prompts, responses, max_length=args.max_length,
                                                     batch_tokens=args.batch_tokens, pack=False).values,
        "persyn scorer, packed": lambda: learnability_scores(model, tok, prompts, responses,
                                                             max_length=args.max_length,
                                                             batch_tokens=args.batch_tokens, pack=True).values,
    }
    results = {m: [float("inf"), float("inf"), []] for m in methods}
    for _ in range(args.repeat):  # interleaved, so a burst of load elsewhere hits both
        for m, fn in methods.items():
            wall, cpu, values = best_of(fn, 1)
            results[m] = [min(results[m][0], wall), min(results[m][1], cpu), values]
    results["unpadded loop, one at a time"] = list(best_of(
        lambda: [naive_learnability(model, tok, p, r, max_length=args.max_length)
                 for p, r in zip(prompts, responses, strict=True)], 1))
    ref = results["plain loop, batches of 8"][2]
    print(f"{'method':<32}{'wall s':>8}{'tok/s':>8}{'CPU s':>8}{'vs plain (wall)':>17}{'(CPU)':>7}{'max |diff|':>12}")
    base_w, base_c = results["plain loop, batches of 8"][:2]
    for m, (wall, cpu, values) in results.items():
        diff = max(abs(a - b) for a, b in zip(values, ref, strict=True))
        print(f"{m:<32}{wall:>8.1f}{tokens / wall:>8.0f}{cpu:>8.1f}{base_w / wall:>17.2f}{base_c / cpu:>7.2f}"
              f"{diff:>12.1e}")
        assert diff < 1e-3, f"{m} disagrees with the plain loop by {diff}"
    print(f"roofline (FLOPs / GEMM peak): {flops / peak:.1f} s; persyn scorer at "
          f"{results['persyn scorer'][0] / (flops / peak):.2f}x the roofline time (wall)")
    for m in ("persyn scorer", "persyn scorer, packed"):
        w, c = results[m][:2]
        print(f"{name}: {m} vs the plain loop {base_w / w:.2f}x (wall), {base_c / c:.2f}x (CPU); vs the unpadded "
              f"loop {results['unpadded loop, one at a time'][0] / w:.2f}x (wall)")
    pw, pc = results["persyn scorer, packed"][:2]
    w, c = results["persyn scorer"][:2]
    print(f"{name}: packed vs padded persyn scorer {w / pw:.2f}x (wall), {c / pc:.2f}x (CPU)")
    if args.bf16:
        half, _ = load_causal_lm(args.model, dtype="bfloat16", device="cpu")
        ref = results["persyn scorer"][2]
        for pack in (False, True):
            values = learnability_scores(half, tok, prompts, responses, max_length=args.max_length,
                                         batch_tokens=args.batch_tokens, pack=pack).values
            d = [abs(a - b) for a, b in zip(values, ref, strict=True)]
            print(f"{name}: bf16 {'packed' if pack else 'padded'} vs fp32 padded: max |diff| {max(d):.1e}, "
                  f"mean {sum(d) / len(d):.1e} nats/token")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--alpaca", type=int, default=48, help="AlpacaEval responses (0: skip)")
    ap.add_argument("--gsm8k", type=int, default=64, help="GSM8K answers (0: skip)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--max-length", type=int, default=1024, help="the scoring context (student.max_length)")
    ap.add_argument("--bf16", action="store_true", help="also score in bfloat16, packed and padded, against fp32")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_causal_lm(args.model, dtype="float32", device="cpu")
    h, f = model.config.hidden_size, model.config.intermediate_size
    peak = gemm_peak("cpu", torch.float32, [(args.batch_tokens, h, f), (args.batch_tokens, f, h), (1024, 1024, 1024)])
    print(f"{args.model}, {args.threads} threads, measured fp32 GEMM peak {peak / 1e9:.1f} GFLOP/s")
    learnability_scores(model, tok, ["Hi"] * 2, ["Hello there.", "Hi!"])  # warm-up
    if args.alpaca:
        bench("AlpacaEval responses", model, tok, *alpaca_eval_pairs(args.alpaca), args, peak)
    if args.gsm8k:
        bench("GSM8K answers", model, tok, *gsm8k_pairs(args.gsm8k), args, peak)


if __name__ == "__main__":
    main()
