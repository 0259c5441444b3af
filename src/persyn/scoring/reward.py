"""Combined reward (Eq. 2): r = (1 - alpha) * norm(quality) + alpha * norm(learnability).

Both signals are normalised across the teachers' responses to one prompt, so their scales (a 0/1 correctness,
a reward-model logit, a mean log-probability) are comparable. Responses marked `worst` (e.g. empty ones) are left
out of the normalisation and get `min(other rewards) - 1` (0.0 when every response is worst): they lose every
comparison. In a P x T matrix, NaN means "this teacher gave no response" and stays NaN.
"""

from __future__ import annotations

import warnings

import numpy as np

METHODS = ("minmax", "zscore", "rank", "none")


def normalise(values: np.ndarray, method: str = "minmax") -> np.ndarray:
    """Normalise one prompt's values across teachers. Constant input: 0.5 (minmax, rank) or 0 (zscore)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"normalise expects one prompt's values (1-D), got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError("cannot normalise NaN or infinite values")
    if method not in METHODS:
        raise ValueError(f"unknown normalisation {method!r}; known: {', '.join(METHODS)}")
    if method == "none" or v.size == 0:
        return v.copy()
    lo, hi = v.min(), v.max()
    if method == "minmax":
        return np.full_like(v, 0.5) if hi == lo else (v - lo) / (hi - lo)
    if method == "zscore":
        std = v.std()
        return np.zeros_like(v) if std == 0 or hi == lo else (v - v.mean()) / std
    # rank: average ranks (ties share theirs), scaled to [0, 1]
    less = (v[None, :] < v[:, None]).sum(axis=1)
    equal = (v[None, :] == v[:, None]).sum(axis=1)
    ranks = less + (equal - 1) / 2.0
    return np.full_like(v, 0.5) if v.size == 1 else ranks / (v.size - 1)


def _check_alpha(alpha: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")


def combine(quality: np.ndarray | None, learnability: np.ndarray | None, alpha: float, method: str = "minmax",
            worst: np.ndarray | None = None) -> np.ndarray:
    """Eq. 2 for one prompt's T responses. alpha == 0 ignores learnability (may be None), alpha == 1 quality."""
    _check_alpha(alpha)
    used = [(1.0 - alpha, quality, "quality")] if alpha < 1 else []
    if alpha > 0:
        used.append((alpha, learnability, "learnability"))
    arrays = [np.asarray(a, dtype=np.float64) for _, a, _ in used if a is not None]
    for _, a, name in used:
        if a is None:
            raise ValueError(f"alpha={alpha} needs {name} values")
    size = arrays[0].shape[0] if arrays else 0
    if any(a.shape != (size,) for a in arrays):
        raise ValueError(f"quality and learnability must both have shape [T], got {[a.shape for a in arrays]}")
    bad = np.zeros(size, dtype=bool) if worst is None else np.asarray(worst, dtype=bool)
    if bad.shape != (size,):
        raise ValueError(f"worst mask has shape {bad.shape}, expected ({size},)")
    keep = ~bad
    reward = np.zeros(size, dtype=np.float64)
    if keep.any():
        reward[keep] = sum(w * normalise(np.asarray(a, dtype=np.float64)[keep], method) for w, a, _ in used)
        reward[bad] = reward[keep].min() - 1.0
    return reward


