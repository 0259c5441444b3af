"""Which candidate to keep at budget k < N: the rule against the best of the same candidates, on held-out prompts.

Reads a committed scores file (one JSON line per response: teacher, prompt_id, instruction, quality, learnability;
a missing score, as for an empty response, leaves that response out, as Eq. 2 does), so it needs no generation:

    python docs/routing/candidate_rule.py docs/routing/alpaca_pool_scores.jsonl \\
        --out docs/routing/results/candidate_rule_alpaca.json

For each probe seed, a random probe (default 200 prompts) is drawn, the ridge router (persyn's default, MiniLM
embeddings) is fitted on it, and the other prompts are held out. Candidates per held-out prompt: the router's top k
(`--ks`), and the generation-budget allocations (`--budgets`, persyn.stages.budget.allocate). Each row is the gap
captured, (mean true reward of the kept response - best single) / (oracle - best single), the true reward being
Eq. 2 over all N teachers and the best single teacher the probe's pick, as in `persyn router-eval`. Rules compared:
- fixed scales: each component divided by its mean per-prompt spread on the probe (persyn's rule before);
- keep_best: persyn.stages.budget.keep_best, probe completions of the unasked teachers (the rule now);
- ridge fill: the unasked teachers' raw quality and learnability predicted by a ridge router fitted on the probe's
  raw scores (the same machinery as the routing router), then Eq. 2 over the N filled values;
- candidates only: Eq. 2 over the k candidates alone;
- best of the candidates: the candidate with the best true reward (hindsight, what no rule can see).
The kernel width of keep_best (`BANDWIDTH`) and its other choices (`VARIANTS`) are compared by 5-fold
cross-validation inside each probe (candidates: the top k by the training folds' mean reward), never on held-out
prompts; the held-out rows at every width are in the JSON for reference.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

from persyn.keys import draw_probe
from persyn.router import Embedder, make_router
from persyn.scoring.reward import reward_matrix
from persyn.scoring.reward import reward_rows as eq2_rows
from persyn.stages import budget
from persyn.stages.budget import allocate, candidate_rule, keep_best

WIDTHS = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 3.0)


def load(path: Path) -> tuple[list[str], list[str], list[str], np.ndarray, np.ndarray]:
    """(teachers, prompt ids, instructions, Q [P, T], L [P, T]) with NaN where a score is missing."""
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            row = json.loads(line)
            rows.append((str(row["teacher"]), str(row["prompt_id"]), str(row["instruction"]), row.get("quality"),
                         row.get("learnability")))
        except (ValueError, KeyError, TypeError) as exc:
            sys.exit(f"{path}:{n}: not a scores row ({type(exc).__name__}: {exc})")
    teachers = sorted({r[0] for r in rows})
    ids = list(dict.fromkeys(r[1] for r in rows))
    text = {r[1]: r[2] for r in rows}
    ti, pi = {t: i for i, t in enumerate(teachers)}, {p: i for i, p in enumerate(ids)}
    Q = np.full((len(ids), len(teachers)), np.nan)
    L = Q.copy()
    for t, p, _, q, lrn in rows:
        Q[pi[p], ti[t]] = np.nan if q is None else float(q)
        L[pi[p], ti[t]] = np.nan if lrn is None else float(lrn)
    return teachers, ids, [text[p] for p in ids], Q, L


def spreads(M: np.ndarray, method: str) -> np.ndarray:
    """Each prompt's spread across the N teachers (std for zscore, else the range)."""
    return np.nanstd(M, 1) if method == "zscore" else np.nanmax(M, 1) - np.nanmin(M, 1)


