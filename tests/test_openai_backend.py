"""The openai backend against a real OpenAI-compatible HTTP server serving a tiny real model."""

from __future__ import annotations

import email.utils
import time

import pytest
import torch

from persyn.backends.base import GenParams, GenRequest, make_backend
from persyn.config import TeacherConfig
from persyn.errors import ConfigError
from persyn.remote.http import parse_retry_after
from persyn.remote.openai_backend import OpenAIBackend

pytestmark = pytest.mark.usefixtures("fresh_server")

PROMPTS = ["What is 12 times 7?", "Write a short poem about the sea.", "Why is the sky blue?",
           "How many clips did Natalia sell?", "The quick brown fox", "Explain light."]


def teacher(server, **kw) -> TeacherConfig:
    kw.setdefault("extra", {"backoff_base_s": 0.01, "backoff_max_s": 0.05})
    return TeacherConfig(name="t", backend="openai", model="tiny", base_url=server.base_url, **kw)


def requests(n: int, max_new_tokens: int = 4, **params) -> list[GenRequest]:
    p = GenParams(max_new_tokens=max_new_tokens, **params)
    return [GenRequest(key=f"k{i}", prompt_id=str(i), prompt=PROMPTS[i % len(PROMPTS)], params=p) for i in range(n)]


def local_greedy(server, prompt: str, max_new_tokens: int) -> tuple[int, list[int]]:
    lm = server.model
    text = lm.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                            add_generation_prompt=True)
    ids = lm.encode(text)
    with torch.no_grad():
        out = lm.model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=lm.tokenizer.pad_token_id)
    return len(ids), out[0, len(ids):].tolist()


def test_results_match_local_generation_with_usage_and_cost(server):
    backend = OpenAIBackend(teacher(server, max_concurrency=3, cost_per_1k_tokens=2.0))
    reqs = requests(6, temperature=0.0, top_p=0.9, seed=7)
    results = {r.key: r for r in backend.generate(reqs)}
    assert sorted(results) == sorted(r.key for r in reqs)
    for req in reqs:
        res = results[req.key]
        n_prompt, new = local_greedy(server, req.prompt, 4)
        assert res.error is None
        assert res.text == server.model.tokenizer.decode(new, skip_special_tokens=True)
        assert (res.prompt_tokens, res.completion_tokens) == (n_prompt, len(new))
        assert res.cost == pytest.approx((n_prompt + len(new)) / 1000 * 2.0)
        assert res.seconds > 0
    assert server.state.counts["/v1/chat/completions"] == 6
    assert (backend.counters.requests_sent, backend.counters.retries, backend.counters.succeeded) == (6, 0, 6)
    body = server.state.bodies[0]
    assert (body["max_tokens"], body["temperature"], body["top_p"]) == (4, 0.0, 0.9)
    assert "seed" not in body  # greedy: a seed changes nothing, so it is not sent
    assert body["model"] == "tiny"


def test_sampling_seed_is_passed_through(server):
    backend = OpenAIBackend(teacher(server, max_concurrency=1))
    texts = [next(backend.generate(requests(1, 8, temperature=1.0, seed=s))).text for s in (1, 1, 2, 3)]
    assert texts[0] == texts[1]
    assert len(set(texts)) > 1


def test_results_stream_as_they_complete(server):
    server.state.delay_s = 0.1
    backend = OpenAIBackend(teacher(server, max_concurrency=1))
    stream = backend.generate(requests(5))
    first = next(stream)
    assert first.text is not None
    assert server.state.total <= 2  # the first result arrived before most requests were even sent
    assert len(list(stream)) == 4
    assert server.state.total == 5


def test_closing_the_stream_early_stops_sending(server):
    server.state.delay_s = 0.1
    backend = OpenAIBackend(teacher(server, max_concurrency=1))
    stream = backend.generate(requests(6))
    next(stream)
    stream.close()
    time.sleep(0.3)
    assert server.state.total <= 2


def test_concurrency_limit_is_the_servers_max_in_flight(server):
    server.state.delay_s = 0.15
    backend = OpenAIBackend(teacher(server, max_concurrency=3))
    assert len(list(backend.generate(requests(12)))) == 12
    assert server.state.max_in_flight == 3
    assert server.state.total == 12


def test_requests_per_minute_spaces_requests(server):
    # 120/min = 2/s with a one-second bucket: two go at once, then one every 0.5 s.
    backend = OpenAIBackend(teacher(server, max_concurrency=8, requests_per_minute=120))
    start = time.monotonic()
    assert len(list(backend.generate(requests(6)))) == 6
    arrivals = sorted(server.state.arrivals)
    assert arrivals[1] - start < 0.4
    for k in range(2, 6):
        assert arrivals[k] - arrivals[0] >= (k - 1) * 0.5 - 0.05


def test_retries_pay_the_requests_per_minute_limit(server):
    server.state.inject("500", 2)
    backend = OpenAIBackend(teacher(server, max_concurrency=1, requests_per_minute=120))
    [result] = list(backend.generate(requests(1)))
    arrivals = server.state.arrivals
    assert result.text is not None and len(arrivals) == 3
    assert arrivals[2] - arrivals[0] >= 0.45  # the third attempt waited for the bucket


