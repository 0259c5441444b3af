"""`persyn eval --lm-eval` runs lm-evaluation-harness for real: a task defined in a local YAML over a local JSONL
(no hub), a tiny model, and the task's metric in the JSON result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from persyn.cli import main

pytest.importorskip("lm_eval")  # dev extras install it

ITEMS = [{"question": f"What is {a} plus {b}?", "choices": [str(a + b), str(a + b + 3), str(a * b + 1)], "label": 0}
         for a, b in [(2, 3), (4, 4), (10, 5), (7, 1), (6, 6), (9, 2)]]


def local_task(root: Path) -> Path:
    tasks = root / "tasks"
    tasks.mkdir()
    data = root / "items.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ITEMS))
    (tasks / "local_sums.yaml").write_text(yaml.safe_dump({
        "task": "persyn_local_sums",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{label}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0},
    }))
    return tasks


def test_lm_eval_runs_a_local_task(tmp_path, tiny_lm_dir, capsys):
    tasks = local_task(tmp_path)
    out = tmp_path / "eval"
    main(["eval", str(tiny_lm_dir), "--output-dir", str(out), "--lm-eval", "persyn_local_sums",
          "--lm-eval-include", str(tasks)])
    result = json.loads((out / "lm_eval.json").read_text())
    metrics = result["results"]["persyn_local_sums"]
    assert 0.0 <= metrics["acc,none"] <= 1.0
    assert metrics["acc,none"] * len(ITEMS) == pytest.approx(round(metrics["acc,none"] * len(ITEMS)))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["results"]["lm_eval"]["results"]["persyn_local_sums"]["acc,none"] == metrics["acc,none"]


def test_shipped_offline_tasks_run(tmp_path, tiny_lm_dir, shared_data, monkeypatch):
    """docs/lm_eval_tasks (named in docs/results.md) read ../shared/data relative to the repository root."""
    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)
    out = tmp_path / "eval"
    main(["eval", str(tiny_lm_dir), "--output-dir", str(out), "--lm-eval", "persyn_gsm8k_local",
          "--lm-eval-include", "docs/lm_eval_tasks", "--n", "2", "--max-new-tokens", "8"])
    results = json.loads((out / "lm_eval.json").read_text())["results"]
    assert results["persyn_gsm8k_local"]["exact_match,last-number"] in (0.0, 0.5, 1.0)
    assert "persyn_gsm8k_local" in (repo / "docs" / "results.md").read_text()


def test_missing_include_path_is_one_line(tmp_path, tiny_lm_dir, capsys):
    with pytest.raises(SystemExit) as info:
        main(["eval", str(tiny_lm_dir), "--output-dir", str(tmp_path / "e"), "--lm-eval", "x",
              "--lm-eval-include", str(tmp_path / "nope")])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "include path not found" in err[0]
