"""Learnability from a real HTTP server equals the local transformers computation on the same model."""

from __future__ import annotations

import pytest

from persyn.errors import ConfigError
from persyn.scoring.learnability import learnability_scores, naive_learnability
from persyn.scoring.server_logprobs import server_learnability

pytestmark = pytest.mark.usefixtures("fresh_server")

PROMPTS = ["What is 12 times 7?", "Write a short poem about the sea.", "Why is the sky blue?",
           "How many clips did Natalia sell?", "Say nothing."]
RESPONSES = ["12 * 7 = 84. #### 84", "The sea is wide and blue and deep.",
             "Light scatters off the air, and blue light scatters the most " * 3, "She sold 72 clips.", "  "]


def score(server, tokenizer, **kw):
    kw.setdefault("backoff_base_s", 0.01)
    return server_learnability(server.base_url, "tiny", tokenizer, PROMPTS, RESPONSES, **kw).values


@pytest.mark.parametrize("mode", ["prompt_logprobs", "echo"])
@pytest.mark.parametrize(("few_shot", "max_length"), [(None, 1024), (True, 1024), (None, 40)])
def test_server_equals_local(server, tiny_local, mode, few_shot, max_length):
    model, tokenizer = tiny_local
    result = learnability_scores(model, tokenizer, PROMPTS, RESPONSES, few_shot=few_shot, max_length=max_length)
    expected = result.values
    assert (result.truncated > 0) == (max_length == 40)
    got = score(server, tokenizer, mode=mode, few_shot=few_shot, max_length=max_length, max_concurrency=3)
    assert got[-1] is None and expected[-1] is None  # blank response
    assert got[:-1] == pytest.approx(expected[:-1], abs=1e-4)
    assert len({round(v, 4) for v in expected[:-1]}) == 4  # the responses really score differently
    assert server.state.counts["/v1/completions"] == 4
    assert all(isinstance(b["prompt"], list) for b in server.state.bodies)  # token ids, not text


def test_matches_the_naive_reference(server, tiny_local):
    model, tokenizer = tiny_local
    [got] = server_learnability(server.base_url, "tiny", tokenizer, PROMPTS[:1], RESPONSES[:1]).values
    assert got == pytest.approx(naive_learnability(model, tokenizer, PROMPTS[0], RESPONSES[0]), abs=1e-4)


def test_auto_uses_prompt_logprobs_when_available(server, tiny_local):
    got = score(server, tiny_local[1])
    assert all("prompt_logprobs" in b and "echo" not in b for b in server.state.bodies)
    assert server.state.total == 5 and got[0] is not None  # a short protocol probe, then the four pairs
    assert len(server.state.bodies[0]["prompt"]) == 16


def test_auto_falls_back_to_echo(server, tiny_local):
    server.state.prompt_logprobs = False
    expected = learnability_scores(*tiny_local, PROMPTS, RESPONSES).values
    got = score(server, tiny_local[1])
    assert got[:-1] == pytest.approx(expected[:-1], abs=1e-4)
    assert server.state.total == 6  # prompt_logprobs refused (a 400 is not retried), an echo probe, four pairs
    assert sum(bool(b.get("echo")) for b in server.state.bodies) == 5


def test_transient_faults_are_retried(server, tiny_local):
    server.state.inject("500", 2)
    server.state.inject("garbage", 1)
    expected = learnability_scores(*tiny_local, PROMPTS, RESPONSES).values
    got = score(server, tiny_local[1], mode="echo", max_concurrency=1)
    assert got[:-1] == pytest.approx(expected[:-1], abs=1e-4)
    assert server.state.total == 7


def test_requests_that_keep_failing_are_failed_not_scored(server, tiny_local):
    server.state.inject("500", 2)
    result = server_learnability(server.base_url, "tiny", tiny_local[1], PROMPTS, RESPONSES, mode="echo",
                                 max_concurrency=1, max_retries=1, backoff_base_s=0.01)
    assert result.failed == [0] and "HTTP 500" in result.errors[0]
    assert result.values[0] is None and all(v is not None for v in result.values[1:4])
    assert server.state.total == 5


def test_wrong_key_is_a_clear_error_without_the_key(server, tiny_local):
    server.state.api_key = "sk-right-0123456789"
    with pytest.raises(ConfigError, match="rejected the API key") as err:
        score(server, tiny_local[1], api_key="sk-wrong-9876543210")
    assert "sk-wrong" not in str(err.value)
    assert score(server, tiny_local[1], api_key="sk-right-0123456789")[0] is not None


def test_pipeline_scores_on_the_students_server_as_it_does_locally(server, tiny_lm_dir, tmp_path):
    """student.server_url: the run's learnability comes from the server and equals the local student's."""
    import json

    from persyn.config import parse_config
    from persyn.pipeline import run_stages

    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"instruction": p}) + "\n" for p in PROMPTS[:4]))
    for name, shift in (("a", 0), ("b", 1)):
        rows = [{"instruction": p, "output": RESPONSES[(i + shift) % 4]} for i, p in enumerate(PROMPTS[:4])]
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def run(run_dir, **student):
        cfg = parse_config({
            "run_dir": str(tmp_path / run_dir),
            "prompts": {"path": str(tmp_path / "p.jsonl"), "field": "instruction"},
            "teachers": [{"name": n, "backend": "recorded", "model": str(tmp_path / f"{n}.jsonl")} for n in "ab"],
            "student": {"model": str(tiny_lm_dir), **student}, "reward": {"alpha": 1.0},
            "probe": {"size": 4}, "router": {"backbone": str(tiny_lm_dir), "bt": {"epochs": 5}},
        })
        run_stages(cfg)
        rows = (tmp_path / run_dir / "scores.jsonl").read_text().splitlines()
        return {(r["id"], r["teacher"]): r["learnability"] for r in map(json.loads, rows)}

    local = run("local")
    remote = run("remote", server_url=server.base_url)
    # The weights check (a probe and three known pairs), then a probe and the eight pairs.
    assert server.state.counts["/v1/completions"] == 4 + 9
    assert remote.keys() == local.keys() and all(v is not None for v in local.values())
    assert [remote[k] for k in sorted(local)] == pytest.approx([local[k] for k in sorted(local)], abs=1e-4)
