"""PerSyn's stages, Route then Generate. Each stage reads the store and does only what is missing there."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from persyn.backends.base import GenRequest, GenResult
from persyn.config import RunConfig, TeacherConfig
from persyn.errors import ConfigError, StageFailedError
from persyn.keys import Keys, describe_changes, describe_prompt_changes
from persyn.progress import progress
from persyn.prompts import Prompt, load_prompts
from persyn.run import (  # noqa: F401 - re-exported as pipeline API
    RewardMatrices,
    Run,
    open_run,
    opened_run,
    probe_prompts,
    probe_rewards,
    prompt_generations,
    rewards_for,
)
from persyn.store import Route

log = logging.getLogger(__name__)

STAGES = ("probe", "score", "train-router", "route", "generate", "export")
SCORE_CHUNK = 64  # responses scored (and committed) per step
SERVER_CHECK_META = "student_server_checked"  # the learnability key whose server passed check_student_server


# Keys: every one comes from persyn.keys; these wrappers build a fresh Keys per call (a Run keeps one). ----------

def gen_key(cfg: RunConfig, t: TeacherConfig, prompt: Prompt) -> str:
    return Keys(cfg).generation(t, prompt)


def quality_scorer_id(cfg: RunConfig) -> str:
    return Keys(cfg).quality_scorer


def student_scorer_id(cfg: RunConfig) -> str:
    return Keys(cfg).learnability_scorer


# Stages -----------------------------------------------------------------------------------------------------

def read_prompts(run: Run) -> list[Prompt]:
    """The config's prompts, checked against the probe size; stores nothing."""
    cfg = run.cfg
    need_ref = cfg.quality.kind in ("math_answer", "gym") and cfg.reward.alpha < 1
    prompts = load_prompts(cfg.prompts, require_reference=need_ref)
    k = cfg.probe.resolve(len(prompts))
    if k > len(prompts):
        raise ConfigError(f"probe size {k} is larger than the prompt set ({len(prompts)} prompts)", key="probe.size")
    return prompts


def load_stage(run: Run, prompts: list[Prompt] | None = None) -> list[Prompt]:
    """Store the prompts (read here unless given) and draw or keep the probe."""
    cfg = run.cfg
    prompts = read_prompts(run) if prompts is None else prompts
    k = cfg.probe.resolve(len(prompts))
    old = {p.id: p.text for p in run.store.prompts()}
    run.store.set_prompts(prompts)
    if cfg.probe.strategy == "adaptive":
        k = max(k, run.store.get_meta("adaptive_probe_size", k))
    run.store.set_probe(sorted(_probe_ids(run, prompts, k)))
    run.store.set_meta("probe_seed", cfg.probe.seed)
    run.resumed = bool(old)
    if old:
        run.prompt_changes = describe_prompt_changes(old, {p.id: p.text for p in prompts})
    return prompts


def _probe_ids(run: Run, prompts: list[Prompt], size: int) -> list[str]:
    from persyn.probe import choose_probe

    p = run.cfg.probe
    same_seed = run.store.get_meta("probe_seed", p.seed) == p.seed
    return choose_probe([q.id for q in prompts], [q.text for q in prompts], p.strategy, p.seed, size,
                        keep=run.store.probe_ids() if same_seed else (),
                        embed=lambda texts: _embedder(run).embed(texts))


def pending_requests(run: Run, pairs: list[tuple[Prompt, TeacherConfig]]) -> dict[str, list[GenRequest]]:
    """Per teacher, the requests for (prompt, teacher) pairs the store lacks (failed ones included), deduplicated."""
    by_teacher: dict[str, dict[str, GenRequest]] = defaultdict(dict)
    for prompt, t in pairs:
        key = run.keys.generation(t, prompt)
        by_teacher[t.name].setdefault(key, GenRequest(key, prompt.id, prompt.text, run.keys.params(t)))
    todo: dict[str, list[GenRequest]] = {}
    for name, reqs in by_teacher.items():
        done = run.store.done_keys(reqs)
        if missing := [r for k, r in reqs.items() if k not in done]:
            todo[name] = missing
    return todo


