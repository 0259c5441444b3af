"""A tiny `persyn compare` end to end (the CI run): the example config with tiny models, then a resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from persyn.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "compare_tiny.yaml"


def tiny_example(tmp_path, shared_data, tiny_lm_dir) -> Path:
    """The shipped example with absolute data paths, the tiny model as student and router, fewer items."""
    data = yaml.safe_load(EXAMPLE.read_text())
    text = json.dumps(data).replace("../shared/data", str(shared_data))
    data = json.loads(text)
    data["run_dir"] = str(tmp_path / "run")
    data["prompts"]["limit"] = 24
    data["probe"]["size"] = 12
    data["student"] = {"model": str(tiny_lm_dir), "max_length": 256}
    data["router"] = {"backbone": str(tiny_lm_dir), "pooling": "last", "bt": {"epochs": 10}}
    data["train"] = {"max_steps": 2, "batch_size": 2, "max_length": 128}
    data["compare"]["strategies"].append("teacher:gemma-2b-it")
    data["compare"]["pairs"] = [["oracle", "random"]]
    data["eval"]["benchmarks"].append({"name": "gym", "items": "gym:basic_arithmetic+chain_sum:6:9"})
    for bench in data["eval"]["benchmarks"]:
        bench.update(n=2, max_new_tokens=8)
    data["eval"]["benchmarks"][-1]["n"] = 6
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow
def test_tiny_compare_trains_evaluates_reports_and_resumes(tmp_path, shared_data, tiny_lm_dir, capsys):
    config = tiny_example(tmp_path, shared_data, tiny_lm_dir)
    main(["compare", str(config)])
    assert "report.md" in capsys.readouterr().out
    out = tmp_path / "run" / "compare"
    results = json.loads((out / "results.json").read_text())
    strategies = results["strategies"]
    assert list(strategies) == ["persyn", "oracle", "strong", "mix", "car", "random", "teacher:gemma-2b-it"]
    for name, entry in strategies.items():
        rows = (out / name.replace(":", "_") / "dataset.jsonl").read_text().splitlines()
        assert len(rows) == entry["rows"] == 24  # same prompts, same size
        assert len(entry["runs"]) == (2 if name in ("persyn", "strong") else 1)
        for run in entry["runs"]:
            assert run["steps"] == 2
            assert set(run["eval"]) == {"ifeval", "gsm8k", "gym"} and run["eval"]["gsm8k"]["n"] == 2
    assert strategies["teacher:gemma-2b-it"]["teacher_counts"]["gemma-2b-it"] == 24
    assert strategies["oracle"]["generations_needed"] == 24 * 3 and strategies["oracle"]["needs_all_responses"]
    assert strategies["random"]["generations_needed"] == 24
    assert strategies["persyn"]["generations_needed"] == 12 * 3 + 12
    # The same seed and data give the same student (trained again elsewhere: the same loss and weights, byte for
    # byte); another seed a different one.
    from persyn.config import load_config
    from persyn.experiments.compare import train_config
    from persyn.experiments.train import train_student

    p0, p1 = (strategies["persyn"]["runs"][i]["train_loss"] for i in (0, 1))
    again = train_student(train_config(load_config(config), tmp_path / "again", 0), out / "persyn" / "dataset.jsonl")
    weights = {d: (d / "model.safetensors").read_bytes() for d in (tmp_path / "again", out / "persyn" / "seed0" /
                                                                   "model", out / "persyn" / "seed1" / "model")}
    assert again.train_loss == p0 and weights[tmp_path / "again"] == weights[out / "persyn" / "seed0" / "model"]
    assert p0 != p1 and weights[out / "persyn" / "seed1" / "model"] != weights[out / "persyn" / "seed0" / "model"]
    # Statistics from the per-item records: every strategy and the base model, paired differences against strong
    # and the best (here the only) single teacher, each with its smallest resolvable difference.
    stats = results["statistics"]
    assert set(stats) == {"ifeval", "gsm8k", "gym"} and stats["gym"]["items"] == 6
    gym = stats["gym"]
    assert set(gym["strategies"]) == set(strategies) | {"base"}
    assert gym["strategies"]["persyn"]["seeds"] == 2 and gym["strategies"]["random"]["seeds"] == 1
    assert gym["references"] == {"strong": "strong", "best single teacher": "teacher:gemma-2b-it"}
    pairs = {(d["strategy"], d["against"]) for d in gym["differences"]}
    assert ("persyn", "strong") in pairs and ("persyn", "best single teacher") in pairs
    assert ("oracle", "random") in pairs  # compare.pairs: a difference asked for by name
    assert ("strong", "strong") not in pairs and len(pairs) == 2 * len(strategies) - 2 + 1
    for d in gym["differences"]:
        assert d["lo"] <= d["diff"] <= d["hi"] and d["mde"] >= 0
        two = {"persyn", "strong"}  # trained with seeds 0 and 1, the others with 0: paired only within a group
        assert d["paired_seeds"] == ((d["strategy"] in two) == (d["reference"] in two))
    records = [json.loads(line) for line in (out / "persyn" / "seed0" / "eval" / "gym.records.jsonl")
               .read_text().splitlines()]
    assert stats["gym"]["strategies"]["persyn"]["mean"] == pytest.approx(
        (sum(r["correct"] for r in records) + sum(json.loads(line)["correct"] for line in (
            out / "persyn" / "seed1" / "eval" / "gym.records.jsonl").read_text().splitlines())) / 12)
    report = (out / "report.md").read_text()
    assert "### gym (6 items)" in report and "| persyn | strong (strong) |" in report
    assert "| strategy | ifeval prompt_level_strict_acc | ifeval inst_level_loose_acc | gsm8k accuracy |" in report
    assert "± " in report  # two seeds give a spread
    for png in ("teacher_shares.png", "reward_distributions.png", "cost_vs_score.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    # Resume: nothing is trained or evaluated again.
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("train_result.json")} | \
             {p: p.stat().st_mtime_ns for p in out.rglob("*.done.json")}
    # 8 trainings: car picks strong's teacher, so it trains on strong's rows and is strong's student
    assert strategies["car"]["teacher_counts"] == strategies["strong"]["teacher_counts"]
    assert strategies["car"]["runs"][0]["same_student_as"] == "strong"
    assert "| car | 0 | 2 |" in report and "(strong's student: the same rows) |" in report
    assert len(stamps) == 8 + 9 * 3 + 3  # and 3 benchmarks for each of 9 runs, and the base model
    main(["compare", str(config)])
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    again = json.loads((out / "results.json").read_text())["strategies"]
    assert again["strong"]["runs"] == strategies["strong"]["runs"]
    # A table of what is finished while more seeds are still to come: nobody is trained or evaluated.
    data = yaml.safe_load(config.read_text())
    data["compare"]["seeds"] = [0, 1, 2]
    del data["compare"]["seeds_for"]
    config.write_text(yaml.safe_dump(data))
    capsys.readouterr()
    main(["compare", str(config), "--finished-only"])
    printed = capsys.readouterr().out
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert not list(out.glob("*/seed2/model")) and not list(out.glob("mix/seed1/model"))
    partial = json.loads((out / "results.json").read_text())
    # car's seed 1 is strong's finished seed-1 student (the same rows): reported, not trained
    assert {n: len(e["runs"]) for n, e in partial["strategies"].items()} == {
        n: len(e["runs"]) + (n == "car") for n, e in strategies.items()}
    assert "persyn/seed2" in partial["unfinished"] and "mix/seed1" in partial["unfinished"]
    assert "car/seed1" not in partial["unfinished"] and "car/seed2" in partial["unfinished"]
    assert partial["statistics"]["gym"]["strategies"]["persyn"]["seeds"] == 2
    assert "not trained and evaluated yet" in " ".join(printed.split()) and "Not trained and evaluated yet" in (
        out / "report.md").read_text()


def test_train_and_eval_commands(tmp_path, tiny_lm_dir, shared_data, capsys):
    rows = [{"id": f"p{i}", "messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                                         {"role": "assistant", "content": f"{i} + {i} = {2 * i}. #### {2 * i}"}]}
            for i in range(8)]
    dataset = tmp_path / "d.jsonl"
    dataset.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "student"
    main(["train", str(dataset), "--model", str(tiny_lm_dir), "--output-dir", str(out), "--max-steps", "2",
          "--batch-size", "2"])
    assert "trained 2 steps" in capsys.readouterr().out
    assert (out / "model.safetensors").is_file()
    main(["eval", str(out), "--output-dir", str(tmp_path / "ev"), "--gsm8k", str(shared_data / "gsm8k" / "test.jsonl"),
          "--gym", "gym:basic_arithmetic:3:1", "--gym-template", "{prompt} Answer with a number.",
          "--exclude-prompts", str(dataset), "--n", "2", "--max-new-tokens", "4"])
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["results"]["gsm8k"]["n"] == 2
    gym = summary["results"]["gym"]
    assert gym["n"] == 2 and gym["excluded"] == 0 and gym["template"] == "{prompt} Answer with a number."
    assert set(gym["per_task"]) == {"basic_arithmetic"} and (tmp_path / "ev" / "gym.records.jsonl").is_file()


def test_bad_input_is_one_line_and_exit_2(tmp_path, tiny_lm_dir, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    with pytest.raises(SystemExit) as exc:
        main(["train", str(bad), "--model", str(tiny_lm_dir), "--output-dir", str(tmp_path / "o")])
    assert exc.value.code == 2 and "bad.jsonl" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["eval", str(tiny_lm_dir), "--output-dir", str(tmp_path / "e")])
    assert exc.value.code == 2