def reward_matrix(quality: np.ndarray, learnability: np.ndarray | None, alpha: float, method: str = "minmax",
                  worst: np.ndarray | None = None) -> np.ndarray:
    """Rewards [P, T]. NaN in a used input (no response from that teacher) gives NaN there; worst wins over NaN."""
    _check_alpha(alpha)
    q = np.asarray(quality, dtype=np.float64)
    if q.ndim != 2:
        raise ValueError(f"quality must have shape [P, T], got {q.shape}")
    lq = None if learnability is None else np.asarray(learnability, dtype=np.float64)
    if alpha > 0 and (lq is None or lq.shape != q.shape):
        raise ValueError(f"alpha={alpha} needs learnability of shape {q.shape}")
    bad = np.zeros(q.shape, dtype=bool) if worst is None else np.asarray(worst, dtype=bool)
    if bad.shape != q.shape:
        raise ValueError(f"worst mask has shape {bad.shape}, expected {q.shape}")
    missing = np.zeros(q.shape, dtype=bool)
    if alpha < 1:
        missing |= np.isnan(q)
    if alpha > 0:
        missing |= np.isnan(lq)  # type: ignore[arg-type]
    missing &= ~bad
    out = np.full(q.shape, np.nan)
    for p in range(q.shape[0]):
        present = ~missing[p]
        if present.any():
            out[p, present] = combine(q[p, present], None if lq is None else lq[p, present], alpha, method,
                                      worst=bad[p, present])
    return out


def scored_rewards(quality: np.ndarray, learnability: np.ndarray, present: np.ndarray, empty: np.ndarray | None,
                   alpha: float, method: str = "minmax") -> np.ndarray:
    """Rewards [P, T] from stored raw scores: a failed generation or a missing score drops out (NaN), an empty
    response scores the worst, and a component alpha does not use is ignored."""
    q_in = np.where(present, quality, np.nan) if alpha < 1 else np.where(present, 0.0, np.nan)
    l_in = np.where(present, learnability, np.nan) if alpha > 0 else None
    return reward_matrix(q_in, l_in, alpha, method, worst=empty)


def _used(values: np.ndarray | None, shape: tuple[int, ...], needed: bool) -> np.ndarray:
    if not needed:
        return np.zeros(shape)
    if values is None:
        raise ValueError("a component that reward.alpha uses has no values")
    return np.array(values, dtype=np.float64)


def used_components(quality: np.ndarray | None, learnability: np.ndarray | None, shape: tuple[int, ...],
                    alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(quality, learnability) as Eq. 2 at this alpha reads them: a component it does not use is zeros."""
    return _used(quality, shape, alpha < 1), _used(learnability, shape, alpha > 0)


def reward_rows(Q: np.ndarray, L: np.ndarray, alpha: float, method: str) -> np.ndarray:
    """Eq. 2 (`combine`) along the last axis of any array at once; NaN entries (in either component) are left out
    of the normalisation and stay NaN."""
    bad = np.isnan(Q) | np.isnan(L)
    out = np.zeros(Q.shape)
    if alpha < 1:
        out += (1 - alpha) * _normalise_rows(np.where(bad, np.nan, Q), method)
    if alpha > 0:
        out += alpha * _normalise_rows(np.where(bad, np.nan, L), method)
    return np.where(bad, np.nan, out)


def _normalise_rows(V: np.ndarray, method: str) -> np.ndarray:
    """`normalise` along the last axis, NaN left out (constant: 0.5, or 0 for zscore)."""
    if method == "none":
        return V
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanmin(V, -1, keepdims=True), np.nanmax(V, -1, keepdims=True)
        if method == "minmax":
            span = hi - lo
            return np.where(span > 0, (V - lo) / np.where(span > 0, span, 1.0), 0.5)
        if method == "zscore":
            std = np.nanstd(V, -1, keepdims=True)
            flat = (std == 0) | (hi == lo)
            return np.where(flat, 0.0, (V - np.nanmean(V, -1, keepdims=True)) / np.where(flat, 1.0, std))
    if method != "rank":
        raise ValueError(f"unknown normalisation {method!r}")
    less = (V[..., None, :] < V[..., :, None]).sum(-1)
    equal = (V[..., None, :] == V[..., :, None]).sum(-1)
    count = np.isfinite(V).sum(-1, keepdims=True)
    ranks = (less + (equal - 1) / 2.0) / np.maximum(count - 1, 1)
    return np.where(np.isnan(V), np.nan, np.where(count == 1, 0.5, ranks))
