"""The ``TTAKitError`` family: every error ttakit raises on purpose, one line on the command line.

Every error the library raises on purpose derives from :class:`TTAKitError`, so the command
line can print one line instead of a traceback, and users can catch one type.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "TTAKitError",
    "ArgumentError",
    "BackendError",
    "ConfigError",
    "DatasetError",
    "ImageLoadError",
    "MissingExtraError",
    "ModelLoadError",
    "PolicyError",
    "ShapeError",
    "UnknownNameError",
    "WeightsError",
    "check_shape",
]


class TTAKitError(Exception):
    """Base class of every error ttakit raises on purpose."""


class ConfigError(TTAKitError, ValueError):
    """A setting (size, count, threshold, device, option name) is out of range or unknown."""


class ArgumentError(ConfigError):
    """An argument of a public function or config has the wrong type or value; the message
    names the parameter and the value (see :mod:`ttakit.validate`)."""


class DatasetError(TTAKitError, ValueError):
    """A dataset path or layout could not be understood, or a run folder holds another run."""


class BackendError(TTAKitError, RuntimeError):
    """An inference backend is missing (install its extra) or could not run the model."""


class MissingExtraError(BackendError, ImportError):
    """A feature needs an optional extra that is not installed; the message names it
    (``pip install 'ttakit[report]'``)."""


class PolicyError(TTAKitError, ValueError):
    """A policy, preset, transform name or policy text could not be understood."""


class ModelLoadError(TTAKitError, ValueError):
    """A model name is unknown or the model could not be built."""


class WeightsError(TTAKitError, ValueError):
    """Weights could not be found, downloaded or loaded into the model."""


class ImageLoadError(TTAKitError, OSError):
    """An input file is missing, is not an image, or could not be decoded."""


class UnknownNameError(ConfigError, PolicyError):
    """A name (merge, box merge, backend, preset, transform, confidence, ...) is not registered.

    The one error of :class:`~ttakit.registry.Registry` for every family; it is both a
    :class:`ConfigError` and a :class:`PolicyError`, so code catching either keeps working.

    Attributes:
        kind: the family (``merge``, ``backend``, ...).
        name: the name asked for.
        known: the registered names.
    """

    def __init__(self, message: str, kind: str = "", name: str = "", known: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.kind, self.name, self.known = kind, name, list(known)


class ShapeError(TTAKitError, ValueError):
    """A tensor has a shape other than the one expected."""

    def __init__(self, what: str, expected: str, actual: Sequence[int]) -> None:
        super().__init__(f"{what}: expected shape {expected}, got {tuple(actual)}")
        self.expected = expected
        self.actual = tuple(actual)


def check_shape(what: str, shape: Sequence[int], expected: str) -> None:
    """Check ``shape`` against a pattern such as ``"(B, C, H, W)"`` (only the rank is checked
    for named dimensions; digits must match exactly).

    Raises:
        ShapeError: when the rank or a fixed dimension differs.
    """
    dims = [d.strip() for d in expected.strip("() ").split(",") if d.strip()]
    ok = len(dims) == len(shape) and all(
        not d.isdigit() or int(d) == s for d, s in zip(dims, shape)
    )
    if not ok:
        raise ShapeError(what, expected, shape)
