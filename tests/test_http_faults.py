"""Issue 11's server faults, each against the real uvicorn test server: failed means missing, never done.

Unusable `usage`, `content: null`, an error body that echoes the key past the snippet's cut, a Retry-After beyond
the cap, a stage where every request failed, and server learnability that gives up: each is stored (or not) so
that the next run retries exactly what failed.
"""

from __future__ import annotations

import json
import sqlite3
import time

import pytest

from persyn.backends.base import GenParams, GenRequest
from persyn.cli import main
from persyn.config import TeacherConfig, parse_config
from persyn.pipeline import run_stages
from persyn.remote.openai_backend import OpenAIBackend

pytestmark = pytest.mark.usefixtures("fresh_server")

PROMPTS = ["What is 12 times 7?", "Write a short poem about the sea.", "Why is the sky blue?",
           "How many clips did Natalia sell?"]
RESPONSES = ["12 * 7 = 84. #### 84", "The sea is wide and blue and deep.", "Light scatters off the air.",
             "She sold 72 clips."]
KEY = "sk-proj-" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7"  # 42 characters


def teacher(server, name: str = "t", **kw) -> TeacherConfig:
    kw.setdefault("extra", {"backoff_base_s": 0.01, "backoff_max_s": 0.05})
    return TeacherConfig(name=name, backend="openai", model="tiny", base_url=server.base_url, **kw)


def requests(n: int) -> list[GenRequest]:
    p = GenParams(max_new_tokens=4)
    return [GenRequest(key=f"k{i}", prompt_id=str(i), prompt=PROMPTS[i % 4], params=p) for i in range(n)]


def key_fragments(text: str, size: int = 6) -> list[str]:
    return [KEY[i:i + size] for i in range(len(KEY) - size + 1) if KEY[i:i + size] in text]


def test_unusable_usage_is_missing_usage_never_a_crash(server):
    server.state.inject("bad_usage", 5)
    backend = OpenAIBackend(teacher(server, max_concurrency=3, cost_per_1k_tokens=1.0))
    results = list(backend.generate(requests(12)))
    assert len(results) == 12 and all(r.error is None and r.text is not None for r in results)
    spoiled = [r for r in results if r.extra.get("usage_missing")]
    assert len(spoiled) == 5
    assert all((r.prompt_tokens, r.completion_tokens, r.cost) == (0, 0, 0.0) for r in spoiled)
    assert all(r.prompt_tokens > 0 and r.cost > 0 for r in results if r not in spoiled)
    assert server.state.total == 12  # nothing retried: the text was fine


def test_null_content_is_retried(server):
    server.state.inject("null_content", 2)
    backend = OpenAIBackend(teacher(server, max_concurrency=1, max_retries=3))
    [result] = list(backend.generate(requests(1)))
    assert result.error is None and result.text is not None
    assert server.state.total == 3 and backend.counters.retries == 2


def test_null_content_after_the_last_retry_is_a_failure(server):
    server.state.inject("null_content", 2)
    backend = OpenAIBackend(teacher(server, max_concurrency=1, max_retries=1))
    [result] = list(backend.generate(requests(1)))
    assert result.text is None and "no message content" in result.error and "2 attempts" in result.error


def test_an_error_body_is_redacted_before_it_is_cut(server, monkeypatch):
    server.state.api_key = KEY
    monkeypatch.setenv("PERSYN_TEST_KEY", KEY)
    server.state.inject("echo_key", 2)
    backend = OpenAIBackend(teacher(server, api_key_env="PERSYN_TEST_KEY", max_concurrency=1, max_retries=1))
    [result] = list(backend.generate(requests(1)))
    assert result.text is None and "HTTP 500" in result.error and "upstream failure" in result.error
    assert key_fragments(result.error) == []
    # The key straddles the 200-character cut: cut first, its head would have survived the redaction.
    body = json.dumps({"error": {"message": f"{'upstream failure; ' * 8}request was sent with key {KEY}"}})
    assert body.index(KEY) < 200 < body.index(KEY) + len(KEY)


def test_a_retry_after_above_the_cap_fails_at_once_and_the_next_run_retries(server):
    server.state.inject("429", 1, retry_after="3600")
    backend = OpenAIBackend(teacher(server, max_concurrency=1, retry_after_max_s=5))
    start = time.monotonic()
    [result] = list(backend.generate(requests(1)))
    assert time.monotonic() - start < 3
    assert result.text is None and "3600" in result.error and "retry_after_max_s=5" in result.error
    assert server.state.total == 1
    [again] = list(backend.generate(requests(1)))
    assert again.text is not None