def fixed_scales(pQ: np.ndarray, pL: np.ndarray, alpha: float, method: str, asked: list[list[int]], Q: np.ndarray,
                 L: np.ndarray, true: tuple[bool, bool] = (False, False)) -> list[int]:
    """persyn's rule before keep_best: each component over its mean per-prompt spread across N on the probe.
    `true`: use the held-out prompt's own spread of quality / learnability instead (a diagnosis, in hindsight)."""
    def spread(M: np.ndarray, own: np.ndarray, use_own: bool) -> float | np.ndarray:
        if method == "none":
            return 1.0
        if use_own:
            return np.maximum(spreads(own, method), 1e-12)[:, None]
        rows = M[(~np.isnan(M)).sum(1) >= 2]
        value = float(np.mean(spreads(rows, method))) if len(rows) else 1.0
        return value if value > 1e-12 else 1.0

    sq, sl = spread(pQ, Q, true[0]), spread(pL, L, true[1])
    value = (1 - alpha) * Q / sq * (alpha < 1) + alpha * L / sl * (alpha > 0)
    value = np.where(np.isnan(Q) | np.isnan(L), -np.inf, value)
    return [c[int(np.argmax(value[i, c]))] for i, c in enumerate(asked)]


def filled(Qfill: np.ndarray, Lfill: np.ndarray, alpha: float, method: str, asked: list[list[int]], Q: np.ndarray,
           L: np.ndarray) -> list[int]:
    """Eq. 2 over N values: the asked teachers' own, the others' from Qfill/Lfill (NaN fill: left out)."""
    kept = []
    for i, c in enumerate(asked):
        q, lrn = Qfill[i].copy(), Lfill[i].copy()
        q[c], lrn[c] = Q[i, c], L[i, c]
        r = eq2_rows(q, lrn, alpha, method)[c]
        kept.append(c[int(np.argmax(np.where(np.isnan(r), -np.inf, r)))])
    return kept


def hindsight(asked: list[list[int]], R: np.ndarray) -> list[int]:
    Rw = np.where(np.isnan(R), -np.inf, R)
    return [c[int(np.argmax(Rw[i, c]))] for i, c in enumerate(asked)]


def gap(kept: list[int], R: np.ndarray, best: int) -> float:
    chosen = np.array([R[i, k] for i, k in enumerate(kept)])
    oracle, single = np.nanmax(R, 1).mean(), np.nanmean(R[:, best])
    return float((np.nanmean(chosen) - single) / (oracle - single))


VARIANTS = {  # (move quality, move learnability, kernel width on centred learnability): keep_best is the first
    "keep_best": (False, True, None),
    "quality moved too": (True, True, None),
    "kernel on learnability too": (False, True, 0.3),
    "learnability not moved": (False, False, None),
}


def variant(pQ: np.ndarray, pL: np.ndarray, alpha: float, method: str, A: list[int], Q: np.ndarray, L: np.ndarray,
            move_q: bool, move_l: bool, width_l: float | None) -> list[int]:
    """keep_best's completions with other choices (one candidate set A for every prompt; for the CV only)."""
    full = ~np.isnan(pQ).any(1) & ~np.isnan(pL).any(1)
    pQ, pL = pQ[full], pL[full]
    un = [t for t in range(pQ.shape[1]) if t not in A]
    d2 = ((Q[:, None, A] - pQ[None, :, A]) ** 2).sum(2) / (budget.BANDWIDTH * np.std(pQ)) ** 2
    if width_l:
        centred = (L[:, A] - L[:, A].mean(1, keepdims=True))[:, None, :]
        d2 = d2 + ((centred - (pL[:, A] - pL[:, A].mean(1, keepdims=True))[None]) ** 2).sum(2) / (
            width_l * np.std(pL)) ** 2
    d2 = np.nan_to_num(d2, nan=np.inf)
    w = np.exp(-(d2 - d2.min(1, keepdims=True)) / 2)
    w /= w.sum(1, keepdims=True)
    Qc = np.repeat(pQ[None], len(Q), 0)
    Lc = np.repeat(pL[None], len(Q), 0)
    if move_q:
        Qc[:, :, un] += (Q[:, A].mean(1)[:, None] - pQ[:, A].mean(1)[None])[:, :, None]
    if move_l:
        Lc[:, :, un] += (L[:, A].mean(1)[:, None] - pL[:, A].mean(1)[None])[:, :, None]
    Qc[:, :, A], Lc[:, :, A] = Q[:, None, A], L[:, None, A]
    value = np.einsum("mn,mnk->mk", np.nan_to_num(w), np.nan_to_num(eq2_rows(Qc, Lc, alpha, method)[:, :, A]))
    value = np.where(np.isnan(Q[:, A]) | np.isnan(L[:, A]), -np.inf, value)
    return [A[int(np.argmax(v))] for v in value]


