"""Drift: an input edited between runs redoes exactly the outputs it shapes, and nothing else.

Each test runs a real pipeline, edits one input (a recorded file, an openai extra.body, a chat-template file,
weights rewritten at the same path, the student updated in place, a prompt's text under a stable id, appended
prompts), runs again, and counts what the store gained. Old rows are never rewritten.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from helpers import CHATML, read_jsonl

from persyn.config import parse_config
from persyn.keys import Keys, draw_probe
from persyn.pipeline import run_stages
from persyn.prompts import Prompt
from persyn.status import run_status

N, K = 8, 3  # prompts, probe size


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def prompt_rows(n: int = N) -> list[dict]:
    return [{"id": f"q{i}", "q": f"What is {i} times 2?", "a": str(2 * i)} for i in range(n)]


def recorded(path: Path, tag: str, texts: list[str]) -> Path:
    """A responses file answering every text; `tag` makes each teacher's answers its own."""
    return write_jsonl(path, [{"instruction": t, "output": f"{tag}: {t} The answer is {t.split()[2]}."}
                              for t in texts])


def config(tmp_path: Path, teachers: list[dict], **over) -> dict:
    cfg = {
        "run_dir": str(tmp_path / "run"),
        "prompts": {"path": str(tmp_path / "p.jsonl"), "field": "q", "id_field": "id", "reference_field": "a"},
        "teachers": teachers,
        "quality": {"kind": "math_answer"},
        "reward": {"alpha": 0.0},
        "probe": {"size": K, "seed": 0},
        "router": {"backbone": over.pop("backbone"), "pooling": "last", "bt": {"epochs": 5}},
        "generation": {"max_new_tokens": 6, "batch_size": 4, "temperature": 1.0, "seed": 3},
    }
    cfg.update(over)
    return cfg


def generations(cfg: dict) -> dict[str, tuple]:
    """key -> (teacher, prompt_id, invocation, text, created) of every stored generation."""
    with sqlite3.connect(Path(cfg["run_dir"]) / "persyn.sqlite") as db:
        rows = db.execute("SELECT key, teacher, prompt_id, invocation, text, created FROM generations")
        return {r[0]: r[1:] for r in rows}


def scores(cfg: dict, kind: str) -> dict[tuple[str, str], float]:
    with sqlite3.connect(Path(cfg["run_dir"]) / "persyn.sqlite") as db:
        return {(k, s): c for k, s, c in db.execute("SELECT gen_key, scorer, created FROM scores WHERE kind=?",
                                                    (kind,))}


def learnability_values(cfg: dict) -> dict[tuple[str, str], float]:
    with sqlite3.connect(Path(cfg["run_dir"]) / "persyn.sqlite") as db:
        return {(k, s): v for k, s, v in db.execute("SELECT gen_key, scorer, value FROM scores "
                                                    "WHERE kind='learnability'")}


def routing(cfg: dict) -> dict[str, tuple[str, bool]]:
    lines = (Path(cfg["run_dir"]) / "routing.jsonl").read_text().splitlines()
    return {r["id"]: (r["teacher"], r["probe"]) for r in map(json.loads, lines)}


def probe_ids(cfg: dict) -> set[str]:
    return {pid for pid, (_, probe) in routing(cfg).items() if probe}


def needed(cfg: dict) -> dict[str, tuple[str, str]]:
    """key -> (teacher, prompt id) of every generation this config's run needs: every teacher on the probe, the
    routed teacher elsewhere."""
    c, keys = parse_config(cfg), Keys(parse_config(cfg))
    with sqlite3.connect(Path(cfg["run_dir"]) / "persyn.sqlite") as db:
        prompts = {i: Prompt(i, t) for i, t in db.execute("SELECT id, text FROM prompts WHERE active=1")}
    out = {}
    for pid, (teacher, probe) in routing(cfg).items():
        for t in c.teachers if probe else [c.teacher(teacher)]:
            out[keys.generation(t, prompts[pid])] = (t.name, pid)
    return out


