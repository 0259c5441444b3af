"""Throughput of the openai backend against the local test server at client concurrency 1, 8 and 32.

    python benchmarks/bench_server.py [--model DIR] [-n 64] [--max-tokens 16] [--latency 0.05]

Without --model a tiny random Llama is built in a temporary directory. --latency adds a per-request server
delay (seconds) standing in for network and queueing time, which is what concurrency hides on real endpoints.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from openai_server import serve  # noqa: E402

from persyn.backends.base import GenParams, GenRequest  # noqa: E402
from persyn.config import TeacherConfig  # noqa: E402
from persyn.remote.openai_backend import OpenAIBackend  # noqa: E402

PROMPTS = ["What is 12 times 7?", "Write a short poem about the sea.", "Why is the sky blue?",
           "How many clips did Natalia sell in April and May?"]


def run(base_url: str, n: int, max_tokens: int, concurrency: int) -> tuple[float, int, int]:
    teacher = TeacherConfig(name="bench", backend="openai", model="bench", base_url=base_url,
                            max_concurrency=concurrency, max_retries=0)
    params = GenParams(max_new_tokens=max_tokens, temperature=0.0)
    reqs = [GenRequest(key=str(i), prompt_id=str(i), prompt=PROMPTS[i % len(PROMPTS)], params=params)
            for i in range(n)]
    backend = OpenAIBackend(teacher)
    start = time.perf_counter()
    results = list(backend.generate(reqs))
    seconds = time.perf_counter() - start
    failed = sum(r.text is None for r in results)
    return seconds, sum(r.completion_tokens for r in results), failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="local HF model directory (default: a tiny random Llama)")
    parser.add_argument("-n", type=int, default=64, help="requests per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.0, help="added server delay per request (s)")
    parser.add_argument("--concurrency", default="1,8,32")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            from conftest import build_tiny_lm

            model_dir = build_tiny_lm(Path(tmp))
        with serve(model_dir, delay_s=args.latency) as server:
            run(server.base_url, 4, args.max_tokens, 4)  # warm-up: model, threads, connections
            print(f"model={args.model or 'tiny-random-llama'} n={args.n} max_tokens={args.max_tokens} "
                  f"latency={args.latency}s")
            print(f"{'conc':>5} {'seconds':>8} {'req/s':>8} {'tok/s':>9} {'x req/s':>8} {'max_in_flight':>13}")
            base = None
            for c in levels:
                server.state.reset()
                seconds, tokens, failed = run(server.base_url, args.n, args.max_tokens, c)
                rps = args.n / seconds
                base = base or rps
                note = f"  ({failed} failed)" if failed else ""
                print(f"{c:>5} {seconds:>8.2f} {rps:>8.1f} {tokens / seconds:>9.1f} {rps / base:>8.2f} "
                      f"{server.state.max_in_flight:>13}{note}")


if __name__ == "__main__":
    main()
