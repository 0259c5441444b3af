"""Name → implementation registries for backends, quality scorers and routers: the plug-in points of a run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from persyn.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, what: str) -> None:
        self.what = what  # e.g. "backend", named in the error for an unknown kind
        self._items: dict[str, T] = {}

    def register(self, kind: str) -> Callable[[T], T]:
        def deco(item: T) -> T:
            self._items[kind] = item
            return item

        return deco

    def kinds(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, kind: object) -> bool:
        return kind in self._items

    def get(self, kind: str, *, key: str | None = None) -> T:
        try:
            return self._items[kind]
        except KeyError:
            raise ConfigError(f"unknown {self.what} {kind!r}; known: {', '.join(self.kinds())}", key=key) from None
