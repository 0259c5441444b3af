"""Issue 17: what real servers do differently from persyn's own fake, reproduced by the fake's flavors (see
tests/openai_server.py), and persyn's answer to each. The real vLLM server is tests/test_real_vllm.py."""

from __future__ import annotations

import json

import pytest
from openai_server import serve

from persyn.backends.base import GenParams, GenRequest
from persyn.config import StudentConfig, TeacherConfig, parse_config
from persyn.errors import ConfigError
from persyn.pipeline import run_stages
from persyn.remote.openai_backend import OpenAIBackend
from persyn.scoring.learnability import Encoder, learnability_scores
from persyn.scoring.server_logprobs import server_learnability, student_server_learnability

pytestmark = pytest.mark.usefixtures("fresh_server")

PROMPTS = ["What is 12 times 7?", "Write a short poem about the sea.", "Why is the sky blue?",
           "How many clips did Natalia sell?"]
RESPONSES = ["12 * 7 = 84. #### 84", "The sea is wide and blue and deep.",
             "Light scatters off the air, and blue light scatters the most " * 3, "She sold 72 clips."]
# A template of our own: the tokenizer's ChatML with a system turn in front.
SYSTEM_CHATML = ("{{ '<|im_start|>system\nAnswer in one line.<|im_end|>\n' }}{% for message in messages %}"
                 "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def teacher(server, **kw) -> TeacherConfig:
    kw.setdefault("extra", {"backoff_base_s": 0.01, "backoff_max_s": 0.05})
    kw.setdefault("model", "tiny")
    return TeacherConfig(name="t", backend="openai", base_url=server.base_url, **kw)


def requests(n: int, max_new_tokens: int = 4, **params) -> list[GenRequest]:
    p = GenParams(max_new_tokens=max_new_tokens, **params)
    return [GenRequest(key=f"k{i}", prompt_id=str(i), prompt=PROMPTS[i % len(PROMPTS)], params=p) for i in range(n)]


def generate(backend: OpenAIBackend, n: int = 1, **params) -> list:
    return sorted(backend.generate(requests(n, **params)), key=lambda r: r.key)


def student(server, tiny_lm_dir, **kw) -> StudentConfig:
    return StudentConfig(model=str(tiny_lm_dir), server_url=server.base_url, max_retries=kw.pop("max_retries", 2),
                         **kw)


def learn(server, tokenizer, **kw):
    kw.setdefault("backoff_base_s", 0.01)
    return server_learnability(server.base_url, kw.pop("model", "tiny"), tokenizer, PROMPTS, RESPONSES, **kw)


# ---------------------------------------------------------------------------------------------- requests

def test_tgi_takes_the_default_request_since_top_p_1_is_not_sent(server):
    server.state.flavor = "tgi"
    [result] = generate(OpenAIBackend(teacher(server)))
    assert result.error is None and "top_p" not in server.state.bodies[0]
    [nucleus] = generate(OpenAIBackend(teacher(server)), temperature=0.7, top_p=0.9, seed=5)
    assert nucleus.error is None
    assert (server.state.bodies[1]["top_p"], server.state.bodies[1]["seed"]) == (0.9, 5)


def test_a_refusal_every_request_meets_stops_the_run_quoting_the_server(server):
    """TGI refuses top_p=1 (forced here through extra.body): three identical 422s and no answer end it."""
    server.state.flavor = "tgi"
    backend = OpenAIBackend(teacher(server, max_concurrency=1, extra={"body": {"top_p": 1.0}}))
    with pytest.raises(ConfigError) as err:
        list(backend.generate(requests(8)))
    message = str(err.value)
    assert message.startswith("teachers.t: ") and "\n" not in message
    assert "HTTP 422" in message and "`top_p` must be > 0.0 and < 1.0" in message
    assert server.state.total == 3


@pytest.mark.parametrize("model", ["o3-mini", "o4-mini", "gpt-5", "openai/o1"])
def test_reasoning_models_get_max_completion_tokens(server, model):
    server.state.flavor = "openai"
    [result] = generate(OpenAIBackend(teacher(server, model=model)))
    body = server.state.bodies[0]
    assert result.error is None
    assert body["max_completion_tokens"] == 4 and "max_tokens" not in body


def test_max_tokens_param_overrides_the_guess(server):
    server.state.flavor = "openai"
    [refused] = generate(OpenAIBackend(teacher(server, model="o3-mini", max_tokens_param="max_tokens")))
    assert refused.text is None and "max_completion_tokens" in refused.error
    [other] = generate(OpenAIBackend(teacher(server, model="gpt-4o")))
    assert other.error is None and server.state.bodies[-1]["max_tokens"] == 4
    [forced] = generate(OpenAIBackend(teacher(server, model="gpt-4o", max_tokens_param="max_completion_tokens")))
    assert forced.error is None and "max_tokens" not in server.state.bodies[-1]


# ------------------------------------------------------------------------------------ chat templates

def write_template(tmp_path, text: str = SYSTEM_CHATML):
    path = tmp_path / "system.jinja"
    path.write_text(text, encoding="utf-8")
    return path


def expected_prompt(server, template: str, prompt: str) -> tuple[str, int]:
    tok = server.model.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True,
                                   chat_template=template)
    return text, len(server.model.encode(text))


