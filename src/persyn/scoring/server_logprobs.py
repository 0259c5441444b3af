"""Learnability (Eq. 1) from a server that returns prompt log-probs, instead of running the student locally.

The token ids are built exactly as `persyn.scoring.learnability` builds them (SFT's tokens and completion mask,
truncation) and sent as a token-id prompt, so the boundary between conditioning and scored tokens is exact.
Requests go through `persyn.remote.http` (retries, backoff, redaction) with the student's key, concurrency, timeout
and retry settings; a request that still fails is reported in `LearnabilityResult.failed`, not scored, so the
next run retries it. Two protocols:

- "prompt_logprobs" (vLLM, SGLang): /v1/completions with `prompt_logprobs=0, max_tokens=1`; each prompt
  position carries a dict keyed by token id.
- "echo" (OpenAI legacy completions, llama.cpp, TGI): `echo=true, logprobs=0, max_tokens=1`; the echoed
  `token_logprobs` cover the prompt (first entry null) followed by the one generated token.

mode="auto" tries prompt_logprobs on the first item and falls back to echo when the server refuses or ignores it.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

import httpx

from persyn.errors import ConfigError
from persyn.remote.http import (
    Counters,
    FatalHTTPError,
    RetryableError,
    RetryPolicy,
    async_client,
    post_json,
    read_api_key,
)
from persyn.scoring.learnability import Encoded, Encoder, LearnabilityResult

log = logging.getLogger(__name__)
MODES = ("auto", "prompt_logprobs", "echo")


class _NotSupported(Exception):
    """The server answered but without the log-probs this protocol needs."""


def _prompt_logprobs(choice: dict[str, Any], ids: list[int]) -> list[float]:
    entries = choice.get("prompt_logprobs")
    if not isinstance(entries, list):
        raise _NotSupported("no prompt_logprobs in the response")
    if len(entries) != len(ids):
        raise ValueError(f"server returned {len(entries)} prompt log-probs for {len(ids)} prompt tokens")
    out = [math.nan]
    for pos in range(1, len(ids)):
        entry = entries[pos] or {}
        hit = entry.get(str(ids[pos]))
        if hit is None:
            raise ValueError(f"token {ids[pos]} at position {pos} is missing from the server's log-probs: "
                             "is the server running the same tokenizer?")
        out.append(float(hit["logprob"] if isinstance(hit, dict) else hit))
    return out


def _echo_logprobs(choice: dict[str, Any], ids: list[int]) -> list[float]:
    lp = choice.get("logprobs")
    values = lp.get("token_logprobs") if isinstance(lp, dict) else None
    if not isinstance(values, list):
        raise _NotSupported("no echoed token_logprobs in the response")
    if len(values) not in (len(ids), len(ids) + 1):
        raise ValueError(f"server echoed {len(values)} log-probs for {len(ids)} prompt tokens")
    return [math.nan] + [float(v) for v in values[1:len(ids)]]


def _body(model: str, ids: list[int], mode: str) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "prompt": ids, "max_tokens": 1, "temperature": 0.0}
    if mode == "prompt_logprobs":
        body["prompt_logprobs"] = 0
    else:
        body.update(echo=True, logprobs=0)
    return body


async def _score(client: httpx.AsyncClient, url: str, model: str, e: Encoded, mode: str,
                 policy: RetryPolicy, counters: Counters, secret: str | None) -> float:
    timeout_s = client.timeout.read
    data = await post_json(client, url, _body(model, e.ids, mode), policy=policy, counters=counters,
                           secret=secret, validate=lambda d: d["choices"][0], timeout_s=timeout_s)
    choice = data["choices"][0]
    per_token = _prompt_logprobs(choice, e.ids) if mode == "prompt_logprobs" else _echo_logprobs(choice, e.ids)
    scored = per_token[e.start:]
    return math.fsum(scored) / len(scored)


async def _score_all(base_url: str, model: str, encoded: list[Encoded | None], *, api_key: str | None,
                     max_concurrency: int, mode: str, policy: RetryPolicy,
                     timeout_s: float) -> tuple[list[float | None], list[int], list[str]]:
    """(values, indices that failed after their retries, their errors); a failed index is not a score."""
    url = base_url.rstrip("/") + "/completions"
    counters = Counters()
    values: list[float | None] = [None] * len(encoded)
    todo = [i for i, e in enumerate(encoded) if e is not None]
    failed: list[int] = []
    errors: list[str] = []
    async with async_client(api_key=api_key, max_concurrency=max_concurrency, timeout_s=timeout_s) as client:

        async def one(i: int, how: str) -> None:
            try:
                values[i] = await _score(client, url, model, encoded[i], how, policy, counters, api_key)
            except RetryableError as exc:
                failed.append(i)
                errors.append(str(exc))

        if mode == "auto" and todo:
            try:
                mode = await _detect(client, url, model, encoded[todo[0]], policy, counters, api_key, values,
                                     todo[0])
            except RetryableError as exc:  # the server did not answer even once: all of it stays pending
                log.warning("learnability: the server did not answer (%s); %d scores stay pending", exc, len(todo))
                return values, todo, [f"the server did not answer: {exc}"]
            todo = todo[1:]
        sem = asyncio.Semaphore(max_concurrency)

        async def bounded(i: int) -> None:
            async with sem:
                await one(i, mode)

        try:
            await asyncio.gather(*(bounded(i) for i in todo))
        except FatalHTTPError as exc:
            raise _fatal(exc, api_key) from None
        except (_NotSupported, ValueError) as exc:
            raise ConfigError(f"the server's log-probs are unusable: {exc}", key="student.server_url") from None
    if failed:
        log.warning("learnability: %d of %d server requests failed after retries and stay pending (first: %s)",
                    len(failed), len(todo), errors[0])
    return values, sorted(failed), errors


async def _detect(client: httpx.AsyncClient, url: str, model: str, e: Encoded, policy: RetryPolicy,
                  counters: Counters, api_key: str | None, values: list[float | None], i: int) -> str:
    """Score item i with the first protocol the server supports, and return that protocol."""
    for how in ("prompt_logprobs", "echo"):
        try:
            values[i] = await _score(client, url, model, e, how, policy, counters, api_key)
            return how
        except _NotSupported:
            continue
        except FatalHTTPError as exc:
            if exc.status in (401, 403, 404):
                raise _fatal(exc, api_key) from None
            continue
    raise ConfigError("the server returns neither vLLM prompt_logprobs nor echoed logprobs for token-id "
                      "prompts on /v1/completions", key="student.server_url")


def _fatal(exc: FatalHTTPError, api_key: str | None) -> ConfigError:
    if exc.status in (401, 403):
        hint = "the server rejected the API key" if api_key else "the server requires an API key"
        return ConfigError(f"{hint} ({exc})", key="student.server_url")
    return ConfigError(f"the server refused the request ({exc})", key="student.server_url")


def server_learnability(base_url: str, model: str, tokenizer: Any, prompts: list[str], responses: list[str], *,
                        chat_template: str | None = None, few_shot: bool | None = None,
                        api_key: str | None = None, max_concurrency: int = 8, max_length: int = 1024,
                        mode: str = "auto", timeout_s: float = 120.0, max_retries: int = 5,
                        backoff_base_s: float = 1.0, retry_after_max_s: float = 300.0) -> LearnabilityResult:
    """Eq. 1 per (prompt, response) from the server at `base_url` (ending in /v1) serving the student `model`.

    A value is None for an empty response; a request that still failed after its retries is listed in
    `failed` (its value is None too), so the caller keeps it pending for the next run.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    encoded = Encoder(tokenizer, chat_template, few_shot, max_length)(prompts, responses)
    policy = RetryPolicy(max_retries, backoff_base_s, retry_after_max_s=retry_after_max_s)
    values, failed, errors = asyncio.run(_score_all(base_url, model, encoded, api_key=api_key,
                                                    max_concurrency=max_concurrency, mode=mode, policy=policy,
                                                    timeout_s=timeout_s))
    lost = set(failed)
    present = [e for i, e in enumerate(encoded) if e is not None and i not in lost]
    return LearnabilityResult(values=values, truncated=sum(e.truncated for e in present),
                              tokens=sum(len(e.ids) for e in present), failed=failed,
                              errors=errors[:1])


def student_server_learnability(student: Any, tokenizer: Any, prompts: list[str],
                                responses: list[str]) -> LearnabilityResult:
    """server_learnability with every setting taken from a StudentConfig (key from `api_key_env`)."""
    api_key = read_api_key(student.api_key_env, key="student.api_key_env")
    return server_learnability(student.server_url, student.model, tokenizer, prompts, responses,
                               chat_template=student.chat_template, few_shot=student.few_shot, api_key=api_key,
                               max_concurrency=student.max_concurrency, max_length=student.max_length,
                               timeout_s=student.timeout_s, max_retries=student.max_retries,
                               retry_after_max_s=student.retry_after_max_s)
