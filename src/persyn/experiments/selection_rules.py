"""The selection rules the strategies apply: pure functions of reward matrices and seeds, one teacher per prompt."""

from __future__ import annotations

import random
import warnings
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from persyn.run import RewardMatrices


def argmax_or_none(row: np.ndarray) -> int | None:
    return None if not np.isfinite(row).any() else int(np.nanargmax(row))


def oracle_choice(reward: np.ndarray, teachers: list[str], seed: int | None = None) -> list[str | None]:
    """Per prompt, the teacher whose response has the highest combined reward [P, T] (None: no usable one).

    Exact ties go to the teacher listed first, or with a `seed` to one of the tied teachers drawn uniformly
    (seeded per prompt index). Ties are the rule at alpha = 0 with a 0/1 quality: every correct (or every wrong)
    response gets the same reward, and the config's teacher order says nothing about which to keep."""
    out: list[str | None] = []
    for i, row in enumerate(reward):
        best = argmax_or_none(row)
        if best is not None and seed is not None:
            tied = np.flatnonzero(row == row[best])
            best = int(tied[random.Random(f"oracle:{seed}:{i}").randrange(len(tied))]) if len(tied) > 1 else best
        out.append(None if best is None else teachers[best])
    return out


def teacher_strength(probe: RewardMatrices, teachers: list[str]) -> dict[str, float]:
    """Mean raw quality of each teacher on the probe (mean combined reward when quality is not scored)."""
    values = probe.quality if np.isfinite(probe.quality).any() else probe.reward
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.nanmean(values, axis=0)
    return {n: float(m) if np.isfinite(m) else float("-inf") for n, m in zip(teachers, means, strict=True)}


def strongest(strength: dict[str, float]) -> str:
    """The highest strength; ties go to the teacher listed first."""
    return max(strength, key=lambda n: (strength[n], -list(strength).index(n)))


def weakest(strength: dict[str, float]) -> str:
    """The lowest strength; ties go to the teacher listed first."""
    return min(strength, key=lambda n: (strength[n], list(strength).index(n)))


def mix_choice(strong: str, weak: str, n_prompts: int, strong_share: float, seed: int) -> list[str]:
    """Strong or weak per prompt, strong with probability strong_share, from a seeded draw."""
    rng = random.Random(f"mix:{seed}")
    return [strong if rng.random() < strong_share else weak for _ in range(n_prompts)]


def car_values(quality: np.ndarray, learnability: np.ndarray, beta: float) -> np.ndarray:
    """[T] CAR per teacher: mean quality / (1 + beta * mean loss), loss = -learnability (mean token NLL)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(quality, 0) / (1 + beta * np.nanmean(-learnability, 0))


def random_choice(teachers: list[str], n_prompts: int, seed: int) -> list[str]:
    """A teacher drawn uniformly per prompt (seeded)."""
    rng = random.Random(f"random:{seed}")
    return [rng.choice(teachers) for _ in range(n_prompts)]


