"""The cost-reward frontier on prompts where every teacher's response is scored: pure functions over matrices.

For each probe seed, a probe is drawn, the router is fitted on it, and the other prompts are routed with a
generation budget, by the generate stage's own rules (persyn.stages.budget): mean combined reward of the kept
response (Eq. 2 over all N teachers, as the oracle sees it), gap captured = (routed - best single) / (oracle - best
single) with the best single teacher chosen on the probe, Hit@1 and Hit@3 of the kept response, generations per
routed prompt, and the gap the best of the same candidates would capture (`candidates_best`: kept in hindsight, by
the reward the rule cannot see). Baselines at the same budgets: the top-k teachers by probe mean reward (the same
selection, with no router); and, as points, the best single teacher, a random teacher, CAR (one teacher by mean
quality / (1 + beta loss), which needs all N generations) and the oracle (N generations)."""

from __future__ import annotations

from typing import Any

import numpy as np

from persyn.config import RewardConfig
from persyn.run import RewardMatrices
from persyn.stages import budget as rules


def default_budgets(n_teachers: int) -> list[float]:
    return sorted({1.0, 1.5, 2.0, *map(float, range(3, n_teachers + 1))})


def hindsight_best(cands: list[list[int]], R: np.ndarray) -> np.ndarray:
    """The best of each prompt's candidates by the true reward (what no rule can do: it sees the other teachers)."""
    Rw = np.where(np.isnan(R), -np.inf, R)
    return np.array([c[int(np.argmax(Rw[i, c]))] for i, c in enumerate(cands)], dtype=np.int64)


def point(kept: np.ndarray, R: np.ndarray, best_single: int, gens: float) -> dict[str, float]:
    Rw = np.where(np.isnan(R), -np.inf, R)
    chosen = Rw[np.arange(len(R)), kept]
    chosen = np.where(np.isfinite(chosen), chosen, np.nan)
    oracle = float(np.nanmax(R, 1).mean())
    single = float(np.nanmean(np.where(np.isfinite(Rw[:, best_single]), Rw[:, best_single], np.nan)))
    mean = float(np.nanmean(chosen))
    better = (Rw > np.nan_to_num(chosen, nan=-np.inf)[:, None]).sum(1)
    span = oracle - single
    return {"mean_reward": mean, "gap_captured": (mean - single) / span if span > 1e-12 else 0.0,
            "hit1": float((better == 0).mean()), "hit3": float((better < 3).mean()), "generations_per_prompt": gens,
            "best_single": single, "oracle": oracle}


def frontier_for_split(scores: np.ndarray, probe: RewardMatrices, held: RewardMatrices, *, reward: RewardConfig,
                       budgets: list[float], accept_quality: float | None = None) -> list[dict[str, Any]]:
    """Router and top-k-by-probe-mean rows at every budget for one probe/held-out split (and the router's
    cascade when accept_quality is given), from the router's `scores` [held, T]. Candidates, the cascade and the
    kept candidate are the generate stage's own rules (persyn.stages.budget), replayed on known scores."""
    means = np.nanmean(np.where(np.isnan(probe.reward), np.nan, probe.reward), 0)
    means = np.where(np.isfinite(means), means, -np.inf)
    best = int(np.argmax(means))
    rule = rules.candidate_rule(probe.quality, probe.learnability, reward.alpha, reward.normalization,
                                worst=probe.empty)
    R = held.reward

    def row(label: str, b: float, cands: list[list[int]]) -> dict[str, Any]:
        kept = np.array(rules.keep_best(rule, cands, held.quality, held.learnability, held.empty), dtype=np.int64)
        found = point(kept, R, best, float(np.mean([len(c) for c in cands])))
        found["candidates_best"] = point(hindsight_best(cands, R), R, best, 0.0)["gap_captured"]
        return {"method": label, "budget": b, **found}

    rows = [row(label, b, rules.first_candidates(S, b, cascade=False))
            for label, S in (("router", scores), ("top-k by probe mean", np.tile(means, (len(R), 1))))
            for b in budgets]
    if accept_quality is not None and reward.needs_quality:
        for b in budgets:
            first = rules.first_candidates(scores, b, cascade=True)
            cands = rules.cascade(scores, first, accept_quality, int(round(b * len(R))), lambda _: held.quality)
            rows.append(row(f"router cascade (accept quality >= {accept_quality:g})", b, cands))
    return rows


def baseline_points(probe: RewardMatrices, held: RewardMatrices, reward: RewardConfig,
                    car_beta: float) -> list[dict[str, Any]]:
    from persyn.experiments.selection_rules import car_values

    R, Q, L = held.reward, held.quality, held.learnability
    T = R.shape[1]
    means = np.nanmean(probe.reward, 0)
    best = int(np.nanargmax(np.where(np.isfinite(means), means, -np.inf)))
    oracle = np.argmax(np.where(np.isnan(R), -np.inf, R), 1)
    rows = [{"method": "best single", "budget": 1.0, **point(np.full(len(R), best), R, best, 1.0)},
            {"method": "oracle", "budget": float(T), **point(oracle, R, best, float(T))}]
    rand = point(np.zeros(len(R), dtype=np.int64), R, best, 1.0)
    rand.update(mean_reward=float(np.nanmean(np.nanmean(R, 1))), hit1=float("nan"), hit3=float("nan"))
    span = rand["oracle"] - rand["best_single"]
    rand["gap_captured"] = (rand["mean_reward"] - rand["best_single"]) / span if span > 1e-12 else 0.0
    rows.append({"method": "random", "budget": 1.0, **rand})
    if reward.needs_quality and reward.needs_learnability:
        car = int(np.nanargmax(np.where(np.isfinite(v := car_values(Q, L, car_beta)), v, -np.inf)))
        rows.append({"method": "car", "budget": float(T), **point(np.full(len(R), car), R, best, float(T))})
    return rows


def summarise(per_seed: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Mean, spread (std) and minimum of each metric over seeds, one row per (method, budget)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for rows in per_seed:
        for r in rows:
            groups.setdefault((r["method"], r["budget"]), []).append(r)
    out = []
    for (method, budget), rows in groups.items():
        row: dict[str, Any] = {"method": method, "budget": budget, "seeds": len(rows)}
        for key in ("mean_reward", "gap_captured", "hit1", "hit3", "generations_per_prompt", "best_single",
                    "oracle", "candidates_best"):
            if not all(key in r for r in rows):
                continue
            vals = np.array([r[key] for r in rows], dtype=float)
            row[key] = float(np.nanmean(vals)) if np.isfinite(vals).any() else None
            if key in ("mean_reward", "gap_captured"):
                row[f"{key}_std"] = float(np.nanstd(vals)) if np.isfinite(vals).any() else None
                row[f"{key}_min"] = float(np.nanmin(vals)) if np.isfinite(vals).any() else None
        row["gain_per_seed"] = [round(r["mean_reward"] - r["best_single"], 4) for r in rows]
        out.append(row)
    return out
