"""A real OpenAI-compatible HTTP server (FastAPI + uvicorn) over a local transformers model.

Serves /v1/chat/completions and /v1/completions (echo + logprobs, vLLM-style prompt_logprobs, token-id
prompts), optionally requires a bearer key, and lets a test inject faults into the next requests and read
counters. Used by the tests and by benchmarks/bench_server.py.

`ServerState.flavor` makes it answer as a real server does where they differ (read from their sources):
- "vllm": 404 for a model name it does not serve (`served_models`), 400 for a request `chat_template` (vLLM
  without --trust-request-chat-template), 400 for a prompt over `max_model_len`, -inf log-probs sent as -9999;
- "tgi": 422 unless 0 < top_p < 1, 422 for a token-id prompt on /v1/completions, and echo, logprobs and
  prompt_logprobs ignored;
- "llamacpp": 500 "Only no echo is supported" for echo, prompt_logprobs ignored;
- "sglang": prompt_logprobs ignored, prompt log-probs echoed only for a truthy `logprobs`;
- "openai": 400 for `max_tokens` to a reasoning model (o1, o3, o4-mini, gpt-5).
`masked_token` gets log-prob -inf (a server-side logits processor); `prefix_cache` reproduces vLLM releases
whose prompt_logprobs read a prefix an earlier request cached, computed there in bfloat16, so a score depends
on what came before it unless the request carries its own `cache_salt`.
"""

from __future__ import annotations

import asyncio
import math
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

CACHE_BLOCK = 16  # tokens per prefix-cache block (vLLM's default block size)


class ContextTooLong(Exception):
    """A prompt over the server's max_model_len: vLLM's 400."""


@dataclass
class Fault:
    # refused: "429", "429_quota" (OpenAI's insufficient_quota), "424" (TGI's failed generation), "500",
    # "slow", "garbage", "no_choices", "echo_key" (a 500 whose body echoes the bearer key across its 200th
    # character); answered, then spoiled: "bad_usage" (usage counts that are not numbers), "null_content"
    # (HTTP 200 with `content: null`), "refusal" (`content: null` and OpenAI's `refusal`), "empty_length"
    # (`content: ""`, finish_reason length: a reasoning model that spent its budget)
    kind: str
    retry_after: str | None = None  # for 429: seconds or an HTTP date
    seconds: float = 0.0  # for slow
    headers: dict[str, str] = field(default_factory=dict)  # added to a refusal (retry-after-ms, x-should-retry)


@dataclass
class ServerState:
    api_key: str | None = None
    delay_s: float = 0.0  # added latency per generation request, so client concurrency is observable
    prompt_logprobs: bool = True  # False: refuse vLLM's prompt_logprobs like an OpenAI-style server
    fail_longer_than: int | None = None  # answer HTTP 500 to every token-id prompt longer than this
    flavor: str = "fake"  # "vllm", "tgi", "llamacpp", "sglang": see the module docstring
    served_models: list[str] | None = None  # vllm: the names it serves (None: any)
    max_model_len: int | None = None  # vllm: longest prompt + max_tokens
    masked_token: int | None = None  # this token's log-prob is -inf
    prefix_cache: bool = False
    cache: set[tuple[str | None, tuple[int, ...]]] = field(default_factory=set)  # (salt, cached block prefix)
    faults: deque[Fault] = field(default_factory=deque)
    counts: Counter[str] = field(default_factory=Counter)  # path -> requests received
    arrivals: list[float] = field(default_factory=list)  # monotonic arrival time of each generation request
    bodies: list[dict[str, Any]] = field(default_factory=list)  # JSON bodies of requests that got through
    in_flight: int = 0
    max_in_flight: int = 0
    auth_failures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def inject(self, kind: str, count: int = 1, *, retry_after: str | None = None,
               seconds: float = 0.0, headers: dict[str, str] | None = None) -> None:
        self.faults.extend(Fault(kind, retry_after, seconds, dict(headers or {})) for _ in range(count))

    def reset(self) -> None:
        self.faults.clear()
        self.fail_longer_than = None
        self.flavor, self.served_models, self.max_model_len, self.masked_token = "fake", None, None, None
        self.prefix_cache = False
        self.cache.clear()
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
    choice = answer["choices"][0]
    if kind == "bad_usage":
        answer["usage"] = {"prompt_tokens": None, "completion_tokens": "n/a", "total_tokens": "n/a"}
    elif kind == "refusal":
        choice["message"].update(content=None, refusal="I'm sorry, I can't help with that.")
        choice["finish_reason"] = "stop"
    elif kind == "empty_length":
        choice["message"]["content"] = ""
        choice["finish_reason"] = "length"
    elif "message" in choice:  # null_content
        choice["message"]["content"] = None
    else:
        choice["text"] = None


