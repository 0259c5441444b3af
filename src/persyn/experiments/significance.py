"""The statistics of `persyn compare`: every trained student's per-item correctness, read back from its evaluation
records, turned into persyn.experiments.stats intervals for each strategy and paired differences against two references:
`strong` (the highest mean probe quality) and the best single teacher (the `teacher:NAME` strategy whose students
score best on these test items; choosing it on the test favours the baseline, never persyn).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from persyn.config import TEACHER_STRATEGY, VERIFIED_SUFFIX
from persyn.experiments.stats import N_BOOT, mean_ci, paired_difference

# Per benchmark kind: the per-item record field that is 1/0 for a right/wrong answer, and the one naming the item.
ITEM_SCORE = {"gsm8k": "correct", "gym": "correct", "ifeval": "prompt_strict"}
ITEM_ID = {"gsm8k": "question", "gym": "id", "ifeval": "key"}
METHOD = ("two-level bootstrap: each replicate resamples the training seeds and, independently, the test items "
          "with replacement; 95% percentile intervals. Differences are paired: the same resampled items for both "
          "strategies, and the same resampled seeds when both were trained with the same seeds. mde: the smallest "
          "difference found with 80% power at alpha 0.05, 2.80 x the paired standard error; size_factor: "
          "(mde / |diff|)^2, how many times more items and seeds would resolve the observed difference.")


def read_item_scores(path: Path, kind: str) -> dict[str, float]:
    """{item id: 1.0 or 0.0} from one evaluation's records file."""
    out: dict[str, float] = {}
    with path.open(encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if line.strip():
                rec = json.loads(line)
                out[str(rec.get(ITEM_ID[kind], i))] = float(bool(rec[ITEM_SCORE[kind]]))
    return out


def score_matrix(files: dict[int, Path], kind: str, items: list[str] | None) -> tuple[list[int], list[str],
                                                                                       np.ndarray] | None:
    """(seeds, item ids, [seeds, items]) over the seeds whose records exist; None when there are none or their
    items are not `items` (when given) or not the same in every seed."""
    seeds = sorted(s for s, p in files.items() if p.is_file())
    if not seeds:
        return None
    per_seed = [read_item_scores(files[s], kind) for s in seeds]
    ids = items if items is not None else list(per_seed[0])
    if any(set(scores) != set(ids) for scores in per_seed):
        return None
    return seeds, ids, np.array([[scores[i] for i in ids] for scores in per_seed])


def benchmark_statistics(files: dict[str, dict[int, Path]], kind: str, *, n_boot: int = N_BOOT,
                         seed: int = 0, pairs: list[tuple[str, str]] = ()) -> dict[str, Any] | None:
    """Intervals for each strategy (files: strategy -> seed -> records file; the base model as `base`) and paired
    differences of every strategy against `strong` and the best single teacher, and of each of `pairs`
    (strategy, reference) with both evaluated. None: no per-item records."""
    if kind not in ITEM_SCORE:
        return None
    matrices: dict[str, tuple[list[int], np.ndarray]] = {}
    skipped: list[str] = []
    items: list[str] | None = None
    for name, by_seed in files.items():
        got = score_matrix(by_seed, kind, items)
        if got is None:
            if any(p.is_file() for p in by_seed.values()):
                skipped.append(name)
            continue
        seeds, items, m = got
        matrices[name] = (seeds, m)
    if not matrices or items is None:
        return None
    estimates = {name: {"seeds_list": seeds, "seed_means": [round(float(x), 6) for x in m.mean(axis=1)],
                        **mean_ci(m, n_boot=n_boot, seed=seed).as_dict()}
                 for name, (seeds, m) in matrices.items()}
    refs = references(estimates)
    # (strategy, what it is compared against, the reference strategy): every strategy against each reference,
    # then the named pairs
    wanted = [(name, label, ref) for label, ref in refs.items() for name in matrices if name not in (ref, "base")]
    wanted += [(name, ref, ref) for name, ref in pairs if name in matrices and ref in matrices]
    differences = []
    for name, against, ref in wanted:
        (seeds, m), (ref_seeds, ref_m) = matrices[name], matrices[ref]
        d = paired_difference(m, ref_m, paired_seeds=seeds == ref_seeds, n_boot=n_boot, seed=seed)
        differences.append({"strategy": name, "against": against, "reference": ref, **d.as_dict()})
    mdes = [d["mde"] for d in differences]
    return {"metric": "accuracy", "items": len(items), "method": METHOD, "n_boot": n_boot, "bootstrap_seed": seed,
            "strategies": estimates, "references": refs, "differences": differences,
            "mde_median": float(np.median(mdes)) if mdes else None,
            "skipped": skipped}  # strategies whose records cover other items


def references(estimates: dict[str, dict[str, Any]]) -> dict[str, str]:
    """{"strong": "strong", "best single teacher": the best `teacher:NAME`} among the strategies evaluated."""
    refs = {"strong": "strong"} if "strong" in estimates else {}
    singles = [n for n in estimates if n.startswith(TEACHER_STRATEGY) and not n.endswith(VERIFIED_SUFFIX)]
    if singles:
        refs["best single teacher"] = max(singles, key=lambda n: (estimates[n]["mean"], -singles.index(n)))
    return refs
