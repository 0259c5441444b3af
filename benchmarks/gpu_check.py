"""GPU check: learnability scoring and generation throughput with Qwen2.5-shaped models in bf16.

The weights are random (real ones don't travel to a lent GPU), which changes nothing about speed. For each case
(a 1.5B-shaped student at about 540 and about 2,048 tokens per sequence, a 7B-shaped one at about 540) it prints
tokens/s and the fraction of the bf16 GEMM peak measured in the same run for: persyn's scorer on padded batches
(`pack=False`), packed without padding (`pack=True`: varlen attention, no padding), packed with the decoder
torch.compile'd (its first call, which compiles, timed apart from the steady state), and the plain batched loop
(right-padded batches of 8 with a mask, full logits and log_softmax). It also checks the packed values against the
padded ones, and, for the 1.5B shape, bf16 against an fp32 copy of the same weights on a subset. Then batched
generation for the 1.5B shape.

    python benchmarks/gpu_check.py --tokenizer DIR_OR_NAME [--json docs/perf/gpu_check_h200.json]
    python benchmarks/gpu_check.py --tokenizer qwen2.5-coder-0.5b-instruct --tiny   # seconds, on a CPU
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import forward_flops, gemm_peak, sync, timed  # noqa: E402

from persyn.scoring.learnability import learnability_scores  # noqa: E402

QWEN15 = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
              num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768, tie_word_embeddings=True,
              rope_theta=1e6)
QWEN7 = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
             num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768, tie_word_embeddings=False,
             rope_theta=1e6)
TINY = dict(vocab_size=151936, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True)
# (label, shape, tokens per sequence, sequences, with generation and the fp32 check)
CASES = [("1.5B", QWEN15, 540, 512, True), ("1.5B", QWEN15, 2048, 128, False), ("7B", QWEN7, 540, 256, False)]
TINY_CASES = [("1.5B", TINY, 64, 4, True), ("1.5B", TINY, 256, 4, False), ("7B", TINY, 64, 4, False)]
FP32_SUBSET = 32


def make_texts(n: int, prompt_words: int, response_words: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    words = ("the of and to in is was for on that with as by at from his her this which "
             "number answer total each more than apples price step first then so we find").split()

    def text(k: int) -> str:
        return " ".join(rng.choice(words) for _ in range(k))
    return [text(prompt_words) for _ in range(n)], [text(response_words) for _ in range(n)]


def plain_loop(model, ids: list[list[int]], pad_id: int, device: str, batch: int = 8) -> None:
    """Right-padded batches with a mask, full logits, log_softmax over the vocabulary."""
    with torch.inference_mode():
        for i in range(0, len(ids), batch):
            rows = ids[i:i + batch]
            width = max(map(len, rows))
            x = torch.full((len(rows), width), pad_id, device=device)
            m = torch.zeros_like(x)
            for j, r in enumerate(rows):
                x[j, :len(r)] = torch.tensor(r, device=device)
                m[j, :len(r)] = 1
            torch.log_softmax(model(input_ids=x, attention_mask=m).logits.float(), -1)


def max_diff(a: list, b: list) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True) if x is not None and y is not None)


def run_case(label: str, shape: dict, seq_len: int, n_seq: int, extras: bool, tok, device: str, dtype, peak: float,
             args) -> dict:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(**shape, attn_implementation="sdpa", dtype=dtype)
    t0 = time.perf_counter()
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in bf16 directly: a 7B model in fp32 would take twice the memory
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(default)
    print(f"\n{label} shape, ~{seq_len} tokens/seq: model built in {time.perf_counter() - t0:.1f} s", flush=True)
    def prompt_ids(p: str) -> list[int]:
        text = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        return tok(text, add_special_tokens=False).input_ids

    # A quarter prompt, three quarters response: with this word list one word is one token, and the template (with
    # Qwen's default system prompt) and the end of turn come on top.
    template = len(prompt_ids("the")) - 1 + 2
    prompts, responses = make_texts(n_seq, max(1, seq_len // 4 - template), seq_len * 3 // 4)

    ids = [prompt_ids(p) + tok(r, add_special_tokens=False).input_ids + tok("<|im_end|>\n").input_ids
           for p, r in zip(prompts, responses, strict=True)]
    seqs = [(len(prompt_ids(p)), len(i) - len(prompt_ids(p))) for p, i in zip(prompts, ids, strict=True)]
    tokens = sum(p + r for p, r in seqs)
    flops = forward_flops(model, seqs)
    full_flops = flops + sum(2 * config.vocab_size * config.hidden_size * p for p, _ in seqs)
    out: dict = {"shape": label, "sequences": n_seq, "tokens": tokens, "mean_tokens_per_seq": tokens / n_seq,
                 "tflop_per_pass": flops / 1e12}
    print(f"{n_seq} sequences, {tokens} tokens (mean {tokens / n_seq:.0f}), {flops / 1e12:.1f} TFLOP per pass")

    def score(pack: bool, compile: bool = False) -> list:
        return learnability_scores(model, tok, prompts, responses, max_length=4096, batch_tokens=args.batch_tokens,
                                   pack=pack, compile=compile).values

    def entry(seconds: float, work: float = flops, n_tokens: int = tokens) -> dict:
        return {"seconds": seconds, "tokens_per_s": n_tokens / seconds, "peak_fraction": work / seconds / peak}

    results, values = {}, {}
    for name, pack in (("persyn_padded", False), ("persyn_packed", True)):
        values[name] = score(pack)  # warm-up
        results[name] = entry(timed(lambda p=pack: score(p), device, repeat=args.repeat))
    if args.compile:
        sync(device)
        t0 = time.perf_counter()
        values["persyn_packed_compiled"] = score(True, compile=True)
        sync(device)
        first = time.perf_counter() - t0
        steady = timed(lambda: score(True, compile=True), device, repeat=args.repeat)
        results["persyn_packed_compiled"] = {**entry(steady), "first_call_seconds": first,
                                             "compile_seconds": max(0.0, first - steady)}
    plain_loop(model, ids, tok.pad_token_id, device)
    results["plain_batch8"] = entry(timed(lambda: plain_loop(model, ids, tok.pad_token_id, device), device),
                                    full_flops)
    out["scoring"] = results
    out["max_abs_diff_vs_padded"] = {k: max_diff(v, values["persyn_padded"]) for k, v in values.items()}
    base = results["plain_batch8"]["tokens_per_s"]
    print(f"{'scoring':<26}{'tokens/s':>12}{'of peak':>10}{'vs plain batched':>18}")
    for name, r in results.items():
        extra = f"   compile {r['compile_seconds']:.1f} s" if "compile_seconds" in r else ""
        print(f"{name:<26}{r['tokens_per_s']:>12.0f}{r['peak_fraction']:>10.1%}{r['tokens_per_s'] / base:>17.2f}x"
              f"{extra}")
    print("max |diff| vs padded (nats/token):", {k: f"{v:.1e}" for k, v in out["max_abs_diff_vs_padded"].items()})
    if extras:
        out["bf16_vs_fp32"] = fp32_check(model, tok, prompts, responses, args, device)
        out["generation"] = generation(model, device, args)
    return out


def free(device: str) -> None:
    """The last case's model goes before the next is built (the 7B one needs the room)."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def fp32_check(model, tok, prompts: list[str], responses: list[str], args, device: str) -> dict:
    """Packed bf16 against an fp32 copy of the same (bf16-representable) weights, TF32 off, on a subset."""
    if next(model.parameters()).dtype == torch.float32:
        return {}
    p, r = prompts[:FP32_SUBSET], responses[:FP32_SUBSET]
    half = learnability_scores(model, tok, p, r, max_length=4096, batch_tokens=args.batch_tokens, pack=True).values
    full = model.float()
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        ref = learnability_scores(full, tok, p, r, max_length=4096, batch_tokens=args.batch_tokens, pack=False).values
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        model.to(torch.bfloat16)
    d = [abs(a - b) for a, b in zip(half, ref, strict=True)]
    res = {"sequences": len(d), "max_abs_diff": max(d), "mean_abs_diff": sum(d) / len(d)}
    print(f"packed bf16 vs fp32 (same weights, {len(d)} sequences): max |diff| {res['max_abs_diff']:.1e}, "
          f"mean {res['mean_abs_diff']:.1e} nats/token")
    return res


