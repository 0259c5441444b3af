"""The probe stage: which prompts the probe takes (a seeded draw, a spread over the embedding space, or adaptive
growth), and every teacher's response on each.

`random` and `adaptive` use keys.draw_probe: prompts ranked by a hash of (seed, id), the last run's probe kept
first, so appending prompts leaves the probe as it was and growing it (adaptive rounds) only adds prompts.
`diverse` is a greedy k-center over the router's prompt embeddings, started at the first prompt of that draw: it
covers the topics of the prompt set instead of sampling them in proportion, which helps a small probe see the
kinds of prompt where teachers differ. Its probe depends on the whole prompt set by design.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import numpy as np

from persyn.keys import draw_probe
from persyn.prompts import Prompt
from persyn.run import Run, probe_rewards
from persyn.stages.generate import generate_pairs
from persyn.stages.score import score_stage
from persyn.stages.train_router import fit_router
from persyn.stages.work import stage_pairs
from persyn.store import Meta

log = logging.getLogger(__name__)


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


def next_probe_size(gains: list[float], size: int, step: int, cap: int) -> int | None:
    """Adaptive growth: after a round at `size` whose router gain is gains[-1] (earlier rounds' gains before it),
    the next probe size, or None to stop there: at `cap`, or when the gain did not beat every earlier round's (the
    last round is paid for and kept)."""
    improving = len(gains) < 2 or gains[-1] > max(gains[:-1])
    if size >= cap or not improving:
        return None
    return min(cap, size + step)


def probe_ids(run: Run, prompts: list[Prompt], size: int) -> list[str]:
    """The config's probe of `size` over these prompts; the last run's probe is kept when drawn with this seed."""
    p = run.cfg.probe
    same_seed = run.store.get_meta(Meta.PROBE_SEED, p.seed) == p.seed
    return choose_probe([q.id for q in prompts], [q.text for q in prompts], p.strategy, p.seed, size,
                        keep=run.store.probe_ids() if same_seed else (), embed=lambda texts: run.embed(texts))


def probe_stage(run: Run) -> None:
    generate_pairs(run, stage_pairs(run, "probe"), "probe")
    if run.cfg.probe.strategy == "adaptive":
        _grow_probe(run)


def _grow_probe(run: Run) -> None:
    """Adaptive probe: score, fit the router, and add `probe.size` more prompts while its cross-validated gain over
    the best single teacher improves, up to `probe.max_size`. Each round is kept in the store, so a rerun replays
    the decisions from stored scores without generating anything again."""
    cfg = run.cfg
    prompts = run.store.prompts()
    step = cfg.probe.resolve(len(prompts))
    cap = min(len(prompts), cfg.probe.max_size or 4 * step)
    rounds: list[dict] = run.store.get_meta(Meta.PROBE_ROUNDS, [])
    while True:
        size = len(run.store.probe_ids())
        score_stage(run)
        probe = probe_rewards(run)
        _, report = fit_router(run, probe.prompts, probe.reward)
        gain = report.gain
        rounds = [r for r in rounds if r["size"] < size] + [{"size": size, "cv_gain": gain}]
        run.store.set_meta(Meta.PROBE_ROUNDS, rounds)
        new_size = next_probe_size([r["cv_gain"] for r in rounds], size, step, cap)
        if new_size is None:
            log.info("adaptive probe: %d prompts (%s)", size, "max_size" if size >= cap else "gain stopped improving")
            return
        run.store.set_meta(Meta.ADAPTIVE_PROBE_SIZE, new_size)
        run.store.set_probe(sorted(probe_ids(run, prompts, new_size)))
        generate_pairs(run, stage_pairs(run, "probe"), f"probe ({new_size})")
