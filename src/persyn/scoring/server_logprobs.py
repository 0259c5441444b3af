"""Learnability (Eq. 1) from a server that returns prompt log-probs, instead of running the student locally.

The token ids are built exactly as `persyn.scoring.learnability` builds them (SFT's tokens and completion mask,
truncation) and sent as a token-id prompt, so the boundary between conditioning and scored tokens is exact.
Requests go through `persyn.remote.http` (retries, backoff, redaction) with the student's key, concurrency, timeout
and retry settings. Two protocols on /v1/completions, each with `max_tokens=1`:

- "prompt_logprobs" (vLLM): `prompt_logprobs=0`; each prompt position carries a dict keyed by token id. A random
  `cache_salt` keeps the request from reading a prefix another request cached (vLLM releases before 0.10
  returned cached positions without log-probs; 0.32 skips the cache for such requests by itself).
- "echo" (SGLang, OpenAI's legacy completions): `echo=true, logprobs=1`; the echoed `token_logprobs` cover the
  prompt (first entry null) and the generated token. SGLang computes prompt log-probs only for a truthy
  `logprobs`, so 0 would not do.

llama-server (refuses `echo`) and TGI (takes no token ids on /v1/completions) return no prompt log-probs:
mode="auto" tries both protocols on a short probe and stops with one line naming `student.server_url`.

Every item stands alone: one that fails (a pair longer than the server's max_model_len, a token the server gives
log-prob -inf, which vLLM sends clamped to -9999) is reported in `LearnabilityResult.failed` with its reason and
the others keep their scores. 401/403/404 stop the run: every request would meet them.

`check_student_server` guards against a server running other weights: it scores a few known pairs locally and
on the server and compares them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import uuid
from dataclasses import dataclass
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
CLAMPED = -9999.0  # vLLM's JSON stand-in for a log-prob of -inf
PROBE_TOKENS = 16  # the protocol probe: the first tokens of the first pair, short enough for any server
UNSUPPORTED = ("server learnability needs prompt log-probs for token-id prompts, which vLLM (prompt_logprobs) "
               "and SGLang (echo with logprobs) return and llama-server and TGI do not; unset it to score with the "
               "local student (docs/servers.md)")
# Known pairs scored locally and on the server by check_student_server.
CHECK_PAIRS = [
    ("What is 12 times 7?", "12 times 7 is 84."),
    ("Write one sentence about the sea.", "The sea stretches to the horizon, grey and restless under the wind."),
    ("Name a primary colour.", "Blue is a primary colour."),
]


class _NotSupported(Exception):
    """The server answered but without the log-probs this protocol needs."""


def _logprob(value: Any, ids: list[int], pos: int) -> float:
    v = float(value)
    if v <= CLAMPED:
        raise ValueError(f"the server gives token {ids[pos]} at position {pos} a log-prob of -inf (sent as {v:g}), "
                         "so this response's learnability is undefined there: the server masks the token (a logits "
                         "processor, or another vocabulary)")
    return v


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
        out.append(_logprob(hit["logprob"] if isinstance(hit, dict) else hit, ids, pos))
    return out


def _echo_logprobs(choice: dict[str, Any], ids: list[int]) -> list[float]:
    lp = choice.get("logprobs")
    values = lp.get("token_logprobs") if isinstance(lp, dict) else None
    if not isinstance(values, list):
        raise _NotSupported("no echoed token_logprobs in the response")
    if len(values) < len(ids) or any(v is None for v in values[1:len(ids)]):
        raise _NotSupported(f"{len(values)} echoed log-probs for {len(ids)} prompt tokens: no prompt log-probs")
    if len(values) > len(ids) + 1:
        raise ValueError(f"server echoed {len(values)} log-probs for {len(ids)} prompt tokens")
    return [math.nan] + [_logprob(values[pos], ids, pos) for pos in range(1, len(ids))]


def _body(model: str, ids: list[int], mode: str) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "prompt": ids, "max_tokens": 1, "temperature": 0.0}
    if mode == "prompt_logprobs":
        body.update(prompt_logprobs=0, cache_salt=uuid.uuid4().hex)
    else:
        body.update(echo=True, logprobs=1)
    return body


@dataclass
class _Server:
    client: httpx.AsyncClient
    url: str  # .../v1/completions
    model: str
    policy: RetryPolicy
    secret: str | None
    counters: Counters = dataclasses.field(default_factory=Counters)

    async def logprobs(self, ids: list[int], mode: str, policy: RetryPolicy | None = None) -> list[float]:
        data = await post_json(self.client, self.url, _body(self.model, ids, mode), policy=policy or self.policy,
                               counters=self.counters, secret=self.secret, validate=lambda d: d["choices"][0],
                               timeout_s=self.client.timeout.read)
        choice = data["choices"][0]
        return _prompt_logprobs(choice, ids) if mode == "prompt_logprobs" else _echo_logprobs(choice, ids)

    async def score(self, e: Encoded, mode: str) -> float:
        scored = (await self.logprobs(e.ids, mode))[e.start:]
        return math.fsum(scored) / len(scored)

    def fatal(self, exc: FatalHTTPError) -> ConfigError:
        if exc.status in (401, 403):
            hint = "the server rejected the API key" if self.secret else "the server requires an API key"
            return ConfigError(f"{hint} ({exc})", key="student.server_url")
        if exc.status == 404:
            return ConfigError(f"the server does not serve {self.model!r} ({exc}); set student.server_model to the "
                               "name it serves the student under", key="student.server_model")
        return ConfigError(f"the server refused the request ({exc})", key="student.server_url")


def _explain(exc: Exception) -> str:
    text = str(exc)
    if isinstance(exc, FatalHTTPError) and exc.status == 400 and ("context length" in text or "max_model_len" in text):
        return f"{text}; the pair is longer than the server's max_model_len: lower student.max_length below it"
    return text


async def _detect(server: _Server, ids: list[int]) -> str:
    """The protocol the server supports, tried on a short probe. RetryableError when the server never answered;
    ConfigError naming student.server_url when it answered both without prompt log-probs."""
    probe = ids[:PROBE_TOKENS]
    answers: list[str] = []
    for how in ("prompt_logprobs", "echo"):
        # Once the server has answered, an error is its answer: llama-server refuses echo with a 500.
        policy = dataclasses.replace(server.policy, max_retries=min(1, server.policy.max_retries)) if answers \
            else None
        try:
            await server.logprobs(probe, how, policy)
            return how
        except FatalHTTPError as exc:
            if exc.status in (401, 403, 404):
                raise server.fatal(exc) from None
            answers.append(f"{how}: {exc}")
        except (_NotSupported, ValueError) as exc:
            answers.append(f"{how}: {exc}")
        except RetryableError as exc:
            if not answers:
                raise
            answers.append(f"{how}: {exc}")
    raise ConfigError(f"{UNSUPPORTED}; this server answered {' | '.join(answers)}", key="student.server_url")


async def _score_all(base_url: str, model: str, encoded: list[Encoded | None], *, api_key: str | None,
                     max_concurrency: int, mode: str, policy: RetryPolicy,
                     timeout_s: float) -> tuple[list[float | None], list[int], list[str]]:
    """(values, indices that failed, their errors); a failed index is not a score."""
    values: list[float | None] = [None] * len(encoded)
    todo = [i for i, e in enumerate(encoded) if e is not None]
    failed: dict[int, str] = {}
    async with async_client(api_key=api_key, max_concurrency=max_concurrency, timeout_s=timeout_s) as client:
        server = _Server(client, base_url.rstrip("/") + "/completions", model, policy, api_key)
        if mode == "auto" and todo:
            try:
                mode = await _detect(server, encoded[todo[0]].ids)
            except RetryableError as exc:  # the server did not answer even once: all of it stays pending
                log.warning("learnability: the server did not answer (%s); %d scores stay pending", exc, len(todo))
                return values, todo, [f"the server did not answer: {exc}"]
        sem = asyncio.Semaphore(max_concurrency)

        async def one(i: int) -> None:
            async with sem:
                try:
                    values[i] = await server.score(encoded[i], mode)
                except FatalHTTPError as exc:
                    if exc.status in (401, 403, 404):
                        raise server.fatal(exc) from None
                    failed[i] = _explain(exc)
                except (RetryableError, _NotSupported, ValueError) as exc:
                    failed[i] = str(exc)

        await asyncio.gather(*(one(i) for i in todo))
    if failed:
        first = failed[min(failed)]
        log.warning("learnability: %d of %d server requests failed and stay pending (first: %s)",
                    len(failed), len(todo), first)
    order = sorted(failed)
    return values, order, [failed[i] for i in order]


def server_learnability(base_url: str, model: str, tokenizer: Any, prompts: list[str], responses: list[str], *,
                        chat_template: str | None = None, few_shot: bool | None = None,
                        api_key: str | None = None, max_concurrency: int = 8, max_length: int = 1024,
                        mode: str = "auto", timeout_s: float = 120.0, max_retries: int = 5,
                        backoff_base_s: float = 1.0, retry_after_max_s: float = 300.0) -> LearnabilityResult:
    """Eq. 1 per (prompt, response) from the server at `base_url` (ending in /v1) serving the student as `model`.

    A value is None for an empty response; a request that failed is listed in `failed` (its value is None too)
    with its reason in `errors`, so the caller keeps it pending for the next run.
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
                              tokens=sum(len(e.ids) for e in present), failed=failed, errors=errors)