def store_result(run: Run, teacher: TeacherConfig, req: GenRequest, result: GenResult) -> None:
    run.store.add_generation(result, prompt_id=req.prompt_id, teacher=teacher.name,
                             fingerprint=run.keys.teacher(teacher), params=req.params.as_dict(),
                             invocation=run.invocation)
    if result.error is None:
        run.generated += 1
    else:
        run.failed += 1
        log.warning("%s failed on prompt %s: %s", teacher.name, req.prompt_id, result.error)


def generate_pairs(run: Run, pairs: list[tuple[Prompt, TeacherConfig]], label: str) -> None:
    """Generate every (prompt, teacher) pair the store lacks, grouped per teacher, committing each result.

    A failed result is stored with its error and stays pending; when every request failed, the stage stops the
    run (StageFailedError) rather than reporting "done"."""
    todo = pending_requests(run, pairs)
    teachers = {t.name: t for t in run.cfg.teachers}
    sent, failed, first_error = 0, 0, ""
    with progress(f"{label}: generating", sum(len(v) for v in todo.values())) as advance:
        for name, reqs in todo.items():
            by_key = {r.key: r for r in reqs}
            for result in run.executor.generate(teachers[name], reqs):
                store_result(run, teachers[name], by_key[result.key], result)
                sent += 1
                if result.error is not None:
                    failed += 1
                    first_error = first_error or f"{name}: {result.error}"
                advance(1)
            run.executor.release(teachers[name])  # nothing pending in this stage needs it any more
    fail_if_all_failed(label, "generation requests", sent, failed, first_error)


def fail_if_all_failed(label: str, what: str, attempted: int, failed: int, first_error: str) -> None:
    if attempted and failed == attempted:
        raise StageFailedError(f"{label}: all {attempted} {what} failed and stay pending; run again once the cause "
                               f"is fixed (first error: {' '.join(first_error.split())[:300]})")


def stage_pairs(run: Run, stage: str) -> list[tuple[Prompt, TeacherConfig]]:
    """The (prompt, teacher) pairs a generating stage needs: every teacher on the probe, or the routed pairs."""
    if stage == "probe":
        return [(p, t) for p in probe_prompts(run) for t in run.cfg.teachers]
    teachers = {t.name: t for t in run.cfg.teachers}
    return [(p, teachers[name]) for p, route in _routed(run) for name in route.candidates if name in teachers]


def probe_stage(run: Run) -> None:
    generate_pairs(run, stage_pairs(run, "probe"), "probe")
    if run.cfg.probe.strategy == "adaptive":
        _grow_probe(run)


def _grow_probe(run: Run) -> None:
    """Adaptive probe: score, fit the router, and add `probe.size` more prompts while its cross-validated gain over
    the best single teacher improves, up to `probe.max_size`. Each round is kept in the store, so a rerun replays
    the decisions from stored scores without generating anything again."""
    cfg = run.cfg
    prompts = run.store.prompts()
    step = cfg.probe.resolve(len(prompts))
    cap = min(len(prompts), cfg.probe.max_size or 4 * step)
    rounds: list[dict] = run.store.get_meta("probe_rounds", [])
    while True:
        size = len(run.store.probe_ids())
        score_stage(run)
        probe = probe_rewards(run)
        _, report = _fit_router(run, probe.prompts, probe.reward)
        gain = router_gain(report)
        rounds = [r for r in rounds if r["size"] < size] + [{"size": size, "cv_gain": gain}]
        run.store.set_meta("probe_rounds", rounds)
        improving = len(rounds) < 2 or gain > max(r["cv_gain"] for r in rounds[:-1])
        if size >= cap or not improving:
            log.info("adaptive probe: %d prompts (%s)", size, "max_size" if size >= cap else "gain stopped improving")
            return
        new_size = min(cap, size + step)
        run.store.set_meta("adaptive_probe_size", new_size)
        run.store.set_probe(sorted(_probe_ids(run, prompts, new_size)))
        generate_pairs(run, stage_pairs(run, "probe"), f"probe ({new_size})")


def router_gain(report) -> float:
    """A router's held-out gain in mean reward over the best single teacher (out-of-fold for ridge)."""
    if hasattr(report, "cv_gain"):
        return float(report.cv_gain)
    if report.val_mean_reward is None or report.val_best_single_mean_reward is None:
        return 0.0
    return float(report.val_mean_reward - report.val_best_single_mean_reward)


