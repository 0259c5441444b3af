"""A changed config redoes only what the change affects, and `persyn status` shows what is done and pending."""

from __future__ import annotations

import copy
import json
import sqlite3
from pathlib import Path

import pytest
import yaml

from persyn.cli import main
from persyn.config import parse_config
from persyn.keys import Keys
from persyn.pipeline import run_stages
from persyn.prompts import Prompt
from persyn.status import run_status

N, K = 10, 4  # prompts, probe size


@pytest.fixture
def base(tmp_path, tiny_lm_dir, tiny_lm_dir_b) -> dict:
    rows = [{"q": f"What is {i} times 2?", "a": str(2 * i)} for i in range(N)]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {
        "run_dir": str(tmp_path / "run"),
        "prompts": {"path": str(tmp_path / "p.jsonl"), "field": "q", "reference_field": "a"},
        "teachers": [{"name": "a", "model": str(tiny_lm_dir)}, {"name": "b", "model": str(tiny_lm_dir_b)}],
        "student": {"model": str(tiny_lm_dir)},
        "quality": {"kind": "math_answer"},
        "reward": {"alpha": 0.4},
        "probe": {"size": K, "seed": 0},
        "router": {"backbone": str(tiny_lm_dir), "pooling": "last", "bt": {"epochs": 10}},
        "generation": {"max_new_tokens": 6, "batch_size": 4, "temperature": 1.0, "seed": 2},
    }


def changed(cfg: dict, **edits) -> dict:
    out = copy.deepcopy(cfg)
    for path, value in edits.items():
        node = out
        *parents, last = path.split("__")
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[last] = value
    return out


def generations(cfg: dict) -> dict[str, tuple]:
    """key -> (teacher, prompt_id, invocation, text, created): every stored generation."""
    db = sqlite3.connect(Path(cfg["run_dir"]) / "persyn.sqlite")
    try:
        rows = db.execute("SELECT key, teacher, prompt_id, invocation, text, created FROM generations")
        return {r[0]: r[1:] for r in rows}
    finally:
        db.close()


def scores(cfg: dict, kind: str) -> dict[tuple[str, str], float]:
    """(gen_key, scorer) -> created time of every stored score of this kind."""
    db = sqlite3.connect(Path(cfg["run_dir"]) / "persyn.sqlite")
    try:
        return {(k, s): c for k, s, c in db.execute("SELECT gen_key, scorer, created FROM scores WHERE kind=?",
                                                    (kind,))}
    finally:
        db.close()


def routing(cfg: dict) -> dict[str, tuple[str, bool]]:
    lines = (Path(cfg["run_dir"]) / "routing.jsonl").read_text().splitlines()
    return {r["id"]: (r["teacher"], r["probe"]) for r in map(json.loads, lines)}


def status(cfg: dict) -> dict[str, tuple[int, int]]:
    return {row["stage"]: (row["done"], row["pending"]) for row in run_status(parse_config(cfg))}


def cli_status(tmp_path: Path, cfg: dict, capsys) -> dict[str, tuple[int, int]]:
    """The numbers `persyn status config.yaml` prints."""
    path = tmp_path / "status.yaml"
    path.write_text(yaml.safe_dump(cfg))
    main(["status", str(path)])
    table = {}
    for line in capsys.readouterr().out.splitlines():
        cells = [c.strip() for c in line.split("│") if c.strip()]
        if len(cells) >= 3 and cells[1].isdigit():
            table[cells[0]] = (int(cells[1]), int(cells[2]))
    return table


def expected_routed(cfg: dict, before: dict, route: dict) -> set[str]:
    """Keys of the routed generations this routing needs that the store did not hold."""
    c = parse_config(cfg)
    prompts = {p.id: p for p in (Prompt(pid, text) for pid, text in _prompt_texts(cfg).items())}
    keys = Keys(c)
    return {keys.generation(c.teacher(t), prompts[pid]) for pid, (t, probe) in route.items() if not probe} - set(before)


def _prompt_texts(cfg: dict) -> dict[str, str]:
    db = sqlite3.connect(Path(cfg["run_dir"]) / "persyn.sqlite")
    try:
        return dict(db.execute("SELECT id, text FROM prompts WHERE active=1"))
    finally:
        db.close()


def assert_untouched(before: dict, after: dict) -> None:
    """Nothing generated before was generated again: same rows, same invocation, same text."""
    assert {k: after[k] for k in before} == before


