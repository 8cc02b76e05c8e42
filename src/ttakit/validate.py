"""Argument checks at the boundary: each names the parameter and the value it refuses.

Every public config (``__post_init__``) and function (its first lines) checks what it is given
with these, once, and raises :class:`~ttakit.errors.ArgumentError` (a
:class:`~ttakit.errors.ConfigError`) naming the parameter; nothing deeper checks again.

Example:
    >>> check_int("batch", 4), check_range("overlap", 0.5, 0, 1, high_open=True)
    (4, 0.5)
    >>> check_positive("sigma", float("nan"))
    Traceback (most recent call last):
    ...
    ttakit.errors.ArgumentError: sigma must be a finite number > 0, got nan
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping
from typing import Any, TypeVar

import torch

from .errors import ArgumentError

__all__ = ["as_config", "check_bool", "check_choice", "check_device", "check_finite", "check_int", "check_pair",
           "check_positive", "check_probability", "check_range", "check_size"]

T = TypeVar("T")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_int(name: str, value: Any, low: int = 1) -> int:
    """``value`` as an integer ``>= low`` (``True``/``False`` and ``2.0`` are refused)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        kind = {1: "a positive integer", 0: "a non-negative integer"}.get(low, f"an integer >= {low}")
        raise ArgumentError(f"{name} must be {kind}, got {value!r}")
    return int(value)


def check_finite(name: str, value: Any) -> float:
    """``value`` as a finite float (NaN, inf, strings and ``None`` refused)."""
    if not _is_number(value) or not math.isfinite(value):
        raise ArgumentError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_positive(name: str, value: Any) -> float:
    """``value`` as a finite float ``> 0``."""
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise ArgumentError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_range(name: str, value: Any, low: float, high: float, *, low_open: bool = False,
                high_open: bool = False) -> float:
    """``value`` as a float in ``[low, high]`` (either end open on request); NaN is refused."""
    ok = _is_number(value) and math.isfinite(value) and (low < value if low_open else low <= value) and (
        value < high if high_open else value <= high)
    if not ok:
        span = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ArgumentError(f"{name} must be in {span}, got {value!r}")
    return float(value)


def check_probability(name: str, value: Any) -> float:
    """``value`` as a float in ``[0, 1]``."""
    return check_range(name, value, 0.0, 1.0)


def check_size(name: str, value: Any) -> tuple[int, int]:
    """``value`` as ``(height, width)`` of positive integers."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ArgumentError(f"{name} must be (height, width), got {value!r}")
    return check_int(f"{name} height", value[0]), check_int(f"{name} width", value[1])


def check_pair(name: str, value: Any) -> tuple[int, int]:
    """``value`` as a pair of non-negative integer indices (a left/right keypoint pair)."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ArgumentError(f"{name} entries must be (left, right) index pairs, got {value!r}")
    return check_int(f"{name} index", value[0], 0), check_int(f"{name} index", value[1], 0)


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is ``True`` or ``False`` (``"no"`` or ``0`` are refused: they read as the other)."""
    if not isinstance(value, bool):
        raise ArgumentError(f"{name} must be True or False, got {value!r}")
    return value


def check_choice(name: str, value: Any, choices: Collection[Any]) -> Any:
    """``value`` if it is one of ``choices``."""
    if not isinstance(value, (str, int, float, type(None))) or value not in choices:
        raise ArgumentError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value


def check_device(name: str, value: Any) -> torch.device:
    """``value`` as a :class:`torch.device` that exists on this machine (torch is asked:
    ``cuda:N`` needs N < the GPU count, ``mps`` needs MPS).

    Example:
        >>> check_device("stitch_device", "cpu")
        device(type='cpu')
    """
    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError) as e:
        raise ArgumentError(f"{name} must be a device (cpu, cuda, cuda:N, mps), got {value!r}") from e
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (dev.index or 0) >= count:
            raise ArgumentError(f"{name}={value!r} asks for a CUDA GPU, but this machine has {count}; use cpu")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ArgumentError(f"{name}={value!r} asks for MPS, which this machine does not have; use cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ArgumentError(f"{name}={value!r}: only cpu, cuda and mps devices are supported")
    return dev


def as_config(cls: type[T], value: Any, name: str) -> T:
    """``value`` as a ``cls`` config: the object itself, or a dict of its fields converted
    (an unknown key is refused, naming it and the valid ones).

    Example:
        >>> @dataclasses.dataclass(frozen=True)
        ... class Opts:
        ...     batch: int = 4
        >>> as_config(Opts, {"batch": 2}, "options")
        Opts(batch=2)
        >>> as_config(Opts, {"size": 2}, "options")
        Traceback (most recent call last):
        ...
        ttakit.errors.ArgumentError: options: unknown key 'size' (valid keys: batch)
    """
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        valid = [f.name for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
        unknown = [k for k in value if k not in valid]
        if unknown:
            raise ArgumentError(f"{name}: unknown key {unknown[0]!r} (valid keys: {', '.join(valid)})")
        try:
            return cls(**value)
        except TypeError as e:  # a config whose own checks raised a plain TypeError
            raise ArgumentError(f"{name}: {e}") from e
    raise ArgumentError(f"{name} must be a {cls.__name__} or a dict of its fields, got {type(value).__name__} {value!r}")
