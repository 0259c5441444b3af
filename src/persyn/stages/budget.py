"""A generation budget between Route then Generate (1 generation per routed prompt) and Generate then Select (N).

Extra generations go where the router is least sure: every routed prompt gets its top teacher, and the remaining
`(budget - 1) * n` generations go to the (prompt, next teacher) pairs with the smallest score margin to that prompt's
top choice. In cascade mode (`accept_quality`), the next teacher is asked only while the best answer so far is below
the accepted quality.

Which candidate to keep (`keep_best`, the one rule used by the generate stage and the frontier replay). Eq. 2
normalises quality and learnability per prompt across all N teachers, so whether a candidate's higher quality
outweighs another's higher learnability depends on the spread of the answers nobody asked for. A per-prompt min-max
over the k candidates alone stretches any small difference to the whole [0, 1]; a fixed scale (the probe's typical
spread, the rule before) ignores that the spread varies from prompt to prompt (on the AlpacaEval pool, a prompt
where every teacher gets about the same judge score has a tiny quality range, and there learnability should decide).
So the N - k unanswered teachers are completed from the probe, where every teacher answered: each probe prompt
gives one completion, its own raw scores for the teachers not asked, its learnability moved by the difference
between the asked teachers' mean learnability here and there (a prompt's responses share a log-prob level; quality
is an absolute score and is not moved). Completions are weighted by how close the probe prompt's quality for the
asked teachers is to the quality observed here (a Gaussian kernel of width `BANDWIDTH` probe standard deviations),
Eq. 2 is computed over each completed row of N, and the candidate with the best expected reward is kept. With all N
candidates present nothing is completed and the choice is Eq. 2 itself (`persyn.scoring.reward.reward_matrix`), so
`budget = N` is Generate then Select. Deterministic: no sampling, ties go to the earlier candidate (router order).
docs/routing.md measures it against the fixed scales and against the best of the same candidates in hindsight.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from persyn.scoring.reward import reward_matrix, reward_rows, used_components

BANDWIDTH = 0.3  # chosen by cross-validation within AlpacaEval probes (docs/routing/candidate_rule.py)
_CHUNK = 256  # prompts completed at once (memory: chunk x probe x N)


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


@dataclass(frozen=True)
class CandidateRule:
    """What the probe says about teachers that were not asked: its raw scores [n, N] (NaN: no usable response;
    a component that alpha does not use is zero) and the kernel width in quality units."""

    quality: np.ndarray
    learnability: np.ndarray
    alpha: float
    method: str
    width: float


def _masked(Q: np.ndarray, L: np.ndarray, empty: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """NaN in both components wherever either is missing or the response is empty: Eq. 2 leaves those out of
    the normalisation and they never win."""
    bad = ~np.isfinite(Q) | ~np.isfinite(L)
    if empty is not None:
        bad |= np.asarray(empty, dtype=bool)
    return np.where(bad, np.nan, Q), np.where(bad, np.nan, L)


def candidate_rule(quality: np.ndarray | None, learnability: np.ndarray | None, alpha: float, method: str, *,
                   worst: np.ndarray | None = None, bandwidth: float = BANDWIDTH) -> CandidateRule:
    """The rule fitted on the probe's raw scores [n, N] (`worst`: empty responses)."""
    ref = quality if quality is not None else learnability
    if ref is None:
        raise ValueError("the probe has neither quality nor learnability")
    shape = np.shape(ref)
    Q, L = _masked(*used_components(quality, learnability, shape, alpha), worst)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        std = float(np.nanstd(Q)) if np.isfinite(Q).any() else 0.0
    return CandidateRule(Q, L, alpha, method, bandwidth * std if std > 1e-12 else 1.0)


def keep_best(rule: CandidateRule, asked: list[list[int]], quality: np.ndarray | None,
              learnability: np.ndarray | None, empty: np.ndarray | None = None) -> list[int]:
    """The teacher (column) to keep for each prompt among its asked ones, from their raw scores [P, N] (other
    columns are ignored; `empty`: empty responses). A prompt with no usable candidate keeps its first."""
    shape = (len(asked), rule.quality.shape[1])
    Q, L = _masked(*used_components(quality, learnability, shape, rule.alpha), empty)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, cols in enumerate(asked):
        groups.setdefault(tuple(int(c) for c in cols), []).append(i)
    kept = [int(c[0]) if len(c) else -1 for c in asked]
    for cols, rows in groups.items():
        if not cols:
            continue
        A = list(cols)
        for start in range(0, len(rows), _CHUNK):
            idx = np.array(rows[start:start + _CHUNK])
            value = _expected_reward(rule, A, Q[np.ix_(idx, A)], L[np.ix_(idx, A)])
            ok = np.isfinite(value)
            best = np.argmax(np.where(ok, value, -np.inf), 1)
            for i, b, any_ok in zip(idx, best, ok.any(1), strict=True):
                if any_ok:
                    kept[i] = A[int(b)]
    return kept


def _expected_reward(rule: CandidateRule, A: list[int], QA: np.ndarray, LA: np.ndarray) -> np.ndarray:
    """[m, k] expected Eq. 2 reward of the asked teachers A on m prompts, over the probe's completions."""
    N = rule.quality.shape[1]
    unasked = [t for t in range(N) if t not in set(A)]
    if not unasked or not len(rule.quality):  # every teacher answered: Eq. 2 itself
        return reward_matrix(QA, LA, rule.alpha, rule.method)
    PQ, PL = rule.quality, rule.learnability
    ok = np.isfinite(QA)  # [m, k]: usable candidates
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        # kernel on quality over the candidates usable here; a probe row missing one of them is left out
        diff = np.where(ok[:, None, :], QA[:, None, :] - PQ[None, :, A], 0.0)  # [m, n, k]
        d2 = (diff ** 2).sum(2) / rule.width ** 2
        d2 = np.where(np.isnan(d2), np.inf, d2)
        lo = d2.min(1, keepdims=True)
        w = np.where(np.isfinite(lo), np.exp(-(d2 - np.where(np.isfinite(lo), lo, 0.0)) / 2), 1.0)
        w /= w.sum(1, keepdims=True)
        # learnability level: mean over the usable candidates here, and over the same teachers in the probe row
        here = np.nanmean(np.where(ok, LA, np.nan), 1)  # [m]
        there = np.nanmean(np.where(ok[:, None, :], PL[None, :, A], np.nan), 2)  # [m, n]
    shift = np.nan_to_num(here[:, None] - there)
    m, n = w.shape
    Qc = np.empty((m, n, N))
    Lc = np.empty((m, n, N))
    Qc[:, :, A], Lc[:, :, A] = QA[:, None, :], LA[:, None, :]
    Qc[:, :, unasked] = PQ[None, :, unasked]
    Lc[:, :, unasked] = PL[None, :, unasked] + shift[:, :, None]
    r = reward_rows(Qc, Lc, rule.alpha, rule.method)[:, :, A]  # [m, n, k]
    return np.einsum("mn,mnk->mk", w, np.nan_to_num(r)) + np.where(ok, 0.0, np.nan)
