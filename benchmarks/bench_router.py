"""Router throughput with the MiniLM backbone (CPU): encoding cold and cached, training, and routing; and persyn's
embedder against `SentenceTransformer.encode` on the same texts (same model, batch size and max length).

    python benchmarks/bench_router.py [--n 2000] [--route 10000] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import gsm8k_pairs, timed

from persyn.router import BTRouter, Embedder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500, help="prompts encoded (and then routed from the cache)")
    ap.add_argument("--route", type=int, default=10000, help="prompts routed with cached embeddings")
    ap.add_argument("--probe", type=int, default=500)
    ap.add_argument("--teachers", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    questions, _ = gsm8k_pairs(args.n)
    texts = list(questions)
    with tempfile.TemporaryDirectory() as tmp:
        embedder = Embedder("all-minilm-l6-v2", cache_path=Path(tmp) / "emb.sqlite")
        embedder.embed(texts[:8])  # load
        t_cold = timed(lambda: embedder.embed(texts[8 : args.n]))
        X = embedder.embed(texts[: args.n])
        t_warm = timed(lambda: embedder.embed(texts[: args.n]))
        rng = np.random.default_rng(0)
        R = rng.normal(size=(args.probe, args.teachers)) + X[: args.probe, : args.teachers] * 3
        router = BTRouter(args.teachers, [f"t{i}" for i in range(args.teachers)], epochs=100)
        t_fit = timed(lambda: router.fit(X[: args.probe], R))
        # Route `--route` prompts whose embeddings are all in the cache (the encoded texts, cycled).
        to_route = [texts[i % args.n] for i in range(args.route)]
        t_route = timed(lambda: router.route(embedder.embed(to_route)))
        t_ours, t_st, cos = sentence_transformers_encode(embedder, texts[8 : args.n], X[8 : args.n])
    print(f"MiniLM router, {args.threads} threads, {args.teachers} teachers")
    print(f"{'step':<36}{'prompts':>9}{'seconds':>9}{'prompts/s':>11}")
    rows = [("encode (cold)", args.n - 8, t_cold), ("encode (cached)", args.n, t_warm),
            (f"train router ({args.probe} probe prompts)", args.probe, t_fit),
            ("route with cached embeddings", args.route, t_route),
            ("persyn encoder, best of 2", args.n - 8, t_ours),
            ("SentenceTransformer.encode, best of 2", args.n - 8, t_st)]
    for name, n, t in rows:
        print(f"{name:<36}{n:>9}{t:>9.2f}{n / t:>11.0f}")
    print(f"cached routing: {args.route / t_route:.0f} prompts/s (target >= 1,000); cache vs cold encoding: "
          f"{(args.n / t_warm) / ((args.n - 8) / t_cold):.0f}x")
    print(f"persyn's encoder vs SentenceTransformer.encode: {t_st / t_ours:.2f}x its speed (target >= 0.9); "
          f"same vectors: min cosine {cos:.6f}")


def sentence_transformers_encode(embedder: Embedder, texts: list[str], ours: np.ndarray,
                                 repeat: int = 2) -> tuple[float, float, float]:
    """Best seconds of persyn's encoder (the cache bypassed) and of SentenceTransformer.encode on these texts,
    interleaved so that load elsewhere hits both alike; and the least cosine between their vectors."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(embedder.model_dir, device="cpu")
    st.max_seq_length = embedder.max_length
    st.encode(texts[:8], batch_size=embedder.batch_size)  # warm-up
    out: list[np.ndarray] = []
    t_ours, t_st = float("inf"), float("inf")
    for _ in range(repeat):
        t_ours = min(t_ours, timed(lambda: embedder._encode(texts)))
        t_st = min(t_st, timed(lambda: out.append(st.encode(texts, batch_size=embedder.batch_size,
                                                             normalize_embeddings=True))))
    return t_ours, t_st, float((out[0] * ours).sum(1).min())


if __name__ == "__main__":
    main()
