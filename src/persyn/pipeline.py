"""PerSyn's stages, Route then Generate. Each stage reads the store and does only what is missing there."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from persyn.backends.base import GenParams, GenRequest, GenResult, generation_key
from persyn.config import RunConfig, TeacherConfig
from persyn.errors import ConfigError
from persyn.executors import Executor, make_executor
from persyn.progress import progress
from persyn.prompts import Prompt, load_prompts
from persyn.store import RunLock, Store

log = logging.getLogger(__name__)

STAGES = ("probe", "score", "train-router", "route", "generate", "export")
SCORE_CHUNK = 64  # responses scored (and committed) per step


@dataclass
class Run:
    """One invocation over one run_dir: the config, the store, an executor, and what this invocation did."""

    cfg: RunConfig
    store: Store
    executor: Executor
    invocation: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    stage_seconds: dict[str, float] = field(default_factory=dict)
    generated: int = 0
    failed: int = 0
    truncated: int = 0  # responses cut to fit the student's context while scoring
    summary: dict = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return self.cfg.path

    def teacher_names(self) -> list[str]:
        return [t.name for t in self.cfg.teachers]


# Keys -------------------------------------------------------------------------------------------------------

def teacher_params(cfg: RunConfig, t: TeacherConfig) -> GenParams:
    g = cfg.generation
    return GenParams(
        max_new_tokens=t.max_new_tokens or g.max_new_tokens,
        temperature=g.temperature if t.temperature is None else t.temperature,
        top_p=t.top_p or g.top_p,
        seed=g.seed,
    )


def teacher_fingerprint(t: TeacherConfig) -> str:
    """What makes this teacher's outputs what they are; the teacher's display name and secrets are not part."""
    parts = {"backend": t.backend, "model": t.model, "chat_template": t.chat_template, "few_shot": t.few_shot}
    return json.dumps(parts, sort_keys=True)


def gen_key(cfg: RunConfig, t: TeacherConfig, prompt: Prompt) -> str:
    return generation_key(prompt.text, teacher_fingerprint(t), teacher_params(cfg, t))


def quality_scorer_id(cfg: RunConfig) -> str:
    q = cfg.quality
    return f"{q.kind}:{q.model or ''}:{q.field if q.kind == 'field' else ''}"


def student_scorer_id(cfg: RunConfig) -> str:
    s = cfg.student
    assert s is not None
    return json.dumps({"model": s.model, "chat_template": s.chat_template, "few_shot": s.few_shot,
                       "max_length": s.max_length}, sort_keys=True)


# Stages -----------------------------------------------------------------------------------------------------

def load_stage(run: Run) -> list[Prompt]:
    cfg = run.cfg
    need_ref = cfg.quality.kind == "math_answer" and cfg.reward.alpha < 1
    prompts = load_prompts(cfg.prompts, require_reference=need_ref)
    run.store.set_prompts(prompts)
    k = cfg.probe.resolve(len(prompts))
    if k > len(prompts):
        raise ConfigError(f"probe size {k} is larger than the prompt set ({len(prompts)} prompts)", key="probe.size")
    ids = sorted(random.Random(cfg.probe.seed).sample([p.id for p in prompts], k))
    run.store.set_probe(ids)
    return prompts


def probe_prompts(run: Run) -> list[Prompt]:
    probe = run.store.probe_ids()
    return [p for p in run.store.prompts() if p.id in probe]


def pending_requests(run: Run, pairs: list[tuple[Prompt, TeacherConfig]]) -> dict[str, list[GenRequest]]:
    """Per teacher, the requests for (prompt, teacher) pairs the store lacks (failed ones included), deduplicated."""
    by_teacher: dict[str, dict[str, GenRequest]] = defaultdict(dict)
    for prompt, t in pairs:
        key = gen_key(run.cfg, t, prompt)
        by_teacher[t.name].setdefault(key, GenRequest(key, prompt.id, prompt.text, teacher_params(run.cfg, t)))
    todo: dict[str, list[GenRequest]] = {}
    for name, reqs in by_teacher.items():
        done = run.store.done_keys(reqs)
        if missing := [r for k, r in reqs.items() if k not in done]:
            todo[name] = missing
    return todo


def store_result(run: Run, teacher: TeacherConfig, req: GenRequest, result: GenResult) -> None:
    run.store.add_generation(result, prompt_id=req.prompt_id, teacher=teacher.name,
                             fingerprint=teacher_fingerprint(teacher), params=req.params.as_dict(),
                             invocation=run.invocation)
    if result.error is None:
        run.generated += 1
    else:
        run.failed += 1
        log.warning("%s failed on prompt %s: %s", teacher.name, req.prompt_id, result.error)


def generate_pairs(run: Run, pairs: list[tuple[Prompt, TeacherConfig]], label: str) -> None:
    """Generate every (prompt, teacher) pair the store lacks, grouped per teacher, committing each result."""
    todo = pending_requests(run, pairs)
    teachers = {t.name: t for t in run.cfg.teachers}
    with progress(f"{label}: generating", sum(len(v) for v in todo.values())) as advance:
        for name, reqs in todo.items():
            by_key = {r.key: r for r in reqs}
            for result in run.executor.generate(teachers[name], reqs):
                store_result(run, teachers[name], by_key[result.key], result)
                advance(1)


def stage_pairs(run: Run, stage: str) -> list[tuple[Prompt, TeacherConfig]]:
    """The (prompt, teacher) pairs a generating stage needs: every teacher on the probe, or the routed pairs."""
    if stage == "probe":
        return [(p, t) for p in probe_prompts(run) for t in run.cfg.teachers]
    routing = run.store.routing()
    teachers = {t.name: t for t in run.cfg.teachers}
    return [(p, teachers[routing[p.id][0]]) for p in run.store.prompts()
            if p.id in routing and not routing[p.id][2] and routing[p.id][0] in teachers]


def probe_stage(run: Run) -> None:
    generate_pairs(run, stage_pairs(run, "probe"), "probe")


def prompt_generations(run: Run, prompts: list[Prompt]) -> tuple[list[list[str]], dict]:
    """Generation keys [P][T] of every teacher on these prompts, and the stored rows among them."""
    keys = [[gen_key(run.cfg, t, p) for t in run.cfg.teachers] for p in prompts]
    return keys, run.store.generations(k for row in keys for k in row)


def score_stage(run: Run) -> None:
    score_prompts(run, probe_prompts(run), "score")


def score_prompts(run: Run, prompts: list[Prompt], label: str) -> None:
    """Score every stored response of every teacher on these prompts that lacks a current score."""
    keys, gens = prompt_generations(run, prompts)
    prompt_of = {k: p for p, row in zip(prompts, keys, strict=True) for k in row}
    ok = [k for row in keys for k in row if k in gens and gens[k].error is None]
    if run.cfg.reward.alpha < 1:
        _score_quality(run, ok, gens, prompt_of, label)
    if run.cfg.reward.alpha > 0:
        _score_learnability(run, ok, gens, prompt_of, label)


def _score_quality(run: Run, keys: list[str], gens: dict, prompt_of: dict[str, Prompt], label: str) -> None:
    scorer_id = quality_scorer_id(run.cfg)
    have = run.store.scores("quality", scorer_id, keys)
    pre = {k: gens[k].pre_quality for k in keys if k not in have and gens[k].pre_quality is not None}
    if pre:
        run.store.add_scores("quality", scorer_id, pre)
    missing = [k for k in keys if k not in have and k not in pre]
    if not missing:
        return
    if run.cfg.quality.kind == "field":
        # A recorded row without the field (AlpacaEval has a few null judgements): no quality, so the response
        # drops out of the comparison rather than being invented.
        run.store.add_scores("quality", scorer_id, dict.fromkeys(missing))
        log.warning("%d probe responses have no `%s` value and are left out", len(missing), run.cfg.quality.field)
        return
    from persyn.scoring.quality import make_quality_scorer

    scorer = make_quality_scorer(run.cfg.quality)
    with progress(f"{label}: quality", len(missing)) as advance:
        for i in range(0, len(missing), SCORE_CHUNK):
            chunk = missing[i : i + SCORE_CHUNK]
            values = scorer.score([prompt_of[k].text for k in chunk], [gens[k].text or "" for k in chunk],
                                  [prompt_of[k].reference for k in chunk], [None] * len(chunk))
            run.store.add_scores("quality", scorer_id, dict(zip(chunk, values, strict=True)))
            advance(len(chunk))


def _score_learnability(run: Run, keys: list[str], gens: dict, prompt_of: dict[str, Prompt], label: str) -> None:
    scorer_id = student_scorer_id(run.cfg)
    have = run.store.scores("learnability", scorer_id, keys)
    pre = {k: gens[k].pre_learnability for k in keys if k not in have and gens[k].pre_learnability is not None}
    if pre:
        run.store.add_scores("learnability", scorer_id, pre)
    missing = [k for k in keys if k not in have and k not in pre]
    # Long responses first, so the batcher's length sort works on a full chunk and the ETA errs high.
    missing.sort(key=lambda k: len(gens[k].text or ""), reverse=True)
    assert run.cfg.student is not None
    with progress(f"{label}: learnability", len(missing)) as advance:
        for i in range(0, len(missing), SCORE_CHUNK):
            chunk = missing[i : i + SCORE_CHUNK]
            result = run.executor.learnability(run.cfg.student, [prompt_of[k].text for k in chunk],
                                               [gens[k].text or "" for k in chunk])
            run.store.add_scores("learnability", scorer_id, dict(zip(chunk, result.values, strict=True)),
                                 truncated_count=result.truncated)
            run.truncated += result.truncated
            advance(len(chunk))


def probe_rewards(run: Run) -> tuple[list[Prompt], np.ndarray, np.ndarray, np.ndarray]:
    probe = probe_prompts(run)
    return (probe, *rewards_for(run, probe))


def rewards_for(run: Run, prompts: list[Prompt]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw quality and learnability [P, T] and the combined reward (NaN: no usable response) for these prompts."""
    from persyn.scoring.reward import reward_matrix

    cfg = run.cfg
    keys, gens = prompt_generations(run, prompts)
    flat = [k for row in keys for k in row]
    P, T = len(prompts), len(cfg.teachers)
    nan = np.full((P, T), np.nan)
    quality, learn = nan.copy(), nan.copy()
    if cfg.reward.alpha < 1:
        q = run.store.scores("quality", quality_scorer_id(cfg), flat)
        quality = np.array([[_num(q.get(k)) for k in row] for row in keys]).reshape(P, T)
    if cfg.reward.alpha > 0:
        s = run.store.scores("learnability", student_scorer_id(cfg), flat)
        learn = np.array([[_num(s.get(k)) for k in row] for row in keys]).reshape(P, T)
    present = np.array([[k in gens and gens[k].error is None for k in row] for row in keys]).reshape(P, T)
    empty = np.array([[k in gens and gens[k].error is None and not (gens[k].text or "").strip() for k in row]
                      for row in keys]).reshape(P, T)
    # Failed generations and responses without a score drop out (NaN); empty responses score the worst.
    q_in = np.where(present, quality, np.nan) if cfg.reward.alpha < 1 else np.where(present, 0.0, np.nan)
    l_in = np.where(present, learn, np.nan) if cfg.reward.alpha > 0 else None
    rewards = reward_matrix(q_in, l_in, cfg.reward.alpha, cfg.reward.normalization, worst=empty)
    return quality, learn, rewards


