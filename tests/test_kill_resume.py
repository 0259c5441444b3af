"""`persyn run` killed with SIGKILL at every stage, or stopped with Ctrl-C, resumes to the uninterrupted result.

Each run is a real subprocess (tests/kill_driver.py) over two live tiny transformers teachers, a live student and
a live router backbone; the driver logs every backend call and learnability item to a file that survives the kill.
"""

from __future__ import annotations

import json
import signal
import sqlite3
from collections import Counter
from pathlib import Path

import pytest
import yaml
from helpers import read_jsonl
from kill_driver import run_to_end, spawn, wait_for_pause

N_PROMPTS, PROBE, TEACHERS = 12, 6, 2
EXPECTED_GENERATIONS = PROBE * TEACHERS + (N_PROMPTS - PROBE)  # p*N + (|X| - p)
# Summary fields that describe the result rather than one invocation of it.
SUMMARY_FIELDS = ("prompts", "probe_size", "teachers", "generations_total", "generations_expected",
                  "generate_then_select_generations", "generation_saving", "tokens_generated", "per_teacher",
                  "dataset_rows", "dataset_missing", "teacher_shares", "teacher_counts", "alpha",
                  "failed_generations", "responses_truncated_for_scoring")


def write_config(tmp_path: Path, name: str, teacher_a: Path, teacher_b: Path) -> Path:
    prompts = tmp_path / "math.jsonl"
    if not prompts.exists():
        rows = [{"q": f"What is {i} plus {i + 3}?", "a": str(2 * i + 3)} for i in range(N_PROMPTS)]
        prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {
        "run_dir": str(tmp_path / name),
        "prompts": {"path": str(prompts), "field": "q", "reference_field": "a"},
        "teachers": [{"name": "a", "backend": "logged", "model": str(teacher_a)},
                     {"name": "b", "backend": "logged", "model": str(teacher_b)}],
        "student": {"model": str(teacher_a), "max_length": 34},  # ~29 prompt tokens: long responses are cut
        "quality": {"kind": "math_answer"},
        "reward": {"alpha": 0.4},
        "probe": {"size": PROBE, "seed": 1},
        "router": {"backbone": str(teacher_a), "pooling": "last", "bt": {"epochs": 20}, "seed": 0},
        "generation": {"max_new_tokens": 8, "batch_size": 1, "temperature": 1.0, "seed": 5},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def log_lines(log: Path, kind: str) -> list[str]:
    if not log.exists():
        return []
    return [line.split(" ", 1)[1] for line in log.read_text().splitlines() if line.startswith(kind + " ")]


def store_rows(run_dir: Path, sql: str) -> list[tuple]:
    db = sqlite3.connect(run_dir / "persyn.sqlite")
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def outputs(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"dataset": read_jsonl(run_dir / "dataset.jsonl"), "routing": read_jsonl(run_dir / "routing.jsonl"),
            "scores": read_jsonl(run_dir / "scores.jsonl"),
            "summary": {k: summary[k] for k in SUMMARY_FIELDS}, "router": summary["router"]}


def assert_same_outputs(got: dict, want: dict) -> None:
    assert got["dataset"] == want["dataset"]  # the same responses from the same teachers, in the same order
    assert got["summary"] == want["summary"]
    assert [(r["id"], r["teacher"], r["probe"]) for r in got["routing"]] == \
        [(r["id"], r["teacher"], r["probe"]) for r in want["routing"]]
    for g, w in zip(got["routing"], want["routing"], strict=True):
        assert g["scores"] == pytest.approx(w["scores"], abs=1e-5)
    assert len(got["scores"]) == len(want["scores"]) == PROBE * TEACHERS
    for g, w in zip(got["scores"], want["scores"], strict=True):
        assert (g["id"], g["teacher"]) == (w["id"], w["teacher"])
        for field in ("quality", "learnability", "reward"):
            assert (g[field] is None) == (w[field] is None)
            if w[field] is not None:
                assert g[field] == pytest.approx(w[field], abs=1e-5)
    assert got["router"] == pytest.approx(want["router"], abs=1e-5)


def assert_nothing_twice_nothing_lost(run_dir: Path, log: Path) -> None:
    calls = log_lines(log, "gen")
    assert [k for k, n in Counter(calls).items() if n > 1] == []  # no backend call made twice, across runs
    assert len(calls) == EXPECTED_GENERATIONS
    learned = log_lines(log, "learn")
    assert [k for k, n in Counter(learned).items() if n > 1] == []  # no response scored twice either
    assert len(learned) == PROBE * TEACHERS
    rows = store_rows(run_dir, "SELECT key, prompt_id, teacher FROM generations WHERE error IS NULL")
    assert len(rows) == EXPECTED_GENERATIONS and {r[0] for r in rows} == set(calls)
    assert [r for r, n in Counter((p, t) for _, p, t in rows).items() if n > 1] == []
    dataset = read_jsonl(run_dir / "dataset.jsonl")
    assert len(dataset) == N_PROMPTS and len({r["id"] for r in dataset}) == N_PROMPTS
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["generations_total"] == summary["generations_expected"] == EXPECTED_GENERATIONS
    assert summary["dataset_missing"] == []


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, tiny_lm_dir, tiny_lm_dir_b) -> dict:
    """One uninterrupted run with the same seeds."""
    tmp = tmp_path_factory.mktemp("kill_baseline")
    config = write_config(tmp, "run", tiny_lm_dir, tiny_lm_dir_b)
    log = tmp / "calls.log"
    done = run_to_end(config, "none", log)
    assert done.returncode == 0, done.stderr
    assert_nothing_twice_nothing_lost(tmp / "run", log)
    result = outputs(tmp / "run")
    assert result["summary"]["responses_truncated_for_scoring"] > 0  # counted once across kills and resumes
    return result


