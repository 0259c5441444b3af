"""Scale features: the recorded backend's on-disk index, per-stage time accounting, streamed embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import recorded_config, recorded_pool
from kill_driver import EMBED_CHUNK, logged_config, run_to_end

from persyn import pipeline
from persyn.backends.base import GenParams, GenRequest
from persyn.backends.recorded import RecordedBackend
from persyn.cli import main
from persyn.config import TeacherConfig, parse_config
from persyn.errors import InputError, StageFailedError
from persyn.pipeline import STAGES, run_stages
from persyn.store import Store


def teacher(path: Path, **over) -> TeacherConfig:
    fields = {"quality_field": "quality", "learnability_field": "learn", **over}
    return TeacherConfig(name="t", backend="recorded", model=str(path), **fields)


def requests(prompts: list[str]) -> list[GenRequest]:
    return [GenRequest(f"k{i}", f"p{i}", p, GenParams()) for i, p in enumerate(prompts)]


ROWS = [{"instruction": f"Question {i}: what is {i} squared?", "output": f"It is {i * i}. " * (i % 5 + 1),
         "quality": i / 10, "learn": -i / 7} for i in range(10)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_recorded_backend_answers_from_its_index(tmp_path, monkeypatch, suffix):
    """Every recorded value comes back through the index (JSONL rows by byte offset, parquet rows inline); the
    first row of a repeated prompt wins; an unknown prompt fails; a second backend reuses the cached index."""
    monkeypatch.setenv("PERSYN_CACHE", str(tmp_path / "cache"))
    rows = [*ROWS, {**ROWS[3], "output": "a later duplicate", "quality": 0.0}]
    path = tmp_path / f"r.{suffix}"
    if suffix == "jsonl":
        write_jsonl(path, rows)
    else:
        pd.DataFrame(rows).to_parquet(path)
    backend = RecordedBackend(teacher(path))
    wanted = [r["instruction"] for r in ROWS[::-1]] + ["never recorded"]
    results = {r.key: r for r in backend.generate(requests(wanted))}
    for i, row in enumerate(ROWS[::-1]):
        got = results[f"k{i}"]
        assert (got.text, got.quality, got.learnability, got.error) == \
            (row["output"], row["quality"], row["learn"], None)
    assert results[f"k{len(ROWS)}"].error == "no recorded response in " + path.name
    index = backend.index_path()
    assert index.is_file() and index.parent == tmp_path / "cache" / "recorded"
    backend.close()
    stamp = index.stat().st_mtime_ns
    again = RecordedBackend(teacher(path))
    assert [r.text for r in again.generate(requests([ROWS[2]["instruction"]]))] == [ROWS[2]["output"]]
    assert again.index_path() == index and index.stat().st_mtime_ns == stamp  # reused, not rebuilt
    again.close()


def test_recorded_index_follows_the_file_and_the_fields(tmp_path, monkeypatch):
    monkeypatch.setenv("PERSYN_CACHE", str(tmp_path / "cache"))
    path = write_jsonl(tmp_path / "r.jsonl", ROWS)
    first = RecordedBackend(teacher(path))
    other_field = RecordedBackend(teacher(path, quality_field="learn"))
    assert other_field.index_path() != first.index_path()
    assert next(other_field.generate(requests([ROWS[1]["instruction"]]))).quality == ROWS[1]["learn"]
    write_jsonl(path, [{**r, "output": "edited"} for r in ROWS])
    edited = RecordedBackend(teacher(path))
    assert edited.index_path() != first.index_path()
    assert next(edited.generate(requests([ROWS[1]["instruction"]]))).text == "edited"


def test_a_bad_row_is_located_and_leaves_no_index(tmp_path, monkeypatch):
    monkeypatch.setenv("PERSYN_CACHE", str(tmp_path / "cache"))
    rows = [dict(r) for r in ROWS]
    rows[6]["learn"] = "high"
    path = write_jsonl(tmp_path / "r.jsonl", rows)
    backend = RecordedBackend(teacher(path))
    with pytest.raises(InputError, match=r"r.jsonl:7 \[learn\]: expected a number, got 'high'"):
        list(backend.generate(requests([ROWS[0]["instruction"]])))
    assert not backend.index_path().exists()
    assert not list(backend.index_path().parent.glob("*.tmp"))


def summary_seconds(tmp_path: Path) -> dict[str, float]:
    return json.loads((tmp_path / "run" / "summary.json").read_text())["stage_seconds"]


def test_stage_seconds_count_export_and_keep_other_stages(tmp_path, capsys):
    recorded_pool(tmp_path, n=30)
    cfg = parse_config(recorded_config(tmp_path, probe={"size": 15}))
    run_stages(cfg)
    first = summary_seconds(tmp_path)
    assert set(first) == {"prompts", *STAGES}
    assert all(v >= 0 for v in first.values()) and first["export"] > 0
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps(recorded_config(tmp_path, probe={"size": 15})))
    # Two timings of a fast stage can round to the same millisecond, so mark the stored ones: a stage that runs
    # again must replace its mark, one that does not must keep it.
    mark_stored_seconds(tmp_path, {"export": -1.0, "route": -1.0})
    main(["export", str(config)])
    alone = summary_seconds(tmp_path)
    assert set(alone) == set(first)  # the other stages' entries are kept
    assert {s: alone[s] for s in ("probe", "score", "train-router", "generate")} == \
        {s: first[s] for s in ("probe", "score", "train-router", "generate")}
    assert alone["export"] >= 0 and alone["route"] == -1.0  # export timed again and counted; route untouched
    main(["route", str(config)])
    main(["export", str(config)])
    last = summary_seconds(tmp_path)
    assert last["route"] >= 0 and last["probe"] == first["probe"]


def mark_stored_seconds(tmp_path: Path, marks: dict[str, float]) -> None:
    store = Store.open(tmp_path / "run")
    try:
        store.set_meta("stage_seconds", {**store.get_meta("stage_seconds", {}), **marks})
    finally:
        store.close()


KILL_PROMPTS, KILL_PROBE = 40, 10


def kill_config(tmp_path: Path, backbone: Path) -> Path:
    """Two recorded teachers (behind the driver's logging backend) over 40 prompts; the router embeds with a
    tiny causal LM, EMBED_CHUNK (4) texts per committed chunk."""
    prompts = [f"Question {i}: how many legs do {i} spiders have?" for i in range(KILL_PROMPTS)]
    quality = {"a": 0.9, "b": 0.2}
    cfg = logged_config(tmp_path, prompts, lambda t, i: (f"{t}: {8 * i}", quality[t] + i / 100), probe=KILL_PROBE,
                        backbone=backbone)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def encoded(log: Path) -> list[tuple[str, str]]:
    return [tuple(line.split(" ")[1:3]) for line in log.read_text().splitlines() if line.startswith("enc ")]


# train-router embeds the 10 probe prompts in chunks 1-3; route embeds the other 30 in chunks 4-11.
@pytest.mark.slow
@pytest.mark.parametrize(("point", "stage"), [("embed:2", "train-router"), ("embed:7", "route")])
def test_a_kill_while_embedding_loses_at_most_one_chunk(tmp_path, tiny_lm_dir, point, stage):
    """SIGKILL on entering an embedding chunk (for route: chunk 4 of its 8, half way), then a resume: every chunk
    committed before the kill is read back from the cache; only the chunk in flight is encoded again."""
    import sqlite3

    config, log = kill_config(tmp_path, tiny_lm_dir), tmp_path / "calls.log"
    killed = run_to_end(config, point, log)
    assert killed.returncode == -9, killed.stderr[-2000:]
    before = encoded(log)
    assert before[-1][0] == stage
    db = sqlite3.connect(tmp_path / "run" / "embeddings.sqlite")
    cached = db.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
    db.close()
    assert cached == len(before) - EMBED_CHUNK  # every chunk but the one in flight was committed as made
    done = run_to_end(config, "none", log)
    assert done.returncode == 0, done.stderr[-2000:]
    texts = [sha for _, sha in encoded(log)]
    assert len(set(texts)) == KILL_PROMPTS
    assert len(texts) - KILL_PROMPTS <= EMBED_CHUNK  # re-encoded: at most one chunk
    assert len(json.loads((tmp_path / "run" / "summary.json").read_text())["dataset_missing"]) == 0


def test_a_finished_run_is_stamped_and_a_rerun_with_nothing_changed_skips_every_stage(tmp_path, monkeypatch, capsys):
    recorded_pool(tmp_path, n=30)
    cfg = parse_config(recorded_config(tmp_path, probe={"size": 15}))
    first = run_stages(cfg)
    assert first.generated == 45 + 15
    dataset = (tmp_path / "run" / "dataset.jsonl").read_text()

    def must_not_run(run):
        raise AssertionError("a stage ran in an up-to-date run")

    with monkeypatch.context() as m:
        for stage in STAGES:
            m.setitem(pipeline.STAGE_FUNCS, stage, must_not_run)
        m.setattr(pipeline, "load_stage", must_not_run)
        again = run_stages(cfg)
    assert "nothing changed since last run -> to do: nothing" in capsys.readouterr().err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert again.generated == summary["generations_this_invocation"] == 0
    assert summary["generations_total"] == 60 and summary["dataset_rows"] == 30
    assert (tmp_path / "run" / "dataset.jsonl").read_text() == dataset

    # Anything that changes what the outputs hold makes the next run walk the stages again.
    (tmp_path / "run" / "dataset.jsonl").unlink()  # an output removed
    assert stages_walked(cfg) and (tmp_path / "run" / "dataset.jsonl").read_text() == dataset
    store = Store.open(tmp_path / "run")  # a write to the store by another process (e.g. a batch import)
    try:
        store.set_routing([(pid, route) for pid, route in store.routing().items()])
    finally:
        store.close()
    assert stages_walked(cfg)
    assert not stages_walked(cfg)  # and once walked, the run is stamped again
    edited = json.loads(json.dumps(recorded_config(tmp_path, probe={"size": 15})))
    edited["generation"] = {"max_new_tokens": 64}  # a config change
    assert stages_walked(parse_config(edited))


def stages_walked(cfg) -> bool:
    walked: list[str] = []
    original = pipeline.STAGE_FUNCS["probe"]

    def spy(run):
        walked.append("probe")
        original(run)

    pipeline.STAGE_FUNCS["probe"] = spy
    try:
        run_stages(cfg)
    finally:
        pipeline.STAGE_FUNCS["probe"] = original
    return bool(walked)


def test_a_run_with_failures_is_not_stamped_and_retries_them(tmp_path):
    recorded_pool(tmp_path, n=30)
    beta = tmp_path / "beta.jsonl"
    rows = beta.read_text().splitlines()
    beta.write_text("\n".join(rows[1:]) + "\n")  # beta has no response for the first prompt
    cfg = parse_config(recorded_config(tmp_path, probe={"size": 30}))
    run = run_stages(cfg)
    assert run.failed == 1
    store = Store.open(tmp_path / "run")
    try:
        assert store.get_meta("run_stamp") is None
    finally:
        store.close()
    with pytest.raises(StageFailedError, match="beta: no recorded response"):  # retried, never skipped
        run_stages(cfg)