def generation(model, device: str, args) -> dict:
    """Greedy, 128 new tokens after 128, batch 1 vs 16 vs 64 (ignore_eos so every row does the same work)."""
    gen = {}
    prompt, new = (16, 8) if args.tiny else (128, 128)
    for batch in (1, 16, 64):
        x = torch.randint(100, 1000, (batch, prompt), device=device)

        def g(x=x):
            with torch.inference_mode():
                model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=new,
                               min_new_tokens=new, do_sample=False, pad_token_id=0)
        g()
        t = timed(g, device)
        gen[f"batch{batch}"] = {"seconds": t, "tokens_per_s": batch * new / t}
    for name, r in gen.items():
        ratio = r["tokens_per_s"] / gen["batch1"]["tokens_per_s"]
        print(f"generation {name:<10}{r['tokens_per_s']:>10.0f} tok/s  {ratio:.1f}x batch 1")
    return gen


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True, help="a Qwen2.5 tokenizer: a directory or a persyn registry name")
    ap.add_argument("--batch-tokens", type=int, default=32768)
    ap.add_argument("--repeat", type=int, default=2, help="timed passes per method (after one warm-up)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="also time the torch.compile'd packed path (default: on CUDA only)")
    ap.add_argument("--only", default=None, help="run only the cases whose label contains this (e.g. 7B)")
    ap.add_argument("--tiny", action="store_true", help="a few-second CPU smoke run of the same code")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    from persyn.models import load_tokenizer, resolve_device, resolve_dtype

    device = resolve_device()  # persyn's own policy: bfloat16 on the GPU, float32 on a CPU
    dtype = resolve_dtype("auto", device)
    if args.compile is None:
        args.compile = device == "cuda"
    if args.tiny:
        args.repeat = 1
    if Path(args.tokenizer).is_dir():  # the tokenizer files alone travel to a lent GPU, without a config.json
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.tokenizer)
        tok.pad_token = tok.pad_token or tok.eos_token
    else:
        tok = load_tokenizer(args.tokenizer)
    out: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "dtype": str(dtype),
                 "torch": torch.__version__, "batch_tokens": args.batch_tokens, "command": " ".join(sys.argv)}
    n = 8192 if device == "cuda" else 1024
    peak = gemm_peak(device, dtype, [(n, n, n)])
    out["gemm_peak_tflops"] = round(peak / 1e12, 1)
    print(f"device {out['device']}, {dtype}: measured GEMM peak {peak / 1e12:.1f} TFLOP/s", flush=True)
    cases = TINY_CASES if args.tiny else CASES
    out["cases"] = []
    for case in cases:
        if args.only is None or args.only in f"{case[0]}@{case[2]}":
            out["cases"].append(run_case(*case, tok, device, dtype, peak, args))
            free(device)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