def test_changing_one_teachers_parameters_regenerates_only_its_rows(tmp_path, base, capsys):
    first = run_stages(parse_config(base))
    assert first.generated == K * 2 + (N - K)
    before, route1 = generations(base), routing(base)
    assert status(base)["probe"] == (2 * K, 0)

    # Settings outside the generation key (batch size) change nothing.
    same = changed(base, generation__batch_size=2, teachers__1__batch_size=1)
    assert run_stages(parse_config(same), ["probe", "score"]).generated == 0

    cfg = changed(base, teachers__1__temperature=0.7, teachers__1__max_new_tokens=5)
    assert cli_status(tmp_path, cfg, capsys)["probe"] == (K, K)  # a's probe rows done, b's pending
    s = status(cfg)
    # quality (math_answer needs no model) covers a's routed responses too, which stay scored
    routed_a = sum(1 for t, probe in route1.values() if t == "a" and not probe)
    assert s["score: quality"] == (K + routed_a, K) and s["score: learnability"] == (K, K)
    q_before, l_before = scores(base, "quality"), scores(base, "learnability")

    second = run_stages(parse_config(cfg))
    after = generations(cfg)
    assert_untouched(before, after)
    new = {k: v for k, v in after.items() if k not in before}
    assert second.generated == len(new)
    new_probe = [v for v in new.values() if v[1] in {pid for pid, (_, probe) in route1.items() if probe}]
    assert len(new_probe) == K and {v[0] for v in new_probe} == {"b"}
    # Routed rows: only those the new routing needs and the store lacked (b's are all new; a's only where a
    # prompt moved from b to a).
    assert set(new) - {k for k, v in new.items() if v in new_probe} == expected_routed(cfg, before, routing(cfg))
    for v in new.values():
        if v[0] == "a":
            assert route1[v[1]][0] == "b" and not route1[v[1]][1]
    # Old scores kept; exactly b's K new probe responses scored, once per kind, and quality of the new routed ones.
    for kind, old, routed in (("quality", q_before, len(new) - K), ("learnability", l_before, 0)):
        now = scores(cfg, kind)
        assert {k: now[k] for k in old} == old
        assert len(now) == len(old) + K + routed
    assert all(pending == 0 for _, pending in status(cfg).values())


def test_adding_a_teacher_generates_only_its_probe_rows_and_needed_routed_rows(tmp_path, base, tiny_lm_dir_b,
                                                                               capsys):
    run_stages(parse_config(base))
    before, route1 = generations(base), routing(base)
    cfg = changed(base, teachers=base["teachers"] + [{"name": "c", "model": str(tiny_lm_dir_b), "few_shot": True}])
    assert cli_status(tmp_path, cfg, capsys)["probe"] == (2 * K, K)
    second = run_stages(parse_config(cfg))
    after = generations(cfg)
    assert_untouched(before, after)
    new = {k: v for k, v in after.items() if k not in before}
    probe_ids = {pid for pid, (_, probe) in route1.items() if probe}
    new_probe = {k for k, v in new.items() if v[1] in probe_ids}
    assert len(new_probe) == K and {new[k][0] for k in new_probe} == {"c"}
    assert set(new) - new_probe == expected_routed(cfg, before, routing(cfg))
    assert second.generated == len(new) <= K + (N - K)
    summary = json.loads((Path(cfg["run_dir"]) / "summary.json").read_text())
    assert summary["teachers"] == 3 and summary["dataset_rows"] == N
    assert len((Path(cfg["run_dir"]) / "scores.jsonl").read_text().splitlines()) == 3 * K


def test_changing_the_student_rescores_learnability_only(tmp_path, base, tiny_lm_dir_b, capsys):
    run_stages(parse_config(base))
    before = generations(base)
    q_before, l_before = scores(base, "quality"), scores(base, "learnability")
    assert len(l_before) == 2 * K and len(q_before) == 2 * K + (N - K)  # quality of the routed responses too
    cfg = changed(base, student={"model": str(tiny_lm_dir_b)})
    table = cli_status(tmp_path, cfg, capsys)
    assert table["probe"] == (2 * K, 0)
    assert table["score: quality"] == (2 * K + (N - K), 0)
    assert table["score: learnability"] == (0, 2 * K)

    scored = run_stages(parse_config(cfg), ["probe", "score"])
    assert scored.generated == 0 and scored.executor.calls == 0  # no backend call at all
    assert generations(cfg) == before
    assert scores(cfg, "quality") == q_before  # quality is not recomputed
    l_now = scores(cfg, "learnability")
    assert {k: l_now[k] for k in l_before} == l_before  # the old student's scores stay (switching back is free)
    new_scorers = {s for _, s in set(l_now) - set(l_before)}
    assert len(l_now) == 4 * K and len(new_scorers) == 1 and tiny_lm_dir_b.name in next(iter(new_scorers))
    assert status(cfg)["score: learnability"] == (2 * K, 0)

    # The full run regenerates nothing it had; it may only add routed rows the new routing needs.
    run_stages(parse_config(cfg))
    after = generations(cfg)
    assert_untouched(before, after)
    assert set(after) - set(before) == expected_routed(cfg, before, routing(cfg))
    assert all(pending == 0 for _, pending in cli_status(tmp_path, cfg, capsys).values())
    # Switching back to the first student needs no scoring and no generation.
    back = run_stages(parse_config(base), ["probe", "score"])
    assert back.generated == 0 and back.executor.calls == 0 and scores(base, "learnability") == l_now