@pytest.mark.parametrize("flavor", ["fake", "vllm", "llamacpp", "sglang"])
def test_a_template_file_is_rendered_here_and_applies_on_every_server(server, tmp_path, flavor):
    """vLLM refuses a request template without --trust-request-chat-template, the others ignore it; the path
    itself once went out as the template. persyn renders the file and sends the text to /completions."""
    server.state.flavor = flavor
    backend = OpenAIBackend(teacher(server, chat_template=str(write_template(tmp_path)), empty_response="keep"))
    [result] = generate(backend)
    text, n_tokens = expected_prompt(server, SYSTEM_CHATML, PROMPTS[0])
    assert result.error is None and result.prompt_tokens == n_tokens
    assert server.state.counts == {"/v1/completions": 1}
    body = server.state.bodies[0]
    assert body["prompt"] == text and "chat_template" not in body and body["max_tokens"] == 4
    assert n_tokens != expected_prompt(server, None, PROMPTS[0])[1]  # the tokenizer's own template differs


def test_a_template_is_keyed_by_its_content_not_its_path(server, tmp_path):
    first = OpenAIBackend(teacher(server, chat_template=str(write_template(tmp_path)))).fingerprint()
    (tmp_path / "copy").mkdir()
    moved = write_template(tmp_path / "copy")
    assert OpenAIBackend(teacher(server, chat_template=str(moved))).fingerprint() == first
    moved.write_text(SYSTEM_CHATML.replace("one line", "two lines"), encoding="utf-8")
    assert OpenAIBackend(teacher(server, chat_template=str(moved))).fingerprint() != first
    inline = OpenAIBackend(teacher(server, chat_template=SYSTEM_CHATML)).fingerprint()
    assert inline == first  # the same template given inline is the same teacher


def test_a_template_that_does_not_render_is_a_one_line_config_error(server, tmp_path):
    bad = write_template(tmp_path, "{{ raise_exception('no system turns') }}")
    with pytest.raises(ConfigError, match=r"teachers\.t\.chat_template: the chat template does not render"):
        generate(OpenAIBackend(teacher(server, chat_template=str(bad))))
    assert server.state.total == 0


# ----------------------------------------------------------------------------- content, finish_reason

def test_empty_content_at_the_length_limit_is_a_failure_sent_once(server):
    server.state.inject("empty_length", 1)
    [result] = generate(OpenAIBackend(teacher(server)))
    assert result.text is None and "empty response (finish_reason length)" in result.error
    assert "max_new_tokens ran out" in result.error and result.extra["finish_reason"] == "length"
    assert server.state.total == 1


