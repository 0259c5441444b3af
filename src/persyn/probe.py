"""Which prompts the probe takes: a seeded random draw, a spread over the embedding space, or adaptive growth.

Every strategy is an *order* over the prompts; a probe of size m is its first m prompts. So growing a probe
(adaptive) only appends, and the random order ranks prompts by a hash of (seed, id): appending prompts to the
file never changes which of the old ones are in the probe.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import numpy as np


def random_order(ids: list[str], seed: int) -> list[str]:
    return sorted(ids, key=lambda i: hashlib.sha256(f"probe:{seed}:{i}".encode()).hexdigest())


def kcenter_order(X: np.ndarray, m: int, first: int) -> list[int]:
    """Greedy k-center (farthest point first) over the rows of X, starting at row `first`: m row indices."""
    X = np.asarray(X, dtype=np.float64)
    m = min(m, len(X))
    order = [first]
    dist = np.linalg.norm(X - X[first], axis=1)
    dist[first] = -1.0
    while len(order) < m:
        nxt = int(np.argmax(dist))
        order.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(X - X[nxt], axis=1))
        dist[order] = -1.0
    return order


def probe_order(ids: list[str], texts: list[str], strategy: str, seed: int, m: int,
                embed: Callable[[list[str]], np.ndarray]) -> list[str]:
    """The first m prompt ids of the strategy's order (adaptive grows along the random order)."""
    ranked = random_order(ids, seed)
    if strategy != "diverse":
        return ranked[:m]
    index = {pid: i for i, pid in enumerate(ids)}
    chosen = kcenter_order(embed(texts), m, first=index[ranked[0]])
    return [ids[i] for i in chosen]
