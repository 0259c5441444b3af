"""Teacher backend for any OpenAI-compatible server (vLLM, SGLang, TGI, llama-server, hosted APIs).

Requests run concurrently on an asyncio loop in a background thread, bounded by a semaphore and token buckets
(requests/min, tokens/min); each is retried with exponential backoff and full jitter on 424, 429, 5xx, timeouts,
connection errors, unparsable bodies and replies without text (see persyn.remote.http). Results stream back to the
caller as each request finishes; a request that still fails is returned with its error, so the store keeps it
pending and the next run retries it. When the server refuses the first requests alike with a 4xx and answers
none, the run stops with that refusal instead of failing every row.

A request carries only what changes the output: the token limit, the temperature, top_p when below 1 and the
seed when sampling (TGI refuses top_p=1, OpenAI's reasoning models refuse `max_tokens`). A teacher's own
chat_template is rendered here and sent as text to /completions, so no server can ignore or refuse it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import queue
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx

from persyn.backends.base import GenRequest, GenResult, register_backend
from persyn.chat import FEW_SHOT_STOP, few_shot_prefix, render_template, template_text
from persyn.errors import ConfigError
from persyn.remote.http import (
    Counters,
    FatalHTTPError,
    RetryableError,
    RetryPolicy,
    TokenBucket,
    async_client,
    post_json,
    read_api_key,
    snippet,
)

EXTRA_KEYS = {"body", "headers", "backoff_base_s", "backoff_max_s"}
# OpenAI's reasoning models take max_completion_tokens and refuse max_tokens.
REASONING_MODEL = re.compile(r"^(?:openai/)?(?:o\d+(?:-|$)|gpt-5)")
FAIL_FAST = 3  # this many identical 4xx refusals, and no answer yet: every request would be refused alike


def _require_content(data: dict[str, Any]) -> None:
    """A usable reply has a first choice with text or a refusal: anything else (no choices, `content: null`
    without a refusal) is retried."""
    choices = data["choices"]
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError("no choices")
    if not isinstance(_choice_text(choices[0]), str) and _refusal(choices[0]) is None:
        raise ValueError("the response has no message content")


def _choice_text(choice: dict[str, Any]) -> Any:
    message = choice.get("message")
    return message.get("content") if isinstance(message, dict) else choice.get("text")


def _refusal(choice: dict[str, Any]) -> str | None:
    """OpenAI's refusal: `content: null` and the reason in `message.refusal` (vLLM sends `refusal: null`)."""
    message = choice.get("message")
    refusal = message.get("refusal") if isinstance(message, dict) else None
    return refusal if isinstance(refusal, str) and refusal.strip() else None


