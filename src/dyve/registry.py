"""One small registry class, reused for every kind of named thing in dyve.

Models, datasets and (later) mechanisms and cost handles are all looked up by name. A
registry keeps insertion order, refuses silent overwrites and gives an error that lists
the valid names, so a typo on the command line is caught with a useful message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from dyve.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object mapping with a readable error for unknown names.

    Example:
        >>> models: Registry[int] = Registry("model")
        >>> models.add("a", 1)
        >>> models.get("a")
        1
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def add(self, name: str, obj: T, *, replace: bool = False) -> None:
        """Register ``obj`` under ``name``; re-registering needs ``replace=True``."""
        if name in self._items and not replace:
            raise KeyError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""

        def deco(obj: T) -> T:
            self.add(name, obj)
            return obj

        return deco

    def get(self, name: str) -> T:
        """Return the object registered as ``name``; :class:`UnknownNameError` names the options."""
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(self._items) or "(none)"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        """Registered names in registration order."""
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
