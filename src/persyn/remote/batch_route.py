"""The Batch API route through the store: export what a stage still needs, import what the provider returned."""

from __future__ import annotations

import logging
from pathlib import Path

from persyn.config import RunConfig
from persyn.errors import ConfigError
from persyn.remote.batch_api import export_batch, import_batch_results
from persyn.run import opened_run
from persyn.stages.generate import store_result
from persyn.stages.load import load_stage
from persyn.stages.work import pending_requests, stage_pairs

log = logging.getLogger(__name__)
STAGES = ("probe", "generate")


def _check_stage(stage: str) -> None:
    if stage not in STAGES:
        raise ConfigError(f"batch files are made for the generating stages {', '.join(STAGES)}, not {stage!r}")


def export_pending(cfg: RunConfig, stage: str, out_dir: Path) -> dict[str, tuple[Path, int]]:
    """One Batch JSONL file per teacher with requests pending in `stage`; returns teacher -> (file, lines)."""
    _check_stage(stage)
    out_dir.mkdir(parents=True, exist_ok=True)
    with opened_run(cfg) as run:
        load_stage(run)
        written = {}
        for name, reqs in pending_requests(run, stage_pairs(run, stage)).items():
            path = out_dir / f"{stage}-{name}.jsonl"
            written[name] = (path, export_batch(reqs, cfg.teacher(name), path))
        return written


def import_results(cfg: RunConfig, stage: str, teacher: str, results_path: Path) -> dict[str, int]:
    """Store a provider's results file for one teacher; only requests still pending in `stage` are taken."""
    _check_stage(stage)
    if teacher not in {t.name for t in cfg.teachers}:
        raise ConfigError(f"no teacher named {teacher!r}", key="teachers")
    t = cfg.teacher(teacher)
    with opened_run(cfg) as run:
        load_stage(run)
        pending = {r.key: r for r in pending_requests(run, stage_pairs(run, stage)).get(teacher, [])}
        counts = {"stored": 0, "failed": 0, "not_pending": 0}
        for result in import_batch_results(results_path, teacher=t):
            req = pending.get(result.key)
            if req is None:  # already stored, or from another stage or teacher: never stored twice
                counts["not_pending"] += 1
                continue
            store_result(run, t, req, result)
            counts["stored" if result.error is None else "failed"] += 1
        counts["still_pending"] = len(pending) - counts["stored"]
        return counts