def rerun(cfg: dict, before: dict) -> tuple[object, dict[str, tuple]]:
    """Run again in this process (models loaded by the last run stay cached); returns the run and the new
    generations, after checking that no old row was rewritten and that exactly the missing needed ones were made."""
    run = run_stages(parse_config(cfg))
    after = generations(cfg)
    assert {k: after[k] for k in before} == before, "an old generation was rewritten"
    new = {k: after[k] for k in set(after) - set(before)}
    assert set(new) == set(needed(cfg)) - set(before), "made something not needed, or missed something needed"
    assert run.generated == len(new)
    assert all(p == 0 for p in (row["pending"] for row in run_status(parse_config(cfg)) if row["stage"] != "export"))
    return run, new


def routed_to(cfg: dict, teacher: str) -> int:
    return sum(1 for t, probe in routing(cfg).values() if t == teacher and not probe)


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "p.jsonl", prompt_rows())


def texts(n: int = N) -> list[str]:
    return [r["q"] for r in prompt_rows(n)]


def test_edited_recorded_file_regenerates_that_teacher_only(tmp_path, prompts_file, tiny_lm_dir):
    a, b = recorded(tmp_path / "a.jsonl", "A", texts()), recorded(tmp_path / "b.jsonl", "B", texts())
    cfg = config(tmp_path, [{"name": "a", "backend": "recorded", "model": str(a)},
                            {"name": "b", "backend": "recorded", "model": str(b)}], backbone=str(tiny_lm_dir))
    first = run_stages(parse_config(cfg))
    assert first.changes.startswith("first run")
    before, q_before = generations(cfg), scores(cfg, "quality")
    recorded(a, "A2", texts())  # every output rewritten, same answers
    second, new = rerun(cfg, before)
    assert {t for t, _, _, _, _ in new.values()} == {"a"}
    assert len(new) == K + routed_to(cfg, "a")
    assert all(text.startswith("A2: ") for _, _, _, text, _ in new.values())
    assert second.changes == (f"changed since last run: teacher a (recorded file) -> redo: {K} generations of a"
                              + (f", {routed_to(cfg, 'a')} routed generations of a" if routed_to(cfg, "a") else "")
                              + f", quality of {K} responses")
    q_now = scores(cfg, "quality")
    # a's new probe and routed responses are scored (math_answer needs no model, so routed ones are too)
    assert {k: q_now[k] for k in q_before} == q_before and len(q_now) == len(q_before) + K + routed_to(cfg, "a")
    dataset = read_jsonl(Path(cfg["run_dir"]) / "dataset.jsonl")
    assert all(r["messages"][1]["content"].startswith("A2: ") for r in dataset if r["teacher"] == "a")
    assert "nothing changed since last run -> to do: nothing" == run_stages(parse_config(cfg)).changes


def test_changed_openai_extra_body_regenerates_that_teacher_only(tmp_path, prompts_file, tiny_lm_dir):
    from openai_server import serve

    b = recorded(tmp_path / "b.jsonl", "B", texts())
    with serve(tiny_lm_dir) as server:
        def cfg_with(body: dict) -> dict:
            extra = {"backoff_base_s": 0.01, "backoff_max_s": 0.05, "body": body}
            return config(tmp_path, [{"name": "s", "backend": "openai", "model": "tiny", "base_url": server.base_url,
                                      "extra": extra},
                                     {"name": "b", "backend": "recorded", "model": str(b)}], backbone=str(tiny_lm_dir))

        cfg = cfg_with({"presence_penalty": 0.1})
        run_stages(parse_config(cfg))
        sent = server.state.total
        before = generations(cfg)
        # A setting outside the body (retry backoff) shapes no output: nothing is redone.
        same = cfg_with({"presence_penalty": 0.1})
        same["teachers"][0]["extra"]["backoff_base_s"] = 0.02
        assert run_stages(parse_config(same)).generated == 0 and server.state.total == sent
        cfg = cfg_with({"presence_penalty": 0.5})
        second, new = rerun(cfg, before)
        assert {t for t, _, _, _, _ in new.values()} == {"s"}
        assert len(new) == K + routed_to(cfg, "s") == server.state.total - sent
        assert all(body["presence_penalty"] == 0.5 for body in list(server.state.bodies)[sent:])
        assert "teacher s (extra.body)" in second.changes