def test_empty_content_is_kept_when_the_config_says_so(server):
    server.state.inject("empty_length", 1)
    [result] = generate(OpenAIBackend(teacher(server, empty_response="keep")))
    assert result.error is None and result.text == "" and result.extra["finish_reason"] == "length"


def test_a_refusal_is_not_regenerated(server):
    server.state.inject("refusal", 1)
    backend = OpenAIBackend(teacher(server, max_retries=5))
    [result] = generate(backend)
    assert result.text is None and "the model refused: I'm sorry" in result.error
    assert server.state.total == 1 and backend.counters.retries == 0
    server.state.inject("refusal", 1)
    [kept] = generate(OpenAIBackend(teacher(server, empty_response="keep")))
    assert kept.text == "I'm sorry, I can't help with that." and kept.extra["refusal"] is True


def test_a_truncated_reply_is_kept_or_failed_as_configured(server):
    [kept] = generate(OpenAIBackend(teacher(server)))  # the tiny model never stops within 4 tokens
    assert kept.error is None and kept.extra["finish_reason"] == "length"
    [failed] = generate(OpenAIBackend(teacher(server, truncated_response="fail")))
    assert failed.text is None and "finish_reason length" in failed.error


# ------------------------------------------------------------------------------------------------ cost

def test_input_and_output_tokens_have_their_own_prices(server):
    [result] = generate(OpenAIBackend(teacher(server, cost_per_1k_tokens=9.0, cost_per_1k_input_tokens=1.0,
                                              cost_per_1k_output_tokens=4.0)))
    assert result.prompt_tokens > 0 and result.completion_tokens == 4
    assert result.cost == pytest.approx((result.prompt_tokens * 1.0 + 4 * 4.0) / 1000)
    [single] = generate(OpenAIBackend(teacher(server, cost_per_1k_tokens=2.0)))
    assert single.cost == pytest.approx((single.prompt_tokens + 4) * 2.0 / 1000)


# --------------------------------------------------------------------------------------------- retries

def test_retry_after_ms_is_honoured(server):
    server.state.inject("429", 1, headers={"retry-after-ms": "2000"})
    [result] = generate(OpenAIBackend(teacher(server)))  # backoff alone would wait at most 10 ms
    assert result.error is None and server.state.total == 2
    assert server.state.arrivals[1] - server.state.arrivals[0] >= 2.0


def test_x_should_retry_false_is_not_retried(server):
    server.state.inject("500", 1, headers={"x-should-retry": "false"})
    [result] = generate(OpenAIBackend(teacher(server, max_retries=5)))
    assert result.text is None and "HTTP 500" in result.error and server.state.total == 1


def test_x_should_retry_true_retries_any_status(server):
    server.state.inject("429_quota", 1, headers={"x-should-retry": "true"})
    [result] = generate(OpenAIBackend(teacher(server)))
    assert result.error is None and server.state.total == 2


def test_a_spent_quota_is_not_retried_and_stops_the_run(server):
    server.state.inject("429_quota", 3)
    backend = OpenAIBackend(teacher(server, max_concurrency=1, max_retries=5))
    with pytest.raises(ConfigError, match="insufficient_quota|exceeded your current quota"):
        list(backend.generate(requests(6)))
    assert server.state.total == 3


def test_tgi_424_is_retried(server):
    server.state.inject("424", 1)
    [result] = generate(OpenAIBackend(teacher(server)))
    assert result.error is None and server.state.total == 2


# ---------------------------------------------------------------------------------- server learnability

def test_llama_server_refuses_echo_one_line_error_no_endless_retries(server, tiny_local):
    server.state.flavor = "llamacpp"
    with pytest.raises(ConfigError) as err:
        learn(server, tiny_local[1], max_retries=5)
    message = str(err.value)
    assert message.startswith("student.server_url: server learnability needs prompt log-probs")
    assert "Only no echo is supported" in message and "\n" not in message
    assert server.state.total == 3  # prompt_logprobs ignored, then echo refused twice (one retry)


