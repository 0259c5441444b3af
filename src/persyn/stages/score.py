"""The score stage: quality and learnability of every probe response that lacks a current score."""

from __future__ import annotations

import logging

from persyn.progress import progress
from persyn.prompts import Prompt
from persyn.run import Run, probe_prompts, prompt_generations
from persyn.stages.work import fail_if_all_failed
from persyn.store import Meta

log = logging.getLogger(__name__)

SCORE_CHUNK = 64  # responses scored (and committed) per step


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
    if run.cfg.reward.needs_quality and "quality" in kinds:
        _score_quality(run, ok, gens, prompt_of, label)
    if run.cfg.reward.needs_learnability and "learnability" in kinds:
        _score_learnability(run, ok, gens, prompt_of, label)


def _stored_and_recorded(run: Run, kind: str, scorer_id: str, keys: list[str], gens: dict) -> tuple[dict, dict]:
    """(the scores already stored, the recorded ones stored now): a recorded teacher's row may carry its score."""
    have = run.store.scores(kind, scorer_id, keys)
    pre = {k: v for k in keys if k not in have and (v := getattr(gens[k], f"pre_{kind}")) is not None}
    if pre:
        run.store.add_scores(kind, scorer_id, pre)
    return have, pre


def _score_quality(run: Run, keys: list[str], gens: dict, prompt_of: dict[str, Prompt], label: str) -> None:
    scorer_id = run.keys.quality_scorer
    have, pre = _stored_and_recorded(run, "quality", scorer_id, keys, gens)
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
                                  [prompt_of[k].reference for k in chunk])
            run.store.add_scores("quality", scorer_id, dict(zip(chunk, values, strict=True)))
            advance(len(chunk))


def _score_learnability(run: Run, keys: list[str], gens: dict, prompt_of: dict[str, Prompt], label: str) -> None:
    scorer_id = run.keys.learnability_scorer
    have, pre = _stored_and_recorded(run, "learnability", scorer_id, keys, gens)
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
    if run.store.get_meta(Meta.STUDENT_SERVER_CHECKED) == scorer_id:
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
        run.store.set_meta(Meta.STUDENT_SERVER_CHECKED, scorer_id)
