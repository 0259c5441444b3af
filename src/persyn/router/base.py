"""The router interface and its registry: a router maps prompt embeddings to per-teacher scores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from persyn.errors import InputError
from persyn.plugins import Registry


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


WEIGHTS_FILE = "router.safetensors"
META_FILE = "router.json"


def write_router(directory: str | Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """A router's arrays as float32 safetensors and its metadata (with `kind`) as JSON."""
    import torch
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in arrays.items()},
              str(directory / WEIGHTS_FILE))
    (directory / META_FILE).write_text(json.dumps(meta, indent=2, allow_nan=False) + "\n")


def read_router(directory: str | Path, names: tuple[str, ...], label: str) -> tuple[dict[str, Any], list[np.ndarray]]:
    """(metadata, the named arrays) of a saved router; anything missing, corrupt or tampered is one InputError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    try:
        meta = json.loads((directory / META_FILE).read_text())
        tensors = load_file(str(directory / WEIGHTS_FILE))
        return meta, [tensors[k].numpy() for k in names]
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
        raise InputError(f"not a saved {label} router ({type(exc).__name__}: {exc})", file=str(directory)) from exc


def make_router(kind: str, **kwargs: Any) -> Router:
    return ROUTERS.get(kind, key="router.kind")(**kwargs)


def load_router(directory: str | Path) -> Router:
    """Load a saved router of any registered kind (the kind is read from its router.json)."""
    meta_path = Path(directory) / META_FILE
    try:
        kind = json.loads(meta_path.read_text())["kind"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"not a saved router ({type(exc).__name__}: {exc})", file=str(meta_path)) from exc
    if kind not in ROUTERS:
        raise InputError(f"unknown router kind {kind!r}", file=str(meta_path), field="kind")
    return ROUTERS.get(kind).load(directory)
