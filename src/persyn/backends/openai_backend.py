"""Teacher backend for any OpenAI-compatible chat-completions server (vLLM, SGLang, TGI, Ollama, hosted APIs).

Requests run concurrently on an asyncio loop in a background thread, bounded by a semaphore and token buckets
(requests/min, tokens/min); each is retried with exponential backoff and full jitter on 429, 5xx, timeouts,
connection errors and unparsable bodies. Results stream back to the caller as each request finishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import os
import queue
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from persyn.backends.base import GenRequest, GenResult, register_backend
from persyn.chat import FEW_SHOT_STOP, few_shot_prefix
from persyn.errors import ConfigError

EXTRA_KEYS = {"body", "headers", "backoff_base_s", "backoff_max_s"}
RETRYABLE_STATUS = {408, 409, 429} | set(range(500, 600))


class FatalHTTPError(Exception):
    """A response that no retry can fix (bad key, bad request): the whole run should stop."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class RetryableError(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass
class Counters:
    requests_sent: int = 0
    retries: int = 0
    failed: int = 0
    succeeded: int = 0


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Full jitter: uniform in [0, min(max, base * 2**attempt)]; a server's Retry-After is a floor."""
        jitter = random.uniform(0.0, min(self.backoff_max_s, self.backoff_base_s * 2 ** attempt))
        return max(jitter, retry_after) if retry_after is not None else jitter


