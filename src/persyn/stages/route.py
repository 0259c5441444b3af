"""The route stage: a probe prompt keeps its best-reward teacher; every other prompt gets the router's choice."""

from __future__ import annotations

import numpy as np

from persyn.run import Run, probe_rewards
from persyn.stages import budget
from persyn.stages.train_router import router_dir
from persyn.store import Meta, Route


def load_router(run: Run):
    from persyn.router import load_router as _load

    return _load(router_dir(run))


def route_stage(run: Run) -> None:
    """Route every prompt: a probe prompt keeps its best-reward teacher; every other prompt gets the router's top
    choice, plus the extra candidates the generation budget pays for (persyn.stages.budget)."""
    fp = run.store.get_meta(Meta.ROUTER_FP)
    g = run.cfg.generation
    plan = {"budget": g.budget, "accept_quality": g.accept_quality}
    prompts = run.store.prompts()
    routing = run.store.routing()
    route_keys = {p.id: run.keys.route(fp, p) for p in prompts}
    if (set(routing) == set(route_keys) and all(routing[i].router == k for i, k in route_keys.items())
            and run.store.get_meta(Meta.ROUTE_PLAN) == plan):
        return
    probe_matrices = probe_rewards(run)
    probe, rewards = probe_matrices.prompts, probe_matrices.reward
    names = run.teacher_names()
    S = load_router(run).scores(run.embed([p.text for p in prompts], "route: embedding prompts"))
    best_probe = {p.id: (_argmax_nan(rewards[i]), np.flatnonzero(np.isfinite(rewards[i]))) for i, p in enumerate(probe)}
    routed = [i for i, p in enumerate(prompts) if best_probe.get(p.id, (None,))[0] is None]
    # a cascade asks further teachers in the generate stage, one round at a time
    candidates = budget.first_candidates(S[routed], g.budget, cascade=g.accept_quality is not None)
    chosen = dict(zip(routed, candidates, strict=True))
    rows = []
    for i, p in enumerate(prompts):
        scores = {n: float(s) for n, s in zip(names, S[i], strict=True)}
        if i in chosen:
            cands = [names[j] for j in chosen[i]]
            rows.append((p.id, Route(cands[0], scores, p.id in best_probe, route_keys[p.id], cands)))
        else:
            best, answered = best_probe[p.id]
            rows.append((p.id, Route(names[best], scores, True, route_keys[p.id], [names[j] for j in answered])))
    run.store.set_routing(rows)
    run.store.set_meta(Meta.ROUTE_PLAN, plan)
    if run.cfg.router.backbone == "student":
        run.executor.release()


def _argmax_nan(row: np.ndarray) -> int | None:
    return None if not np.isfinite(row).any() else int(np.nanargmax(row))

