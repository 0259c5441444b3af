"""Write the run's outputs: dataset.jsonl, routing.jsonl, scores.jsonl and summary.json."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from persyn.files import write_atomic, write_jsonl
from persyn.prompts import Prompt
from persyn.run import Run, probe_rewards
from persyn.store import Meta


def dataset_row(prompt: Prompt, response: str | None, teacher: str, source: str, **extra: Any) -> dict[str, Any]:
    """One dataset row: the prompt and the kept response as a two-turn conversation, who answered and why."""
    return {"id": prompt.id, "messages": [{"role": "user", "content": prompt.text},
                                          {"role": "assistant", "content": response}],
            "teacher": teacher, "source": source, **extra}


def _nan_to_none(x: float) -> float | None:
    return None if x != x else float(x)


def export_run(run: Run) -> dict[str, Any]:
    cfg, store = run.cfg, run.store
    teachers = {t.name: t for t in cfg.teachers}
    prompts = store.prompts()
    routing = store.routing()
    keys = {p.id: run.keys.generation(teachers[routing[p.id].teacher], p) for p in prompts if p.id in routing}
    gens = store.generations(keys.values())
    known = row_scores(run, list(keys.values()))

    dataset, routing_rows, missing = [], [], []
    for p in prompts:
        if p.id not in routing:
            missing.append(p.id)
            continue
        route = routing[p.id]
        teacher, is_probe = route.teacher, route.probe
        routing_rows.append({"id": p.id, "prompt": p.text, "teacher": teacher, "scores": route.scores,
                             "probe": is_probe, "candidates": route.candidates})
        g = gens.get(keys[p.id])
        if g is None or g.error is not None:
            missing.append(p.id)
            continue
        dataset.append(dataset_row(p, g.text, teacher, "probe" if is_probe else "routed",
                                   **{kind: values.get(keys[p.id]) for kind, values in known.items()}))
    quality = {"kind": cfg.quality.kind, **{src: quality_stats([r for r in dataset if r["source"] == src],
                                                                   cfg.quality.kind)
                                              for src in ("probe", "routed")}}
    dataset, dropped = apply_min_quality(dataset, cfg.export.min_quality)
    quality["dataset"] = quality_stats(dataset, cfg.quality.kind)
    out = cfg.path
    write_jsonl(out / "dataset.jsonl", dataset)
    write_jsonl(out / "routing.jsonl", routing_rows)

    probe = probe_rewards(run)
    names = list(teachers)
    score_rows = [
        {"id": p.id, "teacher": names[j], "quality": _nan_to_none(probe.quality[i, j]),
         "learnability": _nan_to_none(probe.learnability[i, j]), "reward": _nan_to_none(probe.reward[i, j])}
        for i, p in enumerate(probe.prompts) for j in range(len(names))
    ]
    write_jsonl(out / "scores.jsonl", score_rows)

    routed = sum(len(r.candidates) for r in routing.values() if not r.probe)
    summary = build_summary(run, prompts, probe.prompts, dataset, missing, routed)
    summary["quality"] = quality
    summary["filter"] = dropped
    _write_summary(out, summary)
    return summary


BINARY_QUALITY = ("math_answer", "gym")  # 1 = a verified correct answer, 0 = not


def quality_stats(rows: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """Rows, rows with a known quality, their mean quality and (answer-checking kinds) the share verified
    correct, i.e. quality 1, among the scored rows."""
    known = [float(r["quality"]) for r in rows if r.get("quality") is not None]
    mean = round(sum(known) / len(known), 4) if known else None
    correct = round(sum(q >= 1.0 for q in known) / len(known), 4) if known and kind in BINARY_QUALITY else None
    return {"rows": len(rows), "scored": len(known), "mean": mean, "correct_share": correct}


def apply_min_quality(rows: list[dict[str, Any]],
                      min_quality: float | None) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Verified filtering: the rows whose quality is at least min_quality, and what was dropped (None: no
    filter). A row with unknown quality cannot be verified and is dropped, counted apart."""
    if min_quality is None:
        return rows, None
    kept = [r for r in rows if r.get("quality") is not None and r["quality"] >= min_quality]
    unknown = sum(r.get("quality") is None for r in rows)
    by_teacher = Counter(r["teacher"] for r in rows) - Counter(r["teacher"] for r in kept)
    return kept, {"min_quality": min_quality, "rows_before": len(rows), "dropped": len(rows) - len(kept),
                  "dropped_unknown_quality": unknown, "dropped_by_teacher": dict(sorted(by_teacher.items()))}