def student_server_learnability(student: Any, tokenizer: Any, prompts: list[str],
                                responses: list[str]) -> LearnabilityResult:
    """server_learnability with every setting taken from a StudentConfig (key from `api_key_env`)."""
    api_key = read_api_key(student.api_key_env, key="student.api_key_env")
    return server_learnability(student.server_url, student.server_model or student.model, tokenizer, prompts,
                               responses, chat_template=student.chat_template, few_shot=student.few_shot,
                               api_key=api_key, max_concurrency=student.max_concurrency,
                               max_length=student.max_length, timeout_s=student.timeout_s,
                               max_retries=student.max_retries, retry_after_max_s=student.retry_after_max_s)


async def _server_token_logprobs(student: Any, encoded: list[Encoded]) -> list[list[float]] | None:
    """The server's log-prob of each scored token of each pair; None when it failed to answer."""
    api_key = read_api_key(student.api_key_env, key="student.api_key_env")
    policy = RetryPolicy(student.max_retries, retry_after_max_s=student.retry_after_max_s)
    async with async_client(api_key=api_key, max_concurrency=1, timeout_s=student.timeout_s) as client:
        server = _Server(client, student.server_url.rstrip("/") + "/completions",
                         student.server_model or student.model, policy, api_key)
        try:
            mode = await _detect(server, encoded[0].ids)
            return [(await server.logprobs(e.ids, mode))[e.start:] for e in encoded]
        except FatalHTTPError as exc:
            if exc.status in (401, 403, 404):
                raise server.fatal(exc) from None
            return None
        except (RetryableError, _NotSupported, ValueError):
            return None


