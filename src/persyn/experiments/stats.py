"""Confidence intervals for a student's accuracy over test items and training seeds: pure functions over per-item
scores, an array [seeds, items] per strategy (1/0 for a correct/wrong answer), items in the same order everywhere.

Two sources of noise make an accuracy uncertain: which test items were drawn, and which training seed made the
student. The **two-level bootstrap** resamples both: each replicate draws the seeds with replacement and,
independently, the items with replacement, and takes the mean over the drawn seeds x drawn items. The interval is
the percentile interval of the replicates (95 %: the 2.5th and 97.5th percentiles); the standard error is their
standard deviation. With one seed only items are resampled, and the interval says nothing about seed noise.

A **paired** difference a - b uses the same drawn items for both in every replicate (the students answered the same
items), and the same drawn seeds when both were trained with the same seeds (`paired_seeds`); otherwise each side's
seeds are drawn on their own. Pairing removes the items' shared difficulty from the difference, which is why a
paired interval is much narrower than the two separate ones.

The **smallest resolvable difference** (minimum detectable effect) at two-sided level alpha and power 1 - beta is
(z_{1-alpha/2} + z_{1-beta}) x s.e. of the paired difference: 2.80 x s.e. for alpha 0.05 and 80 % power. An
observed difference d that the interval does not resolve would need an experiment about (MDE / |d|)^2 times as
large, items and seeds alike (the variance falls at least as fast as 1 / size when both grow).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

N_BOOT = 4000
CHUNK = 500  # replicates per step: bounds memory to CHUNK x items floats


@dataclass(frozen=True)
class Estimate:
    mean: float
    lo: float
    hi: float
    se: float
    seeds: int
    items: int

    def as_dict(self) -> dict[str, float | int]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Difference:
    diff: float  # mean(a) - mean(b)
    lo: float
    hi: float
    se: float
    mde: float  # smallest difference this design resolves (two-sided alpha, power)
    paired_seeds: bool

    @property
    def resolved(self) -> bool:
        """The interval excludes 0."""
        return self.lo > 0 or self.hi < 0

    @property
    def size_factor(self) -> float | None:
        """How many times larger (items and seeds) the experiment would have to be to resolve d = diff at the
        design's power; None when the difference is 0 (no size resolves it)."""
        return (self.mde / abs(self.diff)) ** 2 if self.diff else None

    def as_dict(self) -> dict[str, float | bool | None]:
        out: dict[str, float | bool | None] = {k: (round(v, 6) if isinstance(v, float) else v)
                                              for k, v in asdict(self).items()}
        factor = self.size_factor
        out |= {"resolved": self.resolved, "size_factor": None if factor is None else round(factor, 3)}
        return out


def as_matrix(x: np.ndarray | list) -> np.ndarray:
    """[seeds, items] floats; a 1-D array is one seed."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"expected per-item scores [seeds, items], got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("per-item scores must be finite")
    return a


def _counts(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """How often each of n units is drawn in `size` bootstrap replicates: [size, n]."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=size).astype(np.float64)


def _replicates(xs: list[np.ndarray], shared_seeds: bool, n_boot: int, seed: int) -> list[np.ndarray]:
    """Replicate means [n_boot] of each matrix in xs, all on the same drawn items; seeds drawn once for all when
    shared_seeds, else per matrix."""
    rng = np.random.default_rng(seed)
    n_items = xs[0].shape[1]
    out: list[list[np.ndarray]] = [[] for _ in xs]
    for start in range(0, n_boot, CHUNK):
        size = min(CHUNK, n_boot - start)
        items = _counts(rng, n_items, size)  # [size, items]
        seeds = _counts(rng, xs[0].shape[0], size) if shared_seeds else None
        for j, x in enumerate(xs):
            s = seeds if seeds is not None else _counts(rng, x.shape[0], size)  # [size, seeds]
            # sum over drawn seeds and items of x, divided by their number: (s @ x) weighs each item's column.
            out[j].append(((s @ x) * items).sum(1) / (x.shape[0] * n_items))
    return [np.concatenate(o) for o in out]


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2
    lo, hi = np.quantile(values, [tail, 1 - tail])
    return float(lo), float(hi)


def mean_ci(x: np.ndarray | list, *, level: float = 0.95, n_boot: int = N_BOOT, seed: int = 0) -> Estimate:
    """Mean score over seeds and items, with a two-level bootstrap interval."""
    a = as_matrix(x)
    (reps,) = _replicates([a], True, n_boot, seed)
    lo, hi = _interval(reps, level)
    return Estimate(float(a.mean()), lo, hi, float(reps.std(ddof=1)), a.shape[0], a.shape[1])


def min_detectable(se: float, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """(z_{1-alpha/2} + z_{power}) x se: the smallest true difference found with this power at level alpha."""
    z = NormalDist()
    return (z.inv_cdf(1 - alpha / 2) + z.inv_cdf(power)) * se


def paired_difference(a: np.ndarray | list, b: np.ndarray | list, *, paired_seeds: bool | None = None,
                      level: float = 0.95, n_boot: int = N_BOOT, seed: int = 0, alpha: float = 0.05,
                      power: float = 0.8) -> Difference:
    """mean(a) - mean(b) over the same items, with a paired two-level bootstrap interval and the design's
    minimum detectable difference. paired_seeds (default: when both have as many seeds) says row s of a and of b
    come from the same training seed."""
    ma, mb = as_matrix(a), as_matrix(b)
    if ma.shape[1] != mb.shape[1]:
        raise ValueError(f"paired scores need the same items: {ma.shape[1]} against {mb.shape[1]}")
    if paired_seeds is None:
        paired_seeds = ma.shape[0] == mb.shape[0]
    if paired_seeds and ma.shape[0] != mb.shape[0]:
        raise ValueError(f"seed-paired scores need as many seeds: {ma.shape[0]} against {mb.shape[0]}")
    ra, rb = _replicates([ma, mb], paired_seeds, n_boot, seed)
    diffs = ra - rb
    lo, hi = _interval(diffs, level)
    se = float(diffs.std(ddof=1))
    return Difference(float(ma.mean() - mb.mean()), lo, hi, se, min_detectable(se, alpha=alpha, power=power),
                      paired_seeds)
