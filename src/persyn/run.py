"""One run: its config, store and executor, opened under the run_dir lock; and the reward matrices read from its
store, which the stages, the export and the experiments all build on."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from persyn.config import RunConfig
from persyn.executors import Executor, make_executor
from persyn.keys import Keys
from persyn.prompts import Prompt
from persyn.store import Generation, RunLock, Store

if TYPE_CHECKING:
    from persyn.router.embed import Embedder


@dataclass
class Run:
    """One invocation over one run_dir: the config, the store, an executor, and what this invocation did."""

    cfg: RunConfig
    store: Store
    executor: Executor
    invocation: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    stage_seconds: dict[str, float] = field(default_factory=dict)
    generated: int = 0
    failed: int = 0
    truncated: int = 0  # responses cut to fit the student's context while scoring
    summary: dict = field(default_factory=dict)
    resumed: bool = False  # the store held prompts from an earlier run
    up_to_date: bool = False  # the last finished run's stamp matched: no stage ran (persyn.stamp)
    prompt_changes: list[str] = field(default_factory=list)  # prompts edited, added or removed since the last run
    changes: str = ""  # the line saying what changed since the last run and what will be redone
    keys: Keys = field(init=False)
    _embedder: Embedder | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.keys = Keys(self.cfg)

    @property
    def run_dir(self) -> Path:
        return self.cfg.path

    def teacher_names(self) -> list[str]:
        return [t.name for t in self.cfg.teachers]

    def embed(self, texts: list[str], label: str = "embedding") -> np.ndarray:
        """Prompt embeddings of the router's backbone, through the run's one embedder and its cache. The model is
        let go after each call, so it does not sit beside the teachers while they generate."""
        if self._embedder is None:
            from persyn.router.embed import embedder_for

            student, model = self.cfg.student, None
            if self.cfg.router.backbone == "student" and student is not None and not student.server_url \
                    and hasattr(self.executor, "student_model"):
                executor = self.executor
                model = lambda: executor.student_model(student)  # noqa: E731 - the loaded student, on first use
            self._embedder = embedder_for(self.cfg.router, student, self.run_dir / "embeddings.sqlite", model=model)
        try:
            return self._embedder.embed(texts, label)
        finally:
            self._embedder.release()

    def close(self) -> None:
        if self._embedder is not None:
            self._embedder.close()
            self._embedder = None
        self.executor.close()


def open_run(cfg: RunConfig) -> Run:
    """A Run without the lock; the caller closes its store and executor (opened_run does both)."""
    return Run(cfg, Store.open(cfg.run_dir), make_executor(cfg))


@contextmanager
def opened_run(cfg: RunConfig) -> Iterator[Run]:
    """The one run context: the run_dir lock, the store and the executor, closed once on the way out."""
    cfg.path.mkdir(parents=True, exist_ok=True)
    with RunLock(cfg.path), Store.open(cfg.run_dir) as store:
        run = Run(cfg, store, make_executor(cfg))
        try:
            yield run
        finally:
            run.close()


# Reading the store -------------------------------------------------------------------------------------------

class PromptGenerations(NamedTuple):
    keys: list[list[str]]  # generation key of every teacher on every prompt, [P][T]
    stored: dict[str, Generation]  # the stored rows among them


@dataclass(frozen=True)
class RewardMatrices:
    """Scores of every teacher's response on some prompts, each matrix [P, T] in config teacher order.

    quality and learnability are the raw scores (NaN: not scored, or not needed at this reward.alpha); reward is
    the combined per-prompt reward of Eq. 2 (NaN: no usable response)."""

    prompts: list[Prompt]
    quality: np.ndarray
    learnability: np.ndarray
    reward: np.ndarray
    empty: np.ndarray | None = None  # [P, T] True where the response is empty (scored worst); None: unknown
    present: np.ndarray | None = None  # [P, T] True where the response exists without error; None: unknown

    def rows(self, index: np.ndarray | list[int]) -> RewardMatrices:
        """The same matrices on a subset of the prompts, in `index` order."""
        idx = np.asarray(index, dtype=np.int64)
        pick = lambda m: None if m is None else m[idx]  # noqa: E731
        return RewardMatrices([self.prompts[i] for i in idx] if self.prompts else [], self.quality[idx],
                              self.learnability[idx], self.reward[idx], pick(self.empty), pick(self.present))

    def reward_at(self, alpha: float, method: str) -> np.ndarray:
        """Eq. 2 at another alpha from the same raw scores (quality needed when alpha < 1, learnability when
        alpha > 0; missing ones give NaN, as in `reward`)."""
        from persyn.scoring.reward import scored_rewards

        return scored_rewards(self.quality, self.learnability, np.isfinite(self.reward), self.empty, alpha, method)


def probe_prompts(run: Run) -> list[Prompt]:
    probe = run.store.probe_ids()
    return [p for p in run.store.prompts() if p.id in probe]


def prompt_generations(run: Run, prompts: list[Prompt]) -> PromptGenerations:
    """Generation keys [P][T] of every teacher on these prompts, and the stored rows among them."""
    keys = [[run.keys.generation(t, p) for t in run.cfg.teachers] for p in prompts]
    return PromptGenerations(keys, run.store.generations(k for row in keys for k in row))


def probe_rewards(run: Run) -> RewardMatrices:
    return rewards_for(run, probe_prompts(run))


def rewards_for(run: Run, prompts: list[Prompt]) -> RewardMatrices:
    """Raw quality and learnability and the combined reward for these prompts, from what the store holds."""
    from persyn.scoring.reward import scored_rewards

    cfg = run.cfg
    keys, gens = prompt_generations(run, prompts)
    flat = [k for row in keys for k in row]
    P, T = len(prompts), len(cfg.teachers)
    nan = np.full((P, T), np.nan)
    quality, learn = nan.copy(), nan.copy()
    if cfg.reward.needs_quality:
        q = run.store.scores("quality", run.keys.quality_scorer, flat)
        quality = np.array([[_num(q.get(k)) for k in row] for row in keys]).reshape(P, T)
    if cfg.reward.needs_learnability:
        s = run.store.scores("learnability", run.keys.learnability_scorer, flat)
        learn = np.array([[_num(s.get(k)) for k in row] for row in keys]).reshape(P, T)
    present = np.array([[k in gens and gens[k].error is None for k in row] for row in keys]).reshape(P, T)
    empty = np.array([[k in gens and gens[k].error is None and not (gens[k].text or "").strip() for k in row]
                      for row in keys]).reshape(P, T)
    rewards = scored_rewards(quality, learn, present, empty, cfg.reward.alpha, cfg.reward.normalization)
    return RewardMatrices(list(prompts), quality, learn, rewards, empty, present)


def _num(v: float | None) -> float:
    return np.nan if v is None else float(v)
