"""A real OpenAI-compatible HTTP server (FastAPI + uvicorn) over a local transformers model.

Serves /v1/chat/completions and /v1/completions (echo + logprobs, vLLM-style prompt_logprobs, token-id
prompts), optionally requires a bearer key, and lets a test inject faults into the next requests and read
counters. Used by the tests and by benchmarks/bench_server.py.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool
from transformers import AutoModelForCausalLM, AutoTokenizer


@dataclass
class Fault:
    # refused: "429", "500", "slow", "garbage", "no_choices", "echo_key" (a 500 whose body echoes the bearer key
    # across its 200th character); answered, then spoiled: "bad_usage" (usage counts that are not numbers),
    # "null_content" (HTTP 200 with `content: null`)
    kind: str
    retry_after: str | None = None  # for 429: seconds or an HTTP date
    seconds: float = 0.0  # for slow


@dataclass
class ServerState:
    api_key: str | None = None
    delay_s: float = 0.0  # added latency per generation request, so client concurrency is observable
    prompt_logprobs: bool = True  # False: refuse vLLM's prompt_logprobs like an OpenAI-style server
    fail_longer_than: int | None = None  # answer HTTP 500 to every token-id prompt longer than this
    faults: deque[Fault] = field(default_factory=deque)
    counts: Counter[str] = field(default_factory=Counter)  # path -> requests received
    arrivals: list[float] = field(default_factory=list)  # monotonic arrival time of each generation request
    bodies: list[dict[str, Any]] = field(default_factory=list)  # JSON bodies of requests that got through
    in_flight: int = 0
    max_in_flight: int = 0
    auth_failures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def inject(self, kind: str, count: int = 1, *, retry_after: str | None = None,
               seconds: float = 0.0) -> None:
        self.faults.extend(Fault(kind, retry_after, seconds) for _ in range(count))

    def reset(self) -> None:
        self.faults.clear()
        self.fail_longer_than = None
        self.counts.clear()
        self.arrivals.clear()
        self.bodies.clear()
        self.in_flight = self.max_in_flight = self.auth_failures = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class LocalModel:
    def __init__(self, model_dir: str | Path) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.sample_lock = threading.Lock()  # sampling seeds the global RNG

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @torch.no_grad()
    def prompt_logprobs(self, ids: list[int]) -> torch.Tensor:
        """[len(ids)-1, vocab] log-softmax at each position predicting ids[1:]."""
        logits = self.model(torch.tensor([ids])).logits[0, :-1].float()
        return torch.log_softmax(logits, dim=-1)

    @torch.no_grad()
    def generate(self, ids: list[int], max_tokens: int, temperature: float, top_p: float,
                 seed: int | None) -> tuple[list[int], list[float]]:
        if max_tokens <= 0:
            return [], []
        kwargs: dict[str, Any] = dict(max_new_tokens=max_tokens, output_scores=True,
                                      return_dict_in_generate=True, pad_token_id=self.tokenizer.pad_token_id)
        inputs = torch.tensor([ids])
        if temperature > 0:
            with self.sample_lock:
                torch.manual_seed(seed or 0)
                out = self.model.generate(inputs, do_sample=True, temperature=temperature, top_p=top_p,
                                          **kwargs)
        else:
            out = self.model.generate(inputs, do_sample=False, **kwargs)
        new = out.sequences[0, len(ids):].tolist()
        lps = [torch.log_softmax(s[0].float(), -1)[t].item() for s, t in zip(out.scores, new, strict=False)]
        return new, lps


def spoil(answer: dict[str, Any], kind: str) -> None:
    """Damage a real answer the way misbehaving servers do."""
    if kind == "bad_usage":
        answer["usage"] = {"prompt_tokens": None, "completion_tokens": "n/a", "total_tokens": "n/a"}
    else:  # null_content
        choice = answer["choices"][0]
        if "message" in choice:
            choice["message"]["content"] = None
        else:
            choice["text"] = None


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}}, status, headers)


def build_app(lm: LocalModel, state: ServerState) -> FastAPI:
    app = FastAPI()
    tok = lm.tokenizer

    async def admit(request: Request) -> JSONResponse | PlainTextResponse | Fault | None:
        """Auth, then an injected fault if one is queued; None (or a fault that spoils the answer) lets the
        request through."""
        if state.api_key is not None:
            given = request.headers.get("authorization", "").removeprefix("Bearer ")
            if given != state.api_key:
                state.auth_failures += 1
                # Like hosted APIs, echo what was sent: the client must keep it out of its own messages.
                return _error(401, f"Incorrect API key provided: {given or '(none)'}")
        if not state.faults:
            return None
        fault = state.faults.popleft()
        if fault.kind == "429":
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else None
            return _error(429, "rate limited", headers)
        if fault.kind == "500":
            return _error(500, "internal error")
        if fault.kind == "garbage":
            return PlainTextResponse("<html>502 upstream hiccup</html>", 200)
        if fault.kind == "no_choices":
            return JSONResponse({"id": "x", "object": "chat.completion", "choices": []})
        if fault.kind == "echo_key":
            given = request.headers.get("authorization", "").removeprefix("Bearer ")
            return _error(500, f"{'upstream failure; ' * 8}request was sent with key {given}")
        if fault.kind in ("bad_usage", "null_content"):
            return fault
        if fault.kind == "slow":
            await asyncio.sleep(fault.seconds)
            return None
        raise ValueError(f"unknown fault {fault.kind}")

    async def handle(request: Request, path: str, work: Any) -> Any:
        with state.lock:
            state.counts[path] += 1
            state.arrivals.append(time.monotonic())
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            refused = await admit(request)
            if refused is not None and not isinstance(refused, Fault):
                return refused
            body = await request.json()
            if state.fail_longer_than is not None and isinstance(body.get("prompt"), list) \
                    and len(body["prompt"]) > state.fail_longer_than:
                return _error(500, "this prompt always fails")
            state.bodies.append(body)
            if state.delay_s:
                await asyncio.sleep(state.delay_s)
            try:
                answer = await run_in_threadpool(work, body)
            except (KeyError, TypeError, ValueError) as exc:
                return _error(400, f"bad request: {exc}")
            if isinstance(refused, Fault):
                spoil(answer, refused.kind)
            return answer
        finally:
            with state.lock:
                state.in_flight -= 1

    def chat(body: dict[str, Any]) -> dict[str, Any]:
        text = tok.apply_chat_template(body["messages"], tokenize=False, add_generation_prompt=True,
                                       chat_template=body.get("chat_template"))
        ids = lm.encode(text)
        new, _ = lm.generate(ids, int(body.get("max_tokens") or 16), float(body.get("temperature", 1.0)),
                             float(body.get("top_p", 1.0)), body.get("seed"))
        finish = "stop" if tok.eos_token_id in new else "length"
        message = {"role": "assistant", "content": tok.decode(new, skip_special_tokens=True)}
        return {"id": "chatcmpl-test", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "finish_reason": finish, "message": message}],
                "usage": {"prompt_tokens": len(ids), "completion_tokens": len(new),
                          "total_tokens": len(ids) + len(new)}}

    def completions(body: dict[str, Any]) -> dict[str, Any]:
        prompt = body["prompt"]
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], list | str):
            if len(prompt) != 1:
                raise ValueError("this server takes one prompt per request")
            prompt = prompt[0]
        ids = lm.encode(prompt) if isinstance(prompt, str) else [int(i) for i in prompt]
        echo, logprobs = bool(body.get("echo")), body.get("logprobs")
        n_prompt_lp = body.get("prompt_logprobs")
        if n_prompt_lp is not None and not state.prompt_logprobs:
            raise ValueError("unrecognized request argument: prompt_logprobs")
        max_tokens = int(body.get("max_tokens", 16))
        new, new_lps = lm.generate(ids, max_tokens, float(body.get("temperature", 1.0)),
                                   float(body.get("top_p", 1.0)), body.get("seed"))
        text = tok.decode(new, skip_special_tokens=True)
        finish = "stop" if tok.eos_token_id in new else "length"
        for stop in body.get("stop") or []:
            if stop in text:
                text, finish = text[: text.index(stop)], "stop"
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        wants_prompt_lp = (echo and logprobs is not None) or n_prompt_lp is not None
        prompt_lp = lm.prompt_logprobs(ids) if wants_prompt_lp else None
        if logprobs is not None:
            shown = (ids if echo else []) + new
            lps: list[float | None] = []
            if echo:
                lps = [None] + [prompt_lp[i, t].item() for i, t in enumerate(ids[1:])]
            lps += new_lps
            pieces = [tok.decode([t]) for t in shown]
            offsets = [sum(len(p) for p in pieces[:i]) for i in range(len(pieces))]
            choice["logprobs"] = {"tokens": pieces, "token_logprobs": lps, "text_offset": offsets,
                                  "top_logprobs": None}
        if n_prompt_lp is not None:
            entries: list[dict[str, Any] | None] = [None]
            for i, t in enumerate(ids[1:]):
                row = prompt_lp[i]
                top = torch.topk(row, int(n_prompt_lp)).indices.tolist() if n_prompt_lp else []
                entries.append({str(k): {"logprob": row[k].item(), "rank": int((row > row[k]).sum()) + 1,
                                         "decoded_token": tok.decode([k])} for k in [t, *top]})
            choice["prompt_logprobs"] = entries
        choice["text"] = (tok.decode(ids) if echo else "") + text
        return {"id": "cmpl-test", "object": "text_completion", "model": body.get("model"),
                "choices": [choice],
                "usage": {"prompt_tokens": len(ids), "completion_tokens": len(new),
                          "total_tokens": len(ids) + len(new)}}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await handle(request, "/v1/chat/completions", chat)

    @app.post("/v1/completions")
    async def text_completions(request: Request) -> Any:
        return await handle(request, "/v1/completions", completions)

    @app.get("/v1/models")
    async def models() -> Any:
        return {"object": "list", "data": [{"id": "tiny", "object": "model"}]}

    return app


@dataclass
class RunningServer:
    base_url: str  # ends in /v1
    state: ServerState
    model: LocalModel


@contextmanager
def serve(model_dir: str | Path, *, api_key: str | None = None,
          delay_s: float = 0.0) -> Iterator[RunningServer]:
    """Run the server on 127.0.0.1 at a free port in a background thread for the duration of the block."""
    lm = LocalModel(model_dir)
    state = ServerState(api_key=api_key, delay_s=delay_s)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(build_app(lm, state), log_level="warning", lifespan="off",
                            timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    try:
        yield RunningServer(f"http://127.0.0.1:{port}/v1", state, lm)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
