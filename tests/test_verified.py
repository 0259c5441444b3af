"""Routed responses scored for quality when the kind needs no model, and verified filtering (export.min_quality),
on recorded teachers answering reasoning-gym problems: one always wrong, one right on one task only, one right on
two problems in three (which no router can foresee, so some routed rows are wrong)."""

from __future__ import annotations

import json
import sqlite3

import pytest
import yaml

from persyn.cli import main
from persyn.errors import ConfigError
from persyn.outputs.export import apply_min_quality
from persyn.prompts import _gym_rows

SPEC = "gym:basic_arithmetic+chain_sum:40:3"


def correct(teacher: str, task: str, i: int) -> bool:
    return {"wrong": False, "arith": task == "basic_arithmetic", "right": i % 3 != 0}[teacher]


def gym_pool(root):
    """Responses files of three teachers on SPEC's problems; returns {question: (task, index)}."""
    items = {row["prompt"]: (row["task"], row["answer"], i) for i, (_, row) in enumerate(_gym_rows(SPEC))}
    for name in ("wrong", "arith", "right"):
        rows = [{"instruction": q, "output": f"Working it out.\n<answer>{a if correct(name, t, i) else a + '9'}"
                                              "</answer>"} for q, (t, a, i) in items.items()]
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return items


def gym_config(root, **over):
    cfg = {"run_dir": str(root / "run"),
           "prompts": {"path": SPEC, "reference_field": "entry"},
           "teachers": [{"name": n, "backend": "recorded", "model": str(root / f"{n}.jsonl"), "quality_field": None}
                        for n in ("wrong", "arith", "right")],
           "quality": {"kind": "gym"}, "reward": {"alpha": 0.0}, "probe": {"size": 12, "seed": 0},
           "router": {"bt": {"epochs": 30}, "seed": 0}}
    cfg.update(over)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def score_rows(run_dir):
    with sqlite3.connect(run_dir / "persyn.sqlite") as db:
        return sorted(db.execute("SELECT gen_key, value, created FROM scores WHERE kind='quality'"))


@pytest.fixture(scope="module")
def gym_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("verified")
    items = gym_pool(root)
    config = gym_config(root)
    main(["run", str(config)])
    return root, config, items


def test_routed_rows_get_the_verifier_quality_in_dataset_summary_report_and_card(gym_run, capsys):
    root, config, items = gym_run
    run_dir = root / "run"
    dataset = read_jsonl(run_dir / "dataset.jsonl")
    routed = [r for r in dataset if r["source"] == "routed"]
    assert len(routed) == 40 - 12
    for row in dataset:  # every row's quality is its teacher's known correctness on that problem
        task, _, i = items[row["messages"][0]["content"]]
        assert row["quality"] == float(correct(row["teacher"], task, i)), row
    assert 0 < sum(r["quality"] for r in routed) < len(routed)
    s = json.loads((run_dir / "summary.json").read_text())
    q = s["quality"]["routed"]
    share = sum(r["quality"] for r in routed) / len(routed)
    assert q == {"rows": len(routed), "scored": len(routed), "mean": round(share, 4),
                 "correct_share": round(share, 4)}
    assert s["filter"] is None and s["quality"]["kind"] == "gym"
    html = (run_dir / "report.html").read_text()
    assert 'id="quality-routed"' in html and f"{100 * share:.1f}% verified correct" in html
    main(["export", str(config), "--format", "messages"])
    card = (run_dir / "export" / "messages" / "README.md").read_text()
    assert (f"- routed rows (before any filter): {len(routed)}, mean quality {share:.4f} over {len(routed)} "
            f"scored, {share:.2%} verified correct") in card
    assert f"routed rows: {len(routed)}, mean quality {share:.3f}" in capsys.readouterr().out


def test_routed_scores_are_stored_once_and_a_rerun_redoes_nothing(gym_run, capsys):
    root, config, _ = gym_run
    before = score_rows(root / "run")
    assert len(before) == 12 * 3 + 28  # probe responses and every routed one
    main(["generate", str(config)])  # the stage that scores routed responses, run again
    main(["status", str(config)])
    assert "│ score: quality │   64 │       0" in capsys.readouterr().out
    assert score_rows(root / "run") == before  # same rows, same timestamps: nothing scored twice


def test_min_quality_drops_unverified_rows_and_says_so(gym_run, tmp_path, capsys):
    import shutil

    root, _, _ = gym_run  # `persyn export` alone scores what it filters on
    shutil.copytree(root / "run", tmp_path / "run")
    with sqlite3.connect(tmp_path / "run" / "persyn.sqlite") as db:  # as a run made before routed rows were scored
        gone = db.execute("DELETE FROM scores WHERE kind='quality' AND gen_key IN (SELECT key FROM generations "
                          "WHERE prompt_id NOT IN (SELECT prompt_id FROM probe))").rowcount
    assert gone == 28
    config = gym_config(root, run_dir=str(tmp_path / "run"), export={"min_quality": 1.0})
    main(["export", str(config), "--format", "hf"])
    run_dir = tmp_path / "run"
    full = read_jsonl(root / "run" / "dataset.jsonl")
    kept = read_jsonl(run_dir / "dataset.jsonl")
    assert kept == [r for r in full if r["quality"] == 1.0] and 0 < len(kept) < len(full)
    s = json.loads((run_dir / "summary.json").read_text())
    dropped = len(full) - len(kept)
    assert s["dataset_rows"] == len(kept) and s["dataset_missing"] == []
    assert s["filter"]["dropped"] == dropped and s["filter"]["rows_before"] == len(full)
    assert s["filter"]["dropped_by_teacher"]["wrong"] == sum(r["teacher"] == "wrong" for r in full)
    assert s["quality"]["dataset"]["correct_share"] == 1.0
    assert sum(s["teacher_counts"].values()) == len(kept)
    assert f"export.min_quality 1: dropped {dropped} of {len(full)} rows (0 with unknown quality)" in \
        capsys.readouterr().out
    card = (run_dir / "export" / "hf" / "README.md").read_text()
    assert f"dropped {dropped} of {len(full)} rows, 0 of them with unknown quality" in card
    assert f"dropped_by_min_quality: {dropped}" in card  # the front matter


def test_rows_of_unknown_quality_are_dropped_and_counted():
    rows = [{"teacher": "a", "quality": 1.0}, {"teacher": "a", "quality": None}, {"teacher": "b", "quality": 0.0},
            {"teacher": "b", "quality": 0.5}]
    kept, info = apply_min_quality(rows, 0.5)
    assert kept == [rows[0], rows[3]]
    assert info == {"min_quality": 0.5, "rows_before": 4, "dropped": 2, "dropped_unknown_quality": 1,
                    "dropped_by_teacher": {"a": 1, "b": 1}}
    assert apply_min_quality(rows, None) == (rows, None)


def test_min_quality_needs_quality(tmp_path):
    from persyn.config import parse_config

    gym_pool(tmp_path)
    data = yaml.safe_load(gym_config(tmp_path, reward={"alpha": 1.0}, export={"min_quality": 1}).read_text())
    data["student"] = {"model": "smollm2-135m-instruct"}
    with pytest.raises(ConfigError, match="export.min_quality"):
        parse_config(data)
