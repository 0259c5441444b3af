"""The generate stage: the routed pairs the store lacks, the cascade's further teachers, and the kept candidate."""

from __future__ import annotations

import logging

import numpy as np

from persyn.backends.base import GenRequest, GenResult
from persyn.config import TeacherConfig
from persyn.progress import progress
from persyn.prompts import Prompt
from persyn.run import Run, probe_rewards, prompt_generations, rewards_for
from persyn.stages.score import score_prompts
from persyn.stages.work import fail_if_all_failed, pending_requests, routed, stage_pairs

log = logging.getLogger(__name__)


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


def generate_stage(run: Run) -> None:
    if run.cfg.generation.accept_quality is None:
        generate_pairs(run, stage_pairs(run, "generate"), "generate")
    else:
        _cascade(run)
    select_candidates(run)


def _cascade(run: Run) -> None:
    """Ask the router's next teacher while a prompt's best quality is below accept_quality and the budget lasts."""
    from persyn.stages.budget import cascade_next

    g, names = run.cfg.generation, run.teacher_names()
    routes = routed(run)
    room_total = int(round(g.budget * len(routes)))
    while True:
        generate_pairs(run, stage_pairs(run, "generate"), "generate")
        prompts = [p for p, _ in routes]
        score_prompts(run, prompts, "cascade", kinds=("quality",))
        quality = rewards_for(run, prompts).quality
        asked = [[names.index(t) for t in r.candidates] for _, r in routes]
        accepted = [bool(np.any(quality[i, a] >= g.accept_quality)) for i, a in enumerate(asked)]
        S = np.array([[r.scores[n] for n in names] for _, r in routes]).reshape(len(routes), len(names))
        nxt = cascade_next(S, asked, accepted, room_total - sum(map(len, asked)))
        if all(t is None for t in nxt):
            return
        updates = {p.id: (r.teacher, r.candidates + [names[t]]) for (p, r), t in zip(routes, nxt, strict=True)
                   if t is not None}
        run.store.update_routes(updates)
        routes = routed(run)
def select_candidates(run: Run) -> None:
    """Keep each routed prompt's best candidate by the probe's combined reward (scale: persyn.stages.budget)."""
    from persyn.scoring.reward import reward_matrix
    from persyn.stages.budget import best_candidate, probe_scales

    cfg, names = run.cfg, run.teacher_names()
    multi = [(p, r) for p, r in routed(run) if len(r.candidates) > 1]
    if not multi:
        return
    prompts = [p for p, _ in multi]
    score_prompts(run, prompts, "select")
    candidates = rewards_for(run, prompts)
    quality, learn = candidates.quality, candidates.learnability
    keys, gens = prompt_generations(run, prompts)
    probe = probe_rewards(run)
    alpha, method = cfg.reward.alpha, cfg.reward.normalization
    scales = probe_scales(probe.quality if alpha < 1 else None, probe.learnability if alpha > 0 else None, method)
    updates = {}
    for i, (p, r) in enumerate(multi):
        cols = [names.index(t) for t in r.candidates]
        ok = [j for j in cols if keys[i][j] in gens and gens[keys[i][j]].error is None]
        if not ok:
            continue
        q, l_ = quality[i, ok], learn[i, ok]
        empty = np.array([not (gens[keys[i][j]].text or "").strip() for j in ok])
        full = None
        if len(ok) == len(names):  # every teacher answered: exactly the probe's Eq. 2
            full = reward_matrix(q[None] if alpha < 1 else np.zeros((1, len(ok))),
                                 l_[None] if alpha > 0 else None, alpha, method, worst=empty[None])[0]
        best = names[ok[best_candidate(q, l_, alpha, scales, empty=empty, full=full)]]
        if best != r.teacher:
            updates[p.id] = (best, r.candidates)
    if updates:
        run.store.update_routes(updates)