def score_stage(run: Run) -> None:
    score_prompts(run, probe_prompts(run), "score")
    if run.cfg.router.backbone != "student":
        run.executor.release()  # the student is needed again only to embed prompts as the router's backbone


def score_prompts(run: Run, prompts: list[Prompt], label: str,
                  kinds: tuple[str, ...] = ("quality", "learnability")) -> None:
    """Score every stored response of every teacher on these prompts that lacks a current score."""
    keys, gens = prompt_generations(run, prompts)
    prompt_of = {k: p for p, row in zip(prompts, keys, strict=True) for k in row}
    ok = [k for row in keys for k in row if k in gens and gens[k].error is None]
    if run.cfg.reward.alpha < 1 and "quality" in kinds:
        _score_quality(run, ok, gens, prompt_of, label)
    if run.cfg.reward.alpha > 0 and "learnability" in kinds:
        _score_learnability(run, ok, gens, prompt_of, label)


def _score_quality(run: Run, keys: list[str], gens: dict, prompt_of: dict[str, Prompt], label: str) -> None:
    scorer_id = run.keys.quality_scorer
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
    scorer_id = run.keys.learnability_scorer
    have = run.store.scores("learnability", scorer_id, keys)
    pre = {k: gens[k].pre_learnability for k in keys if k not in have and gens[k].pre_learnability is not None}
    if pre:
        run.store.add_scores("learnability", scorer_id, pre)
    # A stored None for a non-empty response is a score that failed (stores before failures were kept pending).
    missing = [k for k in keys if k not in pre
               and (k not in have or (have[k] is None and (gens[k].text or "").strip()))]
    # Long responses first, so the batcher's length sort works on a full chunk and the ETA errs high.
    missing.sort(key=lambda k: len(gens[k].text or ""), reverse=True)
    assert run.cfg.student is not None
    if missing:
        check_student_server(run)
    failed, first_error = 0, ""
    with progress(f"{label}: learnability", len(missing)) as advance:
        for i in range(0, len(missing), SCORE_CHUNK):
            chunk = missing[i : i + SCORE_CHUNK]
            result = run.executor.learnability(run.cfg.student, [prompt_of[k].text for k in chunk],
                                               [gens[k].text or "" for k in chunk])
            lost = set(result.failed)  # not stored: a failed score is a missing one, retried by the next run
            values = {k: v for j, (k, v) in enumerate(zip(chunk, result.values, strict=True)) if j not in lost}
            run.store.add_scores("learnability", scorer_id, values, truncated_count=result.truncated)
            run.truncated += result.truncated
            failed += len(lost)
            first_error = first_error or next(iter(result.errors), "")
            advance(len(chunk))
    if failed:
        log.warning("%s: %d learnability scores failed and stay pending for the next run", label, failed)
    fail_if_all_failed(label, "learnability requests", len(missing), failed, first_error)


def check_student_server(run: Run) -> None:
    """Before the first server score of this learnability key: does the server run the student's weights? The
    answer is remembered in the store, so the check costs one local load per key, not one per run."""
    student = run.cfg.student
    if student is None or not student.server_url or not student.server_check:
        return
    scorer_id = run.keys.learnability_scorer
    if run.store.get_meta(SERVER_CHECK_META) == scorer_id:
        return
    from persyn.models import causal_lm_key, is_loaded, load_causal_lm, unload
    from persyn.scoring.server_logprobs import check_student_server as check

    key = causal_lm_key(student.model, dtype=student.dtype, trust_remote_code=student.trust_remote_code)
    resident = is_loaded(key)
    model, tokenizer = load_causal_lm(student.model, dtype=student.dtype, trust_remote_code=student.trust_remote_code)
    try:
        diff = check(student, model, tokenizer)
    finally:
        if not resident:
            unload(key)
    if diff is not None:
        log.info("the student's server agrees with the local student (%.4f nats/token)", diff)
        run.store.set_meta(SERVER_CHECK_META, scorer_id)


