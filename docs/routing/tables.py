"""Markdown tables of docs/routing.md from a `persyn router-eval` result (router_eval.json):

    python docs/routing/tables.py docs/routing/results/alpaca_router_eval.json [--budgets 1,1.5,2,3]
"""

from __future__ import annotations

import json
import sys


def table(path: str, budgets: list[float]) -> str:
    rows = json.load(open(path, encoding="utf-8"))["frontier"]["rows"]
    out = ["| method | budget | gens/prompt | mean reward (std over seeds) | gap captured (std) | worst seed | Hit@1 | "
           "Hit@3 | gain over best single, per seed |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in sorted(rows, key=lambda r: (r["method"], r["budget"])):
        if r["budget"] not in budgets:
            continue
        hit = ["-" if r[k] is None else f"{r[k]:.3f}" for k in ("hit1", "hit3")]
        gains = " ".join(f"{g:+.3f}" for g in r["gain_per_seed"])
        out.append(f"| {r['method']} | {r['budget']:g} | {r['generations_per_prompt']:.2f} | "
                   f"{r['mean_reward']:.4f} ({r['mean_reward_std']:.4f}) | {r['gap_captured']:+.3f} "
                   f"({r['gap_captured_std']:.3f}) | {r['gap_captured_min']:+.3f} | {hit[0]} | {hit[1]} | {gains} |")
    return "\n".join(out)


if __name__ == "__main__":
    budgets = [1.0, 1.5, 2.0, 3.0]
    if "--budgets" in sys.argv:
        budgets = [float(b) for b in sys.argv[sys.argv.index("--budgets") + 1].split(",")]
    print(table(sys.argv[1], budgets))
