"""What a run has done and what is pending, computed from the config and the store (read-only)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from persyn.config import RunConfig, TeacherConfig
from persyn.keys import Keys, current_probe
from persyn.prompts import Prompt, load_prompts
from persyn.store import Meta, Route, Store

Pair = tuple[Prompt, TeacherConfig]


def probe_pairs(prompts: list[Prompt], probe_ids: set[str], teachers: list[TeacherConfig]) -> list[Pair]:
    """What the probe needs: every teacher on every probe prompt."""
    return [(p, t) for p in prompts if p.id in probe_ids for t in teachers]


def routed_prompts(prompts: list[Prompt], routing: dict[str, Route]) -> list[tuple[Prompt, Route]]:
    """The routed prompts (outside the probe) with their routes, in prompt order."""
    return [(p, routing[p.id]) for p in prompts if p.id in routing and not routing[p.id].probe]


def routed_pairs(prompts: list[Prompt], routing: dict[str, Route], teachers: list[TeacherConfig]) -> list[Pair]:
    """What the generate stage needs: each routed prompt's candidates (the router's picks under a budget)."""
    by_name = {t.name: t for t in teachers}
    return [(p, by_name[name]) for p, route in routed_prompts(prompts, routing) for name in route.candidates
            if name in by_name]


class Counts(NamedTuple):
    done: int
    pending: int


@dataclass
class Pending:
    """Done and pending work per stage, with the pending generations per teacher."""

    probe: Counts = Counts(0, 0)
    quality: Counts | None = None
    learnability: Counts | None = None
    routed: Counts = Counts(0, 0)  # prompts routed by the current router, and not
    generate: Counts = Counts(0, 0)
    probe_by_teacher: Counter = field(default_factory=Counter)
    routed_by_teacher: Counter = field(default_factory=Counter)
    unrouted: int = 0  # prompts outside the probe with no routing yet: each needs one generation


def pending_work(cfg: RunConfig, store: Store, keys: Keys, prompts: list[Prompt], probe_ids: set[str]) -> Pending:
    """Everything this config still needs that the store lacks; keys come from `keys`, never rebuilt here."""
    pairs = [(keys.generation(t, p), t.name) for p, t in probe_pairs(prompts, probe_ids, cfg.teachers)]
    probe_keys = {k for k, _ in pairs}
    done = store.done_keys(probe_keys)
    out = Pending(probe=Counts(len(done), len(probe_keys - done)))
    out.probe_by_teacher.update(name for k, name in dict(pairs).items() if k not in done)
    if cfg.reward.needs_quality:
        q = store.scores("quality", keys.quality_scorer, sorted(done))
        out.quality = Counts(len(q), len(probe_keys - set(q)))
    if cfg.reward.needs_learnability:
        s = store.scores("learnability", keys.learnability_scorer, sorted(done))
        out.learnability = Counts(len(s), len(probe_keys - set(s)))
    routing = store.routing()
    fp = store.get_meta(Meta.ROUTER_FP)
    routed = sum(1 for p in prompts if p.id in routing and routing[p.id].router == keys.route(fp, p))
    out.routed = Counts(routed, len(prompts) - routed)
    needed = {keys.generation(t, p): t.name for p, t in routed_pairs(prompts, routing, cfg.teachers)}
    gdone = store.done_keys(needed)
    if out.quality is not None and cfg.scores_routed_quality:  # routed responses are scored too
        q = store.scores("quality", keys.quality_scorer, sorted(gdone))
        out.quality = Counts(out.quality.done + len(q), out.quality.pending + len(gdone - set(q)))
    out.routed_by_teacher.update(name for k, name in needed.items() if k not in gdone)
    out.unrouted = sum(1 for p in prompts if p.id not in probe_ids and p.id not in routing)
    out.generate = Counts(len(gdone), len(set(needed) - gdone) + out.unrouted)
    return out


def redo_phrase(p: Pending) -> str:
    """'4 generations of b, quality of 4 responses, ...': the work a run will do, or 'nothing'."""
    parts = [f"{n} generation{'s' * (n != 1)} of {name}" for name, n in sorted(p.probe_by_teacher.items())]
    parts += [f"{n} routed generation{'s' * (n != 1)} of {name}" for name, n in sorted(p.routed_by_teacher.items())]
    for label, counts in (("quality", p.quality), ("learnability", p.learnability)):
        if counts and counts.pending:
            parts.append(f"{label} of {counts.pending} response{'s' * (counts.pending != 1)}")
    if p.unrouted:
        parts.append(f"routing and generation for {p.unrouted} new prompt{'s' * (p.unrouted != 1)}")
    elif p.routed.pending:
        parts.append(f"routing of {p.routed.pending} prompt{'s' * (p.routed.pending != 1)}")
    return ", ".join(parts) or "nothing"


def run_status(cfg: RunConfig) -> list[dict[str, Any]]:
    prompts = load_prompts(cfg.prompts)
    keys = Keys(cfg)
    if not (cfg.path / "persyn.sqlite").exists():
        k = min(cfg.probe.resolve(len(prompts)), len(prompts))
        return [{"stage": "probe", "done": 0, "pending": k * len(cfg.teachers), "note": "run not started"}]
    with Store.open(cfg.path) as store:  # read-only: no run lock, so status works beside a running run
        probe_ids = (set(current_probe(store, cfg, [p.id for p in prompts])) if cfg.probe.strategy == "random"
                     else store.probe_ids())  # diverse and adaptive probes are what the last run chose
        w = pending_work(cfg, store, keys, prompts, probe_ids)
        rows = [{"stage": "probe", "done": w.probe.done, "pending": w.probe.pending,
                 "note": f"{len(probe_ids)} prompts x {len(cfg.teachers)} teachers"}]
        if w.quality is not None:
            rows.append({"stage": "score: quality", "done": w.quality.done, "pending": w.quality.pending})
        if w.learnability is not None:
            rows.append({"stage": "score: learnability", "done": w.learnability.done,
                         "pending": w.learnability.pending})
        trained = (cfg.path / "router" / "router.json").exists()
        rows.append({"stage": "train-router", "done": int(trained), "pending": int(not trained)})
        rows.append({"stage": "route", "done": w.routed.done, "pending": w.routed.pending})
        rows.append({"stage": "generate", "done": w.generate.done, "pending": w.generate.pending})
        failed = store.failed()
        exported = (cfg.path / "summary.json").exists()
        rows.append({"stage": "export", "done": int(exported), "pending": int(not exported),
                     "note": f"{len(failed)} failed generations to retry" if failed else ""})
        return rows