def test_tgi_takes_no_token_ids_one_line_error(server, tiny_local):
    server.state.flavor = "tgi"
    with pytest.raises(ConfigError, match=r"^student\.server_url: .*HTTP 422.*Failed to deserialize"):
        learn(server, tiny_local[1])
    assert server.state.total == 2


def test_sglang_echoes_prompt_logprobs_for_truthy_logprobs(server, tiny_local):
    server.state.flavor = "sglang"
    expected = learnability_scores(*tiny_local, PROMPTS, RESPONSES).values
    got = learn(server, tiny_local[1]).values
    assert got == pytest.approx(expected, abs=1e-4)
    assert all(b.get("logprobs") == 1 for b in server.state.bodies if b.get("echo"))


def test_the_served_model_name_is_the_students_server_model(server, tiny_local, tiny_lm_dir):
    server.state.flavor = "vllm"
    server.state.served_models = ["my-student"]
    s = student(server, tiny_lm_dir)
    with pytest.raises(ConfigError) as err:
        student_server_learnability(s, tiny_local[1], PROMPTS, RESPONSES)
    assert str(err.value).startswith("student.server_model: the server does not serve")
    assert "Valid aliases: my-student" in str(err.value)
    named = s.model_copy(update={"server_model": "my-student"})
    result = student_server_learnability(named, tiny_local[1], PROMPTS, RESPONSES)
    assert result.failed == [] and all(v is not None for v in result.values)
    assert {b["model"] for b in server.state.bodies} == {"my-student"}


def test_server_model_is_part_of_the_learnability_key(tiny_lm_dir, tmp_path):
    from persyn.keys import Keys

    def scorer(**s) -> str:
        (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "x"}) + "\n")
        cfg = parse_config({"run_dir": str(tmp_path), "prompts": {"path": str(tmp_path / "p.jsonl")},
                            "teachers": [{"name": n, "backend": "recorded", "model": "x"} for n in "ab"],
                            "student": {"model": str(tiny_lm_dir), "server_url": "http://h/v1", **s}})
        return Keys(cfg).learnability_scorer

    assert scorer() == scorer(server_check=False)  # the check shapes no score
    assert scorer(server_model="adapter-a") != scorer(server_model="adapter-b") != scorer()


def test_a_sequence_over_max_model_len_fails_alone(server, tiny_local):
    server.state.flavor = "vllm"
    server.state.max_model_len = 60
    lengths = [len(e.ids) for e in Encoder(tiny_local[1], None, None, 1024)(PROMPTS, RESPONSES)]
    assert lengths[2] + 1 > 60 and all(n + 1 <= 60 for i, n in enumerate(lengths) if i != 2)
    expected = learnability_scores(*tiny_local, PROMPTS, RESPONSES).values
    result = learn(server, tiny_local[1], max_concurrency=2)
    assert result.failed == [2] and len(result.errors) == 1
    assert "maximum context length is 60" in result.errors[0] and "lower student.max_length" in result.errors[0]
    assert result.values[2] is None
    assert [result.values[i] for i in (0, 1, 3)] == pytest.approx([expected[i] for i in (0, 1, 3)], abs=1e-4)


def test_a_minus_inf_logprob_sent_as_minus_9999_fails_that_pair_only(server, tiny_local):
    tokenizer = tiny_local[1]
    encoded = Encoder(tokenizer, None, None, 1024)(PROMPTS, RESPONSES)
    others = {t for e in encoded[:3] for t in e.ids}
    masked = next(t for t in encoded[3].ids[encoded[3].start:] if t not in others)  # in the fourth pair only
    server.state.masked_token = masked
    for mode in ("prompt_logprobs", "echo"):
        result = learn(server, tokenizer, mode=mode)
        assert result.failed == [3] and "log-prob of -inf (sent as -9999)" in result.errors[0]
        assert all(v is not None and v > -50 for v in result.values[:3])


