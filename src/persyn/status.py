"""What a run has done and what is pending, computed from the config and the store (read-only)."""

from __future__ import annotations

from typing import Any

from persyn.config import RunConfig
from persyn.probe import random_order
from persyn.prompts import load_prompts
from persyn.store import Store


def run_status(cfg: RunConfig) -> list[dict[str, Any]]:
    from persyn.pipeline import gen_key, quality_scorer_id, student_scorer_id

    prompts = load_prompts(cfg.prompts)
    k = min(cfg.probe.resolve(len(prompts)), len(prompts))
    probe_ids = set(random_order([p.id for p in prompts], cfg.probe.seed)[:k])
    probe = [p for p in prompts if p.id in probe_ids]
    if not (cfg.path / "persyn.sqlite").exists():
        n = len(probe) * len(cfg.teachers)
        return [{"stage": "probe", "done": 0, "pending": n, "note": "run not started"}]
    store = Store.open(cfg.path)
    try:
        keys = [gen_key(cfg, t, p) for p in probe for t in cfg.teachers]
        done = store.done_keys(keys)
        rows = [{"stage": "probe", "done": len(done), "pending": len(set(keys) - done),
                 "note": f"{len(probe)} prompts x {len(cfg.teachers)} teachers"}]
        done_list = sorted(done)
        if cfg.reward.alpha < 1:
            q = store.scores("quality", quality_scorer_id(cfg), done_list)
            rows.append({"stage": "score: quality", "done": len(q), "pending": len(set(keys) - set(q))})
        if cfg.reward.alpha > 0:
            s = store.scores("learnability", student_scorer_id(cfg), done_list)
            rows.append({"stage": "score: learnability", "done": len(s), "pending": len(set(keys) - set(s))})
        trained = (cfg.path / "router" / "router.json").exists()
        rows.append({"stage": "train-router", "done": int(trained), "pending": int(not trained)})
        routing = store.routing()
        current = store.get_meta("router_fp")
        routed = sum(1 for p in prompts if p.id in routing and routing[p.id][3] == current)
        rows.append({"stage": "route", "done": routed, "pending": len(prompts) - routed})
        teachers = {t.name: t for t in cfg.teachers}
        routed_keys = [gen_key(cfg, teachers[name], p) for p in prompts if p.id in routing and not routing[p.id].probe
                       for name in routing[p.id].candidates if name in teachers]
        gdone = store.done_keys(routed_keys)
        pending_unrouted = sum(1 for p in prompts if p.id not in probe_ids and p.id not in routing)
        rows.append({"stage": "generate", "done": len(gdone),
                     "pending": len(set(routed_keys) - gdone) + pending_unrouted})
        failed = store.failed()
        exported = (cfg.path / "summary.json").exists()
        rows.append({"stage": "export", "done": int(exported), "pending": int(not exported),
                     "note": f"{len(failed)} failed generations to retry" if failed else ""})
        return rows
    finally:
        store.close()