def _write_summary(out: Path, summary: dict[str, Any]) -> None:
    write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")


def stage_seconds(run: Run) -> dict[str, float]:
    """Every stage's latest time: the run's record, with this invocation's own times on top."""
    merged = dict(run.store.get_meta(Meta.STAGE_SECONDS, {}))
    merged.update({s: round(v, 3) for s, v in run.stage_seconds.items()})
    return merged


def update_stage_seconds(run: Run) -> None:
    """Rewrite summary.json's stage_seconds once the export stage's own time is known."""
    run.summary["stage_seconds"] = stage_seconds(run)
    _write_summary(run.cfg.path, run.summary)


def refresh_summary(run: Run) -> dict[str, Any]:
    """The last summary.json with this invocation's own counts (an invocation that found nothing to do)."""
    summary = json.loads((run.cfg.path / "summary.json").read_text())
    summary.update({"generations_this_invocation": run.generated,
                    "generations_failed_this_invocation": run.failed,
                    "responses_truncated_this_invocation": run.truncated,
                    "stage_seconds": stage_seconds(run)})
    _write_summary(run.cfg.path, summary)
    return summary


def row_scores(run: Run, keys: list[str]) -> dict[str, dict[str, float | None]]:
    """Raw quality and learnability of these generations where the store has them (None elsewhere): probe rows,
    and routed rows' quality when RunConfig.scores_routed_quality."""
    cfg, store = run.cfg, run.store
    out = {"quality": store.scores("quality", run.keys.quality_scorer, keys), "learnability": {}}
    if cfg.student is not None:
        out["learnability"] = store.scores("learnability", run.keys.learnability_scorer, keys)
    return {kind: {k: _nan_to_none(v) for k, v in values.items() if v is not None} for kind, values in out.items()}


def build_summary(run: Run, prompts: list, probe: list, dataset: list[dict], missing: list[str],
                  routed_generations: int) -> dict[str, Any]:
    cfg, store = run.cfg, run.store
    per_teacher: dict[str, dict[str, Any]] = {}
    total_tokens = 0
    for t in cfg.teachers:
        count, tokens, prompt_tokens, paid = store.generation_totals(run.keys.teacher(t), run.keys.params(t).as_dict())
        total_tokens += tokens
        cost = paid or t.cost(prompt_tokens, tokens)
        per_teacher[t.name] = {"generations": count, "completion_tokens": tokens, "cost": round(cost, 6)}
    shares = Counter(row["teacher"] for row in dataset)
    truncated = store.truncated_total("learnability", run.keys.learnability_scorer) if cfg.student else 0
    n, k, T = len(prompts), len(probe), len(cfg.teachers)
    return {
        "prompts": n,
        "probe_size": k,
        "teachers": T,
        "generations_total": sum(v["generations"] for v in per_teacher.values()),
        "generations_expected": k * T + routed_generations,
        "budget": {"budget": cfg.generation.budget, "accept_quality": cfg.generation.accept_quality,
                   "routed_prompts": n - k, "routed_generations": routed_generations,
                   "generations_per_routed_prompt": round(routed_generations / (n - k), 4) if n > k else None},
        "generations_this_invocation": run.generated,
        "generations_failed_this_invocation": run.failed,
        "generate_then_select_generations": n * T,
        "generation_saving": round(1 - (k * T + routed_generations) / (n * T), 4) if n else 0.0,
        "tokens_generated": total_tokens,
        "per_teacher": per_teacher,
        "dataset_rows": len(dataset),
        "dataset_missing": missing,
        "teacher_shares": {name: round(shares.get(name, 0) / max(1, len(dataset)), 4) for name in per_teacher},
        "teacher_counts": {name: shares.get(name, 0) for name in per_teacher},
        "router": store.get_meta(Meta.ROUTER_REPORT),
        "responses_truncated_for_scoring": truncated,  # by every invocation, for the current student
        "responses_truncated_this_invocation": run.truncated,
        "alpha": cfg.reward.alpha,
        "stage_seconds": stage_seconds(run),
        "failed_generations": [{"prompt_id": p, "teacher": t, "error": e} for p, t, e in store.failed()],
    }