def _embedder(run: Run):
    from persyn.router.embed import Embedder

    r = run.cfg.router
    backbone, model = r.backbone, None
    if backbone == "student":
        student = run.cfg.student
        if student is None:
            raise ConfigError("router.backbone 'student' needs a student", key="router.backbone")
        backbone = student.model
        if hasattr(run.executor, "student_model") and not student.server_url:
            executor = run.executor
            model = lambda: executor.student_model(student)  # noqa: E731 - the loaded student, on first use
    return Embedder(backbone, pooling=r.pooling, layers=r.layers, max_length=r.max_length,
                    batch_size=r.embed_batch_size, trust_remote_code=r.trust_remote_code,
                    cache_path=run.run_dir / "embeddings.sqlite", model=model)


def _router_dir(run: Run) -> Path:
    return run.run_dir / "router"


def train_router_stage(run: Run) -> None:
    probe = probe_rewards(run)
    fp = run.keys.router(probe.prompts, np.ascontiguousarray(probe.reward).tobytes())
    if run.store.get_meta("router_fp") == fp and (_router_dir(run) / "router.json").exists():
        return
    router, report = _fit_router(run, probe.prompts, probe.reward)
    router.save(_router_dir(run))
    run.store.set_meta("router_report", report.as_dict())
    run.store.set_meta("router_fp", fp)
    if report.fallback_to_bias:
        reason = getattr(report, "fallback_reason", None) or "the trained head did not beat it on validation"
        log.warning("router falls back to the best single teacher %s: %s", report.best_single_teacher, reason)


def new_router(cfg: RunConfig, **override: Any):
    """An unfitted router of this config's kind and settings (`override`: router fields, e.g. kind or seed)."""
    from persyn.router import make_router

    r = cfg.router.model_copy(update=override)
    return make_router(r.kind, n_teachers=len(cfg.teachers), teacher_names=[t.name for t in cfg.teachers],
                       **r.head_kwargs())


def _fit_router(run: Run, probe: list[Prompt], rewards: np.ndarray):
    router = new_router(run.cfg)
    X = _embedder(run).embed([p.text for p in probe], "train-router: embedding probe prompts")
    return router, router.fit(X, rewards)


def load_router(run: Run):
    from persyn.router import load_router as _load

    return _load(_router_dir(run))


def route_stage(run: Run) -> None:
    """Route every prompt: a probe prompt keeps its best-reward teacher; every other prompt gets the router's top
    choice, plus the extra candidates the generation budget pays for (persyn.budget)."""
    from persyn.budget import allocate

    fp = run.store.get_meta("router_fp")
    g = run.cfg.generation
    plan = {"budget": g.budget, "accept_quality": g.accept_quality}
    prompts = run.store.prompts()
    routing = run.store.routing()
    route_keys = {p.id: run.keys.route(fp, p) for p in prompts}
    if (set(routing) == set(route_keys) and all(routing[i].router == k for i, k in route_keys.items())
            and run.store.get_meta("route_plan") == plan):
        return
    probe_matrices = probe_rewards(run)
    probe, rewards = probe_matrices.prompts, probe_matrices.reward
    names = run.teacher_names()
    S = load_router(run).scores(_embedder(run).embed([p.text for p in prompts], "route: embedding prompts"))
    best_probe = {p.id: (_argmax_nan(rewards[i]), np.flatnonzero(np.isfinite(rewards[i]))) for i, p in enumerate(probe)}
    routed = [i for i, p in enumerate(prompts) if best_probe.get(p.id, (None,))[0] is None]
    if g.accept_quality is None:
        candidates = allocate(S[routed], g.budget)
    else:  # the cascade asks further teachers in the generate stage, one round at a time
        candidates = [[int(np.argmax(S[i]))] for i in routed]
    chosen = dict(zip(routed, candidates, strict=True))
    rows = []
    for i, p in enumerate(prompts):
        scores = {n: float(s) for n, s in zip(names, S[i], strict=True)}
        if i in chosen:
            cands = [names[j] for j in chosen[i]]
            rows.append((p.id, Route(cands[0], scores, p.id in best_probe, route_keys[p.id], cands)))
        else:
            best, answered = best_probe[p.id]
            rows.append((p.id, Route(names[best], scores, True, route_keys[p.id], [names[j] for j in answered])))
    run.store.set_routing(rows)
    run.store.set_meta("route_plan", plan)
    if run.cfg.router.backbone == "student":
        run.executor.release()