def test_a_retry_after_within_the_cap_is_waited_out(server):
    server.state.inject("429", 1, retry_after="1")
    backend = OpenAIBackend(teacher(server, max_concurrency=1, retry_after_max_s=5))
    start = time.monotonic()
    [result] = list(backend.generate(requests(1)))
    assert result.text is not None and time.monotonic() - start >= 1.0


def write_inputs(tmp_path) -> None:
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"instruction": p}) + "\n" for p in PROMPTS))
    for name, shift in (("a", 0), ("b", 1)):
        rows = [{"instruction": p, "output": RESPONSES[(i + shift) % 4]} for i, p in enumerate(PROMPTS)]
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def openai_config(tmp_path, server, tiny_lm_dir, base_url: str | None = None) -> str:
    write_inputs(tmp_path)
    teachers = [{"name": n, "backend": "openai", "model": "tiny", "base_url": base_url or server.base_url,
                 "api_key_env": "PERSYN_TEST_KEY", "max_retries": 0, "max_new_tokens": 4 + i}
                for i, n in enumerate("ab")]  # two teachers with distinct outputs
    cfg = {"run_dir": str(tmp_path / "run"), "prompts": {"path": str(tmp_path / "p.jsonl"), "field": "instruction"},
           "teachers": teachers, "student": {"model": str(tiny_lm_dir)}, "reward": {"alpha": 1.0},
           "probe": {"size": 2}}
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(cfg))
    return str(path)


def test_a_stage_where_every_request_failed_exits_non_zero_with_one_line(server, tiny_lm_dir, tmp_path,
                                                                          monkeypatch, capsys):
    server.state.api_key = KEY
    monkeypatch.setenv("PERSYN_TEST_KEY", KEY)
    config = openai_config(tmp_path, server, tiny_lm_dir)
    server.state.inject("echo_key", 4)  # 2 probe prompts x 2 teachers, no retries
    with pytest.raises(SystemExit) as stop:
        main(["probe", config])
    assert stop.value.code == 1
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines()  # less the progress bar and the run's "what changed" line
              if not line.startswith("probe: generating") and " -> to do: " not in line]
    assert len(errors) == 1 and errors[0].startswith("error: probe: all 4 generation requests failed")
    assert "HTTP 500" in err and key_fragments(err) == []
    db = (tmp_path / "run" / "persyn.sqlite").read_bytes()
    assert key_fragments(db.decode("latin-1")) == []
    with sqlite3.connect(tmp_path / "run" / "persyn.sqlite") as con:
        assert con.execute("SELECT count(*) FROM generations WHERE error IS NOT NULL").fetchone()[0] == 4
    main(["probe", config])  # the failures were kept pending: this run makes exactly those four
    assert server.state.total == 8
    with sqlite3.connect(tmp_path / "run" / "persyn.sqlite") as con:
        assert con.execute("SELECT count(*) FROM generations WHERE error IS NULL").fetchone()[0] == 4


def test_a_stage_where_some_requests_failed_says_so_and_exits_zero(server, tiny_lm_dir, tmp_path, monkeypatch,
                                                                     capsys):
    monkeypatch.setenv("PERSYN_TEST_KEY", KEY)
    config = openai_config(tmp_path, server, tiny_lm_dir)
    server.state.inject("500", 1)
    main(["probe", config])
    assert "probe: done (3 new generations, 1 failed: run again to retry them)" in capsys.readouterr().out
    main(["probe", config])
    assert "probe: done (1 new generations)" in capsys.readouterr().out and server.state.total == 5


def test_a_server_that_is_down_exits_non_zero(server, tiny_lm_dir, tmp_path, monkeypatch, capsys):
    import socket

    monkeypatch.setenv("PERSYN_TEST_KEY", KEY)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    with pytest.raises(SystemExit) as stop:
        main(["probe", openai_config(tmp_path, server, tiny_lm_dir, base_url=dead)])
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert "all 4 generation requests failed" in err and "connection error" in err


def learn_config(tmp_path, server, tiny_lm_dir, **student) -> dict:
    write_inputs(tmp_path)
    return {
        "run_dir": str(tmp_path / "run"), "prompts": {"path": str(tmp_path / "p.jsonl"), "field": "instruction"},
        "teachers": [{"name": n, "backend": "recorded", "model": str(tmp_path / f"{n}.jsonl")} for n in "ab"],
        "student": {"model": str(tiny_lm_dir), "server_url": server.base_url, **student},
        "reward": {"alpha": 1.0}, "probe": {"size": 4},
    }