@register_backend("openai")
class OpenAIBackend:
    """A teacher served over the OpenAI chat-completions API (or completions with a few-shot prompt)."""

    def __init__(self, teacher: Any, **_context: Any) -> None:
        self.name = teacher.name
        self.teacher = teacher
        prefix = f"teachers.{teacher.name}"
        if not teacher.base_url:
            raise ConfigError("the openai backend needs base_url (e.g. http://localhost:8000/v1)",
                              key=f"{prefix}.base_url")
        if not teacher.model:
            raise ConfigError("the openai backend needs the served model name", key=f"{prefix}.model")
        unknown = set(teacher.extra) - EXTRA_KEYS
        if unknown:
            raise ConfigError(f"unknown keys {sorted(unknown)}; known: {sorted(EXTRA_KEYS)}",
                              key=f"{prefix}.extra")
        if not _context.get("identity_only"):  # keys.py builds backends only for their fingerprint
            read_api_key(teacher.api_key_env, key=f"{prefix}.api_key_env")  # fail early; re-read when sending
        self.base_url = teacher.base_url.rstrip("/")
        self.few_shot = uses_completions(teacher)
        self.template = None if self.few_shot else teacher_template(teacher)
        self.policy = RetryPolicy(teacher.max_retries, float(teacher.extra.get("backoff_base_s", 1.0)),
                                  float(teacher.extra.get("backoff_max_s", 60.0)), teacher.retry_after_max_s)
        self.counters = Counters()
        self._refusals: Counter[str] = Counter()
        self._answered = 0

    def fingerprint(self) -> str:
        # The server address is part of it: another server may serve other weights under the same model name.
        # A template by its content: an edited .jinja file is another teacher.
        template = self.template if self.template is not None else self.teacher.chat_template
        return json.dumps({"backend": "openai", "base_url": self.base_url, "model": self.teacher.model,
                           "few_shot": self.few_shot, "chat_template": template,
                           "body": self.teacher.extra.get("body", {})}, sort_keys=True)

    def request_body(self, request: GenRequest) -> tuple[str, dict[str, Any]]:
        """(path, JSON body) of one request; also used by the Batch API export."""
        return request_body(self.teacher, request, few_shot=self.few_shot, template=self.template)

    def generate(self, requests: list[GenRequest]) -> Iterator[GenResult]:
        if not requests:
            return
        results: queue.Queue[Any] = queue.Queue()
        done = object()
        state: dict[str, Any] = {}

        def run() -> None:
            async def main() -> None:
                state["task"] = asyncio.current_task()
                state["loop"] = asyncio.get_running_loop()
                try:
                    await self._run_all(requests, results.put)
                except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread
                    results.put(exc)
                finally:
                    results.put(done)

            asyncio.run(main())

        thread = threading.Thread(target=run, name=f"openai-{self.name}", daemon=True)
        thread.start()
        finished = False
        try:
            while (item := results.get()) is not done:
                if isinstance(item, BaseException):
                    if isinstance(item, asyncio.CancelledError):
                        continue
                    raise item
                yield item
            finished = True
        finally:
            loop, task = state.get("loop"), state.get("task")
            # Only a consumer that stopped early cancels; once `done` arrived the loop may already be closing.
            if not finished and thread.is_alive() and loop is not None and task is not None:
                with contextlib.suppress(RuntimeError):  # the loop closed between the check and the call
                    loop.call_soon_threadsafe(task.cancel)
            thread.join()

    async def _run_all(self, requests: list[GenRequest], emit: Any) -> None:
        t = self.teacher
        sem = asyncio.Semaphore(t.max_concurrency)
        rpm = TokenBucket(t.requests_per_minute) if t.requests_per_minute else None
        tpm = TokenBucket(t.tokens_per_minute) if t.tokens_per_minute else None
        headers = {str(k): str(v) for k, v in t.extra.get("headers", {}).items()}
        api_key = read_api_key(t.api_key_env, key=f"teachers.{t.name}.api_key_env")
        self._refusals.clear()
        self._answered = 0
        async with async_client(api_key=api_key, max_concurrency=t.max_concurrency, timeout_s=t.timeout_s,
                                headers=headers) as client:

            async def one(req: GenRequest) -> None:
                async with sem:
                    emit(await self._one(client, req, rpm, tpm, api_key))

            tasks = [asyncio.create_task(one(r)) for r in requests]
            try:
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()

    async def _one(self, client: httpx.AsyncClient, req: GenRequest, rpm: TokenBucket | None,
                   tpm: TokenBucket | None, api_key: str | None) -> GenResult:
        path, body = self.request_body(req)
        estimate = len(req.prompt) / 4 + req.params.max_new_tokens
        if tpm:
            await tpm.acquire(estimate)
        start = time.monotonic()
        try:
            data = await post_json(client, self.base_url + path, body, policy=self.policy,
                                   counters=self.counters, secret=api_key, validate=_require_content,
                                   throttle=rpm, timeout_s=self.teacher.timeout_s)
        except RetryableError as exc:
            self.counters.failed += 1
            return GenResult(key=req.key, text=None, seconds=time.monotonic() - start, error=str(exc))
        except FatalHTTPError as exc:
            if exc.status in (401, 403, 404):  # every other request would fail the same way
                raise self._fatal(exc, has_key=api_key is not None) from None
            self._fail_fast(exc)
            self.counters.failed += 1
            return GenResult(key=req.key, text=None, seconds=time.monotonic() - start, error=str(exc))
        self._answered += 1
        result = self._to_result(req.key, data, time.monotonic() - start)
        if result.text is None:
            self.counters.failed += 1
        else:
            self.counters.succeeded += 1
        if tpm:
            tpm.refund(estimate - (result.prompt_tokens + result.completion_tokens or estimate))
        return result

    def _fail_fast(self, exc: FatalHTTPError) -> None:
        """Stop when the server refused FAIL_FAST requests with the same 4xx and answered none: a setting it
        rejects (top_p=1 on TGI, max_tokens on o3, a spent quota) that every further request would meet."""
        if not 400 <= exc.status < 500:
            return
        self._refusals[str(exc)] += 1
        if self._answered == 0 and self._refusals[str(exc)] >= FAIL_FAST:
            raise ConfigError(f"the server refused the first {FAIL_FAST} requests alike and answered none, so the "
                              f"run stops; the server said: {exc}", key=f"teachers.{self.name}")

    def _fatal(self, exc: FatalHTTPError, *, has_key: bool) -> Exception:
        prefix = f"teachers.{self.name}"
        if exc.status in (401, 403):
            hint = (f"the server rejected the API key from ${self.teacher.api_key_env}" if has_key
                    else "the server requires an API key: set api_key_env to the variable that holds it")
            return ConfigError(f"{hint} ({exc})", key=f"{prefix}.api_key_env")
        return ConfigError(f"the server does not serve this model or path ({exc})", key=f"{prefix}.model")

    def _to_result(self, key: str, data: dict[str, Any], seconds: float) -> GenResult:
        return result_from_body(key, data, seconds, self.teacher)

    def close(self) -> None:
        return None


