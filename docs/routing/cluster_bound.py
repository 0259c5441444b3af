"""How much of the oracle gap could *any* router that sends similar prompts to the same teacher capture on the
8-teacher AlpacaEval pool? Clusters the 805 instructions by their MiniLM embedding (k-means) and routes each
cluster to its best teacher:

- in hindsight: the best teacher of each cluster chosen on all 805 prompts and scored on the same prompts (an upper
  bound, not a result: it sees the answers);
- half-split: chosen on 400 random prompts, scored on the other 405 (20 splits), against the best single teacher
  of the same 400.

    python docs/routing/cluster_bound.py [--alpha 0.4] [--scores docs/routing/alpaca_pool_scores.jsonl]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans

from persyn.router.embed import Embedder
from persyn.scoring.reward import reward_matrix

SCORES = Path(__file__).resolve().parent / "alpaca_pool_scores.jsonl"


def rewards(alpha: float, scores: Path = SCORES) -> tuple[list[str], list[str], np.ndarray]:
    rows = [json.loads(line) for line in scores.open(encoding="utf-8")]
    teachers = sorted({r["teacher"] for r in rows})
    ids = list(dict.fromkeys(r["prompt_id"] for r in rows))
    text = {r["prompt_id"]: r["instruction"] for r in rows}
    at = {p: i for i, p in enumerate(ids)}
    col = {t: j for j, t in enumerate(teachers)}
    Q = np.full((len(ids), len(teachers)), np.nan)
    L = Q.copy()
    for r in rows:
        Q[at[r["prompt_id"]], col[r["teacher"]]] = np.nan if r["quality"] is None else r["quality"]
        L[at[r["prompt_id"]], col[r["teacher"]]] = r["learnability"]
    R = reward_matrix(Q, L if alpha > 0 else None, alpha, "minmax")
    return teachers, [text[p] for p in ids], np.nan_to_num(R, nan=0.0)  # no usable response: the worst reward


def gap(routed: float, single: float, oracle: float) -> float:
    return (routed - single) / (oracle - single)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--alpha", type=float, default=0.4)
    ap.add_argument("--scores", type=Path, default=SCORES, help="a scores JSONL written by make_pool.py --dump")
    args = ap.parse_args()
    teachers, texts, R = rewards(args.alpha, args.scores)
    best = int(R.mean(0).argmax())
    single, oracle = R[:, best].mean(), R.max(1).mean()
    print(f"alpha {args.alpha}: best single teacher {teachers[best]} {single:.3f}, oracle {oracle:.3f}")
    X = Embedder("all-minilm-l6-v2").embed(texts)
    rng = np.random.default_rng(0)
    print(f"{'clusters':>8}{'hindsight gap':>15}{'half-split gap':>18}")
    for k in (2, 4, 8, 16, 32):
        label = KMeans(k, n_init=5, random_state=0).fit_predict(X)
        choice = {c: int(R[label == c].mean(0).argmax()) for c in range(k)}
        hindsight = R[np.arange(len(R)), [choice[c] for c in label]].mean()
        splits = []
        for _ in range(20):
            perm = rng.permutation(len(R))
            fit, held = perm[:400], perm[400:]
            fit_best = int(R[fit].mean(0).argmax())
            pick = {c: int(R[fit][label[fit] == c].mean(0).argmax()) if (label[fit] == c).sum() >= 5 else fit_best
                    for c in range(k)}
            routed = R[held, [pick[c] for c in label[held]]].mean()
            splits.append(gap(routed, R[held, fit_best].mean(), R[held].max(1).mean()))
        se = np.std(splits) / np.sqrt(len(splits))
        print(f"{k:>8}{gap(hindsight, single, oracle):>15.3f}{np.mean(splits):>+12.3f} ± {se:.3f}")


if __name__ == "__main__":
    main()