def check_student_server(student: Any, model: Any, tokenizer: Any) -> float | None:
    """Mean |local - server| log-prob (nats) over the scored tokens of CHECK_PAIRS; ConfigError when it exceeds
    student.server_check_tolerance: the server runs other weights (or another tokenizer) than `student.model`.
    Token by token, not pair means: two models can agree on a mean and still differ at every token. None when
    the server failed to answer (the scoring that follows meets and reports the same failure)."""
    import torch

    encoded = Encoder(tokenizer, student.chat_template, student.few_shot, student.max_length)(
        [p for p, _ in CHECK_PAIRS], [r for _, r in CHECK_PAIRS])
    pairs = [e for e in encoded if e is not None]
    remote = asyncio.run(_server_token_logprobs(student, pairs))
    if remote is None:
        return None
    diffs: list[float] = []
    device = next(model.parameters()).device
    for e, theirs in zip(pairs, remote, strict=True):
        with torch.no_grad():
            logits = model(torch.tensor([e.ids], device=device)).logits[0, :-1].float()
        ours = torch.log_softmax(logits, -1)[torch.arange(e.start - 1, len(e.ids) - 1), e.ids[e.start:]].tolist()
        diffs += [abs(a - b) for a, b in zip(ours, theirs, strict=True)]
    diff = math.fsum(diffs) / len(diffs)
    if diff > student.server_check_tolerance:
        served = student.server_model or student.model
        raise ConfigError(
            f"the server's log-probs of {len(pairs)} known pairs differ from the local student's by {diff:.3f} "
            f"nats/token (server_check_tolerance {student.server_check_tolerance:g}): it does not serve "
            f"{student.model}'s weights as {served!r}; point it at the student, or set student.server_check: false",
            key="student.server_url")
    return diff
