"""The evidence experiment's whole chain on a tiny slice of its committed pool (issue 16), in CI.

docs/evidence/compare.yaml and compare_cascade.yaml themselves, with 30 of the pool's prompts, a tiny random student
trained for 2 steps and 8 held-out test items: every strategy's dataset, the verified filter, the cascade's
generation counts, the gym benchmark with training prompts excluded, the statistics and the report. The scores are
those of a random model; what is checked is that the chain holds together on the real pool's files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from persyn.cli import main
from persyn.experiments.selection import strategy_dirname

ROOT = Path(__file__).resolve().parents[1]
EVIDENCE = ROOT / "docs" / "evidence"
POOL = EVIDENCE / "pool"
N = 30

pytestmark = pytest.mark.slow


def tiny(tmp_path: Path, name: str, tiny_lm_dir: Path) -> Path:
    data = yaml.safe_load((EVIDENCE / name).read_text())
    data = json.loads(json.dumps(data).replace("docs/evidence/pool/", f"{POOL}/"))
    data["run_dir"] = str(tmp_path / name.removesuffix(".yaml"))
    data["prompts"]["limit"] = N
    data["probe"]["size"] = 12
    data["student"] = {"model": str(tiny_lm_dir), "max_length": 1024}
    data["router"] = {"backbone": str(tiny_lm_dir), "pooling": "last"}
    data["compare"]["seeds"] = [0]
    data["compare"]["train_rows"] = 12
    data["train"].update(max_steps=2, batch_size=2)  # the recipe itself (LoRA, bf16, grouping), 2 steps
    bench = data["eval"]["benchmarks"][0]
    bench["items"] = bench["items"].replace(":1200:9000", ":8:9000")
    bench.update(max_new_tokens=8, batch_size=8)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_pool_is_complete_and_scored():
    teachers = [t["name"] for t in yaml.safe_load((EVIDENCE / "compare.yaml").read_text())["teachers"]]
    ids = None
    for teacher in teachers:
        pool = rows(POOL / f"{teacher}.jsonl")
        assert len(pool) >= 1500, teacher
        assert ids is None or [r["id"] for r in pool] == ids  # every teacher answered every prompt, same order
        ids = [r["id"] for r in pool]
        assert all(r["quality"] in (0.0, 1.0) and r["learnability"] < 0 for r in pool)
        assert all(json.loads(r["entry"])["task"] == r["task"] for r in pool)


def truth(teachers: list[str]) -> dict[str, dict[str, float]]:
    """Each teacher's recorded quality by prompt text."""
    return {t: {r["instruction"]: r["quality"] for r in rows(POOL / f"{t}.jsonl")} for t in teachers}


def test_tiny_evidence_compare(tmp_path, tiny_lm_dir, capsys):
    config = tiny(tmp_path, "compare.yaml", tiny_lm_dir)
    main(["compare", str(config)])
    out = tmp_path / "compare" / "compare"
    results = json.loads((out / "results.json").read_text())
    strategies = results["strategies"]
    quality = truth(results["teachers"])

    def kept_quality(name: str) -> list[float]:
        data = rows(out / strategy_dirname(name) / "dataset.jsonl")
        return [quality[r["teacher"]][r["messages"][0]["content"]] for r in data]

    for name, entry in strategies.items():
        assert len(entry["runs"]) == 1 and entry["runs"][0]["steps"] == 2, name
        gym = entry["runs"][0]["eval"]["gym"]
        assert gym["n"] + gym["excluded"] + gym["repeated"] == 8 and gym["n"] > 0
    # compare.train_rows: every strategy of a seed trains on the same 12 prompts (a filtered one on its first 12).
    subsets = {name: [r["id"] for r in rows(out / strategy_dirname(name) / "seed0" / "train.jsonl")]
               for name in strategies}
    assert subsets["persyn"] == subsets["strong"] == subsets["oracle@0.0"] and len(set(subsets["persyn"])) == 12
    assert len(subsets["persyn+verified"]) == min(12, strategies["persyn+verified"]["rows"])
    # ...drawn apart from the probe: persyn trains on routed rows too, not only on its Generate-then-Select probe
    sources = {r["source"] for r in rows(out / "persyn" / "seed0" / "train.jsonl")}
    assert sources == {"probe", "routed"}
    # Verified filtering keeps exactly persyn's rows whose answer the verifier accepted.
    persyn, verified = kept_quality("persyn"), kept_quality("persyn+verified")
    assert len(persyn) == N and verified == [1.0] * persyn.count(1.0)
    assert strategies["persyn+verified"]["dropped_below_min_quality"] == N - len(verified)
    # Generate-then-Select at alpha 0 keeps a correct answer wherever any teacher had one; alpha 1 ignores quality.
    texts = [r["messages"][0]["content"] for r in rows(out / "persyn" / "dataset.jsonl")]
    any_right = sum(max(quality[t][text] for t in quality) for text in texts)
    assert sum(kept_quality("oracle@0.0")) == any_right
    assert sum(kept_quality("oracle@1.0")) <= any_right
    for t in results["teachers"]:
        assert strategies[f"teacher:{t}"]["teacher_counts"][t] == N
    # The single teacher that strong picked trains on strong's very rows: strong's student, not a second one.
    (picked,) = [t for t, n in strategies["strong"]["teacher_counts"].items() if n]
    twin_run = strategies[f"teacher:{picked}"]["runs"][0]
    assert twin_run["same_student_as"] == "strong" and twin_run["train_seconds"] == 0.0
    assert twin_run["eval"] == strategies["strong"]["runs"][0]["eval"]
    assert not (out / strategy_dirname(f"teacher:{picked}") / "seed0" / "model").exists()
    assert all("same_student_as" not in e["runs"][0] for n, e in strategies.items() if n != f"teacher:{picked}")
    stats = results["statistics"]["gym"]
    assert set(stats["strategies"]) == set(strategies) | {"base"}
    assert "### gym" in (out / "report.md").read_text()
    capsys.readouterr()


def test_tiny_evidence_cascade_asks_the_next_teacher_only_while_wrong(tmp_path, tiny_lm_dir):
    config = tiny(tmp_path, "compare_cascade.yaml", tiny_lm_dir)
    main(["compare", str(config), "--no-train"])
    quality = truth([t["name"] for t in yaml.safe_load(config.read_text())["teachers"]])
    routed = [r for r in rows(tmp_path / "compare_cascade" / "routing.jsonl") if not r["probe"]]
    assert len(routed) == N - 12
    asked = [r["candidates"] for r in routed]
    assert sum(map(len, asked)) <= 2 * len(routed) and any(len(a) > 1 for a in asked)
    for r, a in zip(routed, asked, strict=True):
        # each further teacher was asked only because every answer before it was wrong
        assert all(quality[t][r["prompt"]] < 1 for t in a[:-1]), r
    # its cost counts every teacher asked, kept or not: the probe's 12 x 5 and each routed prompt's candidates
    cost = json.loads((tmp_path / "compare_cascade" / "compare" / "persyn" / "selection.json").read_text())
    assert cost["generations_needed"] == 12 * 5 + sum(map(len, asked))
