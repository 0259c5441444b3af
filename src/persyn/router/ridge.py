"""Reward-regression router: each teacher's reward on a prompt = its probe mean + a shrunk, prompt-dependent residual.

A probe of a few hundred prompts is too small for the Bradley-Terry head to beat the best single teacher (it
overfits pairwise noise), so this router predicts the combined reward directly: a multi-output ridge regression of
each teacher's residual around its probe mean on the standardised prompt embedding. The ridge strength is chosen by
K-fold cross-validation over the whole probe, by the mean reward of the teacher each fold's model routes to on the
prompts it did not see. The same out-of-fold routing decides the fallback: unless it beats the best single teacher
(chosen on each fold's training prompts, as a user would choose it) by `min_gain_z` standard errors (default 1: the
ridge strength was picked on these same folds, so the best out-of-fold gain is optimistic), every prompt goes to
the teacher with the best probe mean. Predictions are on the reward scale, so their margins also say where
an extra generation is worth paying for (see persyn.stages.budget).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from persyn.errors import ConfigError, InputError
from persyn.router.base import RouterReport, read_router, register_router, write_router

DEFAULT_LAMBDAS = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


@dataclass
class RidgeReport(RouterReport):
    kind: ClassVar[str] = "ridge"
    n_train: int
    folds: int
    ridge_lambda: float
    cv_gain: float  # out-of-fold routed reward minus the fold-chosen best single teacher's, mean per prompt
    cv_gain_se: float
    val_hit1: float | None  # out-of-fold
    val_hit3: float | None
    val_mean_reward: float | None
    val_best_single_mean_reward: float | None
    val_oracle_mean_reward: float | None
    best_single_teacher: str
    fallback_to_bias: bool
    fallback_reason: str | None

    @property
    def gain(self) -> float:
        return float(self.cv_gain)

    @property
    def gain_se(self) -> float | None:
        return float(self.cv_gain_se)

    def describe(self) -> str:
        return (f"router ({self.folds}-fold cross-validation over the probe): gain {self.cv_gain:+.4f} "
                f"(s.e. {self.cv_gain_se:.4f}) in mean reward over the best single teacher "
                f"{self.best_single_teacher}, out-of-fold Hit@1 {self.val_hit1:.3f}")


class RidgeRouter:
    kind = "ridge"
    report_type = RidgeReport

    def __init__(self, n_teachers: int, teacher_names: list[str], *, lambdas: list[float] | None = None,
                 folds: int = 5, seed: int = 0, min_gain_z: float = 1.0) -> None:
        if n_teachers < 2 or len(teacher_names) != n_teachers:
            raise ConfigError(f"need n_teachers >= 2 names, got {n_teachers} and {len(teacher_names)} names",
                              key="teachers")
        if folds < 2:
            raise ConfigError(f"must be at least 2, got {folds}", key="router.ridge.folds")
        lambdas = list(lambdas or DEFAULT_LAMBDAS)
        if not lambdas or min(lambdas) <= 0:
            raise ConfigError("give positive ridge strengths", key="router.ridge.lambdas")
        self.n_teachers, self.teacher_names = n_teachers, list(teacher_names)
        self.hparams = {"lambdas": lambdas, "folds": folds, "seed": seed, "min_gain_z": min_gain_z}
        self.center: np.ndarray | None = None  # [d]
        self.scale: np.ndarray | None = None  # [d]
        self.weight: np.ndarray | None = None  # [d, T]
        self.bias: np.ndarray | None = None  # [T], the probe means
        self.report: RidgeReport | None = None
        self.meta: dict[str, Any] = {}

    # ---- training -------------------------------------------------------------------------------------------

    def fit(self, X: np.ndarray, R: np.ndarray) -> RidgeReport:
        X, R = _check_fit(X, R, self.n_teachers)
        usable = np.flatnonzero(~np.isnan(R).all(1))
        if len(usable) < 2:
            raise InputError(f"need rewards for at least 2 prompts, got {len(usable)}", field="R")
        X, R = X[usable], R[usable]
        hp = self.hparams
        k = min(hp["folds"], len(R))
        oof = {lam: np.zeros(R.shape) for lam in hp["lambdas"]}
        single = np.zeros(len(R), dtype=np.int64)
        for test in np.array_split(np.random.default_rng(hp["seed"]).permutation(len(R)), k):
            train = np.setdiff1d(np.arange(len(R)), test)
            single[test] = int(np.argmax(teacher_means(R[train])))
            for lam, pred in oof.items():
                pred[test] = _predict(_solve(X[train], R[train], lam), X[test])
        Rw = np.where(np.isnan(R), -np.inf, R)
        rows = np.arange(len(R))
        base = Rw[rows, single]
        gains = {lam: Rw[rows, pred.argmax(1)] - base for lam, pred in oof.items()}
        finite = {lam: g[np.isfinite(g)] for lam, g in gains.items()}
        lam = max(hp["lambdas"], key=lambda lm: (finite[lm].mean() if len(finite[lm]) else -np.inf, lm))
        gain = finite[lam]
        mean = float(gain.mean()) if len(gain) else 0.0
        se = float(gain.std(ddof=1) / np.sqrt(len(gain))) if len(gain) > 1 else float("inf")
        reason = None
        if not mean > 0:
            reason = f"cross-validated gain over the best single teacher is {mean:+.4f} (not positive)"
        elif mean <= hp["min_gain_z"] * se:
            reason = f"cross-validated gain {mean:+.4f} is within {hp['min_gain_z']:g} standard errors ({se:.4f})"
        state = _solve(X, R, lam)
        means = teacher_means(R)
        if reason is not None:
            state = (state[0], state[1], np.zeros_like(state[2]), means)
        self.center, self.scale, self.weight, self.bias = state
        chosen = oof[lam] if reason is None else np.tile(means, (len(R), 1))
        picked = Rw[rows, chosen.argmax(1)]
        better = (Rw > picked[:, None]).sum(1)
        self.report = RidgeReport(
            n_train=len(R), folds=k, ridge_lambda=float(lam), cv_gain=mean, cv_gain_se=se,
            val_hit1=float((better == 0).mean()), val_hit3=float((better < 3).mean()),
            val_mean_reward=float(np.nanmean(np.where(np.isfinite(picked), picked, np.nan))),
            val_best_single_mean_reward=float(np.nanmean(np.where(np.isfinite(base), base, np.nan))),
            val_oracle_mean_reward=float(np.nanmax(R, 1).mean()),
            best_single_teacher=self.teacher_names[int(np.argmax(means))],
            fallback_to_bias=reason is not None, fallback_reason=reason)
        return self.report

    # ---- inference -------------------------------------------------------------------------------------------

    def scores(self, X: np.ndarray) -> np.ndarray:
        """[n, T] predicted combined reward of each teacher's response."""
        if self.weight is None:
            raise InputError("router is not fitted (call fit or load)")
        X = _as_matrix(X)
        if X.shape[1] != self.weight.shape[0]:
            raise InputError(f"embedding dim {X.shape[1]} != router's {self.weight.shape[0]}", field="X")
        return _predict((self.center, self.scale, self.weight, self.bias), X).astype(np.float32)

    def route(self, X: np.ndarray) -> np.ndarray:
        return self.scores(X).argmax(1)

    # ---- persistence -----------------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> None:
        if self.weight is None:
            raise InputError("router is not fitted; nothing to save")
        write_router(directory, {"center": self.center, "scale": self.scale, "weight": self.weight,
                                 "bias": self.bias},
                     {"kind": self.kind, "n_teachers": self.n_teachers, "teacher_names": self.teacher_names,
                      "hparams": self.hparams, "report": self.report.as_dict() if self.report else None,
                      "meta": self.meta})

    @classmethod
    def load(cls, directory: str | Path) -> RidgeRouter:
        meta, (center, scale, weight, bias) = read_router(directory, ("center", "scale", "weight", "bias"), "ridge")
        try:
            router = cls(meta["n_teachers"], meta["teacher_names"], **meta["hparams"])
            report = RidgeReport(**meta["report"]) if meta.get("report") else None
        except (KeyError, TypeError) as exc:
            raise InputError(f"not a saved ridge router ({type(exc).__name__}: {exc})", file=str(directory)) from exc
        if weight.shape != (center.shape[0], router.n_teachers) or bias.shape != (router.n_teachers,):
            raise InputError(f"weight shapes {weight.shape}, {bias.shape} do not match {router.n_teachers} "
                             "teachers", file=str(directory))
        router.center, router.scale, router.weight, router.bias = center, scale, weight, bias
        router.report, router.meta = report, meta.get("meta") or {}
        return router