def test_tokens_per_minute_limits_throughput(server):
    backend = OpenAIBackend(teacher(server, max_concurrency=1, tokens_per_minute=3000))  # 50 tokens/s
    results = list(backend.generate(requests(5)))
    arrivals = sorted(server.state.arrivals)
    used_before_last = sum(r.prompt_tokens + r.completion_tokens for r in results[:4])
    assert used_before_last > 80
    assert arrivals[-1] - arrivals[0] >= (used_before_last - 50) / 50 * 0.9


@pytest.mark.parametrize(("kind", "count", "extra"), [
    ("429", 1, {"retry_after": "1"}),
    ("500", 2, {}),
    ("slow", 1, {"seconds": 2.0}),
    ("garbage", 2, {}),
    ("no_choices", 2, {}),
])
def test_each_fault_is_retried_then_succeeds(server, kind, count, extra):
    server.state.inject(kind, count, **extra)
    backend = OpenAIBackend(teacher(server, max_concurrency=1, timeout_s=0.7, max_retries=3))
    start = time.monotonic()
    [result] = list(backend.generate(requests(1)))
    assert result.text is not None and result.error is None
    assert server.state.total == count + 1
    assert (backend.counters.requests_sent, backend.counters.retries) == (count + 1, count)
    if kind == "429":
        assert time.monotonic() - start >= 1.0  # Retry-After honoured over the 10 ms backoff


def test_permanent_failure_gives_an_error_result_and_only_it_is_rerun(server):
    server.state.inject("500", 3)  # all attempts of the first request (max_retries=2), none of the second
    backend = OpenAIBackend(teacher(server, max_concurrency=1, max_retries=2))
    results = {r.key: r for r in backend.generate(requests(2))}
    assert results["k0"].text is None and "HTTP 500" in results["k0"].error
    assert "3 attempts" in results["k0"].error
    assert results["k1"].text is not None
    assert server.state.total == 4
    assert (backend.counters.failed, backend.counters.succeeded) == (1, 1)
    [again] = list(backend.generate([r for r in requests(2) if r.key == "k0"]))
    assert again.key == "k0" and again.text is not None
    assert server.state.total == 5


def test_client_error_fails_one_request_without_retry(server):
    backend = OpenAIBackend(teacher(server, max_concurrency=1, extra={"body": {"messages": "not a list"}}))
    [result] = list(backend.generate(requests(1)))
    assert result.text is None and "HTTP 400" in result.error
    assert server.state.total == 1


def test_api_key_is_sent_and_kept_out_of_fingerprint_and_errors(server, monkeypatch):
    server.state.api_key = "sk-right-0123456789"
    monkeypatch.setenv("PERSYN_TEST_KEY", "sk-right-0123456789")
    backend = OpenAIBackend(teacher(server, api_key_env="PERSYN_TEST_KEY", max_retries=0))
    assert "sk-right" not in backend.fingerprint()
    assert "sk-right" not in repr(vars(backend))
    server.state.inject("500", 1)
    results = sorted(backend.generate(requests(2)), key=lambda r: r.key)
    assert results[0].text is None and "sk-right" not in results[0].error
    assert results[1].text is not None
    assert server.state.auth_failures == 0


def test_wrong_key_is_a_clear_error_without_the_key(server, monkeypatch):
    server.state.api_key = "sk-right-0123456789"
    monkeypatch.setenv("PERSYN_TEST_KEY", "sk-wrong-9876543210")
    backend = OpenAIBackend(teacher(server, api_key_env="PERSYN_TEST_KEY", max_concurrency=2))
    with pytest.raises(ConfigError) as err:
        list(backend.generate(requests(4)))
    message = str(err.value)
    assert "rejected the API key from $PERSYN_TEST_KEY" in message and "HTTP 401" in message
    assert "sk-wrong" not in message
    assert server.state.auth_failures <= 2  # stopped at the first refusal, not once per request


def test_missing_key_is_a_clear_error(server, monkeypatch):
    monkeypatch.delenv("PERSYN_ABSENT_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"teachers\.t\.api_key_env: environment variable PERSYN_ABSENT_KEY"):
        OpenAIBackend(teacher(server, api_key_env="PERSYN_ABSENT_KEY"))
    server.state.api_key = "sk-right-0123456789"
    with pytest.raises(ConfigError, match="requires an API key"):
        list(OpenAIBackend(teacher(server)).generate(requests(1)))


def test_bad_config_names_the_key(server):
    with pytest.raises(ConfigError, match=r"teachers\.t\.base_url"):
        OpenAIBackend(TeacherConfig(name="t", backend="openai", model="tiny"))
    with pytest.raises(ConfigError, match=r"teachers\.t\.extra: unknown keys \['retries'\]"):
        OpenAIBackend(teacher(server, extra={"retries": 3}))


def test_registered_and_few_shot_goes_to_completions(server):
    backend = make_backend(teacher(server, few_shot=True))
    assert isinstance(backend, OpenAIBackend)
    [result] = list(backend.generate(requests(1)))
    assert result.text is not None
    assert server.state.counts["/v1/completions"] == 1
    body = server.state.bodies[0]
    assert body["prompt"].endswith(f"Question: {PROMPTS[0]}\nAnswer:") and body["stop"] == ["\n\nQuestion:"]


def test_retry_after_accepts_seconds_and_http_dates():
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= parse_retry_after(date) <= 30
    assert parse_retry_after(email.utils.formatdate(time.time() - 30, usegmt=True)) == 0.0
