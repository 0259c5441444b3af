"""Bradley-Terry coefficient-head router (PerSyn Eq. 3, as in Prompt-to-Leaderboard).

A linear head maps a prompt embedding x to one coefficient per teacher, c = W (x - mu) + b, trained so that
P(teacher w beats teacher l on x) = sigmoid(c_w - c_l). Routing picks argmax c.

A probe is small and its rewards are noisy, so training is guarded:
- b starts at each teacher's mean reward and W at 0: the untrained router is the best single teacher;
- a seeded val_fraction of prompts is held out; each epoch is scored by the mean reward of the routed
  teacher on it (ties broken by validation BT loss), training stops after `patience` epochs without
  improvement, and the best epoch (0 = untrained) is kept;
- unless that epoch beats every single teacher on validation by a margin (mean per-prompt reward gain over
  the teacher > min_gain_z standard errors, because the epoch was picked on these same prompts), the router
  falls back to the bias-only head: it always routes to the best single teacher (the one with the highest
  mean probe reward), so it is never worse than the best single teacher on validation;
- otherwise the head is refitted from scratch on all probe prompts for the chosen number of epochs, so the
  deployed router uses every probe prompt; the val_* numbers describe the train-split model.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from persyn.errors import ConfigError, InputError
from persyn.router.base import WEIGHTS_FILE, RouterReport, read_router, register_router, write_router

FORMAT_VERSION = 1


@dataclass
class FitReport(RouterReport):
    kind: ClassVar[str] = "bt"
    n_train: int
    n_val: int
    pairs: int
    epochs_run: int
    best_epoch: int
    val_hit1: float | None
    val_hit3: float | None
    val_mean_reward: float | None
    val_best_single_mean_reward: float | None
    best_single_teacher: str
    val_oracle_mean_reward: float | None
    val_random_mean_reward: float | None
    fallback_to_bias: bool
    fallback_reason: str | None = None

    @property
    def gain(self) -> float:
        if self.val_mean_reward is None or self.val_best_single_mean_reward is None:
            return 0.0
        return float(self.val_mean_reward - self.val_best_single_mean_reward)

    def describe(self) -> str:
        def f(v: float | None) -> float:
            return float("nan") if v is None else v

        return (f"router (held-out probe): Hit@1 {f(self.val_hit1):.3f}, mean reward {f(self.val_mean_reward):.4f} "
                f"vs best single teacher {self.best_single_teacher} {f(self.val_best_single_mean_reward):.4f}")


def preference_pairs(R: np.ndarray) -> np.ndarray:
    """[n_pairs, 3] int rows (prompt, winner, loser): every teacher pair per prompt, ties and NaN dropped."""
    rows = []
    n_teachers = R.shape[1]
    for a in range(n_teachers):
        for b in range(a + 1, n_teachers):
            ra, rb = R[:, a], R[:, b]
            for winner, loser, wins in ((a, b, ra > rb), (b, a, rb > ra)):  # NaN compares False
                prompts = np.flatnonzero(wins)
                rows.append(np.stack([prompts, np.full_like(prompts, winner), np.full_like(prompts, loser)], 1))
    pairs = np.concatenate(rows) if rows else np.zeros((0, 3), dtype=np.int64)
    return pairs[np.lexsort((pairs[:, 2], pairs[:, 1], pairs[:, 0]))].astype(np.int64)


def chosen_rewards(scores: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Reward of the top-scored teacher per prompt, among teachers with a reward; prompts with none dropped."""
    observed = ~np.isnan(R)
    keep = observed.any(1)
    choice = np.where(observed[keep], scores[keep], -np.inf).argmax(1)
    return R[keep][np.arange(int(keep.sum())), choice]


def routed_metrics(scores: np.ndarray, R: np.ndarray) -> dict[str, float]:
    """Quality of routing by `scores` on prompts with rewards R (NaN = missing, never chosen)."""
    chosen = chosen_rewards(scores, R)
    R = R[~np.isnan(R).all(1)]
    better = (np.where(np.isnan(R), -np.inf, R) > chosen[:, None]).sum(1)  # teachers strictly better than chosen
    return {"hit1": float((better == 0).mean()), "hit3": float((better < 3).mean()),
            "mean_reward": float(chosen.mean()), "oracle": float(np.nanmax(R, 1).mean()),
            "random": float(np.nanmean(R, 1).mean())}


