"""Hostile input through the real CLI: one located line on stderr and exit code 2, never a traceback.

Responses that are empty or longer than the student's context are not errors: they are recorded, scored (empty
as the worst) and counted.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import pytest
import yaml
from helpers import read_jsonl

from persyn.cli import main

PROMPTS = [f"Question {i}: what is {i} plus {i}?" for i in range(8)]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def recorded_setup(tmp_path: Path, prompts: list[str] = PROMPTS, outputs: dict | None = None) -> dict:
    """Prompts and two recorded teachers (answers from files): a config that runs without any model."""
    write_jsonl(tmp_path / "p.jsonl", [{"instruction": p, "answer": str(2 * i)} for i, p in enumerate(prompts)])
    outputs = outputs or {}
    for t, q in (("a", 0.8), ("b", 0.3)):
        make = outputs.get(t, lambda i, p, t=t: f"{t}: {i + i}")
        write_jsonl(tmp_path / f"{t}.jsonl",
                    [{"instruction": p, "output": make(i, p), "quality": q} for i, p in enumerate(prompts)])
    return {
        "run_dir": str(tmp_path / "run"),
        "prompts": {"path": str(tmp_path / "p.jsonl"), "field": "instruction"},
        "teachers": [{"name": t, "backend": "recorded", "model": str(tmp_path / f"{t}.jsonl")} for t in "ab"],
        "quality": {"kind": "field"},
        "reward": {"alpha": 0.0},
        "probe": {"size": 4},
        "router": {"bt": {"epochs": 5}},
    }


def write_config(tmp_path: Path, cfg: dict | str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg))
    return path


def cli_error(capsys, config: Path, command: str = "run") -> str:
    """Run the CLI; it must exit 2 with exactly one `error:` line, last on stderr, and no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main([command, str(config)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and sum(line.startswith("error:") for line in lines) == 1
    return lines[-1]


def stored_generations(cfg: dict) -> int:
    db_path = Path(cfg["run_dir"]) / "persyn.sqlite"
    if not db_path.exists():
        return 0
    db = sqlite3.connect(db_path)
    try:
        return db.execute("SELECT COUNT(*) FROM generations").fetchone()[0]
    finally:
        db.close()


# (name, bytes of the prompt file, expected message): each case names the file and the line.
PROMPT_FILE_CASES = [
    ("malformed_jsonl", b'{"instruction": "a"}\n{"instruction": "b"}\n{"instruction": "c",\n',
     r"p.jsonl:3: malformed JSON"),
    ("missing_prompt_field", b'{"instruction": "a"}\n{"question": "b"}\n',
     r"p.jsonl:2 [instruction]: missing prompt field"),
    ("null_prompt", b'{"instruction": "a"}\n{"instruction": null}\n', r"p.jsonl:2 [instruction]: missing field"),
    ("not_utf8", b'{"instruction": "a"}\n{"instruction": "caf\xe9"}\n', r"p.jsonl:2: not UTF-8 (byte"),
    ("lone_surrogate", b'{"instruction": "a"}\n{"instruction": "x\\ud800y"}\n', r"p.jsonl:2 [instruction]:"),
    ("empty_prompt", b'{"instruction": "a"}\n{"instruction": "  \\n "}\n', r"p.jsonl:2 [instruction]: empty prompt"),
    ("prompt_is_a_list", b'{"instruction": ["a"]}\n', r"p.jsonl:1 [instruction]: expected text, got a JSON list"),
    ("row_not_an_object", b'{"instruction": "a"}\n["b"]\n', r"p.jsonl:2: expected an object"),
    ("huge_number", b'{"instruction": "a"}\n{"instruction": ' + b"9" * 5000 + b"}\n", r"p.jsonl:2:"),
    ("deep_nesting", b'{"instruction": "a"}\n' + b"[" * 100_000 + b"\n", r"p.jsonl:2:"),
    ("empty_file", b"\n\n", r"p.jsonl: no prompts"),
]


@pytest.mark.parametrize(("name", "data", "expected"), PROMPT_FILE_CASES, ids=[c[0] for c in PROMPT_FILE_CASES])
def test_bad_prompt_file(tmp_path, capsys, name, data, expected):
    cfg = recorded_setup(tmp_path)
    (tmp_path / "p.jsonl").write_bytes(data)
    line = cli_error(capsys, write_config(tmp_path, cfg))
    assert expected in line
    assert stored_generations(cfg) == 0


def test_bad_csv_and_json_files_are_located(tmp_path, capsys):
    cfg = recorded_setup(tmp_path)
    (tmp_path / "p.csv").write_bytes(b"instruction,answer\nfine,1\n,2\n")
    line = cli_error(capsys, write_config(tmp_path, {**cfg, "prompts": {"path": str(tmp_path / "p.csv"),
                                                                         "field": "instruction"}}))
    assert "p.csv:3 [instruction]: empty prompt" in line
    (tmp_path / "p.json").write_bytes(b'[{"instruction": "a"},\n {"instruction": ]')
    line = cli_error(capsys, write_config(tmp_path, {**cfg, "prompts": {"path": str(tmp_path / "p.json"),
                                                                         "field": "instruction"}}))
    assert "p.json:2: malformed JSON" in line


def without_teacher_key(cfg: dict, key: str) -> dict:
    return {**cfg, "teachers": [{k: v for k, v in t.items() if k != key} for t in cfg["teachers"]]}


# (name, config edit, expected message): each names the config key.
CONFIG_CASES = [
    ("unknown_key", lambda c: {**c, "bogus": 1}, "c.yaml: bogus: unknown key"),
    ("unknown_nested_key", lambda c: {**c, "router": {"bt": {"epochs": 5}, "colour": "red"}},
     "router.colour: unknown key"),
    ("wrong_type", lambda c: {**c, "reward": {"alpha": "lots"}}, "reward.alpha: Input should be a valid number"),
    ("out_of_range", lambda c: {**c, "probe": {"size": -3}}, "probe.size: Input should be greater than 0"),
    ("wrong_type_in_teacher", lambda c: {**c, "teachers": [c["teachers"][0], {**c["teachers"][1],
                                                                               "temperature": "hot"}]},
     "teachers[b].temperature: Input should be a valid number"),
    ("teacher_without_name", lambda c: without_teacher_key(c, "name"), "teachers[0].name: Field required"),
    ("unknown_backend", lambda c: {**c, "teachers": [c["teachers"][0], {**c["teachers"][1], "backend": "nope"}]},
     "teachers.b.backend: unknown backend 'nope'"),
    ("missing_model_path", lambda c: {**c, "teachers": [c["teachers"][0], {"name": "b", "backend": "transformers",
                                                                           "model": "/no/such/model/dir"}]},
     "teachers.b.model: model '/no/such/model/dir' not found"),
    ("model_dir_without_model", lambda c: {**c, "teachers": [c["teachers"][0], {"name": "b",
                                                                                "model": c["run_dir"] + "/../"}]},
     "teachers.b.model: model"),
    ("missing_responses_file", lambda c: {**c, "teachers": [c["teachers"][0], {**c["teachers"][1],
                                                                               "model": "/no/b.jsonl"}]},
     "teachers.b.model: responses file not found"),
    ("teacher_twice", lambda c: {**c, "teachers": c["teachers"] + [c["teachers"][0]]},
     "teachers: teacher name 'a' given twice"),
    ("single_teacher", lambda c: {**c, "teachers": c["teachers"][:1]}, "teachers: routing needs at least two teachers"),
    ("probe_larger_than_prompts", lambda c: {**c, "probe": {"size": 50}},
     "probe.size: probe size 50 is larger than the prompt set (8 prompts)"),
    ("alpha_without_student", lambda c: {**c, "reward": {"alpha": 0.5}}, "needs a student"),
    ("missing_student_model", lambda c: {**c, "reward": {"alpha": 0.5}, "student": {"model": "./no/student"}},
     "student.model: model './no/student' not found"),
    ("missing_router_backbone", lambda c: {**c, "router": {"backbone": "/no/backbone"}},
     "router.backbone: model '/no/backbone' not found"),
    ("math_answer_without_reference_field", lambda c: {**c, "quality": {"kind": "math_answer"}},
     "p.jsonl: this quality kind (math_answer, gym) needs prompts.reference_field"),
    ("missing_api_key", lambda c: {**c, "teachers": [{"name": "o", "backend": "openai", "model": "m",
                                                      "base_url": "http://127.0.0.1:9/v1",
                                                      "api_key_env": "PERSYN_NO_SUCH_KEY"}, c["teachers"][1]]},
     "teachers.o.api_key_env: environment variable PERSYN_NO_SUCH_KEY is not set"),
]


@pytest.mark.parametrize(("name", "edit", "expected"), CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config(tmp_path, capsys, monkeypatch, name, edit, expected):
    monkeypatch.delenv("PERSYN_NO_SUCH_KEY", raising=False)
    cfg = edit(recorded_setup(tmp_path))
    line = cli_error(capsys, write_config(tmp_path, cfg))
    assert expected in line
    assert stored_generations(cfg) == 0  # refused before any teacher was paid


@pytest.mark.parametrize(("text", "expected"), [
    ("run_dir: x\nprompts: [\n", "invalid YAML"),
    ("- just\n- a list\n", "c.yaml: the configuration must be a mapping"),
    (b"run_dir: caf\xe9\n", "c.yaml: not UTF-8"),
])
def test_unreadable_config_file(tmp_path, capsys, text, expected):
    path = tmp_path / "c.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert expected in cli_error(capsys, path)
    assert "config file not found" in cli_error(capsys, tmp_path / "missing.yaml")
    assert "config file not found" in cli_error(capsys, tmp_path / "missing.yaml", "status")


def test_missing_reference_answer_for_math_answer(tmp_path, capsys):
    cfg = recorded_setup(tmp_path)
    rows = [{"instruction": p, "answer": str(i)} for i, p in enumerate(PROMPTS)]
    rows[5]["answer"] = "  "
    write_jsonl(tmp_path / "p.jsonl", rows)
    cfg = {**cfg, "quality": {"kind": "math_answer"}, "prompts": {**cfg["prompts"], "reference_field": "answer"}}
    assert "p.jsonl:6 [answer]: missing reference answer" in cli_error(capsys, write_config(tmp_path, cfg))
    del rows[2]["answer"]
    write_jsonl(tmp_path / "p.jsonl", rows)
    assert "p.jsonl:3 [answer]: missing field" in cli_error(capsys, write_config(tmp_path, cfg))


def test_bad_recorded_responses_file_is_located(tmp_path, capsys, tiny_lm_dir):
    cfg = recorded_setup(tmp_path)
    cfg["router"] = {"backbone": str(tiny_lm_dir), "pooling": "last", "bt": {"epochs": 5}}
    rows = (tmp_path / "b.jsonl").read_text().splitlines()
    rows[3] = rows[3].replace('"quality": 0.3', '"quality": "good"')
    (tmp_path / "b.jsonl").write_text("\n".join(rows) + "\n")
    assert "b.jsonl:4 [quality]: expected a number, got 'good'" in cli_error(capsys, write_config(tmp_path, cfg))


def test_duplicates_are_removed_with_a_warning(tmp_path, capsys, caplog, tiny_lm_dir):
    cfg = recorded_setup(tmp_path)
    cfg["router"] = {"backbone": str(tiny_lm_dir), "pooling": "last", "bt": {"epochs": 5}}
    write_jsonl(tmp_path / "p.jsonl", [{"instruction": p} for p in PROMPTS + PROMPTS[:3]])
    with caplog.at_level(logging.WARNING):
        main(["run", str(write_config(tmp_path, cfg))])
    assert "p.jsonl: removed 3 duplicate prompt(s)" in caplog.text
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["prompts"] == summary["dataset_rows"] == len(PROMPTS)
    assert summary["generations_total"] == 4 * 2 + len(PROMPTS) - 4


def test_empty_responses_are_recorded_and_score_the_worst(tmp_path, capsys, tiny_lm_dir):
    """Teacher b answers nothing (with a high judge score); its empty rows are kept, never win, never crash
    learnability, and the router learns to avoid b."""
    cfg = recorded_setup(tmp_path, outputs={"b": lambda i, p: "" if i % 2 else "   "})
    b_rows = read_jsonl(tmp_path / "b.jsonl")
    write_jsonl(tmp_path / "b.jsonl", [{**r, "quality": 1.0} for r in b_rows])
    cfg.update(reward={"alpha": 0.5}, student={"model": str(tiny_lm_dir)},
               router={"backbone": str(tiny_lm_dir), "pooling": "last", "bt": {"epochs": 5}})
    main(["run", str(write_config(tmp_path, cfg))])
    run_dir = tmp_path / "run"
    db = sqlite3.connect(run_dir / "persyn.sqlite")
    texts = db.execute("SELECT text, error FROM generations WHERE teacher='b'").fetchall()
    db.close()
    assert len(texts) == 4 and all(t.strip() == "" and e is None for t, e in texts)  # recorded, not failures
    scores = read_jsonl(run_dir / "scores.jsonl")
    by_prompt: dict[str, dict[str, dict]] = {}
    for s in scores:
        by_prompt.setdefault(s["id"], {})[s["teacher"]] = s
    assert len(by_prompt) == 4
    for row in by_prompt.values():
        assert row["b"]["learnability"] is None and row["a"]["learnability"] < 0
        assert row["b"]["quality"] == 1.0 > row["a"]["quality"]  # the judge liked it; it is still the worst
        assert row["b"]["reward"] < row["a"]["reward"]
    dataset = read_jsonl(run_dir / "dataset.jsonl")
    assert len(dataset) == len(PROMPTS) and {r["teacher"] for r in dataset} == {"a"}
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["per_teacher"]["b"]["generations"] == 4 and summary["failed_generations"] == []


def test_responses_longer_than_the_students_context_are_truncated_and_counted(tmp_path, capsys, tiny_lm_dir):
    long_prompt = "Explain this carefully. " * 80 + "What is 1 plus 1?"
    prompts = PROMPTS[:7] + [long_prompt]
    long_ids = {1, 2, 7}  # long responses on these rows; row 7's prompt alone overflows the context too
    cfg = recorded_setup(tmp_path, prompts=prompts,
                         outputs={"a": lambda i, p: ("the sea is wide and blue " * 60) if i in long_ids else "ok",
                                  "b": lambda i, p: "short answer"})
    cfg.update(reward={"alpha": 1.0}, student={"model": str(tiny_lm_dir), "max_length": 64},
               router={"backbone": str(tiny_lm_dir), "pooling": "last", "bt": {"epochs": 5}, "max_length": 32},
               probe={"size": 8})
    config = write_config(tmp_path, cfg)
    main(["run", str(config)])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    # Every long response (and the short ones behind the long prompt) was cut to fit, scored and counted.
    assert summary["responses_truncated_for_scoring"] == summary["responses_truncated_this_invocation"] == 4
    main(["run", str(config)])  # a re-run scores nothing, and still reports the run's total
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["responses_truncated_for_scoring"] == 4 and summary["responses_truncated_this_invocation"] == 0
    scores = read_jsonl(tmp_path / "run" / "scores.jsonl")
    assert len(scores) == 16 and all(s["learnability"] is not None and s["learnability"] < 0 for s in scores)
    assert summary["dataset_rows"] == 8