def test_edited_chat_template_file_regenerates_that_teacher_only(tmp_path, prompts_file, tiny_lm_dir):
    template = tmp_path / "chat.jinja"
    template.write_text(CHATML)
    b = recorded(tmp_path / "b.jsonl", "B", texts())
    cfg = config(tmp_path, [{"name": "a", "model": str(tiny_lm_dir), "chat_template": str(template)},
                            {"name": "b", "backend": "recorded", "model": str(b)}], backbone=str(tiny_lm_dir))
    run_stages(parse_config(cfg))
    before = generations(cfg)
    template.write_text("{{ 'Answer briefly.\\n' }}" + CHATML)
    second, new = rerun(cfg, before)
    assert {t for t, _, _, _, _ in new.values()} == {"a"} and len(new) == K + routed_to(cfg, "a")
    assert "teacher a (chat template)" in second.changes


def test_new_weights_at_the_same_path_regenerate_that_teacher_only(tmp_path, prompts_file, tiny_lm_dir, tiny_lm_dir_b):
    model = tmp_path / "teacher_model"
    shutil.copytree(tiny_lm_dir, model)
    b = recorded(tmp_path / "b.jsonl", "B", texts())
    cfg = config(tmp_path, [{"name": "a", "model": str(model)},
                            {"name": "b", "backend": "recorded", "model": str(b)}], backbone=str(tiny_lm_dir))
    run_stages(parse_config(cfg))
    before = generations(cfg)
    # Same size, and copy2 even keeps the old file's mtime: only the content (and the inode's ctime) differ.
    shutil.copy2(tiny_lm_dir_b / "model.safetensors", model / "model.safetensors")
    second, new = rerun(cfg, before)  # in the same process: the cached model is dropped, not reused
    assert {t for t, _, _, _, _ in new.values()} == {"a"} and len(new) == K + routed_to(cfg, "a")
    assert "teacher a (weights)" in second.changes
    old_text = {pid: text for t, pid, _, text, _ in before.values() if t == "a"}
    assert any(text != old_text[pid] for _, pid, _, text, _ in new.values())


def test_student_updated_in_place_rescores_learnability_only(tmp_path, prompts_file, tiny_lm_dir, tiny_lm_dir_b):
    student = tmp_path / "student"
    shutil.copytree(tiny_lm_dir, student)
    a, b = recorded(tmp_path / "a.jsonl", "A", texts()), recorded(tmp_path / "b.jsonl", "B", texts())
    cfg = config(tmp_path, [{"name": "a", "backend": "recorded", "model": str(a)},
                            {"name": "b", "backend": "recorded", "model": str(b)}], backbone=str(tiny_lm_dir),
                 student={"model": str(student)}, reward={"alpha": 0.5})
    run_stages(parse_config(cfg))
    before, q_before, l_before = generations(cfg), scores(cfg, "quality"), scores(cfg, "learnability")
    assert len(l_before) == 2 * K
    # Saved next to it and renamed over it (a new inode: a model that mmapped the old file would keep old weights).
    shutil.copy2(tiny_lm_dir_b / "model.safetensors", student / "new.tmp")
    os.replace(student / "new.tmp", student / "model.safetensors")
    scored = run_stages(parse_config(cfg), ["probe", "score"])
    assert scored.generated == 0 and scored.executor.calls == 0
    assert scored.changes == f"changed since last run: student (weights) -> redo: learnability of {2 * K} responses"
    assert generations(cfg) == before and scores(cfg, "quality") == q_before
    l_now = scores(cfg, "learnability")
    assert {k: l_now[k] for k in l_before} == l_before and len(l_now) == 4 * K
    # Scored with the new weights in this same process, not with the model the first run left cached.
    values = learnability_values(cfg)
    [new_scorer] = {s for _, s in l_now} - {s for _, s in l_before}
    assert all(values[k, new_scorer] != values[k, s] for k, s in l_before)
    rerun(cfg, before)  # routing may move with the new rewards; only what the new routing lacks is generated