# (kill point, committed store rows it must leave behind: (generations, learnability scores, router saved))
KILL_CHAIN = [
    ("probe:3", (3, 0, False)),  # in the first teacher's probe
    ("probe:5", (8, 0, False)),  # in the second teacher's probe (counted from the resumed run)
    ("learnability:2", (12, 4, False)),  # scoring: the first chunk of 4 is kept, the second is in flight
    ("router:1", (12, 12, False)),  # router fitted but not saved
    ("generate:2", (14, 12, True)),  # routed generation
]


@pytest.mark.slow
def test_sigkill_at_every_stage_then_resume_equals_uninterrupted_run(tmp_path, tiny_lm_dir, tiny_lm_dir_b,
                                                                      baseline):
    config = write_config(tmp_path, "run", tiny_lm_dir, tiny_lm_dir_b)
    run_dir, log = tmp_path / "run", tmp_path / "calls.log"
    for point, (gens, learned, router_saved) in KILL_CHAIN:
        killed = run_to_end(config, point, log)
        assert killed.returncode == -signal.SIGKILL, f"{point} not reached: {killed.stderr[-2000:]}"
        assert "Traceback" not in killed.stderr
        assert store_rows(run_dir, "SELECT COUNT(*) FROM generations WHERE error IS NULL")[0][0] == gens, point
        n_learned = store_rows(run_dir, "SELECT COUNT(*) FROM scores WHERE kind='learnability'")[0][0]
        assert n_learned == learned, point
        assert (run_dir / "router" / "router.json").exists() == router_saved, point
        # Every result was committed before the next call: the log and the store agree, nothing in flight.
        assert len(log_lines(log, "gen")) == gens
        assert not (run_dir / "summary.json").exists()
    finished = run_to_end(config, "none", log)
    assert finished.returncode == 0, finished.stderr
    assert_nothing_twice_nothing_lost(run_dir, log)
    assert_same_outputs(outputs(run_dir), baseline)
    # A further run has nothing left to do.
    again = run_to_end(config, "none", log)
    assert again.returncode == 0, again.stderr
    assert len(log_lines(log, "gen")) == EXPECTED_GENERATIONS
    assert "0 by this run" in again.stdout


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tmp_path, tiny_lm_dir, tiny_lm_dir_b, baseline):
    config = write_config(tmp_path, "run", tiny_lm_dir, tiny_lm_dir_b)
    run_dir, log = tmp_path / "run", tmp_path / "calls.log"
    proc = spawn(config, "probe:4", log, pause=True)
    wait_for_pause(proc, log)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "run the same command again to resume" in err
    assert "Traceback" not in err
    assert store_rows(run_dir, "SELECT COUNT(*) FROM generations")[0][0] == 4
    # The interrupted run released the run_dir: the same command finishes the job.
    finished = run_to_end(config, "none", log)
    assert finished.returncode == 0, finished.stderr
    assert_nothing_twice_nothing_lost(run_dir, log)
    assert_same_outputs(outputs(run_dir), baseline)