class BTRouter:
    kind = "bt"
    report_type = FitReport

    def __init__(self, n_teachers: int, teacher_names: list[str], *, epochs: int = 200, lr: float = 1e-2,
                 batch_size: int = 64, weight_decay: float = 1e-2, val_fraction: float = 0.2,
                 patience: int = 20, seed: int = 0, min_gain_z: float = 1.64) -> None:
        if n_teachers < 2 or len(teacher_names) != n_teachers:
            raise ConfigError(f"need n_teachers >= 2 names, got {n_teachers} and {len(teacher_names)} names",
                              key="teachers")
        if not 0 <= val_fraction < 1:
            raise ConfigError(f"must be in [0, 1), got {val_fraction}", key="router.bt.val_fraction")
        if epochs <= 0 or batch_size <= 0 or patience <= 0 or lr <= 0 or weight_decay < 0:
            raise ConfigError("epochs, batch_size, patience and lr must be > 0, weight_decay >= 0", key="router.bt")
        self.n_teachers, self.teacher_names = n_teachers, list(teacher_names)
        self.hparams = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "weight_decay": weight_decay,
                        "val_fraction": val_fraction, "patience": patience, "seed": seed,
                        "min_gain_z": min_gain_z}
        self.weight: np.ndarray | None = None  # [T, d]
        self.bias: np.ndarray | None = None  # [T]
        self.mean: np.ndarray | None = None  # [d], feature centre
        self.report: FitReport | None = None
        self.meta: dict[str, Any] = {}  # free-form, saved with the router (e.g. which embedder made X)

    # ---- training -------------------------------------------------------------------------------------------

    def _check(self, X: np.ndarray, R: np.ndarray | None = None) -> np.ndarray:
        """X as float32 [n, d]; with R (fitting) any dim is fine, else it must match the fitted one."""
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or not np.isfinite(X).all():
            raise InputError(f"embeddings must be a finite 2-D array, got shape {X.shape}", field="X")
        if R is None and self.mean is not None and X.shape[1] != self.mean.shape[0]:
            raise InputError(f"embedding dim {X.shape[1]} != router's {self.mean.shape[0]}", field="X")
        if R is not None and (R.ndim != 2 or R.shape != (X.shape[0], self.n_teachers)):
            raise InputError(f"rewards shape {R.shape} != (prompts {X.shape[0]}, teachers {self.n_teachers})",
                             field="R")
        return X

    def fit(self, X: np.ndarray, R: np.ndarray) -> FitReport:
        R = np.asarray(R, dtype=np.float64)
        X = self._check(X, R)
        if np.isinf(R).any():
            raise InputError("rewards must be finite or NaN (missing)", field="R")
        usable = np.flatnonzero(~np.isnan(R).all(1))
        if len(usable) < 2:
            raise InputError(f"need rewards for at least 2 prompts, got {len(usable)}", field="R")
        hp = self.hparams
        perm = np.random.default_rng(hp["seed"]).permutation(usable)
        n_val = 0
        if hp["val_fraction"]:
            n_val = min(max(1, round(len(usable) * hp["val_fraction"])), len(usable) - 1)
        val, train = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        probe_means = _teacher_means(R[usable])
        bias_only = (X[usable].mean(0), np.zeros((self.n_teachers, X.shape[1]), np.float32),
                     probe_means.astype(np.float32))

        if not n_val:  # nothing to select on: train the full schedule on everything
            best_epoch, epochs_run, state = self._train(X[usable], R[usable], hp["epochs"], val=None)
            self.mean, self.weight, self.bias = state
            self.report = self._report(len(train), 0, R[train], hp["epochs"], hp["epochs"], probe_means,
                                       None, None, fallback=False)
            return self.report

        best_epoch, epochs_run, val_state = self._train(X[train], R[train], hp["epochs"], val=(X[val], R[val]))
        routed = routed_metrics(self._scores_with(val_state, X[val]), R[val])
        single = routed_metrics(self._scores_with(bias_only, X[val]), R[val])
        # val prompts all have a reward (usable), so chosen rewards line up with R[val]'s rows
        chosen = chosen_rewards(self._scores_with(val_state, X[val]), R[val])
        beats_every_teacher = all(_significant(gain[~np.isnan(gain)], hp["min_gain_z"])
                                  for gain in (chosen[:, None] - R[val]).T)
        fallback = best_epoch == 0 or not beats_every_teacher
        if fallback:
            self.mean, self.weight, self.bias = bias_only
            routed = single
        else:  # refit on every probe prompt for the epoch count chosen on validation
            _, _, state = self._train(X[usable], R[usable], best_epoch, val=None)
            self.mean, self.weight, self.bias = state
        self.report = self._report(len(train), n_val, R[train], epochs_run, best_epoch, probe_means,
                                   routed, single, fallback=fallback)
        if best_epoch == 0:
            self.report.fallback_reason = "no training epoch beat the untrained head on the validation split"
        elif fallback:
            self.report.fallback_reason = (f"on {n_val} validation prompts the head's gain over some teacher is "
                                           f"within {hp['min_gain_z']:g} standard errors")
        return self.report

    def _report(self, n_train: int, n_val: int, R_train: np.ndarray, epochs_run: int, best_epoch: int,
                probe_means: np.ndarray, routed: dict[str, float] | None, single: dict[str, float] | None,
                *, fallback: bool) -> FitReport:
        def val(metrics: dict[str, float] | None, key: str) -> float | None:
            return metrics[key] if metrics else None

        return FitReport(
            n_train=n_train, n_val=n_val, pairs=len(preference_pairs(R_train)), epochs_run=epochs_run,
            best_epoch=best_epoch, val_hit1=val(routed, "hit1"), val_hit3=val(routed, "hit3"),
            val_mean_reward=val(routed, "mean_reward"), val_best_single_mean_reward=val(single, "mean_reward"),
            best_single_teacher=self.teacher_names[int(np.argmax(probe_means))],
            val_oracle_mean_reward=val(routed, "oracle"), val_random_mean_reward=val(routed, "random"),
            fallback_to_bias=fallback)

    def _train(self, X: np.ndarray, R: np.ndarray, epochs: int,
               val: tuple[np.ndarray, np.ndarray] | None) -> tuple[int, int, tuple[np.ndarray, ...]]:
        """Train from the bias-only start for up to `epochs`; with `val`, keep the best epoch (early stopping).

        Returns (best_epoch, epochs_run, (mean, W, b) of the kept epoch)."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # a tiny head: extra threads only add sync overhead (and nondeterminism)
        try:
            return self._train_loop(X, R, epochs, val)
        finally:
            torch.set_num_threads(threads)

    def _train_loop(self, X: np.ndarray, R: np.ndarray, epochs: int,
                    val: tuple[np.ndarray, np.ndarray] | None) -> tuple[int, int, tuple[np.ndarray, ...]]:
        hp = self.hparams
        torch.manual_seed(hp["seed"])
        gen = torch.Generator().manual_seed(hp["seed"])
        mean = X.mean(0)
        x = torch.from_numpy(X - mean)
        pairs = torch.from_numpy(preference_pairs(R))
        weight = torch.nn.Parameter(torch.zeros(self.n_teachers, X.shape[1]))
        bias = torch.nn.Parameter(torch.from_numpy(_teacher_means(R).astype(np.float32)))
        opt = torch.optim.AdamW([{"params": [weight], "weight_decay": hp["weight_decay"]},
                                 {"params": [bias], "weight_decay": 0.0}], lr=hp["lr"])

        def snapshot() -> tuple[np.ndarray, ...]:
            return mean, weight.detach().numpy().copy(), bias.detach().numpy().copy()

        if val is not None:
            xv = torch.from_numpy(val[0] - mean)
            val_pairs = torch.from_numpy(preference_pairs(val[1]))

            def judge() -> tuple[float, float]:  # higher is better: (routed reward, -BT loss)
                with torch.no_grad():
                    c = xv @ weight.T + bias
                    reward = routed_metrics(c.numpy(), val[1])["mean_reward"]
                    return reward, -_bt_loss(c[val_pairs[:, 0]], val_pairs).item()

            best, best_epoch, best_state, stale = judge(), 0, snapshot(), 0
        epoch = 0
        for epoch in range(1, epochs + 1):
            for idx in torch.randperm(len(pairs), generator=gen).split(hp["batch_size"]):
                batch = pairs[idx]
                loss = _bt_loss(x[batch[:, 0]] @ weight.T + bias, batch)
                opt.zero_grad()
                loss.backward()
                opt.step()
            if val is None:
                continue
            score = judge()
            if score > best:
                best, best_epoch, best_state, stale = score, epoch, snapshot(), 0
            else:
                stale += 1
                if stale >= hp["patience"]:
                    break
        if val is None:
            return epochs, epoch, snapshot()
        return best_epoch, epoch, best_state

    # ---- inference -------------------------------------------------------------------------------------------

    @staticmethod
    def _scores_with(state: tuple[np.ndarray, ...], X: np.ndarray) -> np.ndarray:
        mean, weight, bias = state
        return (X - mean) @ weight.T + bias

    def scores(self, X: np.ndarray) -> np.ndarray:
        """[n, T] BT coefficients; higher = teacher more likely to win on that prompt."""
        if self.weight is None:
            raise InputError("router is not fitted (call fit or load)")
        return self._scores_with((self.mean, self.weight, self.bias), self._check(X)).astype(np.float32)

    def route(self, X: np.ndarray) -> np.ndarray:
        """Index of the chosen teacher per prompt."""
        return self.scores(X).argmax(1)

    # ---- persistence -----------------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> None:
        if self.weight is None:
            raise InputError("router is not fitted; nothing to save")
        write_router(directory, {"weight": self.weight, "bias": self.bias, "mean": self.mean},
                     {"kind": self.kind, "format_version": FORMAT_VERSION, "n_teachers": self.n_teachers,
                      "teacher_names": self.teacher_names, "hparams": self.hparams,
                      "report": self.report.as_dict() if self.report else None, "meta": self.meta})

    @classmethod
    def load(cls, directory: str | Path) -> BTRouter:
        meta, (weight, bias, mean) = read_router(directory, ("weight", "bias", "mean"), "BT")
        try:
            router = cls(meta["n_teachers"], meta["teacher_names"], **meta["hparams"])
            report = FitReport(**meta["report"]) if meta.get("report") else None
        except (KeyError, TypeError) as exc:
            raise InputError(f"not a saved BT router ({type(exc).__name__}: {exc})", file=str(directory)) from exc
        if weight.shape != (router.n_teachers, mean.shape[0]) or bias.shape != (router.n_teachers,):
            raise InputError(f"weight shapes {weight.shape}, {bias.shape} do not match {router.n_teachers} "
                             "teachers", file=str(Path(directory) / WEIGHTS_FILE))
        router.weight, router.bias, router.mean = weight, bias, mean
        router.report, router.meta = report, meta.get("meta") or {}
        return router


def _bt_loss(coefs: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Mean -log sigmoid(c_winner - c_loser); row i of coefs holds the coefficients for pairs[i]'s prompt."""
    if len(pairs) == 0:
        return coefs.sum() * 0.0
    rows = torch.arange(len(pairs))
    return -torch.nn.functional.logsigmoid(coefs[rows, pairs[:, 1]] - coefs[rows, pairs[:, 2]]).mean()


def _significant(gain: np.ndarray, z: float) -> bool:
    """Is the mean per-prompt gain positive, and more than z standard errors? The best epoch was picked on
    these same prompts, so a bare "> 0" would often pass on noise (winner's curse)."""
    if len(gain) == 0 or not gain.mean() > 0:
        return False
    if len(gain) < 2:
        return True
    return bool(gain.mean() > z * gain.std(ddof=1) / np.sqrt(len(gain)))


def _teacher_means(R: np.ndarray) -> np.ndarray:
    """Per-teacher mean reward, NaN ignored; a teacher never scored ranks last."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a teacher with no rewards: handled below
        means = np.nanmean(R, axis=0)
    floor = np.nanmin(means) - 1.0 if np.isfinite(means).any() else 0.0
    return np.where(np.isfinite(means), means, floor)


register_router(BTRouter.kind)(BTRouter)
