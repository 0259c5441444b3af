"""The generate stage: the routed pairs the store lacks, the cascade's further teachers, and the kept candidate."""

from __future__ import annotations

import logging

import numpy as np

from persyn.backends.base import GenRequest, GenResult
from persyn.config import TeacherConfig
from persyn.progress import progress
from persyn.prompts import Prompt
from persyn.run import Run, probe_rewards, rewards_for
from persyn.stages import budget
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
    score_routed(run)


def score_routed(run: Run) -> None:
    """Quality of every routed response the store lacks, when RunConfig.scores_routed_quality."""
    if run.cfg.scores_routed_quality:
        score_prompts(run, [p for p, _ in routed(run)], "routed", kinds=("quality",))


def _cascade(run: Run) -> None:
    """Ask the router's next teacher while a prompt's best quality is below accept_quality and the budget lasts
    (persyn.stages.budget.cascade, which the frontier replays on known scores)."""
    g, names = run.cfg.generation, run.teacher_names()
    routes = routed(run)
    prompts = [p for p, _ in routes]
    stored = [[names.index(t) for t in r.candidates] for _, r in routes]
    S = np.array([[r.scores[n] for n in names] for _, r in routes]).reshape(len(routes), len(names))

    def answered(asked: list[list[int]]) -> np.ndarray:
        updates = {p.id: (r.teacher, [names[t] for t in a]) for (p, r), a, was in zip(routes, asked, stored,
                                                                                     strict=True) if a != was}
        if updates:
            run.store.update_routes(updates)
            stored[:] = [list(a) for a in asked]
        generate_pairs(run, stage_pairs(run, "generate"), "generate")
        score_prompts(run, prompts, "cascade", kinds=("quality",))
        return rewards_for(run, prompts).quality

    budget.cascade(S, stored, g.accept_quality, int(round(g.budget * len(routes))), answered)


def select_candidates(run: Run) -> None:
    """Keep each routed prompt's best candidate by the probe's combined reward (persyn.stages.budget.keep_best,
    the rule the frontier replays); a failed generation counts as a teacher not asked."""
    rw, names = run.cfg.reward, run.teacher_names()
    multi = [(p, r) for p, r in routed(run) if len(r.candidates) > 1]
    if not multi:
        return
    prompts = [p for p, _ in multi]
    score_prompts(run, prompts, "select")
    m = rewards_for(run, prompts)
    probe = probe_rewards(run)
    rule = budget.candidate_rule(probe.quality, probe.learnability, rw.alpha, rw.normalization, worst=probe.empty)
    asked = [[j for j in map(names.index, r.candidates) if m.present[i, j]] for i, (_, r) in enumerate(multi)]
    kept = budget.keep_best(rule, asked, m.quality, m.learnability, m.empty)
    updates = {p.id: (names[k], r.candidates) for (p, r), cols, k in zip(multi, asked, kept, strict=True)
               if cols and names[k] != r.teacher}
    if updates:
        run.store.update_routes(updates)