def _num(v: float | None) -> float:
    return np.nan if v is None else float(v)


def _embedder(run: Run):
    from persyn.router.embed import Embedder

    r = run.cfg.router
    backbone = r.backbone
    if backbone == "student":
        if run.cfg.student is None:
            raise ConfigError("router.backbone 'student' needs a student", key="router.backbone")
        backbone = run.cfg.student.model
    return Embedder(backbone, pooling=r.pooling, layers=r.layers, max_length=r.max_length,
                    batch_size=r.embed_batch_size, trust_remote_code=r.trust_remote_code,
                    cache_path=run.run_dir / "embeddings.sqlite")


def _router_dir(run: Run) -> Path:
    return run.run_dir / "router"


def train_router_stage(run: Run) -> None:
    probe, _, _, rewards = probe_rewards(run)
    r = run.cfg.router
    fp = hashlib.sha256(
        np.ascontiguousarray(rewards).tobytes() + r.model_dump_json().encode()
        + json.dumps([p.id for p in probe] + run.teacher_names()).encode()
    ).hexdigest()[:16]
    if run.store.get_meta("router_fp") == fp and (_router_dir(run) / "router.json").exists():
        return
    from persyn.router import make_router  # imports torch: not on a resume that has nothing to do

    X = _embedder(run).embed([p.text for p in probe], "train-router: embedding probe prompts")
    router = make_router(r.kind, n_teachers=len(run.cfg.teachers), teacher_names=run.teacher_names(),
                         **r.head_kwargs())
    report = router.fit(X, rewards)
    router.save(_router_dir(run))
    run.store.set_meta("router_report", report.as_dict())
    run.store.set_meta("router_fp", fp)


