"""The train-router stage: embed the probe prompts and fit the configured router kind on their rewards."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from persyn.config import RunConfig
from persyn.prompts import Prompt
from persyn.run import Run, probe_rewards
from persyn.store import Meta

if TYPE_CHECKING:
    from persyn.router import Router, RouterReport

log = logging.getLogger(__name__)


def router_dir(run: Run) -> Path:
    return run.run_dir / "router"


def new_router(cfg: RunConfig, **override: Any) -> Router:
    """An unfitted router of this config's kind and settings (`override`: router fields, e.g. kind or seed)."""
    from persyn.router import make_router

    r = cfg.router.model_copy(update=override)
    return make_router(r.kind, n_teachers=len(cfg.teachers), teacher_names=[t.name for t in cfg.teachers],
                       **r.head_kwargs())


def fit_router(run: Run, probe: list[Prompt], rewards: np.ndarray) -> tuple[Router, RouterReport]:
    router = new_router(run.cfg)
    X = run.embed([p.text for p in probe], "train-router: embedding probe prompts")
    return router, router.fit(X, rewards)


def train_router_stage(run: Run) -> None:
    probe = probe_rewards(run)
    fp = run.keys.router(probe.prompts, np.ascontiguousarray(probe.reward).tobytes())
    if run.store.get_meta(Meta.ROUTER_FP) == fp and (router_dir(run) / "router.json").exists():
        return
    router, report = fit_router(run, probe.prompts, probe.reward)
    router.save(router_dir(run))
    run.store.set_meta(Meta.ROUTER_REPORT, report.as_dict())
    run.store.set_meta(Meta.ROUTER_FP, fp)
    if report.fallback_to_bias:
        reason = report.fallback_reason or "the trained head did not beat it on validation"
        log.warning("router falls back to the best single teacher %s: %s", report.best_single_teacher, reason)
