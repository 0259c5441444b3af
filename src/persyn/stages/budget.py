"""A generation budget between Route then Generate (1 generation per routed prompt) and Generate then Select (N).

Extra generations go where the router is least sure: every routed prompt gets its top teacher, and the remaining
`(budget - 1) * n` generations go to the (prompt, next teacher) pairs with the smallest score margin to that prompt's
top choice. In cascade mode (`accept_quality`), the next teacher is asked only while the best answer so far is below
the accepted quality.

The best candidate is kept by the same combined reward as the probe (persyn.scoring.reward). Eq. 2 normalises
quality and learnability per prompt across all N teachers; with k < N candidates, a per-prompt min-max over the k
alone would stretch any small difference to the full [0, 1] range (two near-identical answers would differ by a
whole point of "quality"). So each component is divided by its typical per-prompt spread across the N teachers on
the probe instead (the mean per-prompt range for min-max and rank, the mean per-prompt standard deviation for
z-score): a fixed, prompt-independent scale, so a comparison between two candidates does not depend on which other
teachers answered. With all N candidates present, the probe's exact normalisation is used, so `budget = N` is
Generate then Select.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from persyn.scoring.reward import calibrated_reward


def extra_generations(n_prompts: int, budget: float) -> int:
    return int(round((budget - 1.0) * n_prompts))


def allocate(scores: np.ndarray, budget: float) -> list[list[int]]:
    """Candidate teachers per prompt, best first: each prompt's top choice plus the extra generations by margin."""
    S = np.asarray(scores, dtype=np.float64)
    n, T = S.shape
    order = np.argsort(-S, axis=1, kind="stable")
    counts = np.ones(n, dtype=np.int64)
    extra = min(extra_generations(n, budget), n * (T - 1))
    if extra > 0:
        top = S[np.arange(n), order[:, 0]]
        # margin of the prompt's r-th choice (r >= 1) to its top; smaller margin first, prompt order breaks ties
        margins = top[:, None] - np.take_along_axis(S, order[:, 1:], axis=1)
        flat = np.lexsort((np.tile(np.arange(1, T), n), np.repeat(np.arange(n), T - 1), margins.ravel()))
        chosen = flat[:extra] // (T - 1)
        counts += np.bincount(chosen, minlength=n)
    return [order[i, : counts[i]].tolist() for i in range(n)]


def first_candidates(scores: np.ndarray, budget: float, cascade: bool) -> list[list[int]]:
    """The candidates the route stage gives each routed prompt: the top choice alone when a cascade asks further
    teachers as answers come in, else `allocate`'s top choice plus the budget's extra generations."""
    if cascade:
        return [[int(np.argmax(row))] for row in np.asarray(scores)]
    return allocate(scores, budget)


def cascade(scores: np.ndarray, asked: list[list[int]], accept: float, room: int,
            quality: Callable[[list[list[int]]], np.ndarray]) -> list[list[int]]:
    """The cascade: ask each prompt's next teacher in router order while its best quality is below `accept`, until
    `room` generations are spent. `quality(asked)` gives the quality [P, T] once every asked teacher has answered
    (the generate stage generates and scores them; the frontier replay reads known scores). Returns who was asked."""
    asked = [list(a) for a in asked]
    while True:
        Q = quality(asked)
        accepted = [bool(np.any(Q[i, a] >= accept)) for i, a in enumerate(asked)]
        nxt = cascade_next(scores, asked, accepted, room - sum(map(len, asked)))
        if all(t is None for t in nxt):
            return asked
        asked = [a + [t] if t is not None else a for a, t in zip(asked, nxt, strict=True)]


def cascade_next(scores: np.ndarray, asked: list[list[int]], accepted: list[bool], room: int) -> list[int | None]:
    """One cascade round: per prompt, the next teacher to ask (None: accepted, exhausted or out of budget).

    `room` generations are left; when fewer than the prompts that want one, the least sure (smallest margin between
    the top choice and the next) go first."""
    S = np.asarray(scores, dtype=np.float64)
    n, T = S.shape
    order = np.argsort(-S, axis=1, kind="stable")
    want: list[tuple[float, int, int]] = []
    for i in range(n):
        if accepted[i] or len(asked[i]) >= T:
            continue
        nxt = next(int(t) for t in order[i] if int(t) not in asked[i])
        want.append((float(S[i, order[i, 0]] - S[i, nxt]), i, nxt))
    want.sort()
    out: list[int | None] = [None] * n
    for _, i, t in want[: max(0, room)]:
        out[i] = t
    return out


def keep_best(cands: list[list[int]], quality: np.ndarray, learnability: np.ndarray, reward: np.ndarray,
              alpha: float, scales: tuple[float, float], empty: np.ndarray | None = None) -> list[int | None]:
    """The kept teacher per prompt among its candidates (None: it has none), from the candidates' scores [P, T]:
    `reward` is Eq. 2 over every teacher, used when all of them answered; `empty` marks blank responses."""
    T = quality.shape[1]
    return [None if not c else c[best_candidate(quality[i, c], learnability[i, c], alpha, scales,
                                                empty=None if empty is None else empty[i, c],
                                                full=reward[i, c] if len(c) == T else None)]
            for i, c in enumerate(cands)]


def best_candidate(quality: np.ndarray, learnability: np.ndarray | None, alpha: float, scales: tuple[float, float],
                   *, empty: np.ndarray | None = None, full: np.ndarray | None = None) -> int:
    """Position of the candidate to keep: by `full` (the probe's exact Eq. 2 row, when every teacher answered) or
    else by the calibrated reward, where an empty response ranks last; an unscored candidate never wins."""
    if full is None:
        value = calibrated_reward(quality, learnability, alpha, scales)
        if empty is not None:
            value = np.where(empty, -np.inf, value)
    else:
        value = np.asarray(full, dtype=np.float64)
    return int(np.argmax(np.where(np.isnan(value), -np.inf, value)))
