"""Before the stages: read the prompts, store them, and draw (or keep) the probe."""

from __future__ import annotations

from persyn.errors import ConfigError
from persyn.keys import describe_prompt_changes
from persyn.prompts import Prompt, load_prompts
from persyn.run import Run
from persyn.stages.probe import probe_ids
from persyn.store import Meta


def read_prompts(run: Run) -> list[Prompt]:
    """The config's prompts, checked against the probe size; stores nothing."""
    cfg = run.cfg
    need_ref = cfg.quality.kind in ("math_answer", "gym") and cfg.reward.needs_quality
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
        k = max(k, run.store.get_meta(Meta.ADAPTIVE_PROBE_SIZE, k))
    run.store.set_probe(sorted(probe_ids(run, prompts, k)))
    run.store.set_meta(Meta.PROBE_SEED, cfg.probe.seed)
    run.resumed = bool(old)
    if old:
        run.prompt_changes = describe_prompt_changes(old, {p.id: p.text for p in prompts})
    return prompts