def load_router(run: Run):
    from persyn.router import load_router as _load

    return _load(_router_dir(run))


def route_stage(run: Run) -> None:
    fp = run.store.get_meta("router_fp")
    prompts = run.store.prompts()
    routing = run.store.routing()
    if routing and set(routing) == {p.id for p in prompts} and all(v[3] == fp for v in routing.values()):
        return
    probe, _, _, rewards = probe_rewards(run)
    names = run.teacher_names()
    router = load_router(run)
    X = _embedder(run).embed([p.text for p in prompts], "route: embedding prompts")
    S = router.scores(X)
    best_probe = {p.id: _argmax_nan(rewards[i]) for i, p in enumerate(probe)}
    rows = []
    for i, p in enumerate(prompts):
        scores = {n: float(s) for n, s in zip(names, S[i], strict=True)}
        if p.id in best_probe and best_probe[p.id] is not None:
            rows.append((p.id, names[best_probe[p.id]], scores, True))
        else:
            rows.append((p.id, names[int(np.argmax(S[i]))], scores, p.id in best_probe))
    run.store.set_routing(rows, fp)


def _argmax_nan(row: np.ndarray) -> int | None:
    return None if not np.isfinite(row).any() else int(np.nanargmax(row))


def generate_stage(run: Run) -> None:
    generate_pairs(run, stage_pairs(run, "generate"), "generate")