def _error(status: int, message: str, headers: dict[str, str] | None = None, *,
           kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status, headers)


def _tgi_error(message: str) -> JSONResponse:
    return JSONResponse({"error": message, "error_type": "validation"}, 422)


def _refuse_as_flavor(state: ServerState, path: str, body: dict[str, Any]) -> JSONResponse | None:
    """What the real server of `state.flavor` refuses before it generates anything."""
    if state.flavor == "vllm":
        if state.served_models is not None and body.get("model") not in state.served_models:
            return _error(404, f"The model `{body.get('model')}` does not exist. Valid aliases: "
                          f"{', '.join(state.served_models)}.", kind="NotFoundError")
        if path.endswith("chat/completions") and body.get("chat_template") is not None:
            return _error(400, "Chat template is passed with request, but --trust-request-chat-template is not set. "
                          "Refused request with untrusted chat template.", kind="BadRequestError")
    if state.flavor == "tgi":
        top_p = body.get("top_p")
        if top_p is not None and not 0 < top_p < 1:
            return _tgi_error("Input validation error: `top_p` must be > 0.0 and < 1.0")
        if path.endswith("/completions") and not path.endswith("chat/completions") \
                and isinstance(body.get("prompt"), list) and body["prompt"] and isinstance(body["prompt"][0], int):
            return JSONResponse({"error": "Failed to deserialize the JSON body into the target type: prompt: "
                                 "invalid type: integer, expected a string", "error_type": "validation"}, 422)
    if state.flavor == "openai" and str(body.get("model", "")).startswith(("o1", "o3", "o4", "gpt-5")) \
            and "max_tokens" in body:
        return _error(400, "Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                      "'max_completion_tokens' instead.")
    if state.flavor == "llamacpp" and body.get("echo"):
        return JSONResponse({"error": {"code": 500, "message": "Only no echo is supported",
                                       "type": "server_error"}}, 500)
    return None


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
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
            return _error(429, "rate limited", headers | fault.headers)
        if fault.kind == "429_quota":
            return _error(429, "You exceeded your current quota, please check your plan and billing details.",
                          fault.headers, kind="insufficient_quota")
        if fault.kind == "424":
            return JSONResponse({"error": "Request failed during generation: Server error: CUDA error",
                                 "error_type": "generation"}, 424, fault.headers)
        if fault.kind == "500":
            return _error(500, "internal error", fault.headers)
        if fault.kind == "garbage":
            return PlainTextResponse("<html>502 upstream hiccup</html>", 200)
        if fault.kind == "no_choices":
            return JSONResponse({"id": "x", "object": "chat.completion", "choices": []})
        if fault.kind == "echo_key":
            given = request.headers.get("authorization", "").removeprefix("Bearer ")
            return _error(500, f"{'upstream failure; ' * 8}request was sent with key {given}")
        if fault.kind in ("bad_usage", "null_content", "refusal", "empty_length"):
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
            if (flavored := _refuse_as_flavor(state, path, body)) is not None:
                return flavored
            if state.fail_longer_than is not None and isinstance(body.get("prompt"), list) \
                    and len(body["prompt"]) > state.fail_longer_than:
                return _error(500, "this prompt always fails")
            state.bodies.append(body)
            if state.delay_s:
                await asyncio.sleep(state.delay_s)
            try:
                answer = await run_in_threadpool(work, body)
            except ContextTooLong as exc:
                return _error(400, str(exc), kind="BadRequestError")
            except (KeyError, TypeError, ValueError) as exc:
                return _error(400, f"bad request: {exc}")
            if isinstance(refused, Fault):
                spoil(answer, refused.kind)
            return answer
        finally:
            with state.lock:
                state.in_flight -= 1

    def chat(body: dict[str, Any]) -> dict[str, Any]:
        template = body.get("chat_template") if state.flavor in ("fake", "vllm") else None  # others ignore it
        text = tok.apply_chat_template(body["messages"], tokenize=False, add_generation_prompt=True,
                                       chat_template=template)
        ids = lm.encode(text)
        limit = body.get("max_completion_tokens") or body.get("max_tokens") or 16
        new, _ = lm.generate(ids, int(limit), float(body.get("temperature", 1.0)),
                             float(body.get("top_p", 1.0)), body.get("seed"))
        finish = "stop" if tok.eos_token_id in new else "length"
        message = {"role": "assistant", "content": tok.decode(new, skip_special_tokens=True)}
        return {"id": "chatcmpl-test", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "finish_reason": finish, "message": message}],
                "usage": {"prompt_tokens": len(ids), "completion_tokens": len(new),
                          "total_tokens": len(ids) + len(new)}}

    def prompt_values(ids: list[int], salt: str | None) -> tuple[torch.Tensor, list[float]]:
        """The log-softmax rows and the prompt's own per-position log-probs (from position 1), as the server
        reports them: -inf clamped to -9999 as vLLM sends it, a cached prefix in bfloat16."""
        rows = lm.prompt_logprobs(ids)
        if state.masked_token is not None:
            rows[:, state.masked_token] = -math.inf
        values = [rows[i, t].item() for i, t in enumerate(ids[1:])]
        if state.prefix_cache:
            blocks = range(CACHE_BLOCK, len(ids), CACHE_BLOCK)
            cached = max((k for k in blocks if (salt, tuple(ids[:k])) in state.cache), default=0)
            values = [torch.tensor(v).to(torch.bfloat16).item() if pos + 1 < cached else v
                      for pos, v in enumerate(values)]
            state.cache.update((salt, tuple(ids[:k])) for k in blocks)
        return rows, [max(v, -9999.0) for v in values]

    def completions(body: dict[str, Any]) -> dict[str, Any]:
        prompt = body["prompt"]
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], list | str):
            if len(prompt) != 1:
                raise ValueError("this server takes one prompt per request")
            prompt = prompt[0]
        ids = lm.encode(prompt) if isinstance(prompt, str) else [int(i) for i in prompt]
        echo, logprobs = bool(body.get("echo")), body.get("logprobs")
        n_prompt_lp = body.get("prompt_logprobs")
        if state.flavor in ("tgi", "llamacpp", "sglang"):
            n_prompt_lp = None  # not theirs: ignored
        if state.flavor == "tgi":
            echo, logprobs = False, None
        if n_prompt_lp is not None and not state.prompt_logprobs:
            raise ValueError("unrecognized request argument: prompt_logprobs")
        max_tokens = int(body.get("max_tokens", 16))
        if state.flavor == "vllm" and state.max_model_len is not None and len(ids) + max_tokens > state.max_model_len:
            raise ContextTooLong(f"This model's maximum context length is {state.max_model_len} tokens. However, "
                                 f"you requested {len(ids) + max_tokens} tokens ({len(ids)} in the messages, "
                                 f"{max_tokens} in the completion). Please reduce the length of the messages or "
                                 "completion.")
        new, new_lps = lm.generate(ids, max_tokens, float(body.get("temperature", 1.0)),
                                   float(body.get("top_p", 1.0)), body.get("seed"))
        text = tok.decode(new, skip_special_tokens=True)
        finish = "stop" if tok.eos_token_id in new else "length"
        for stop in body.get("stop") or []:
            if stop in text:
                text, finish = text[: text.index(stop)], "stop"
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        # SGLang computes prompt log-probs for echo only when logprobs is truthy.
        echo_prompt = echo and logprobs is not None and (bool(logprobs) or state.flavor != "sglang")
        wants_prompt_lp = echo_prompt or n_prompt_lp is not None
        rows, values = prompt_values(ids, body.get("cache_salt")) if wants_prompt_lp else (None, [])
        if logprobs is not None:
            shown = (ids if echo else []) + new
            lps: list[float | None] = []
            if echo_prompt:
                lps = [None, *values]
            elif echo:
                shown = new
            lps += new_lps
            pieces = [tok.decode([t]) for t in shown]
            offsets = [sum(len(p) for p in pieces[:i]) for i in range(len(pieces))]
            choice["logprobs"] = {"tokens": pieces, "token_logprobs": lps, "text_offset": offsets,
                                  "top_logprobs": None}
        if n_prompt_lp is not None:
            entries: list[dict[str, Any] | None] = [None]
            for i, t in enumerate(ids[1:]):
                row = rows[i]
                top = torch.topk(row, int(n_prompt_lp)).indices.tolist() if n_prompt_lp else []
                entries.append({str(k): {"logprob": values[i] if k == t else max(row[k].item(), -9999.0),
                                         "rank": int((row > row[k]).sum()) + 1,
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
        return {"object": "list", "data": [{"id": name, "object": "model"} for name in state.served_models or ["tiny"]]}

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
