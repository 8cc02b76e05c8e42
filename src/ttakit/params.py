"""Transform parameters as policy text: read numbers and flags (errors name the transform), write them back.

Example:
    >>> read_float("1.25", "scale"), write_float(1.0)
    (1.25, '1.0')
"""

from __future__ import annotations

import math
from typing import ClassVar

from .errors import PolicyError

__all__ = ["POSITIONS", "KeyName", "read_flag", "read_float", "read_int", "write_float"]

POSITIONS = ("center", "tl", "tr", "bl", "br")  # where a window sits: centre or a corner


def _read(arg: str, what: str, kind: type[float] | type[int], noun: str) -> float:
    try:
        return kind(arg)
    except ValueError as e:
        raise PolicyError(f"{what} expects {noun}, got {arg!r}") from e


def read_float(arg: str, what: str) -> float:
    """``arg`` as a float.

    Raises:
        PolicyError: not a number; names ``what``.
    """
    value = float(_read(arg, what, float, "a number"))
    if not math.isfinite(value):
        raise PolicyError(f"{what} expects a finite number, got {arg!r}")
    return value


def read_int(arg: str, what: str) -> int:
    """``arg`` as an integer.

    Raises:
        PolicyError: not an integer; names ``what``.
    """
    return int(_read(arg, what, int, "an integer"))


def read_flag(arg: str, what: str) -> bool:
    """``arg`` as a switch (``1/true/yes/on`` or ``0/false/no/off``).

    Raises:
        PolicyError: neither; names ``what``.
    """
    low = arg.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise PolicyError(f"{what} expects 0 or 1, got {arg!r}")


def write_float(v: float) -> str:
    """Shortest text of a float that reads back to the same value (``1.1``, ``-10.0``)."""
    return repr(float(v))


class KeyName:
    """The name of a parameter holder in policy text: ``key``, or ``key=value`` when it has a
    parameter (transforms and photo corrections), read back by the policy parser."""

    key: ClassVar[str]  # name in policy text, e.g. "scale"

    @property
    def name(self) -> str:
        arg = self.arg()
        return self.key if arg is None else f"{self.key}={arg}"

    def arg(self) -> str | None:
        """The parameter as written after ``=`` in the name (``None``: no parameter)."""
        return None