def export_stage(run: Run) -> None:
    from persyn.export import export_run

    run.summary = export_run(run)


STAGE_FUNCS: dict[str, Callable[[Run], object]] = {
    "probe": probe_stage,
    "score": score_stage,
    "train-router": train_router_stage,
    "route": route_stage,
    "generate": generate_stage,
    "export": export_stage,
}


def preflight(run: Run) -> None:
    """Fail before any paid work on what can be checked up front: unknown backends, teachers that cannot be set
    up (a missing responses file or API key) and missing local models."""
    from persyn.backends.base import backend_kinds
    from persyn.executors.local import LocalExecutor

    cfg = run.cfg
    kinds = backend_kinds()
    for t in cfg.teachers:
        if t.backend not in kinds:
            raise ConfigError(f"unknown backend {t.backend!r}; known: {', '.join(kinds)}",
                              key=f"teachers.{t.name}.backend")
    if not isinstance(run.executor, LocalExecutor):
        return  # remote workers build their own backends, and model paths may exist only there
    for t in cfg.teachers:
        run.executor.backend(t)  # built once here and reused; loads no model
    for t in cfg.teachers:
        if t.backend == "transformers" and t.model:
            _check_model(t.model, f"teachers.{t.name}.model")
    if cfg.student is not None and not cfg.student.server_url:
        _check_model(cfg.student.model, "student.model")
    if cfg.router.backbone != "student":
        _check_model(cfg.router.backbone, "router.backbone")


def _check_model(spec: str, key: str) -> None:
    from persyn.models import REGISTRY, resolve

    path = Path(spec).expanduser()
    if spec in REGISTRY or path.is_file():
        return  # fetched or converted on first use
    try:
        resolve(spec)
    except ConfigError as exc:
        raise ConfigError(str(exc), key=key) from None
    if path.is_dir() and (path / "config.json").exists() and not any(path.glob("*.safetensors")):
        raise ConfigError(f"model {spec!r} has no .safetensors weights; persyn loads safetensors only and never "
                          "unpickles a checkpoint such as pytorch_model.bin", key=key)


def record_stage_seconds(run: Run, stage: str, seconds: float) -> None:
    """This invocation's time for a stage, merged into the run's record (meta `stage_seconds`): a stage run alone
    updates its own entry and keeps the others'."""
    run.stage_seconds[stage] = seconds
    stored = run.store.get_meta("stage_seconds", {})
    stored[stage] = round(seconds, 3)
    run.store.set_meta("stage_seconds", stored)


def open_run(cfg: RunConfig) -> Run:
    return Run(cfg, Store.open(cfg.run_dir), make_executor(cfg))


def run_stages(cfg: RunConfig, stages: tuple[str, ...] | list[str] = STAGES) -> Run:
    """Run the given stages in order under the run_dir lock; every stage resumes from the store."""
    cfg.path.mkdir(parents=True, exist_ok=True)
    with RunLock(cfg.path):
        run = open_run(cfg)
        try:
            preflight(run)
            t0 = time.perf_counter()
            load_stage(run)
            record_stage_seconds(run, "prompts", time.perf_counter() - t0)
            for stage in stages:
                t0 = time.perf_counter()
                STAGE_FUNCS[stage](run)
                record_stage_seconds(run, stage, time.perf_counter() - t0)
                if stage == "export":
                    from persyn.export import update_stage_seconds

                    update_stage_seconds(run)  # summary.json was written before export's own time was known
            return run
        finally:
            run.executor.close()
            run.store.close()
