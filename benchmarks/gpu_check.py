"""GPU check: learnability scoring and generation throughput with a Qwen2.5-1.5B-shaped model in bf16.

The weights are random (real ones don't travel to a lent GPU), which changes nothing about speed. Prints tokens/s
and the fraction of the bf16 GEMM peak measured in the same run, side by side with plain batched transformers
(full logits + log_softmax over padded batches) and one sequence at a time.

    python benchmarks/gpu_check.py [--tokenizer DIR] [--sequences 512] [--seq-len 512]
    python benchmarks/gpu_check.py --tiny      # a few-second CPU smoke run of the same code
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import forward_flops, gemm_peak, timed  # noqa: E402

from persyn.scoring.learnability import learnability_scores  # noqa: E402

QWEN15 = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
              num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768, tie_word_embeddings=True,
              rope_theta=1e6)
TINY = dict(vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True)


def make_texts(tokenizer, n: int, prompt_tokens: int, response_tokens: int, seed: int = 0):
    rng = random.Random(seed)
    words = [w for w in ("the of and to in is was for on that with as by at from his her this which "
                         "number answer total each more than apples price step first then so we find").split()]
    def text(k):
        return " ".join(rng.choice(words) for _ in range(k))
    return [text(prompt_tokens) for _ in range(n)], [text(response_tokens) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", default=None, help="a Qwen2.5 tokenizer dir (default: build a byte-level one)")
    ap.add_argument("--sequences", type=int, default=512)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch-tokens", type=int, nargs="+", default=[16384, 65536])
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from persyn.models import resolve_device, resolve_dtype

    device = resolve_device()  # persyn's own policy: bfloat16 on the GPU, float32 on a CPU
    dtype = resolve_dtype("auto", device)
    shape = TINY if args.tiny else QWEN15
    n_seq = 16 if args.tiny else args.sequences
    out: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "dtype": str(dtype)}

    n = 8192 if device == "cuda" else 1024
    peak = gemm_peak(device, dtype, [(n, n, n)])
    out["gemm_peak_tflops"] = round(peak / 1e12, 1)
    print(f"device {out['device']}, {dtype}: measured GEMM peak {peak / 1e12:.1f} TFLOP/s", flush=True)

    torch.manual_seed(0)
    config = Qwen2Config(**shape, attn_implementation="sdpa", torch_dtype=dtype)
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(dtype).eval()
    tok = AutoTokenizer.from_pretrained(args.tokenizer) if args.tokenizer else None
    if tok is None:
        raise SystemExit("pass --tokenizer (a Qwen2.5 tokenizer dir)")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    # Word counts chosen so prompt+response come to about seq_len tokens with this word list.
    prompts, responses = make_texts(tok, n_seq, args.seq_len // 4, args.seq_len * 3 // 4)
    def prompt_ids(p: str) -> list[int]:
        text = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        return tok(text, add_special_tokens=False).input_ids

    enc_p = [len(prompt_ids(p)) for p in prompts]
    enc_r = [len(tok(r, add_special_tokens=False).input_ids) + 1 for r in responses]
    seqs = list(zip(enc_p, enc_r, strict=True))
    tokens = sum(p + r for p, r in seqs)
    flops = forward_flops(model, seqs)
    out["sequences"], out["tokens"] = n_seq, tokens
    print(f"{n_seq} sequences, {tokens} tokens (mean {tokens / n_seq:.0f}), {flops / 1e12:.1f} TFLOP per pass")

    results = {}
    for bt in args.batch_tokens:
        def run(bt=bt):
            learnability_scores(model, tok, prompts, responses, max_length=4096, batch_tokens=bt)
        run()  # warm-up
        t = timed(run, device)
        results[f"persyn_bt{bt}"] = {"seconds": t, "tokens_per_s": tokens / t, "peak_fraction": flops / t / peak}
    # Plain batched transformers: padded batches of 8, full logits, log_softmax over the vocabulary.
    ids = [prompt_ids(p) + tok(r, add_special_tokens=False).input_ids for p, r in zip(prompts, responses, strict=True)]

    def plain(batch: int):
        with torch.inference_mode():
            for i in range(0, len(ids), batch):
                rows = ids[i:i + batch]
                width = max(map(len, rows))
                x = torch.full((len(rows), width), tok.pad_token_id, device=device)
                m = torch.zeros_like(x)
                for j, r in enumerate(rows):
                    x[j, :len(r)] = torch.tensor(r, device=device)
                    m[j, :len(r)] = 1
                torch.log_softmax(model(input_ids=x, attention_mask=m).logits.float(), -1)
    full_flops = flops + sum(2 * config.vocab_size * config.hidden_size * p for p, _ in seqs)
    all_ids = ids
    for batch in (8, 1):
        ids = all_ids if batch == 8 else all_ids[:64]  # one at a time is slow: a subset gives the rate
        plain(batch)
        t = timed(lambda b=batch: plain(b), device)
        share = sum(map(len, ids)) / tokens
        results[f"plain_batch{batch}"] = {"seconds": t, "tokens_per_s": sum(map(len, ids)) / t,
                                          "peak_fraction": full_flops * share / t / peak}
    out["scoring"] = results
    base = results["plain_batch8"]["tokens_per_s"]
    print(f"{'scoring':<22}{'tokens/s':>12}{'of peak':>10}{'vs plain batched':>18}")
    for name, r in results.items():
        print(f"{name:<22}{r['tokens_per_s']:>12.0f}{r['peak_fraction']:>10.1%}{r['tokens_per_s'] / base:>17.2f}x")

    # Generation: greedy, 128 new tokens, batch 1 vs 16 vs 64 (ignore_eos so every row does the same work).
    gen = {}
    new = 16 if args.tiny else 128
    for batch in (1, 16, 64):
        x = torch.randint(100, 1000, (batch, 128), device=device)

        def g(x=x):
            with torch.inference_mode():
                model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=new,
                               min_new_tokens=new, do_sample=False, pad_token_id=0)
        g()
        t = timed(g, device)
        gen[f"batch{batch}"] = {"seconds": t, "tokens_per_s": batch * new / t}
    out["generation"] = gen
    for name, r in gen.items():
        ratio = r["tokens_per_s"] / gen["batch1"]["tokens_per_s"]
        print(f"generation {name:<10}{r['tokens_per_s']:>10.0f} tok/s  {ratio:.1f}x batch 1")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
