"""Executors run generation and scoring batches: in this process (`local`) or on Ray actors (`ray`)."""

from __future__ import annotations

from typing import Any

from persyn.executors.local import Executor, LocalExecutor


def make_executor(cfg: Any) -> Executor:
    if cfg.executor == "ray":
        from persyn.remote.ray_executor import RayExecutor

        return RayExecutor(cfg)
    return LocalExecutor(cfg)


__all__ = ["Executor", "LocalExecutor", "make_executor"]