def test_prompt_text_changed_under_a_stable_id_regenerates_that_prompt_only(tmp_path, prompts_file, tiny_lm_dir):
    rows = prompt_rows()
    edited = [dict(r) for r in rows]
    a = recorded(tmp_path / "a.jsonl", "A", texts() + [f"Compute {i} times 2." for i in range(N)])
    b = recorded(tmp_path / "b.jsonl", "B", texts() + [f"Compute {i} times 2." for i in range(N)])
    cfg = config(tmp_path, [{"name": "a", "backend": "recorded", "model": str(a)},
                            {"name": "b", "backend": "recorded", "model": str(b)}], backbone=str(tiny_lm_dir))
    run_stages(parse_config(cfg))
    probe = probe_ids(cfg)
    outside = next(r["id"] for r in rows if r["id"] not in probe)
    inside = next(r["id"] for r in rows if r["id"] in probe)

    # A prompt outside the probe: its one routed generation, nothing else; the router is not retrained.
    before, teacher = generations(cfg), routing(cfg)[outside][0]
    for r in edited:
        if r["id"] == outside:
            r["q"] = r["q"].replace("What is", "Compute").replace("?", ".")
    write_jsonl(prompts_file, edited)
    second, new = rerun(cfg, before)
    assert [pid for _, pid, _, _, _ in new.values()] == [outside]
    assert probe_ids(cfg) == probe
    assert second.changes == (f"changed since last run: text of 1 prompt -> redo: 1 routed generation of {teacher}, "
                              "routing of 1 prompt")

    # A probe prompt: every teacher's response to it, then what the retrained router's routing lacks.
    before = generations(cfg)
    for r in edited:
        if r["id"] == inside:
            r["q"] = r["q"].replace("What is", "Compute").replace("?", ".")
    write_jsonl(prompts_file, edited)
    _, new = rerun(cfg, before)
    assert probe_ids(cfg) == probe
    probe_new = [(t, pid) for t, pid, _, _, _ in new.values() if pid in probe]
    assert sorted(probe_new) == [("a", inside), ("b", inside)]


def test_appended_prompts_keep_the_probe_and_generate_only_their_rows(tmp_path, prompts_file, tiny_lm_dir):
    more = prompt_rows(N + 5)
    a, b = recorded(tmp_path / "a.jsonl", "A", texts(N + 5)), recorded(tmp_path / "b.jsonl", "B", texts(N + 5))
    cfg = config(tmp_path, [{"name": "a", "backend": "recorded", "model": str(a)},
                            {"name": "b", "backend": "recorded", "model": str(b)}], backbone=str(tiny_lm_dir))
    run_stages(parse_config(cfg))
    probe, route1, before = probe_ids(cfg), routing(cfg), generations(cfg)
    write_jsonl(prompts_file, more)
    second, new = rerun(cfg, before)
    assert probe_ids(cfg) == probe
    assert {pid for _, pid, _, _, _ in new.values()} == {f"q{i}" for i in range(N, N + 5)} and len(new) == 5
    assert {pid: v for pid, v in routing(cfg).items() if pid in route1} == route1
    assert "5 prompts added" in second.changes
    assert second.changes.endswith("redo: routing and generation for 5 new prompts")


def test_draw_probe_is_stable_under_appends_and_keeps_the_last_probe():
    ids = [f"p{i}" for i in range(100)]
    first = draw_probe(ids, 10, seed=1)
    assert len(set(first)) == 10 and first == draw_probe(list(reversed(ids)), 10, seed=1)  # order-free
    assert draw_probe(ids, 10, seed=2) != first
    grown = draw_probe(ids + [f"n{i}" for i in range(50)], 10, seed=1)
    # Without the last probe, an appended id enters only by outranking a kept one: the others keep their order.
    assert [i for i in grown if i in ids] == first[: len([i for i in grown if i in ids])]
    kept = draw_probe(ids + [f"n{i}" for i in range(50)], 10, seed=1, keep=first)
    assert kept == first
    assert draw_probe(ids + ["x"], 12, seed=1, keep=first)[:10] == first  # a larger probe only adds
    assert set(draw_probe(ids, 5, seed=1, keep=first)) <= set(first)  # a smaller one keeps the best-ranked
    assert draw_probe(ids[1:], 10, seed=1, keep=first) == [*[i for i in first if i != "p0"],
                                                           *[i for i in draw_probe(ids[1:], 11, seed=1)
                                                             if i not in first]][:10]


