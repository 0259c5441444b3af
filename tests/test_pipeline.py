"""End to end over recorded and live tiny teachers: counts, resume, outputs."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers import BEST, read_jsonl, recorded_config, recorded_pool

from persyn.cli import main
from persyn.config import parse_config
from persyn.pipeline import run_stages


def test_recorded_pool_routes_every_prompt_and_resumes(tmp_path):
    prompts = recorded_pool(tmp_path)
    cfg = parse_config(recorded_config(tmp_path))
    run = run_stages(cfg)
    n, k, T = len(prompts), 45, 3
    assert run.generated == k * T + (n - k)
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["generations_total"] == s["generations_expected"] == k * T + (n - k)
    assert s["generate_then_select_generations"] == n * T
    dataset = read_jsonl(tmp_path / "run" / "dataset.jsonl")
    routing = read_jsonl(tmp_path / "run" / "routing.jsonl")
    scores = read_jsonl(tmp_path / "run" / "scores.jsonl")
    assert len(dataset) == len(routing) == n
    assert len(scores) == k * T
    assert sum(r["probe"] for r in routing) == k
    assert {r["source"] for r in dataset} == {"probe", "routed"}
    # The router learnt the topic -> teacher map from the probe: routed prompts go to their topic's best teacher.
    topic_of = {p: t for t, p in prompts}
    routed = [r for r in routing if not r["probe"]]
    hits = sum(r["teacher"] == BEST[topic_of[r["prompt"]]] for r in routed)
    assert hits / len(routed) > 0.8
    for row in dataset:
        assert row["messages"][0]["role"] == "user" and row["messages"][1]["content"].startswith(row["teacher"])
    # A second run does nothing new.
    again = run_stages(cfg)
    assert again.generated == 0
    assert read_jsonl(tmp_path / "run" / "dataset.jsonl") == dataset


def test_cli_run_prints_shares_and_second_run_generates_nothing(tmp_path, capsys):
    recorded_pool(tmp_path, n=30)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(recorded_config(tmp_path, probe={"size": 15})))
    main(["run", str(config)])
    out = capsys.readouterr().out
    assert "dataset.jsonl" in out and "alpha" in out and "60 in total, 60 by this run" in out
    main(["run", str(config)])
    assert "60 in total, 0 by this run" in capsys.readouterr().out


def test_live_tiny_teachers_with_learnability(tmp_path, tiny_lm_dir, tiny_lm_dir_b):
    """Two live transformers teachers and a student: counts follow p*N + (|X|-p) and nothing is made twice."""
    rows = [{"q": f"What is {i} plus {i + 1}?", "a": str(2 * i + 1)} for i in range(12)]
    (tmp_path / "math.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = parse_config({
        "run_dir": str(tmp_path / "run"),
        "prompts": {"path": str(tmp_path / "math.jsonl"), "field": "q", "reference_field": "a"},
        "teachers": [{"name": "a", "model": str(tiny_lm_dir)}, {"name": "b", "model": str(tiny_lm_dir_b)}],
        "student": {"model": str(tiny_lm_dir)},
        "quality": {"kind": "math_answer"},
        "probe": {"size": 6},
        "router": {"backbone": str(tiny_lm_dir), "pooling": "last", "bt": {"epochs": 20}},
        "generation": {"max_new_tokens": 8, "batch_size": 4, "temperature": 1.0, "seed": 3},
    })
    run = run_stages(cfg)
    assert run.generated == 6 * 2 + (12 - 6)
    scores = read_jsonl(tmp_path / "run" / "scores.jsonl")
    assert len(scores) == 12 and all(s["learnability"] is not None and s["learnability"] < 0 for s in scores)
    assert all(s["quality"] in (0.0, 1.0) for s in scores)
    assert run_stages(cfg).generated == 0


def test_recorded_alpaca_eval_teachers(tmp_path, shared_data):
    """The 8 real AlpacaEval teachers as recorded backends, judge scores as quality (skips without ../shared)."""
    teachers_dir = shared_data / "alpaca_eval" / "teachers"
    if not teachers_dir.is_dir():
        pytest.skip(f"{teachers_dir} is absent")
    files = sorted(teachers_dir.glob("*.jsonl"))
    assert len(files) == 8
    cfg = parse_config({
        "run_dir": str(tmp_path / "run"),
        "prompts": {"path": str(files[0]), "field": "instruction", "limit": 80, "seed": 0},
        "teachers": [{"name": f.stem, "backend": "recorded", "model": str(f)} for f in files],
        "quality": {"kind": "field"},
        "reward": {"alpha": 0.0},
        "probe": {"size": 30},
        "router": {"bt": {"epochs": 50}},
    })
    run = run_stages(cfg)
    assert run.generated == 30 * 8 + (80 - 30)
    routing = read_jsonl(tmp_path / "run" / "routing.jsonl")
    dataset = read_jsonl(tmp_path / "run" / "dataset.jsonl")
    assert len(routing) == len(dataset) == 80
    scores = read_jsonl(tmp_path / "run" / "scores.jsonl")
    judged = [s for s in scores if s["quality"] is not None]
    assert len(judged) >= 0.9 * len(scores) and all(0.0 <= s["quality"] <= 1.0 for s in judged)
    # Probe prompts keep the response the judge liked best.
    best = {}
    for s in judged:
        if s["id"] not in best or s["quality"] > best[s["id"]][1]:
            best[s["id"]] = (s["teacher"], s["quality"])
    for row in routing:
        if row["probe"]:
            assert row["teacher"] == best[row["id"]][0]
