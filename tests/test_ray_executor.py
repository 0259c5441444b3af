"""The Ray executor on a real local Ray: same outputs as the local executor, replicas used, errors reported."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest

from persyn.backends.base import GenParams, GenRequest
from persyn.config import parse_config
from persyn.errors import ConfigError
from persyn.executors.local import LocalExecutor
from persyn.pipeline import run_stages

ray = pytest.importorskip("ray", reason="the Ray executor needs `pip install persyn[ray]`")

from persyn.remote.ray_executor import RayExecutor  # noqa: E402

OUTPUTS = ("dataset.jsonl", "routing.jsonl", "scores.jsonl")
# Every generations column except timings and which invocation wrote the row.
GEN_COLUMNS = ("key, prompt_id, teacher, fingerprint, params, text, error, prompt_tokens, completion_tokens, cost, "
               "pre_quality, pre_learnability")


def tiny_config(tmp_path, run_name, teachers, student, **over):
    rows = [{"q": f"What is {i} plus {i + 1}?", "a": str(2 * i + 1)} for i in range(12)]
    (tmp_path / "math.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {
        "run_dir": str(tmp_path / run_name),
        "prompts": {"path": str(tmp_path / "math.jsonl"), "field": "q", "reference_field": "a"},
        "teachers": [{"name": "a", "model": str(teachers[0])}, {"name": "b", "model": str(teachers[1])}],
        "student": {"model": str(student)},
        "quality": {"kind": "math_answer"},
        "probe": {"size": 6},
        "router": {"backbone": str(student), "pooling": "last", "bt": {"epochs": 20}},
        "generation": {"max_new_tokens": 8, "batch_size": 4, "temperature": 0.0},
    }
    cfg.update(over)
    return parse_config(cfg)


def generation_rows(run_dir):
    with sqlite3.connect(run_dir / "persyn.sqlite") as db:
        return db.execute(f"SELECT {GEN_COLUMNS} FROM generations ORDER BY key").fetchall()


def test_bad_ray_settings_name_the_key(tmp_path, tiny_lm_dir):
    cfg = tiny_config(tmp_path, "run", [tiny_lm_dir, tiny_lm_dir], tiny_lm_dir, executor="ray",
                      ray={"replica": 2})
    with pytest.raises(ConfigError, match=r"ray\.replica: unknown key"):
        RayExecutor(cfg)
    cfg.ray = {"actor_num_gpus": -1}
    with pytest.raises(ConfigError, match=r"ray\.actor_num_gpus"):
        RayExecutor(cfg)


@pytest.mark.slow
def test_ray_run_equals_local_run(tmp_path, tiny_lm_dir, tiny_lm_dir_b):
    if ray.is_initialized():
        pytest.skip("a Ray is already running in this process")
    teachers = [tiny_lm_dir, tiny_lm_dir_b]
    t0 = time.perf_counter()
    local = run_stages(tiny_config(tmp_path, "local", teachers, tiny_lm_dir))
    local_s = time.perf_counter() - t0

    # The executor starts a 2-CPU local Ray; two replicas per teacher and one student fit at 0.25 CPU each.
    ray_cfg = tiny_config(tmp_path, "ray", teachers, tiny_lm_dir, executor="ray",
                          ray={"num_cpus": 2, "replicas": 2, "actor_num_cpus": 0.25, "batch_size": 2})
    t0 = time.perf_counter()
    remote = run_stages(ray_cfg)
    ray_s = time.perf_counter() - t0
    print(f"\nwall time: local executor {local_s:.1f}s, ray executor {ray_s:.1f}s (incl. starting Ray)")

    assert remote.generated == local.generated == 6 * 2 + (12 - 6)
    for name in OUTPUTS:
        assert (tmp_path / "ray" / name).read_text() == (tmp_path / "local" / name).read_text(), name
    rows = generation_rows(tmp_path / "ray")
    assert len(rows) == 18 and rows == generation_rows(tmp_path / "local")
    # Probe batches of teacher a went to both of its replicas (6 probe requests in tasks of 2).
    assert len(remote.executor.tasks["a"]) == 2 and min(remote.executor.tasks["a"]) >= 1
    assert not ray.is_initialized()  # the executor shut down the Ray it started
    again = run_stages(ray_cfg)  # resumes from the store; with nothing to do, Ray is never started
    assert again.generated == 0 and again.executor.worker_cls is None


@pytest.fixture(scope="module")
def callers_ray():
    ray.init(num_cpus=1, include_dashboard=False)
    yield ray
    ray.shutdown()


def test_replicas_that_cannot_start_are_a_config_error(tmp_path, tiny_lm_dir, callers_ray):
    """One GPU per replica on a CPU-only Ray: a clear error after ready_timeout_s, and the caller's Ray stays up."""
    cfg = tiny_config(tmp_path, "run", [tiny_lm_dir, tiny_lm_dir], tiny_lm_dir, executor="ray",
                      ray={"actor_num_gpus": 1, "ready_timeout_s": 2})
    executor = RayExecutor(cfg)
    request = GenRequest("k", "p1", "What is 1 plus 2?", GenParams(max_new_tokens=4))
    try:
        with pytest.raises(ConfigError, match="no replica started within 2s"):
            list(executor.generate(cfg.teachers[0], [request]))
    finally:
        executor.close()
    assert ray.is_initialized()


