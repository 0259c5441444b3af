"""How much of the oracle gap can routing by task capture on the evidence pool, and how much is left to routing
inside a task? Reads the committed pool (docs/evidence/pool/), Eq. 2 at --alpha over the five teachers:

- best single: the teacher with the best mean reward;
- by task, in hindsight: each task to its best teacher, chosen and scored on all 1,530 prompts (an upper bound
  for any router that sends a whole task to one teacher);
- by task, half-split: chosen on a random half, scored on the other (20 splits), against the best single teacher
  of the same half;
- oracle: each prompt's best response.

    python docs/evidence/task_bound.py [--alpha 0.4]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from persyn.scoring.reward import reward_matrix

POOL = Path(__file__).resolve().parent / "pool"


def load() -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    teachers = sorted(p.stem for p in POOL.glob("*.jsonl"))
    rows = {t: [json.loads(line) for line in (POOL / f"{t}.jsonl").open(encoding="utf-8")] for t in teachers}
    tasks = [r["task"] for r in rows[teachers[0]]]
    Q = np.array([[r["quality"] for r in rows[t]] for t in teachers]).T
    L = np.array([[r["learnability"] for r in rows[t]] for t in teachers]).T
    return teachers, tasks, Q, L


def by_task(R: np.ndarray, tasks: np.ndarray, fit: np.ndarray, score: np.ndarray) -> float:
    """Mean reward on `score` prompts when each task goes to its best teacher on `fit` prompts."""
    total = 0.0
    for task in np.unique(tasks[score]):
        pick = int(np.argmax(R[fit & (tasks == task)].mean(axis=0)))
        total += R[score & (tasks == task), pick].sum()
    return total / score.sum()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--alpha", type=float, default=0.4)
    args = ap.parse_args()
    teachers, task_list, Q, L = load()
    tasks = np.array(task_list)
    R = reward_matrix(Q, L, args.alpha)
    every = np.ones(len(R), dtype=bool)
    single, oracle = R.mean(axis=0).max(), R.max(axis=1).mean()
    hindsight = by_task(R, tasks, every, every)
    rng = np.random.default_rng(0)
    splits = []
    for _ in range(20):
        fit = np.zeros(len(R), dtype=bool)
        fit[rng.permutation(len(R))[: len(R) // 2]] = True
        base = R[~fit, int(np.argmax(R[fit].mean(axis=0)))].mean()
        splits.append((by_task(R, tasks, fit, ~fit) - base) / (R[~fit].max(axis=1).mean() - base))
    print(f"alpha {args.alpha}: best single {teachers[int(np.argmax(R.mean(axis=0)))]} {single:.4f}, "
          f"oracle {oracle:.4f}")
    print(f"by task, in hindsight: {hindsight:.4f}, gap captured {(hindsight - single) / (oracle - single):+.3f}")
    print(f"by task, half-split (20): gap captured {np.mean(splits):+.3f} (std {np.std(splits):.3f})")
    for task in np.unique(tasks):
        m = R[tasks == task].mean(axis=0)
        print(f"  {task}: best {teachers[int(np.argmax(m))]} {m.max():.3f}; "
              f"oracle {R[tasks == task].max(axis=1).mean():.3f}")


if __name__ == "__main__":
    main()
