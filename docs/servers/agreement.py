"""Server learnability against the local float32 student, on responses the server itself generates.

Start a vLLM server of SmolLM2-135M-Instruct first (any dtype), e.g.

    .venv-vllm/bin/python -m vllm.entrypoints.openai.api_server \
        --model ~/.cache/persyn/converted/smollm2-135m-instruct --served-model-name smollm2 \
        --max-model-len 512 --dtype bfloat16 --enforce-eager --port 18767
    PYTHONPATH=src .venv/bin/python docs/servers/agreement.py --url http://127.0.0.1:18767/v1

It generates greedy chat answers (48 tokens) to the twelve prompts of tests/test_real_vllm.py, scores them on the
server and locally, and prints the Pearson correlation, the mean |difference| (nats/token) and the weights check's
token-level difference (persyn.scoring.server_logprobs.check_student_server).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

from test_real_vllm import PROMPTS  # noqa: E402

from persyn.config import StudentConfig  # noqa: E402
from persyn.models import load_causal_lm  # noqa: E402
from persyn.scoring.learnability import learnability_scores  # noqa: E402
from persyn.scoring.server_logprobs import check_student_server, server_learnability  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True, help="the server's base URL, ending in /v1")
    ap.add_argument("--served", default="smollm2", help="its --served-model-name")
    ap.add_argument("--max-tokens", type=int, default=48)
    args = ap.parse_args()
    responses = []
    for prompt in PROMPTS:
        body = {"model": args.served, "messages": [{"role": "user", "content": prompt}],
                "max_tokens": args.max_tokens, "temperature": 0}
        reply = httpx.post(args.url + "/chat/completions", json=body, timeout=600).json()
        responses.append(reply["choices"][0]["message"]["content"])
    model, tok = load_causal_lm("smollm2-135m-instruct", dtype="float32", device="cpu")
    server = server_learnability(args.url, args.served, tok, PROMPTS, responses).values
    local = learnability_scores(model, tok, PROMPTS, responses).values
    pearson = float(np.corrcoef(local, server)[0, 1])
    mean_abs = float(np.mean(np.abs(np.array(local) - np.array(server))))
    student = StudentConfig(model="smollm2-135m-instruct", server_url=args.url, server_model=args.served,
                            server_check_tolerance=1e9)
    check = check_student_server(student, model, tok)
    print(f"{len(PROMPTS)} responses: Pearson {pearson:.5f}, mean |diff| {mean_abs:.4f} nats/token; "
          f"weights check {check:.4f} nats/token")


if __name__ == "__main__":
    main()
