"""The teacher backend interface: batched generation from (prompt, parameters) requests."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from persyn.plugins import Registry


@dataclass(frozen=True)
class GenParams:
    """Sampling parameters that change the output, and so belong in the generation key."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GenRequest:
    key: str  # content hash of (prompt, teacher, params): see generation_key
    prompt_id: str
    prompt: str
    params: GenParams


@dataclass
class GenResult:
    key: str
    text: str | None  # None when the request failed (error says why)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    cost: float = 0.0
    error: str | None = None
    # Recorded backends may carry precomputed scores that replace computed ones.
    quality: float | None = None
    learnability: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def generation_key(prompt: str, teacher_fingerprint: str, params: GenParams) -> str:
    """Content hash that identifies a generation: same prompt, teacher and parameters, same key."""
    payload = json.dumps(
        {"prompt": prompt, "teacher": teacher_fingerprint, "params": params.as_dict()},
        sort_keys=True, ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@runtime_checkable
class Backend(Protocol):
    """A teacher. `generate` yields one result per request, in any order, as each is done."""

    name: str

    def fingerprint(self) -> str:
        """What identifies this teacher's outputs (model and backend), excluding secrets."""
        ...

    def generate(self, requests: list[GenRequest]) -> Iterator[GenResult]: ...

    def close(self) -> None: ...


BackendFactory = Callable[..., Backend]
BACKENDS: Registry[BackendFactory] = Registry("backend")
register_backend = BACKENDS.register


def backend_kinds() -> list[str]:
    _load_builtin()
    return BACKENDS.kinds()


def make_backend(teacher: Any, **context: Any) -> Backend:
    """Build the backend named by `teacher.backend` (a TeacherConfig) with optional shared context."""
    _load_builtin()
    factory = BACKENDS.get(teacher.backend, key=f"teachers.{teacher.name}.backend")
    return factory(teacher, **context)


def _load_builtin() -> None:
    import importlib

    for mod in ("persyn.backends.recorded", "persyn.backends.transformers_backend", "persyn.remote.openai_backend"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:  # a backend not yet written or an optional dependency missing
            if not (exc.name or "").startswith(("persyn.backends", "persyn.remote", "openai", "httpx")):
                raise


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
