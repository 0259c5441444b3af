"""Batch API export/import: the exported bodies are run against a real server and its answers read back."""

from __future__ import annotations

import json

import httpx
import pytest

from persyn.backends.base import GenParams, GenRequest
from persyn.config import TeacherConfig
from persyn.errors import ConfigError, InputError
from persyn.remote.batch_api import export_batch, import_batch_results
from persyn.remote.openai_backend import OpenAIBackend

PROMPTS = ["What is 12 times 7?", "Write a short poem about the sea.", "Why is the sky blue?"]


def teacher(base_url: str = "http://unused/v1", **kw) -> TeacherConfig:
    return TeacherConfig(name="t", backend="openai", model="tiny", base_url=base_url, **kw)


def requests() -> list[GenRequest]:
    p = GenParams(max_new_tokens=6, temperature=0.0, seed=3)
    return [GenRequest(key=f"k{i}", prompt_id=str(i), prompt=q, params=p) for i, q in enumerate(PROMPTS)]


def run_batch(server, input_path, output_path) -> None:
    """What the provider does: run each input line and write one result line in the documented format."""
    root = server.base_url.removesuffix("/v1")
    with open(output_path, "w", encoding="utf-8") as out:
        for n, raw in enumerate(input_path.read_text().splitlines()):
            line = json.loads(raw)
            resp = httpx.request(line["method"], root + line["url"], json=line["body"], timeout=30)
            result = {"id": f"batch_req_{n}", "custom_id": line["custom_id"],
                      "response": {"status_code": resp.status_code, "request_id": f"req_{n}", "body": resp.json()},
                      "error": None}
            out.write(json.dumps(result) + "\n")


def test_export_writes_the_backends_bodies(tmp_path):
    reqs = requests()
    path = tmp_path / "sub" / "batch.jsonl"
    assert export_batch(reqs + reqs[:1], teacher(extra={"body": {"logprobs": False}}), path) == 3
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["custom_id"] for x in lines] == ["k0", "k1", "k2"]
    assert {(x["method"], x["url"]) for x in lines} == {("POST", "/v1/chat/completions")}
    body = lines[1]["body"]
    assert body["messages"] == [{"role": "user", "content": PROMPTS[1]}]
    assert (body["model"], body["max_tokens"], body["temperature"], body["logprobs"]) == ("tiny", 6, 0.0, False)
    assert "seed" not in body and "top_p" not in body  # greedy with no nucleus cut: neither changes the output
    few_shot = export_batch(reqs, teacher(few_shot=True), tmp_path / "fs.jsonl")
    assert few_shot == 3
    assert json.loads((tmp_path / "fs.jsonl").read_text().splitlines()[0])["url"] == "/v1/completions"


def test_round_trip_through_a_real_server_matches_the_live_backend(server, tmp_path):
    t = teacher(server.base_url, cost_per_1k_input_tokens=0.5, cost_per_1k_output_tokens=2.0, batch_discount=0.5)
    export_batch(requests(), t, tmp_path / "in.jsonl")
    server.state.reset()
    server.state.inject("500", 1)  # the provider failed the first request
    run_batch(server, tmp_path / "in.jsonl", tmp_path / "out.jsonl")
    with open(tmp_path / "out.jsonl", "a") as out:  # and expired one more
        out.write("\n" + json.dumps({"id": "batch_req_9", "custom_id": "k9", "response": None,
                                     "error": {"code": "batch_expired", "message": "not completed in 24h"}}) + "\n")
    results = {r.key: r for r in import_batch_results(tmp_path / "out.jsonl", teacher=t)}
    assert sorted(results) == ["k0", "k1", "k2", "k9"]
    assert results["k0"].text is None and results["k0"].error == "HTTP 500: internal error"
    assert results["k9"].text is None and results["k9"].error == "batch_expired: not completed in 24h"
    live = {r.key: r for r in OpenAIBackend(t).generate(requests()[1:])}
    for key in ("k1", "k2"):
        assert results[key].text == live[key].text
        assert (results[key].prompt_tokens, results[key].completion_tokens) == (
            live[key].prompt_tokens, live[key].completion_tokens)
        assert results[key].cost == pytest.approx(live[key].cost / 2) and results[key].cost > 0  # half price
        assert live[key].cost == pytest.approx((live[key].prompt_tokens * 0.5 + live[key].completion_tokens * 2) / 1000)
        assert results[key].extra["request_id"].startswith("req_")


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", r"out\.jsonl:2: not valid JSON"),
    ('["a list"]', r"out\.jsonl:2: a result line must be a JSON object"),
    ('{"response": {"status_code": 200, "body": {}}}', r"out\.jsonl:2 \[custom_id\]"),
    ('{"custom_id": "k1", "response": null, "error": null}', r"out\.jsonl:2 \[response\]"),
    ('{"custom_id": "k1", "response": {"status_code": 200, "body": {"choices": []}}}',
     r"out\.jsonl:2 \[response\.body\.choices\]"),
    ('{"custom_id": "k0", "error": {"code": "x", "message": "y"}}', r"out\.jsonl:2 \[custom_id\]: .*twice"),
])
def test_malformed_lines_name_file_and_line(tmp_path, line, message):
    good = json.dumps({"custom_id": "k0", "response": {"status_code": 200, "body": {
        "choices": [{"message": {"role": "assistant", "content": "hi"}}], "usage": {"prompt_tokens": 3}}}})
    path = tmp_path / "out.jsonl"
    path.write_text(f"{good}\n{line}\n")
    with pytest.raises(InputError, match=message):
        import_batch_results(path)


def test_missing_file_and_model_are_user_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        import_batch_results(tmp_path / "absent.jsonl")
    with pytest.raises(ConfigError, match=r"teachers\.t\.model"):
        export_batch(requests(), TeacherConfig(name="t", backend="openai"), tmp_path / "x.jsonl")


def test_vllm_run_batch_error_lines_keep_their_message(tmp_path):
    """vLLM's run-batch writes a failed request as {"error": {"error": {...}}} beside a response without a body
    (vllm/entrypoints/launchers/run_batch.py), or with the error as a plain string."""
    vllm_error = {"error": {"message": "This model's maximum context length is 256 tokens. However, your prompt "
                                       "contains 300 input tokens.", "type": "BadRequestError", "param": "input_tokens",
                            "code": 400}}
    rows = [{"id": "vllm-1", "custom_id": "k0", "error": vllm_error,
             "response": {"status_code": 400, "request_id": "vllm-batch-1", "body": None}},
            {"id": "vllm-2", "custom_id": "k1", "error": "Request must not be sent in stream mode",
             "response": {"status_code": 400, "request_id": "vllm-batch-2", "body": None}}]
    path = tmp_path / "out.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = {r.key: r for r in import_batch_results(path)}
    assert results["k0"].error == ("400: This model's maximum context length is 256 tokens. However, your prompt "
                                   "contains 300 input tokens.")
    assert results["k1"].error == "Request must not be sent in stream mode"
