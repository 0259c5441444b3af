"""The HTTP layer shared by the openai backend and server learnability: retries, backoff, token buckets, redaction.

Every request is retried with exponential backoff and full jitter on 408, 409, 424 (TGI's failed generation),
429, 5xx, timeouts, connection errors and bodies that parse but lack what the caller needs (`validate`). A
server's `retry-after-ms` (OpenAI) or Retry-After is a floor for the wait, unless it asks for more than the
policy's cap: then the request fails at once (to be retried by a later run) and says so. `x-should-retry` (as
OpenAI sends it) overrides the status: `false` fails the request at once, as does a 429 whose body says
`insufficient_quota` (no wait refills a quota); `true` retries any status. Error bodies are redacted of the API
key before they are cut to a snippet, so no part of a key ever reaches a message, a log or the store.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from persyn.errors import ConfigError

log = logging.getLogger(__name__)
RETRYABLE_STATUS = {408, 409, 424, 429} | set(range(500, 600))


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
    retry_after_max_s: float = 300.0  # a longer Retry-After fails the request, for a later run to retry

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


def retry_after(headers: httpx.Headers) -> float | None:
    """The wait a response asks for: `retry-after-ms` (OpenAI's, finer) over Retry-After; None when neither."""
    try:
        ms = float(headers.get("retry-after-ms", ""))
    except ValueError:
        return parse_retry_after(headers.get("retry-after"))
    return max(0.0, ms / 1000) if ms == ms else parse_retry_after(headers.get("retry-after"))  # NaN: ignored


def should_retry(resp: httpx.Response) -> bool:
    """Whether a failed response is worth another attempt: the status, unless the server says otherwise."""
    told = resp.headers.get("x-should-retry", "").strip().lower()
    if told in ("true", "false"):
        return told == "true"
    if resp.status_code == 429 and "insufficient_quota" in resp.text:
        return False
    return resp.status_code in RETRYABLE_STATUS


def redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


def snippet(text: str, secret: str | None = None, limit: int = 200) -> str:
    """The start of a response body for a message: redacted first, then cut (a cut key would survive redaction)."""
    text = " ".join(redact(text, secret).split())
    return text[:limit] + ("..." if len(text) > limit else "")


def read_api_key(api_key_env: str | None, *, key: str) -> str | None:
    if not api_key_env:
        return None
    value = os.environ.get(api_key_env)
    if not value:
        raise ConfigError(f"environment variable {api_key_env} is not set (it should hold the API key)",
                          key=key)
    return value


def async_client(*, api_key: str | None, max_concurrency: int, timeout_s: float,
                 headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    """A client whose connection pool matches the concurrency, sending the bearer key when there is one."""
    all_headers = dict(headers or {})
    if api_key:
        all_headers["Authorization"] = f"Bearer {api_key}"
    limits = httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency)
    return httpx.AsyncClient(headers=all_headers, timeout=httpx.Timeout(timeout_s), limits=limits)


async def post_json(client: httpx.AsyncClient, url: str, body: dict[str, Any], *, policy: RetryPolicy,
                    counters: Counters, secret: str | None = None, validate: Callable[[dict], Any] | None = None,
                    throttle: TokenBucket | None = None, timeout_s: float | None = None) -> dict[str, Any]:
    """POST with retries: the parsed JSON body, or RetryableError/FatalHTTPError after the last try.

    `validate(data)` raises ValueError (or KeyError, IndexError, TypeError) for a body that parsed but lacks what
    the caller needs: retried like a 5xx. `throttle` (a requests/min bucket) is paid before every attempt, retries
    included; `timeout_s` bounds each attempt as a whole (httpx's own timeout bounds each phase).
    """
    attempt = 0
    while True:
        if throttle is not None:
            await throttle.acquire(1)
        counters.requests_sent += 1
        try:
            return await _post_once(client, url, body, validate, timeout_s, secret)
        except RetryableError as exc:
            wait = exc.retry_after
            if wait is not None and wait > policy.retry_after_max_s:
                message = (f"{exc}; the server asked to retry after {wait:.0f} s, more than retry_after_max_s="
                           f"{policy.retry_after_max_s:g}: left failed for a later run to retry")
                log.warning("%s", message)
                raise RetryableError(message) from None
            if attempt >= policy.max_retries:
                raise RetryableError(f"{exc} (gave up after {attempt + 1} attempts)") from None
            counters.retries += 1
            await asyncio.sleep(policy.delay(attempt, wait))
            attempt += 1


async def _post_once(client: httpx.AsyncClient, url: str, body: dict[str, Any], validate: Any,
                     timeout_s: float | None, secret: str | None) -> dict[str, Any]:
    try:
        async with asyncio.timeout(timeout_s):
            resp = await client.post(url, json=body)
    except (httpx.TimeoutException, TimeoutError):
        raise RetryableError("request timed out") from None
    except httpx.TransportError as exc:
        raise RetryableError(f"connection error: {type(exc).__name__}") from None
    if resp.status_code >= 400:
        message = f"HTTP {resp.status_code}: {snippet(resp.text, secret)}"
        if should_retry(resp):
            raise RetryableError(message, retry_after(resp.headers))
        raise FatalHTTPError(resp.status_code, message)
    try:
        data = resp.json()
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        if validate is not None:
            validate(data)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        reason = redact(str(exc), secret)
        raise RetryableError(f"unreadable response ({reason}): {snippet(resp.text, secret)}") from None
    return data
