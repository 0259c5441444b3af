"""Shared pieces of the benchmarks: FLOP counts, a measured GEMM peak, real prompt/response text."""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
SHARED = ROOT.parent / "shared" / "data"


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str = "cpu", repeat: int = 1) -> float:
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / repeat


def gemm_peak(device: str, dtype: torch.dtype, shapes: list[tuple[int, int, int]]) -> float:
    """Best FLOP/s over matrix products of the given (m, k, n) shapes, after a warm-up."""
    best = 0.0
    for m, k, n in shapes:
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        for _ in range(2):
            a @ b
        best = max(best, 2 * m * k * n / timed(lambda a=a, b=b: a @ b, device, repeat=5))
    return best


def body_params(model) -> int:
    """Parameters multiplied once per token in the decoder layers (embeddings and head excluded)."""
    return sum(p.numel() for _, p in model.model.layers.named_parameters() if p.dim() == 2)


def forward_flops(model, seqs: list[tuple[int, int]]) -> float:
    """Dense FLOPs of causal forwards over (prompt_len, response_len) sequences, the head on response tokens only."""
    c = model.config
    heads = c.num_attention_heads
    d_attn = heads * getattr(c, "head_dim", None) if getattr(c, "head_dim", None) else c.hidden_size
    body = 2 * body_params(model)
    total = 0.0
    for p, r in seqs:
        s = p + r
        total += body * s + 2 * c.num_hidden_layers * s * s * d_attn + 2 * c.vocab_size * c.hidden_size * r
    return total


def gsm8k_pairs(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Real (question, worked answer) pairs from ../shared/data/gsm8k when present, else synthetic ones."""
    path = SHARED / "gsm8k" / "train.jsonl"
    if path.exists():
        rows = [json.loads(line) for line in path.read_text().splitlines()[: n * 4]]
        random.Random(seed).shuffle(rows)
        rows = rows[:n]
        return [r["question"] for r in rows], [r["answer"] for r in rows]
    rng = random.Random(seed)
    qs, ans = [], []
    for _ in range(n):
        a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 9)
        qs.append(f"A shop sells {a} apples on Monday and {b} on Tuesday, in bags of {c}. How many apples in all?")
        ans.append(f"On both days it sells {a} + {b} = {a + b} apples. " * rng.randint(1, 4) + f"#### {a + b}")
    return qs, ans


def alpaca_eval_pairs(n: int) -> tuple[list[str], list[str]]:
    """Real (instruction, response) pairs from ../shared/data/alpaca_eval: instruction i answered by teacher i mod 8."""
    files = sorted((SHARED / "alpaca_eval" / "teachers").glob("*.jsonl"))
    if not files:
        raise SystemExit(f"no AlpacaEval teacher files under {SHARED / 'alpaca_eval' / 'teachers'}")
    tables = [[json.loads(line) for line in f.open()] for f in files]
    rows = [tables[i % len(tables)][i] for i in range(n)]
    return [r["instruction"] for r in rows], [r["output"] or "" for r in rows]
