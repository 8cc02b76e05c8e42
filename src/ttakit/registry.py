"""One name registry for every family of named things: merges, box merges, backends, presets.

Strings are resolved once, at the boundary, through a :class:`Registry`; an unknown name raises
:class:`~ttakit.errors.UnknownNameError` listing the known ones (and the closest, when one is
close), whatever the family.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import UnknownNameError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object, for one family (``kind`` names it in errors).

    Example:
        >>> colours = Registry[int]("colour")
        >>> colours.add("red", 1)
        1
        >>> @colours.register("green")
        ... def _green() -> int:
        ...     return 2
        >>> colours.names()
        ['green', 'red']
        >>> colours.get("red")
        1
        >>> colours.get("rde")
        Traceback (most recent call last):
        ...
        ttakit.errors.UnknownNameError: unknown colour 'rde' (did you mean 'red'?); choose one of green, red
    """

    def __init__(self, kind: str, *, sort: bool = True) -> None:
        self.kind = kind
        self._sort = sort  # False: list in registration order (e.g. merges, first is the default)
        self._items: dict[str, T] = {}

    def add(self, name: str, obj: T) -> T:
        """Register ``obj`` under ``name`` (a name registered twice is a programming error)."""
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj
        return obj

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""
        return lambda obj: self.add(name, obj)

    def get(self, name: str) -> T:
        """The object named ``name``.

        Raises:
            UnknownNameError: ``name`` is not registered; the message lists the known names.
        """
        try:
            return self._items[name]
        except (KeyError, TypeError) as e:
            close = difflib.get_close_matches(str(name), list(self._items), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}{hint}; choose one of {', '.join(self.names())}",
                kind=self.kind, name=str(name), known=self.names(),
            ) from e

    def names(self) -> list[str]:
        """The registered names (sorted, or in registration order)."""
        return sorted(self._items) if self._sort else list(self._items)

    def items(self) -> list[tuple[str, T]]:
        return [(n, self._items[n]) for n in self.names()]

    def remove(self, name: str) -> T:
        """Unregister ``name`` (for tests and plug-ins that replace an entry)."""
        return self._items.pop(name)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"