@pytest.mark.slow
def test_full_cluster_releases_idle_replicas_of_other_models(tmp_path, tiny_lm_dir, tiny_lm_dir_b, callers_ray):
    """On 1 CPU, teacher b's replica only starts once teacher a's idle one is killed; close() frees the CPU."""
    cfg = tiny_config(tmp_path, "run", [tiny_lm_dir, tiny_lm_dir_b], tiny_lm_dir, executor="ray",
                      ray={"actor_num_cpus": 1, "ready_timeout_s": 60})
    requests = [GenRequest(f"k{i}", f"p{i}", f"What is {i} plus 2?", GenParams(max_new_tokens=6)) for i in range(3)]
    local = LocalExecutor(cfg)
    expected = {t.name: sorted((r.key, r.text) for r in local.generate(t, requests)) for t in cfg.teachers}
    local.close()
    executor = RayExecutor(cfg)
    try:
        for t in cfg.teachers:
            got = sorted((r.key, r.text) for r in executor.generate(t, requests))
            assert got == expected[t.name]
        assert len(executor.pools) == 1 and '"name":"b"' in next(iter(executor.pools))
    finally:
        executor.close()
    deadline = time.monotonic() + 20
    while ray.available_resources().get("CPU", 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == 1


@pytest.mark.slow
def test_ray_learnability_that_fails_is_reported_at_its_own_index(tmp_path, tiny_lm_dir, callers_ray):
    """Two student replicas score two halves; the one request that fails is reported at its index in the whole,
    so the pipeline leaves exactly it pending."""
    from openai_server import serve

    prompts = ["What is 1 plus 2?", "What is 2 plus 3?", "What is 3 plus 4?", "What is 4 plus 5? " * 6]
    responses = ["3", "5", "7", "9"]
    cfg = tiny_config(tmp_path, "run", [tiny_lm_dir, tiny_lm_dir], tiny_lm_dir, executor="ray",
                      ray={"student_replicas": 2, "actor_num_cpus": 0.25, "ready_timeout_s": 60})
    with serve(tiny_lm_dir) as server:
        server.state.fail_longer_than = 40  # only the last, long prompt
        student = cfg.student.model_copy(update={"server_url": server.base_url, "max_retries": 0})
        executor = RayExecutor(cfg)
        try:
            result = executor.learnability(student, prompts, responses)
        finally:
            executor.close()
    assert result.failed == [3] and "HTTP 500" in result.errors[0]
    assert result.values[3] is None and all(v is not None for v in result.values[:3])
