"""Who wins the probe prompts at alpha 0 (quality only), 0.4 (the paper's default) and 1 (learnability only).

    python docs/alpaca_eval/shares.py [runs/alpaca_eval/scores.jsonl]
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from persyn.scoring.reward import reward_matrix

path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("scores.jsonl"))
rows = [json.loads(line) for line in path.read_text().splitlines()]
ids = sorted({r["id"] for r in rows})
teachers = list(dict.fromkeys(r["teacher"] for r in rows))
Q = np.full((len(ids), len(teachers)), np.nan)
L = Q.copy()
index = {i: k for k, i in enumerate(ids)}
for r in rows:
    i, j = index[r["id"]], teachers.index(r["teacher"])
    Q[i, j] = np.nan if r["quality"] is None else r["quality"]
    L[i, j] = np.nan if r["learnability"] is None else r["learnability"]

print(f"{'teacher':<32}{'quality':>9}{'learnab.':>10}   probe wins at alpha 0 / 0.4 / 1")
wins = {}
for alpha in (0.0, 0.4, 1.0):
    R = reward_matrix(np.where(np.isnan(L), np.nan, Q), L, alpha)
    wins[alpha] = Counter(teachers[int(np.nanargmax(row))] for row in R if np.isfinite(row).any())
for j, t in enumerate(teachers):
    counts = " / ".join(f"{wins[a].get(t, 0):>3}" for a in (0.0, 0.4, 1.0))
    print(f"{t:<32}{np.nanmean(Q[:, j]):>9.3f}{np.nanmean(L[:, j]):>10.3f}   {counts}")
