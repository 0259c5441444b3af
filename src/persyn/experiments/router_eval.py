"""Router quality on held-out prompts where every teacher's response exists (and is scored).

For each backbone and probe size, a router is trained on the first `k` prompts of a seeded training pool (the
run's probe first, then other prompts) and judged on `held_out` prompts outside that pool: Hit@1, Hit@3, mean
combined reward of the routed choice against the oracle, the best single teacher and a random teacher, and the
gap captured, (router - best single) / (oracle - best single). "Best single" is the teacher with the best mean
reward on the held-out prompts themselves (in hindsight, the strictest single-teacher baseline); the teacher a
probe would pick (`probe_pick`) is reported too.
"""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from persyn.config import RunConfig
from persyn.errors import ConfigError
from persyn.experiments.frontier import baseline_points, default_budgets, frontier_for_split, summarise
from persyn.outputs.plots import plot_frontier
from persyn.prompts import Prompt
from persyn.router import embedder_for, routed_metrics
from persyn.run import RewardMatrices, opened_run, rewards_for
from persyn.stages import probe as probe_rules
from persyn.stages.generate import generate_pairs
from persyn.stages.load import load_stage
from persyn.stages.score import score_prompts
from persyn.stages.train_router import new_router


def column_means(R: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.nanmean(R, axis=0)
    return np.where(np.isfinite(means), means, -np.inf)


def routing_metrics(scores: np.ndarray, R: np.ndarray, R_train: np.ndarray | None = None,
                    names: list[str] | None = None) -> dict[str, Any]:
    """Hit@1/3, routed/oracle/best-single/random mean reward and gap captured on rewards R [P, T] (NaN = none)."""
    R = np.asarray(R, dtype=float)
    keep = ~np.isnan(R).all(1)
    scores, R = np.asarray(scores)[keep], R[keep]
    m = routed_metrics(scores, R)
    means = column_means(R)
    best = int(np.argmax(means))
    out: dict[str, Any] = {
        "prompts": int(keep.sum()), "hit1": m["hit1"], "hit3": m["hit3"], "router": m["mean_reward"],
        "oracle": m["oracle"], "best_single": float(means[best]), "random": m["random"],
    }
    span = out["oracle"] - out["best_single"]
    out["gap_captured"] = float((out["router"] - out["best_single"]) / span) if span > 1e-12 else None
    if names is not None:
        out["best_single_teacher"] = names[best]
        counts = np.bincount(np.where(np.isnan(R), -np.inf, scores).argmax(1), minlength=len(names))
        out["routed_shares"] = {n: round(int(c) / max(1, len(R)), 4) for n, c in zip(names, counts, strict=True)}
    if R_train is not None:
        pick = int(np.argmax(column_means(R_train)))
        out["probe_pick"] = float(means[pick]) if np.isfinite(means[pick]) else None
        if names is not None:
            out["probe_pick_teacher"] = names[pick]
    return out


def split_prompts(prompts: list[Prompt], probe_ids: set[str], held_out: int, pool_size: int,
                  seed: int) -> tuple[list[Prompt], list[Prompt]]:
    """(training pool: probe prompts first, then others; held-out prompts), disjoint and seeded."""
    rng = random.Random(f"router-eval:{seed}")
    probe = [p for p in prompts if p.id in probe_ids]
    rest = [p for p in prompts if p.id not in probe_ids]
    rng.shuffle(probe)
    rng.shuffle(rest)
    if held_out + pool_size > len(prompts):
        raise ConfigError(f"held_out {held_out} + largest probe size {pool_size} exceed the {len(prompts)} prompts",
                          key="compare.router_eval.held_out")
    held = rest[:held_out]
    pool = (probe + rest[held_out:])[:pool_size]
    return pool, held


def router_eval(cfg: RunConfig, *, backbones: list[str] | None = None, probe_sizes: list[int] | None = None,
                held_out: int | None = None, out_path: Path | None = None, kinds: list[str] | None = None,
                strategies: list[str] | None = None) -> dict[str, Any]:
    opts = cfg.compare.router_eval
    backbones = backbones or opts.backbones or [cfg.router.backbone]
    held_n = held_out or opts.held_out
    with opened_run(cfg) as run:
        prompts = load_stage(run)
        probe_ids = run.store.probe_ids()
        sizes = sorted(set(probe_sizes or opts.probe_sizes or [len(probe_ids)]))
        pool, held = split_prompts(prompts, probe_ids, held_n, max(sizes), opts.seed)
        pairs = [(p, t) for p in pool + held for t in cfg.teachers]
        generate_pairs(run, pairs, "router-eval")
        score_prompts(run, pool + held, "router-eval")
        R_pool, R_held = rewards_for(run, pool).reward, rewards_for(run, held).reward
        names = run.teacher_names()
        results = []
        for backbone in backbones:
            X_pool, X_held = _embed(cfg, backbone, pool, held)
            for k in sizes:
                router = new_router(cfg)
                report = router.fit(X_pool[:k], R_pool[:k])
                metrics = routing_metrics(router.scores(X_held), R_held, R_pool[:k], names)
                results.append({"backbone": backbone, "probe_size": k, **metrics,
                                "fallback_to_bias": report.fallback_to_bias})
        evaluated = pool[:max(sizes)] + held
        matrices = rewards_for(run, evaluated)
        X = np.concatenate(_embed(cfg, backbones[0], pool[:max(sizes)], held))
        frontier = cost_reward_frontier(cfg, X, matrices, max(sizes), kinds or opts.kinds or [cfg.router.kind],
                                        strategies or opts.probe_strategies or [cfg.probe.strategy],
                                        opts.seeds or [opts.seed], opts.budgets or default_budgets(len(names)))
        out = {"teachers": names, "held_out": len(held), "alpha": cfg.reward.alpha,
               "generations_this_invocation": run.generated,
               "generations_needed": len(pairs), "results": results,
               "frontier": {"backbone": backbones[0], "probe_size": max(sizes),
                            "held_out": len(evaluated) - max(sizes), "rows": frontier}}
    out_path = out_path or cfg.path / "router_eval.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    (cfg.path / "frontier.json").write_text(json.dumps(out["frontier"]["rows"], indent=2) + "\n", encoding="utf-8")
    plot_frontier(out["frontier"]["rows"], out_path.with_name(out_path.stem + "_frontier.png"),
         f"{len(names)} teachers, probe {max(sizes)}, {out['frontier']['held_out']} held-out prompts")
    return out


def cost_reward_frontier(cfg: RunConfig, X: np.ndarray, matrices: RewardMatrices, k: int, kinds: list[str],
                         strategies: list[str], seeds: list[int], budgets: list[float]) -> list[dict[str, Any]]:
    """Frontier rows (mean and spread over probe seeds) for each router kind and probe strategy; the probe is k
    of the given prompts, the rest are held out."""
    per_seed = []
    for seed in seeds:
        rows: list[dict[str, Any]] = []
        for strategy in strategies:
            probe_idx = probe_rows(cfg, X, matrices.reward, k, strategy, seed, kinds[0])
            held_idx = np.setdiff1d(np.arange(len(matrices.reward)), probe_idx)
            probe, held = matrices.rows(probe_idx), matrices.rows(held_idx)
            for kind in kinds:
                router = new_router(cfg, kind=kind, seed=seed)
                router.fit(X[probe_idx], probe.reward)
                found = frontier_for_split(router.scores(X[held_idx]), probe, held, reward=cfg.reward,
                                           budgets=budgets, accept_quality=cfg.generation.accept_quality)
                for row in found:
                    if row["method"].startswith("router"):
                        row["method"] = f"persyn {kind} ({strategy} probe)" + row["method"][len("router"):]
                        row["probe_size"] = len(probe_idx)
                    elif kind != kinds[0] or strategy != strategies[0]:
                        continue
                    rows.append(row)
            if strategy == strategies[0]:
                rows += baseline_points(probe, held, cfg.reward, cfg.compare.car_beta)
        per_seed.append(rows)
    return summarise(per_seed)


def probe_rows(cfg: RunConfig, X: np.ndarray, R: np.ndarray, k: int, strategy: str, seed: int,
               kind: str) -> np.ndarray:
    """Row indices of a probe of at most k prompts, chosen by the probe stage's own rules (persyn.stages.probe): a
    seeded draw, k-center (diverse), or adaptive growth as with probe.size = k/4 and probe.max_size = k (the router
    of `kind` refitted on each round)."""
    ids = [str(i) for i in range(len(R))]
    texts = [""] * len(R)  # only `diverse` reads the prompts, through their embeddings X

    def draw(size: int, how: str) -> np.ndarray:
        chosen = probe_rules.choose_probe(ids, texts, how, seed, size, embed=lambda _: X)
        return np.array([int(i) for i in chosen], dtype=np.int64)

    if strategy != "adaptive":
        return draw(k, strategy)
    step = max(2, k // 4)
    size, gains = step, []
    while True:
        rows = draw(size, "adaptive")
        gains.append(new_router(cfg, kind=kind, seed=seed).fit(X[rows], R[rows]).gain)
        if (nxt := probe_rules.next_probe_size(gains, size, step, k)) is None:
            return rows
        size = nxt


def _embed(cfg: RunConfig, backbone: str, pool: list[Prompt], held: list[Prompt]) -> tuple[np.ndarray, np.ndarray]:
    embedder = embedder_for(cfg.router, cfg.student, cfg.path / "embeddings.sqlite", backbone=backbone,
                            key="compare.router_eval.backbones")
    try:
        return embedder.embed([p.text for p in pool]), embedder.embed([p.text for p in held])
    finally:
        embedder.close()
