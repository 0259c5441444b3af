"""A run: the stages in order, each reading the store and doing only what is missing there (persyn.stages), after
the checks that can fail before any paid work and the one line that says what changed since the last run."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import yaml

from persyn.config import RunConfig
from persyn.errors import ConfigError
from persyn.files import write_atomic
from persyn.keys import describe_changes
from persyn.prompts import Prompt
from persyn.run import Run, opened_run
from persyn.stages.export import export_stage
from persyn.stages.generate import generate_stage
from persyn.stages.load import load_stage, read_prompts
from persyn.stages.probe import probe_stage
from persyn.stages.route import route_stage
from persyn.stages.score import score_stage
from persyn.stages.train_router import train_router_stage
from persyn.store import Meta

STAGES = ("probe", "score", "train-router", "route", "generate", "export")

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
    previous = run.store.get_meta(Meta.IDENTITY)
    work = redo_phrase(pending_work(run.cfg, run.store, run.keys, prompts, run.store.probe_ids()))
    if previous is None:  # a new run_dir, or one from a persyn that did not record its inputs
        run.changes = f"{'no record of the last run' if run.resumed else 'first run'} -> to do: {work}"
    elif changes := describe_changes(previous, snapshot) + run.prompt_changes:
        run.changes = f"changed since last run: {', '.join(changes)} -> redo: {work}"
    else:
        run.changes = f"nothing changed since last run -> to do: {work}"
    console.print(run.changes, highlight=False, markup=False, soft_wrap=True)
    run.store.set_meta(Meta.IDENTITY, snapshot)
    resolved = yaml.safe_dump(run.cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    write_atomic(run.run_dir / "config.resolved.yaml", resolved)


def record_stage_seconds(run: Run, stage: str, seconds: float) -> None:
    """This invocation's time for a stage, merged into the run's record (meta `stage_seconds`): a stage run alone
    updates its own entry and keeps the others'."""
    run.stage_seconds[stage] = seconds
    stored = run.store.get_meta(Meta.STAGE_SECONDS, {})
    stored[stage] = round(seconds, 3)
    run.store.set_meta(Meta.STAGE_SECONDS, stored)


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
                from persyn.outputs.export import update_stage_seconds

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
    from persyn.outputs.export import refresh_summary
    from persyn.progress import console

    run.resumed = run.up_to_date = True
    run.changes = "nothing changed since last run -> to do: nothing"
    console.print(run.changes, highlight=False, markup=False, soft_wrap=True)
    run.summary = refresh_summary(run)
    stamp.write_stamp(run, prompts)