def test_resolved_config_is_written_and_loads_back(tmp_path, prompts_file, tiny_lm_dir):
    import yaml

    a, b = recorded(tmp_path / "a.jsonl", "A", texts()), recorded(tmp_path / "b.jsonl", "B", texts())
    cfg = config(tmp_path, [{"name": "a", "backend": "recorded", "model": str(a)},
                            {"name": "b", "backend": "recorded", "model": str(b)}], backbone=str(tiny_lm_dir))
    run_stages(parse_config(cfg), ["probe"])
    resolved = yaml.safe_load((Path(cfg["run_dir"]) / "config.resolved.yaml").read_text())
    assert resolved["probe"] == {"size": K, "fraction": None, "seed": 0, "strategy": "random",
                                 "max_size": None}  # defaults written out
    assert parse_config(resolved) == parse_config(cfg)


def test_weight_digests_are_cached_on_disk_and_redone_when_a_file_is_rewritten(tmp_path, monkeypatch):
    import persyn.models as models
    from persyn.models import cache  # where the digests are memoised and files hashed

    monkeypatch.setenv("PERSYN_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")
    weights = model / "model.safetensors"
    weights.write_bytes(b"a" * (3 << 20))  # over the 1 MiB that is always hashed
    first = models.model_identity(str(model))
    cache._HASH_MEMO.clear()  # as a new process would start

    real = cache.sha256_file

    def no_weight_reads(path):
        assert Path(path) != weights, "the weights were read again"
        return real(path)  # small files (config.json) are hashed on every call

    with monkeypatch.context() as m:
        m.setattr(cache, "sha256_file", no_weight_reads)
        assert models.model_identity(str(model)) == first  # from CACHE/digests.sqlite
    st = weights.stat()
    weights.write_bytes(b"b" * (3 << 20))  # same size; the old mtime is put back, the ctime cannot be
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    cache._HASH_MEMO.clear()
    assert models.model_identity(str(model)) != first


def test_describe_changes_names_each_input():
    from persyn.keys import describe_changes, describe_prompt_changes

    def fp(**kw):
        return json.dumps(kw, sort_keys=True)

    params = {"max_new_tokens": 8, "temperature": 0.0, "top_p": 1.0, "seed": 0}
    old = {"teachers": {"a": {"fingerprint": fp(backend="openai", base_url="u", model="m", body={}), "params": params},
                        "b": {"fingerprint": fp(backend="transformers", model="dir:x:1"), "params": params},
                        "gone": {"fingerprint": "x", "params": params}},
           "quality": fp(kind="reward_model", model="r", max_length=512), "student": fp(model="s", max_length=64)}
    new = {"teachers": {"a": {"fingerprint": fp(backend="openai", base_url="v", model="m2", body={}), "params": params},
                        "b": {"fingerprint": fp(backend="transformers", model="dir:x:1"),
                              "params": {**params, "temperature": 0.7}},
                        "c": {"fingerprint": "y", "params": params}},
           "quality": fp(kind="reward_model", model="r", max_length=1024), "student": fp(model="s", max_length=64)}
    assert describe_changes(old, new) == ["teacher a (base_url, model)", "teacher b (generation parameters)",
                                          "teacher c added", "teacher gone removed", "quality scorer (max_length)"]
    assert describe_changes(None, new) == [] and describe_changes(new, new) == []
    old["reward"], new["reward"] = {"alpha": 0.0, "normalization": "minmax"}, {"alpha": 0.4, "normalization": "minmax"}
    assert describe_changes(old, new)[-1] == "reward (alpha)"
    assert describe_prompt_changes({"1": "x", "2": "y"}, {"1": "x2", "3": "z", "4": "w"}) == [
        "text of 1 prompt", "2 prompts added", "1 prompt removed"]