def learn_scores(tmp_path) -> dict[str, float | None]:
    with sqlite3.connect(tmp_path / "run" / "persyn.sqlite") as con:
        return dict(con.execute("SELECT gen_key, value FROM scores WHERE kind='learnability'").fetchall())


def test_server_learnability_that_fails_stays_pending_and_only_it_is_redone(server, tiny_lm_dir, tmp_path):
    # No weights check: the faults are meant for the scores.
    cfg = parse_config(learn_config(tmp_path, server, tiny_lm_dir, max_retries=0, max_concurrency=1,
                                    server_check=False))
    server.state.inject("slow", 1)  # a harmless first request: the protocol probe succeeds
    server.state.inject("500", 3)
    run_stages(cfg, ["probe", "score"])
    first = learn_scores(tmp_path)
    assert len(first) == 5 and all(v is not None for v in first.values())  # 8 pairs, 3 failed: not stored
    sent = server.state.total
    run_stages(cfg, ["probe", "score"])
    assert server.state.total - sent == 1 + 3  # the protocol probe, then the three that failed
    second = learn_scores(tmp_path)
    assert len(second) == 8 and all(v is not None for v in second.values())
    assert {k: second[k] for k in first} == first


def test_server_learnability_where_every_request_failed_stops_the_run(server, tiny_lm_dir, tmp_path):
    from persyn.errors import StageFailedError

    cfg = parse_config(learn_config(tmp_path, server, tiny_lm_dir, max_retries=0, max_concurrency=1))
    server.state.inject("500", 20)
    with pytest.raises(StageFailedError, match="score: all 8 learnability requests failed"):
        run_stages(cfg, ["probe", "score"])
    assert learn_scores(tmp_path) == {}


def test_server_learnability_honours_the_student_settings(server, tiny_lm_dir, tmp_path, monkeypatch):
    """api_key_env, max_concurrency and max_length reach the server path, and truncation is counted."""
    server.state.api_key = KEY
    server.state.delay_s = 0.1
    monkeypatch.setenv("PERSYN_STUDENT_KEY", KEY)
    cfg = parse_config(learn_config(tmp_path, server, tiny_lm_dir, api_key_env="PERSYN_STUDENT_KEY",
                                    max_concurrency=2, max_length=24))
    try:
        run = run_stages(cfg, ["probe", "score"])
    finally:
        server.state.delay_s = 0.0
    assert server.state.auth_failures == 0 and len(learn_scores(tmp_path)) == 8
    assert server.state.max_in_flight == 2
    assert all(len(b["prompt"]) <= 24 for b in server.state.bodies)
    assert run.truncated == 8  # every prompt + response is longer than 24 tokens


def test_batch_api_results_with_the_same_faults_stay_pending(tmp_path):
    """The Batch API path: unusable usage is stored without usage; null content and errors stay pending."""
    from persyn.remote.batch_route import export_pending, import_results

    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    cfg = parse_config({
        "run_dir": str(tmp_path / "run"), "prompts": {"path": str(tmp_path / "p.jsonl")},
        "teachers": [{"name": n, "backend": "openai", "model": f"org/{n}", "base_url": "http://127.0.0.1:9/v1"}
                     for n in "ab"],
        "quality": {"kind": "field"}, "reward": {"alpha": 0.0}, "probe": {"size": 3},
    })
    path, _ = export_pending(cfg, "probe", tmp_path / "batch")["a"]
    ids = [json.loads(line)["custom_id"] for line in path.read_text().splitlines()]

    def answer(content, usage) -> dict:
        return {"status_code": 200, "body": {"choices": [{"index": 0, "finish_reason": "stop",
                                                          "message": {"role": "assistant", "content": content}}],
                                             "usage": usage}}

    rows = [{"custom_id": ids[0], "response": answer("fine", {"completion_tokens": "n/a"}), "error": None},
            {"custom_id": ids[1], "response": answer(None, {"completion_tokens": 3}), "error": None},
            {"custom_id": ids[2], "response": None, "error": {"code": "server_error", "message": "overloaded"}}]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    counts = import_results(cfg, "probe", "a", tmp_path / "results.jsonl")
    assert (counts["stored"], counts["failed"], counts["still_pending"]) == (1, 2, 2)
    again, _ = export_pending(cfg, "probe", tmp_path / "batch2")["a"]
    assert [json.loads(line)["custom_id"] for line in again.read_text().splitlines()] == ids[1:]
    with sqlite3.connect(tmp_path / "run" / "persyn.sqlite") as con:
        assert con.execute("SELECT text, completion_tokens FROM generations WHERE key=?", (ids[0],)).fetchone() \
            == ("fine", 0)