class TokenBucket:
    """Refills at `per_minute / 60` per second and holds one second's worth, so requests are spread evenly.

    An acquisition larger than the capacity (a long prompt under a tokens/min limit) waits for a full bucket
    and then drives it negative: the average rate still holds.
    """

    def __init__(self, per_minute: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.level = self.capacity
        self.updated = time.monotonic()
        self.lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    async def acquire(self, amount: float) -> None:
        async with self.lock:
            need = min(amount, self.capacity)
            self._refill()
            while self.level < need:
                await asyncio.sleep((need - self.level) / self.rate)
                self._refill()
            self.level -= amount

    def refund(self, amount: float) -> None:
        """Give back (or, negative, take) the difference between an estimate and the real usage."""
        self._refill()
        self.level = min(self.capacity, self.level + amount)


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds or as an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


async def post_json(client: httpx.AsyncClient, url: str, body: dict[str, Any], *, policy: RetryPolicy,
                    counters: Counters, secret: str | None = None, validate: Any = None,
                    throttle: TokenBucket | None = None, timeout_s: float | None = None) -> dict[str, Any]:
    """POST with retries: the parsed JSON body, or RetryableError/FatalHTTPError after the last try.

    `validate(data)` raises ValueError for a body that parsed but lacks what the caller needs (retried).
    `throttle` (a requests/min bucket) is paid before every attempt, retries included; `timeout_s` bounds each
    attempt as a whole (httpx's own timeout bounds each phase).
    """
    attempt = 0
    while True:
        if throttle is not None:
            await throttle.acquire(1)
        counters.requests_sent += 1
        try:
            data = await _post_once(client, url, body, validate, timeout_s)
        except RetryableError as exc:
            if attempt >= policy.max_retries:
                message = f"{exc} (gave up after {attempt + 1} attempts)"
                raise RetryableError(redact(message, secret)) from None
            counters.retries += 1
            await asyncio.sleep(policy.delay(attempt, exc.retry_after))
            attempt += 1
            continue
        except FatalHTTPError as exc:
            raise FatalHTTPError(exc.status, redact(str(exc), secret)) from None
        return data


async def _post_once(client: httpx.AsyncClient, url: str, body: dict[str, Any],
                     validate: Any, timeout_s: float | None) -> dict[str, Any]:
    try:
        async with asyncio.timeout(timeout_s):
            resp = await client.post(url, json=body)
    except (httpx.TimeoutException, TimeoutError):
        raise RetryableError("request timed out") from None
    except httpx.TransportError as exc:
        raise RetryableError(f"connection error: {type(exc).__name__}") from None
    if resp.status_code in RETRYABLE_STATUS:
        raise RetryableError(f"HTTP {resp.status_code}: {_snippet(resp.text)}",
                             parse_retry_after(resp.headers.get("retry-after")))
    if resp.status_code >= 400:
        raise FatalHTTPError(resp.status_code, f"HTTP {resp.status_code}: {_snippet(resp.text)}")
    try:
        data = resp.json()
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if validate is not None:
            validate(data)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise RetryableError(f"unreadable response ({exc}): {_snippet(resp.text)}") from None
    return data


def _snippet(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text[:limit] + ("..." if len(text) > limit else "")


def read_api_key(api_key_env: str | None, *, key: str) -> str | None:
    if not api_key_env:
        return None
    value = os.environ.get(api_key_env)
    if not value:
        raise ConfigError(f"environment variable {api_key_env} is not set (it should hold the API key)",
                          key=key)
    return value


def _require_choices(data: dict[str, Any]) -> None:
    choices = data["choices"]
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError("no choices")


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
        self.policy = RetryPolicy(teacher.max_retries, float(teacher.extra.get("backoff_base_s", 1.0)),
                                  float(teacher.extra.get("backoff_max_s", 60.0)))
        self.counters = Counters()

    def fingerprint(self) -> str:
        # The server address is part of it: another server may serve other weights under the same model name.
        return json.dumps({"backend": "openai", "base_url": self.base_url, "model": self.teacher.model,
                           "few_shot": self.few_shot,
                           "chat_template": self.teacher.chat_template,
                           "body": self.teacher.extra.get("body", {})}, sort_keys=True)

    def request_body(self, request: GenRequest) -> tuple[str, dict[str, Any]]:
        """(path, JSON body) of one request; also used by the Batch API export."""
        return request_body(self.teacher, request, few_shot=self.few_shot)

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
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        limits = httpx.Limits(max_connections=t.max_concurrency, max_keepalive_connections=t.max_concurrency)
        timeout = httpx.Timeout(t.timeout_s)
        async with httpx.AsyncClient(headers=headers, timeout=timeout, limits=limits) as client:

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
                                   counters=self.counters, secret=api_key, validate=_require_choices,
                                   throttle=rpm, timeout_s=self.teacher.timeout_s)
        except RetryableError as exc:
            self.counters.failed += 1
            return GenResult(key=req.key, text=None, seconds=time.monotonic() - start, error=str(exc))
        except FatalHTTPError as exc:
            if exc.status in (401, 403, 404):  # every other request would fail the same way
                raise self._fatal(exc, has_key=api_key is not None) from None
            self.counters.failed += 1
            return GenResult(key=req.key, text=None, seconds=time.monotonic() - start, error=str(exc))
        result = self._to_result(req.key, data, time.monotonic() - start)
        if result.text is None:
            self.counters.failed += 1
        else:
            self.counters.succeeded += 1
        if tpm:
            tpm.refund(estimate - (result.prompt_tokens + result.completion_tokens or estimate))
        return result

    def _fatal(self, exc: FatalHTTPError, *, has_key: bool) -> Exception:
        prefix = f"teachers.{self.name}"
        if exc.status in (401, 403):
            hint = (f"the server rejected the API key from ${self.teacher.api_key_env}" if has_key
                    else "the server requires an API key: set api_key_env to the variable that holds it")
            return ConfigError(f"{hint} ({exc})", key=f"{prefix}.api_key_env")
        return ConfigError(f"the server does not serve this model or path ({exc})", key=f"{prefix}.model")

    def _to_result(self, key: str, data: dict[str, Any], seconds: float) -> GenResult:
        return result_from_body(key, data, seconds, self.teacher.cost_per_1k_tokens)

    def close(self) -> None:
        return None


def uses_completions(teacher: Any) -> bool:
    """The server applies its own chat template; a base model gets the few-shot prompt on /completions."""
    return teacher.few_shot is True or (teacher.few_shot is None and teacher.chat_template == "few-shot")


def request_body(teacher: Any, request: GenRequest, *, few_shot: bool) -> tuple[str, dict[str, Any]]:
    p = request.params
    body: dict[str, Any] = {"model": teacher.model, "max_tokens": p.max_new_tokens,
                            "temperature": p.temperature, "top_p": p.top_p, "seed": p.seed}
    if few_shot:
        path = "/completions"
        body.update(prompt=f"{few_shot_prefix()}Question: {request.prompt}\nAnswer:", stop=[FEW_SHOT_STOP])
    else:
        path = "/chat/completions"
        body["messages"] = [{"role": "user", "content": request.prompt}]
        if teacher.chat_template and teacher.chat_template != "few-shot":
            body["chat_template"] = teacher.chat_template  # a vLLM/SGLang extension
    body.update(teacher.extra.get("body", {}))
    return path, body


def result_from_body(key: str, data: dict[str, Any], seconds: float, cost_per_1k: float) -> GenResult:
    """A GenResult from a chat-completions (or completions) response body."""
    choice = data["choices"][0]
    message = choice.get("message")
    text = message.get("content") if isinstance(message, dict) else choice.get("text")
    if not isinstance(message, dict) and isinstance(text, str):
        text = text.strip()  # a few-shot completion starts after "Answer:" with a space
    usage = data.get("usage") or {}
    prompt_tokens = int(usage.get("prompt_tokens") or 0)
    completion_tokens = int(usage.get("completion_tokens") or 0)
    extra = {"finish_reason": choice.get("finish_reason")}
    if not isinstance(text, str):
        return GenResult(key=key, text=None, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                         seconds=seconds, error="the response has no message content", extra=extra)
    cost = (prompt_tokens + completion_tokens) / 1000 * cost_per_1k
    return GenResult(key=key, text=text, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                     seconds=seconds, cost=cost, extra=extra)
