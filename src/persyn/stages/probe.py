"""Which prompts the probe takes: a seeded draw, a spread over the embedding space, or adaptive growth.

`random` and `adaptive` use keys.draw_probe: prompts ranked by a hash of (seed, id), the last run's probe kept
first, so appending prompts leaves the probe as it was and growing it (adaptive rounds) only adds prompts.
`diverse` is a greedy k-center over the router's prompt embeddings, started at the first prompt of that draw: it
covers the topics of the prompt set instead of sampling them in proportion, which helps a small probe see the
kinds of prompt where teachers differ. Its probe depends on the whole prompt set by design.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from persyn.keys import draw_probe


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


def choose_probe(ids: list[str], texts: list[str], strategy: str, seed: int, size: int, *,
                 keep: Iterable[str] = (), embed: Callable[[list[str]], np.ndarray]) -> list[str]:
    """`size` prompt ids for the probe, in the strategy's order."""
    if strategy != "diverse":
        return draw_probe(ids, size, seed, keep=keep)
    first = ids.index(draw_probe(ids, 1, seed)[0])
    return [ids[i] for i in kcenter_order(embed(texts), size, first=first)]
