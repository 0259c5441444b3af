"""The router interface and its registry: a router maps prompt embeddings to per-teacher scores."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from persyn.errors import InputError
from persyn.files import write_atomic
from persyn.plugins import Registry


class RouterReport:
    """What every router kind reports after fitting. Each kind is a dataclass of its own fields (`as_dict`, kept in
    summary.json); all of them say the held-out gain over the best single teacher, with its standard error where
    the kind estimates one, and whether and why routing fell back to that teacher."""

    kind: ClassVar[str]
    best_single_teacher: str
    fallback_to_bias: bool
    fallback_reason: str | None

    @property
    def gain(self) -> float:
        """Held-out mean reward of the routed teacher minus the best single teacher's."""
        raise NotImplementedError

    @property
    def gain_se(self) -> float | None:
        return None

    def describe(self) -> str:
        """One line on how the router did on prompts it did not train on."""
        raise NotImplementedError

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]


@runtime_checkable
class Router(Protocol):
    kind: str
    teacher_names: list[str]

    def fit(self, X: np.ndarray, R: np.ndarray) -> RouterReport:
        """Train on embeddings X [P, d] and combined rewards R [P, T] (NaN = missing); returns its report."""
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
    write_atomic(directory / META_FILE, json.dumps(meta, indent=2, allow_nan=False) + "\n")


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


def report_from_dict(kind: str, data: dict[str, Any]) -> RouterReport:
    """A stored report (summary.json's `router`) as the typed report of its kind."""
    return ROUTERS.get(kind, key="router.kind").report_type(**data)


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
