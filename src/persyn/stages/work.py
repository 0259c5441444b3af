"""What a generating stage still needs: the (prompt, teacher) pairs it covers and the requests the store lacks."""

from __future__ import annotations

from collections import defaultdict

from persyn.backends.base import GenRequest
from persyn.config import TeacherConfig
from persyn.errors import StageFailedError
from persyn.prompts import Prompt
from persyn.run import Run
from persyn.status import probe_pairs, routed_pairs, routed_prompts
from persyn.store import Route


def routed(run: Run) -> list[tuple[Prompt, Route]]:
    """The routed prompts (outside the probe) and their routes, in prompt order."""
    return routed_prompts(run.store.prompts(), run.store.routing())


def stage_pairs(run: Run, stage: str) -> list[tuple[Prompt, TeacherConfig]]:
    """The (prompt, teacher) pairs a generating stage needs: every teacher on the probe, or the routed pairs."""
    if stage == "probe":
        return probe_pairs(run.store.prompts(), run.store.probe_ids(), run.cfg.teachers)
    return routed_pairs(run.store.prompts(), run.store.routing(), run.cfg.teachers)


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


def fail_if_all_failed(label: str, what: str, attempted: int, failed: int, first_error: str) -> None:
    if attempted and failed == attempted:
        raise StageFailedError(f"{label}: all {attempted} {what} failed and stay pending; run again once the cause "
                               f"is fixed (first error: {' '.join(first_error.split())[:300]})")
