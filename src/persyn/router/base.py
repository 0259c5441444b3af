"""The router interface and its registry: a router maps prompt embeddings to per-teacher scores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from persyn.errors import InputError
from persyn.registry import Registry


@runtime_checkable
class Router(Protocol):
    kind: str
    teacher_names: list[str]

    def fit(self, X: np.ndarray, R: np.ndarray) -> Any:
        """Train on embeddings X [P, d] and combined rewards R [P, T] (NaN = missing); returns a report."""
        ...

    def scores(self, X: np.ndarray) -> np.ndarray:
        """[n, T] per-teacher scores; higher is better."""
        ...

    def route(self, X: np.ndarray) -> np.ndarray:
        """[n] index of the chosen teacher."""
        ...

    def save(self, directory: str | Path) -> None: ...

    @classmethod
    def load(cls, directory: str | Path) -> Router: ...


ROUTERS: Registry[type] = Registry("router kind")
register_router = ROUTERS.register
router_kinds = ROUTERS.kinds


def make_router(kind: str, **kwargs: Any) -> Router:
    return ROUTERS.get(kind, key="router.kind")(**kwargs)


def load_router(directory: str | Path) -> Router:
    """Load a saved router of any registered kind (the kind is read from its router.json)."""
    meta_path = Path(directory) / "router.json"
    try:
        kind = json.loads(meta_path.read_text())["kind"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"not a saved router ({type(exc).__name__}: {exc})", file=str(meta_path)) from exc
    if kind not in ROUTERS:
        raise InputError(f"unknown router kind {kind!r}", file=str(meta_path), field="kind")
    return ROUTERS.get(kind).load(directory)