def uses_completions(teacher: Any) -> bool:
    """The server applies its own chat template; a base model gets the few-shot prompt on /completions."""
    return teacher.few_shot is True or (teacher.few_shot is None and teacher.chat_template == "few-shot")


def teacher_template(teacher: Any) -> str | None:
    """The teacher's own chat template as text (a .jinja file read), None when it has none or is few-shot."""
    if teacher.chat_template in (None, "few-shot"):
        return None
    return template_text(teacher.chat_template, key=f"teachers.{teacher.name}.chat_template")


def token_limit_field(teacher: Any) -> str:
    if teacher.max_tokens_param != "auto":
        return teacher.max_tokens_param
    return "max_completion_tokens" if REASONING_MODEL.match(teacher.model or "") else "max_tokens"


def request_body(teacher: Any, request: GenRequest, *, few_shot: bool,
                 template: str | None = None) -> tuple[str, dict[str, Any]]:
    """(path, body): chat messages, or a text prompt on /completions (few-shot, or rendered with `template`)."""
    p = request.params
    body: dict[str, Any] = {"model": teacher.model, "temperature": p.temperature}
    if p.top_p < 1:  # 1 is no cut: every API's default, and out of TGI's range
        body["top_p"] = p.top_p
    if p.temperature > 0:  # greedy decoding has no use for a seed
        body["seed"] = p.seed
    if few_shot:
        path = "/completions"
        body.update(prompt=f"{few_shot_prefix()}Question: {request.prompt}\nAnswer:", stop=[FEW_SHOT_STOP],
                    max_tokens=p.max_new_tokens)
    elif template is not None:
        path = "/completions"
        body.update(prompt=render_template(template, request.prompt, key=f"teachers.{teacher.name}.chat_template"),
                    max_tokens=p.max_new_tokens)
    else:
        path = "/chat/completions"
        body["messages"] = [{"role": "user", "content": request.prompt}]
        body[token_limit_field(teacher)] = p.max_new_tokens
    body.update(teacher.extra.get("body", {}))
    return path, body


def result_from_body(key: str, data: dict[str, Any], seconds: float, teacher: Any, *,
                     batch: bool = False) -> GenResult:
    """A GenResult from a chat-completions (or completions) response body; empty, refused and truncated replies
    are failures or kept as the teacher's empty_response and truncated_response say."""
    choice = data["choices"][0]
    text = _choice_text(choice)
    if not isinstance(choice.get("message"), dict) and isinstance(text, str):
        text = text.strip()  # a few-shot completion starts after "Answer:" with a space
    usage = data.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    prompt_tokens, completion_tokens = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
    finish = choice.get("finish_reason")
    extra: dict[str, Any] = {"finish_reason": finish}
    if prompt_tokens is None or completion_tokens is None:
        extra["usage_missing"] = True  # unusable usage counts as none: no tokens, no cost, never a crash
        prompt_tokens = completion_tokens = None
    prompt_tokens, completion_tokens = prompt_tokens or 0, completion_tokens or 0
    cost = teacher.cost(prompt_tokens, completion_tokens, batch=batch)
    refusal = _refusal(choice) if not isinstance(text, str) else None
    if refusal is not None:
        text, extra["refusal"] = refusal, True
    if not isinstance(text, str):
        return GenResult(key=key, text=None, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                         seconds=seconds, error="the response has no message content", extra=extra)
    error = None
    if teacher.empty_response == "fail" and refusal is not None:
        error = f"the model refused: {snippet(refusal)} (empty_response: keep stores refusals)"
    elif teacher.empty_response == "fail" and text == "":
        why = (": max_new_tokens ran out before any answer (a reasoning model's thinking?); raise it"
               if finish == "length" else "")
        error = f"empty response (finish_reason {finish}){why}; empty_response: keep stores empty replies"
    elif teacher.truncated_response == "fail" and finish == "length":
        error = "the response was cut at max_new_tokens (finish_reason length) and truncated_response is fail"
    if error is not None:  # paid for all the same
        return GenResult(key=key, text=None, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                         seconds=seconds, cost=cost, error=error, extra=extra)
    return GenResult(key=key, text=text, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                     seconds=seconds, cost=cost, extra=extra)


def _count(value: Any) -> int | None:
    """A token count from a usage field: a non-negative whole number, else None (missing or unusable)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value < 0 or value != int(value):
        return None
    return int(value)