def test_prompt_logprobs_do_not_depend_on_what_the_server_cached(server, tiny_local):
    """An older vLLM read a prefix cached by an earlier request when computing prompt_logprobs; each request's
    own cache_salt keeps it from reading any."""
    server.state.prefix_cache = True
    first = learn(server, tiny_local[1], mode="prompt_logprobs", max_concurrency=1).values
    again = learn(server, tiny_local[1], mode="prompt_logprobs", max_concurrency=1).values
    assert again == first
    salts = [b["cache_salt"] for b in server.state.bodies]
    assert len(set(salts)) == len(salts) == 8


def test_the_fake_reproduces_order_dependence_without_a_salt(server, tiny_local):
    """The flavor's own check: the same request twice without cache_salt reads the cache and differs."""
    import httpx

    server.state.prefix_cache = True
    ids = tiny_local[1](PROMPTS[2] + RESPONSES[2])["input_ids"]
    body = {"model": "tiny", "prompt": ids, "max_tokens": 1, "prompt_logprobs": 0}
    runs = [httpx.post(server.base_url + "/completions", json=body, timeout=30).json() for _ in range(2)]
    values = [[e[str(t)]["logprob"] for e, t in zip(r["choices"][0]["prompt_logprobs"][1:], ids[1:], strict=True)]
              for r in runs]
    assert values[0] != values[1]


# ------------------------------------------------------------------------------------------ weights check

def write_run(tmp_path, tiny_lm_dir, server_url: str, n: int = 4, **student_kw) -> dict:
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"instruction": p}) + "\n" for p in PROMPTS[:n]))
    for name, shift in (("a", 0), ("b", 1)):
        rows = [{"instruction": p, "output": RESPONSES[(i + shift) % 4]} for i, p in enumerate(PROMPTS[:n])]
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"run_dir": str(tmp_path / "run"), "prompts": {"path": str(tmp_path / "p.jsonl"), "field": "instruction"},
            "teachers": [{"name": n, "backend": "recorded", "model": str(tmp_path / f"{n}.jsonl")} for n in "ab"],
            "student": {"model": str(tiny_lm_dir), "server_url": server_url, **student_kw},
            "reward": {"alpha": 1.0}, "probe": {"size": n}}


def test_a_server_with_other_weights_is_caught_before_any_score(tiny_lm_dir, tiny_lm_dir_b, tmp_path):
    with serve(tiny_lm_dir_b) as other:  # same tokenizer, other weights
        cfg = parse_config(write_run(tmp_path, tiny_lm_dir, other.base_url))
        with pytest.raises(ConfigError) as err:
            run_stages(cfg, ["probe", "score"])
        message = str(err.value)
        assert message.startswith("student.server_url: the server's log-probs of 3 known pairs differ")
        assert "server_check: false" in message and "\n" not in message
        assert other.state.counts["/v1/completions"] == 4  # the probe and three known pairs, no score
        unchecked = parse_config(write_run(tmp_path, tiny_lm_dir, other.base_url, server_check=False))
        run_stages(unchecked, ["probe", "score"])  # the user's call: scored as the server says


def test_the_check_runs_once_per_learnability_key(server, tiny_lm_dir, tmp_path):
    run_stages(parse_config(write_run(tmp_path, tiny_lm_dir, server.base_url, n=3)), ["probe", "score"])
    assert server.state.total == 4 + 1 + 6  # the check, then a probe and six pairs
    sent = server.state.total
    # A fourth prompt: the recorded files change, so every pair is new, but the learnability key is the same.
    run_stages(parse_config(write_run(tmp_path, tiny_lm_dir, server.base_url, n=4)), ["probe", "score"])
    assert server.state.total - sent == 1 + 8
    sent = server.state.total
    run_stages(parse_config(write_run(tmp_path, tiny_lm_dir, server.base_url, n=4, max_length=512)),
               ["probe", "score"])  # another key: checked again
    assert server.state.total - sent == 4 + 1 + 8