def teacher_means(R: np.ndarray) -> np.ndarray:
    """Per-teacher mean reward, NaN ignored; a teacher never scored ranks last."""
    counts = (~np.isnan(R)).sum(0)
    sums = np.nansum(R, 0)
    means = np.divide(sums, counts, out=np.full(R.shape[1], np.nan), where=counts > 0)
    floor = np.nanmin(means) - 1.0 if np.isfinite(means).any() else 0.0
    return np.where(np.isfinite(means), means, floor)


def _solve(X: np.ndarray, R: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(center, scale, W [d, T], bias [T]): ridge on standardised X of each teacher's residual around its mean.

    A missing reward counts as the teacher's mean (zero residual). `lam` is per feature (scaled by d), so one grid
    fits backbones of any width. Solved in the dual when prompts < features."""
    center = X.mean(0)
    scale = X.std(0) + 1e-6
    Z = (X - center) / scale
    means = teacher_means(R)
    Y = np.where(np.isnan(R), 0.0, R - means)
    n, d = Z.shape
    if n < d:
        W = Z.T @ np.linalg.solve(Z @ Z.T + lam * d * np.eye(n), Y)
    else:
        W = np.linalg.solve(Z.T @ Z + lam * d * np.eye(d), Z.T @ Y)
    return center, scale, W, means


def _predict(state: tuple[np.ndarray, ...], X: np.ndarray) -> np.ndarray:
    center, scale, W, bias = state
    return ((X - center) / scale) @ W + bias


def _as_matrix(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or not np.isfinite(X).all():
        raise InputError(f"embeddings must be a finite 2-D array, got shape {X.shape}", field="X")
    return X


def _check_fit(X: np.ndarray, R: np.ndarray, n_teachers: int) -> tuple[np.ndarray, np.ndarray]:
    X, R = _as_matrix(X), np.asarray(R, dtype=np.float64)
    if R.ndim != 2 or R.shape != (X.shape[0], n_teachers):
        raise InputError(f"rewards shape {R.shape} != (prompts {X.shape[0]}, teachers {n_teachers})", field="R")
    if np.isinf(R).any():
        raise InputError("rewards must be finite or NaN (missing)", field="R")
    return X, R


register_router(RidgeRouter.kind)(RidgeRouter)