def probe_cv(pQ: np.ndarray, pL: np.ndarray, pR: np.ndarray, alpha: float, method: str, ks: list[int],
             seed: int, folds: int = 5) -> dict[str, float]:
    """Shortfall against the best of the same candidates, out of fold within the probe, per kernel width of
    keep_best and per variant (at its width): the mean over prompts and ks of (hindsight reward - kept reward) /
    (oracle - best single); lower is better."""
    short: dict[str, list[float]] = {}
    for test in np.array_split(np.random.default_rng(seed).permutation(len(pR)), folds):
        train = np.setdiff1d(np.arange(len(pR)), test)
        means = np.nanmean(pR[train], 0)
        Rt = pR[test]
        span = np.nanmax(Rt, 1).mean() - np.nanmean(Rt[:, int(np.nanargmax(means))])
        rows = np.arange(len(test))
        for k in ks:
            A = [int(t) for t in np.argsort(-means, kind="stable")[:k]]
            best = hindsight([A] * len(test), Rt)
            picks = {f"width {w:g}": keep_best(candidate_rule(pQ[train], pL[train], alpha, method, bandwidth=w),
                                               [A] * len(test), pQ[test], pL[test]) for w in WIDTHS}
            picks |= {name: variant(pQ[train], pL[train], alpha, method, A, pQ[test], pL[test], *v)
                      for name, v in VARIANTS.items()}
            picks["fixed scales (before)"] = fixed_scales(pQ[train], pL[train], alpha, method, [A] * len(test),
                                                          pQ[test], pL[test])
            for name, kept in picks.items():
                short.setdefault(name, []).extend((Rt[rows, best] - Rt[rows, kept]) / span)
    return {name: float(np.nanmean(v)) for name, v in short.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scores", type=Path)
    ap.add_argument("--alpha", type=float, default=0.4)
    ap.add_argument("--method", default="minmax", choices=["minmax", "zscore", "rank", "none"])
    ap.add_argument("--probe", type=int, default=200)
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--ks", default="2,3")
    ap.add_argument("--budgets", default="2,3")
    ap.add_argument("--backbone", default="all-minilm-l6-v2")
    ap.add_argument("--cache", type=Path, default=Path("runs/candidate_rule/embeddings.sqlite"))
    ap.add_argument("--teachers", help="comma-separated subset of the teachers (default: all)")
    ap.add_argument("--quality-threshold", type=float, help="quality = 1 above it, else 0 (a 0/1 verifier)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    ks = [int(k) for k in args.ks.split(",")]
    budgets = [float(b) for b in args.budgets.split(",")]
    teachers, ids, texts, Q, L = load(args.scores)
    if args.teachers:
        cols = [teachers.index(t) for t in args.teachers.split(",")]
        teachers, Q, L = [teachers[c] for c in cols], Q[:, cols], L[:, cols]
    if args.quality_threshold is not None:
        Q = np.where(np.isnan(Q), np.nan, (Q > args.quality_threshold).astype(float))
    T, alpha, method = len(teachers), args.alpha, args.method
    R = reward_matrix(np.where(np.isnan(Q), 0, Q) if alpha < 1 else np.zeros_like(Q), L if alpha > 0 else None,
                      alpha, method, worst=np.isnan(Q) | np.isnan(L))  # a response without scores ranks last
    embedder = Embedder(args.backbone, cache_path=args.cache)
    try:
        X = embedder.embed(texts)
    finally:
        embedder.close()

    per: dict[str, dict[str, list[float]]] = {}
    cv: dict[str, list[float]] = {}
    routed = []
    for seed in seeds:
        probe = np.array([ids.index(p) for p in draw_probe(ids, args.probe, seed)])
        held = np.setdiff1d(np.arange(len(ids)), probe)
        pQ, pL, pR = Q[probe], L[probe], R[probe]
        hQ, hL, hR = Q[held], L[held], R[held]
        best = int(np.nanargmax(np.nanmean(pR, 0)))
        router = make_router("ridge", n_teachers=T, teacher_names=teachers, seed=seed)
        report = router.fit(X[probe], pR)
        routed.append(not report.fallback_to_bias)
        S = router.scores(X[held])
        fills = []
        for M in (pQ, pL):
            reg = make_router("ridge", n_teachers=T, teacher_names=teachers, seed=seed)
            reg.fit(X[probe], M)
            fills.append(reg.scores(X[held]).astype(np.float64))
        sets = {f"top-{k}": [list(np.argsort(-S[i], kind="stable")[:k]) for i in range(len(held))] for k in ks}
        sets |= {f"budget {b:g}": allocate(S, b) for b in budgets}
        for name, short in probe_cv(pQ, pL, pR, alpha, method, ks, seed).items():
            cv.setdefault(name, []).append(short)
        for name, asked in sets.items():
            rules = {
                "fixed scales (before)": fixed_scales(pQ, pL, alpha, method, asked, hQ, hL),
                "keep_best (now)": keep_best(candidate_rule(pQ, pL, alpha, method), asked, hQ, hL),
                "ridge fill": filled(fills[0], fills[1], alpha, method, asked, hQ, hL),
                "candidates only": filled(np.full(hQ.shape, np.nan), np.full(hL.shape, np.nan), alpha, method,
                                          asked, hQ, hL),
                "best of the candidates (hindsight)": hindsight(asked, hR),
                "fixed scales, true quality spread": fixed_scales(pQ, pL, alpha, method, asked, hQ, hL, (True, False)),
                "fixed scales, true learnability spread": fixed_scales(pQ, pL, alpha, method, asked, hQ, hL,
                                                                       (False, True)),
            }
            rules |= {f"keep_best, width {w:g}": keep_best(candidate_rule(pQ, pL, alpha, method, bandwidth=w), asked,
                                                            hQ, hL) for w in WIDTHS}
            for rule, kept in rules.items():
                per.setdefault(name, {}).setdefault(rule, []).append(gap(kept, hR, best))

    cv_mean = {name: float(np.mean(v)) for name, v in cv.items()}
    widths = [f"width {w:g}" for w in WIDTHS]
    chosen = min(widths, key=lambda w: (round(cv_mean[w], 4), w))
    print(f"{args.scores}: {len(ids)} prompts x {T} teachers, alpha {alpha}, {method}; probe {args.probe}, "
          f"{len(ids) - args.probe} held out, seeds {seeds}; router routed on {sum(routed)} of {len(seeds)} seeds")
    print("probe CV shortfall against the best of the same candidates, by kernel width: "
          + ", ".join(f"{w[6:]}: {cv_mean[w]:.4f}" for w in widths)
          + f" -> {chosen[6:]} (persyn.stages.budget.BANDWIDTH = {budget.BANDWIDTH:g})")
    print("probe CV shortfall, other choices: " + ", ".join(f"{n}: {v:.4f}" for n, v in cv_mean.items()
                                                              if n not in widths))
    shown = ("fixed scales (before)", "keep_best (now)", "ridge fill", "candidates only",
             "best of the candidates (hindsight)")
    print(f"\n| candidates | {' | '.join(shown)} | shortfall now |")
    print("|---|" + "---:|" * (len(shown) + 1))
    table = {}
    for name, rules in per.items():
        table[name] = {rule: {"mean": float(np.mean(v)), "min": float(np.min(v)), "max": float(np.max(v)),
                              "per_seed": [round(x, 4) for x in v]} for rule, v in rules.items()}
        cells = [f"{np.mean(rules[r]):.3f} ({np.min(rules[r]):.3f}–{np.max(rules[r]):.3f})" for r in shown]
        short = np.mean(rules[shown[-1]]) - np.mean(rules[shown[1]])
        print(f"| {name} | {' | '.join(cells)} | {short:.3f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "scores": str(args.scores), "prompts": len(ids), "teachers": teachers, "alpha": alpha, "method": method,
            "probe": args.probe, "seeds": seeds, "router_routed_seeds": int(sum(routed)),
            "bandwidth": budget.BANDWIDTH, "cv_shortfall": cv_mean, "cv_width_choice": float(chosen[6:]),
            "gap_captured": table}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        main()
