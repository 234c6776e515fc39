"""Named, pluggable components (codecs, mixing rules, compressions, drift corrections).

Configuration names a component by string; the registry turns the name into the object and
is the single source of the choices a command line lists in its `--help`. Tests and plugins
add components through `registered(...)`, which removes them again, so no one needs to reach
into a module-level dict.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

from gossipmed.errors import ConfigError, GossipmedError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(
        self, kind: str, *, unknown: Callable[[str], GossipmedError] | None = None
    ) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._unknown = unknown

    def register(self, name: str, item: T) -> None:
        if name in self._items:
            raise ConfigError(f"{self.kind} {name!r} is already registered")
        self._items[name] = item

    def unregister(self, name: str) -> None:
        self._items.pop(name, None)

    @contextmanager
    def registered(self, name: str, item: T) -> Iterator[T]:
        """Register for the duration of a `with` block (tests, one-off experiments)."""
        self.register(name, item)
        try:
            yield item
        finally:
            self.unregister(name)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            message = f"unknown {self.kind} {str(name)[:40]!r}; choose one of: {self.choices()}"
            raise (self._unknown(message) if self._unknown else ConfigError(message)) from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)

    def choices(self) -> str:
        return ", ".join(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def items(self) -> list[tuple[str, T]]:
        return list(self._items.items())
