"""The Batch API route through the store: export pending requests, import results, nothing stored twice."""

from __future__ import annotations

import json

import yaml

from persyn.cli import main
from persyn.config import load_config
from persyn.status import run_status


def completion(text: str) -> dict:
    return {"status_code": 200, "body": {"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                                      "finish_reason": "stop"}],
                                         "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}}


def test_batch_export_then_import_fills_the_probe(tmp_path, capsys):
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(5)))
    cfg = {
        "run_dir": str(tmp_path / "run"),
        "prompts": {"path": str(tmp_path / "p.jsonl")},
        "teachers": [{"name": n, "backend": "openai", "model": f"org/{n}", "base_url": "http://127.0.0.1:9/v1"}
                     for n in ("a", "b")],
        "quality": {"kind": "field"}, "reward": {"alpha": 0.0}, "probe": {"size": 3},
    }
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(cfg))
    main(["batch-export", str(config), "--out", str(tmp_path / "batch")])
    files = {n: tmp_path / "batch" / f"probe-{n}.jsonl" for n in ("a", "b")}
    lines = {n: [json.loads(x) for x in f.read_text().splitlines()] for n, f in files.items()}
    assert {n: len(v) for n, v in lines.items()} == {"a": 3, "b": 3}
    assert all(x["body"]["model"] == "org/a" for x in lines["a"])

    # The provider answers two of a's requests and fails the third.
    results = tmp_path / "a.results.jsonl"
    rows = [{"id": f"r{i}", "custom_id": x["custom_id"], "response": completion(f"answer {i}"), "error": None}
            for i, x in enumerate(lines["a"][:2])]
    rows.append({"id": "r2", "custom_id": lines["a"][2]["custom_id"], "response": None,
                 "error": {"code": "server_error", "message": "overloaded"}})
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    main(["batch-import", str(config), str(results), "--teacher", "a"])
    assert "stored 2, failed 1, not pending 0, still pending 1" in capsys.readouterr().out
    probe = next(r for r in run_status(load_config(config)) if r["stage"] == "probe")
    assert (probe["done"], probe["pending"]) == (2, 4)

    # Importing the same file again stores nothing twice; a new export holds only what is still pending.
    main(["batch-import", str(config), str(results), "--teacher", "a"])
    assert "stored 0, failed 1, not pending 2" in capsys.readouterr().out
    main(["batch-export", str(config), "--out", str(tmp_path / "batch2")])
    again = (tmp_path / "batch2" / "probe-a.jsonl").read_text().splitlines()
    assert [json.loads(x)["custom_id"] for x in again] == [lines["a"][2]["custom_id"]]