def _argmax_nan(row: np.ndarray) -> int | None:
    return None if not np.isfinite(row).any() else int(np.nanargmax(row))


def generate_stage(run: Run) -> None:
    if run.cfg.generation.accept_quality is None:
        generate_pairs(run, stage_pairs(run, "generate"), "generate")
    else:
        _cascade(run)
    select_candidates(run)
    score_routed(run)


def score_routed(run: Run) -> None:
    """Quality of every routed response the store lacks, when RunConfig.scores_routed_quality."""
    if run.cfg.scores_routed_quality:
        score_prompts(run, [p for p, _ in _routed(run)], "routed", kinds=("quality",))


def _routed(run: Run) -> list[tuple[Prompt, Route]]:
    routing = run.store.routing()
    return [(p, routing[p.id]) for p in run.store.prompts() if p.id in routing and not routing[p.id].probe]


def _cascade(run: Run) -> None:
    """Ask the router's next teacher while a prompt's best quality is below accept_quality and the budget lasts."""
    from persyn.budget import cascade_next

    g, names = run.cfg.generation, run.teacher_names()
    routed = _routed(run)
    room_total = int(round(g.budget * len(routed)))
    while True:
        generate_pairs(run, stage_pairs(run, "generate"), "generate")
        prompts = [p for p, _ in routed]
        score_prompts(run, prompts, "cascade", kinds=("quality",))
        quality = rewards_for(run, prompts).quality
        asked = [[names.index(t) for t in r.candidates] for _, r in routed]
        accepted = [bool(np.any(quality[i, a] >= g.accept_quality)) for i, a in enumerate(asked)]
        S = np.array([[r.scores[n] for n in names] for _, r in routed]).reshape(len(routed), len(names))
        nxt = cascade_next(S, asked, accepted, room_total - sum(map(len, asked)))
        if all(t is None for t in nxt):
            return
        updates = {p.id: (r.teacher, r.candidates + [names[t]]) for (p, r), t in zip(routed, nxt, strict=True)
                   if t is not None}
        run.store.update_routes(updates)
        routed = _routed(run)


def select_candidates(run: Run) -> None:
    """Keep each routed prompt's best candidate by the probe's combined reward (persyn.budget.keep_best, the rule
    the frontier replays); a failed generation counts as a teacher not asked."""
    from persyn import budget

    cfg, names = run.cfg, run.teacher_names()
    multi = [(p, r) for p, r in _routed(run) if len(r.candidates) > 1]
    if not multi:
        return
    prompts = [p for p, _ in multi]
    score_prompts(run, prompts, "select")
    candidates = rewards_for(run, prompts)
    keys, gens = prompt_generations(run, prompts)
    probe = probe_rewards(run)
    rule = budget.candidate_rule(probe.quality, probe.learnability, cfg.reward.alpha, cfg.reward.normalization,
                                 worst=empty_responses(run, probe.prompts))
    asked = [[j for j in map(names.index, r.candidates) if keys[i][j] in gens and gens[keys[i][j]].error is None]
             for i, (_, r) in enumerate(multi)]
    kept = budget.keep_best(rule, asked, candidates.quality, candidates.learnability,
                            empty_responses(run, prompts))
    updates = {p.id: (names[k], r.candidates) for (p, r), cols, k in zip(multi, asked, kept, strict=True)
               if cols and names[k] != r.teacher}
    if updates:
        run.store.update_routes(updates)


def empty_responses(run: Run, prompts: list[Prompt]) -> np.ndarray:
    """[P, T]: the teacher's response exists, without error, and is blank (Eq. 2 ranks it last)."""
    keys, gens = prompt_generations(run, prompts)
    return np.array([[k in gens and gens[k].error is None and not (gens[k].text or "").strip() for k in row]
                     for row in keys], dtype=bool).reshape(len(prompts), len(run.cfg.teachers))


