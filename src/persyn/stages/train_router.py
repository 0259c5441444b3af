"""The train-router stage: embed the probe prompts and fit the configured router kind on their rewards."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from persyn.config import RunConfig
from persyn.prompts import Prompt
from persyn.run import Run, probe_rewards

log = logging.getLogger(__name__)


def router_dir(run: Run) -> Path:
    return run.run_dir / "router"


def new_router(cfg: RunConfig, **override: Any):
    """An unfitted router of this config's kind and settings (`override`: router fields, e.g. kind or seed)."""
    from persyn.router import make_router

    r = cfg.router.model_copy(update=override)
    return make_router(r.kind, n_teachers=len(cfg.teachers), teacher_names=[t.name for t in cfg.teachers],
                       **r.head_kwargs())


def fit_router(run: Run, probe: list[Prompt], rewards: np.ndarray):
    router = new_router(run.cfg)
    X = run.embed([p.text for p in probe], "train-router: embedding probe prompts")
    return router, router.fit(X, rewards)


def router_gain(report) -> float:
    """A router's held-out gain in mean reward over the best single teacher (out-of-fold for ridge)."""
    if hasattr(report, "cv_gain"):
        return float(report.cv_gain)
    if report.val_mean_reward is None or report.val_best_single_mean_reward is None:
        return 0.0
    return float(report.val_mean_reward - report.val_best_single_mean_reward)


def train_router_stage(run: Run) -> None:
    probe = probe_rewards(run)
    fp = run.keys.router(probe.prompts, np.ascontiguousarray(probe.reward).tobytes())
    if run.store.get_meta("router_fp") == fp and (router_dir(run) / "router.json").exists():
        return
    router, report = fit_router(run, probe.prompts, probe.reward)
    router.save(router_dir(run))
    run.store.set_meta("router_report", report.as_dict())
    run.store.set_meta("router_fp", fp)
    if report.fallback_to_bias:
        reason = getattr(report, "fallback_reason", None) or "the trained head did not beat it on validation"
        log.warning("router falls back to the best single teacher %s: %s", report.best_single_teacher, reason)