def export_stage(run: Run) -> None:
    from persyn.export import export_run

    score_routed(run)  # nothing to do after the generate stage; `persyn export` alone on an older run needs it
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
    from persyn.router import router_kinds

    cfg = run.cfg
    if cfg.router.kind not in router_kinds():
        raise ConfigError(f"unknown router kind {cfg.router.kind!r}; known: {', '.join(router_kinds())}",
                          key="router.kind")
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


def announce_changes(run: Run, prompts: list[Prompt]) -> None:
    """Print one line: what changed since the last run and what will be redone; record this run's identity and
    write the resolved config to run_dir/config.resolved.yaml."""
    from persyn.progress import console
    from persyn.status import pending_work, redo_phrase

    snapshot = run.keys.snapshot()
    previous = run.store.get_meta("identity")
    work = redo_phrase(pending_work(run.cfg, run.store, run.keys, prompts, run.store.probe_ids()))
    if previous is None:  # a new run_dir, or one from a persyn that did not record its inputs
        run.changes = f"{'no record of the last run' if run.resumed else 'first run'} -> to do: {work}"
    elif changes := describe_changes(previous, snapshot) + run.prompt_changes:
        run.changes = f"changed since last run: {', '.join(changes)} -> redo: {work}"
    else:
        run.changes = f"nothing changed since last run -> to do: {work}"
    console.print(run.changes, highlight=False, markup=False, soft_wrap=True)
    run.store.set_meta("identity", snapshot)
    resolved = yaml.safe_dump(run.cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    tmp = run.run_dir / "config.resolved.yaml.tmp"
    tmp.write_text(resolved, encoding="utf-8")
    tmp.replace(run.run_dir / "config.resolved.yaml")


def record_stage_seconds(run: Run, stage: str, seconds: float) -> None:
    """This invocation's time for a stage, merged into the run's record (meta `stage_seconds`): a stage run alone
    updates its own entry and keeps the others'."""
    run.stage_seconds[stage] = seconds
    stored = run.store.get_meta("stage_seconds", {})
    stored[stage] = round(seconds, 3)
    run.store.set_meta("stage_seconds", stored)


def run_stages(cfg: RunConfig, stages: tuple[str, ...] | list[str] = STAGES) -> Run:
    """Run the given stages in order under the run_dir lock; every stage resumes from the store. A full run whose
    inputs, store and outputs match the last finished run's stamp (persyn.stamp) has nothing to do and stops
    there."""
    from persyn import stamp

    full = tuple(stages) == STAGES
    with opened_run(cfg) as run:
        t0 = time.perf_counter()
        prompts, up_to_date = stamp.up_to_date_prompts(run, lambda: read_prompts(run)) if full else (None, False)
        if up_to_date:
            record_stage_seconds(run, "prompts", time.perf_counter() - t0)
            _nothing_to_do(run, prompts)
            return run
        preflight(run)
        t0 = time.perf_counter()
        prompts = load_stage(run, prompts)
        record_stage_seconds(run, "prompts", time.perf_counter() - t0)
        announce_changes(run, prompts)
        for stage in stages:
            t0 = time.perf_counter()
            STAGE_FUNCS[stage](run)
            record_stage_seconds(run, stage, time.perf_counter() - t0)
            if stage == "export":
                from persyn.export import update_stage_seconds

                update_stage_seconds(run)  # summary.json was written before export's own time was known
        if full and _finished(run, prompts):
            stamp.write_stamp(run, prompts)
        return run


def _finished(run: Run, prompts: list[Prompt]) -> bool:
    """Nothing pending after a full run: no generation, score or routing left, no dataset row missing."""
    from persyn.status import pending_work, redo_phrase

    pending = pending_work(run.cfg, run.store, run.keys, prompts, run.store.probe_ids())
    return redo_phrase(pending) == "nothing" and not run.summary.get("dataset_missing")


def _nothing_to_do(run: Run, prompts: list[Prompt]) -> None:
    """An up-to-date run: say so, and make summary.json speak for this invocation, which did nothing."""
    from persyn import stamp
    from persyn.export import refresh_summary
    from persyn.progress import console

    run.resumed = run.up_to_date = True
    run.changes = "nothing changed since last run -> to do: nothing"
    console.print(run.changes, highlight=False, markup=False, soft_wrap=True)
    run.summary = refresh_summary(run)
    stamp.write_stamp(run, prompts)
