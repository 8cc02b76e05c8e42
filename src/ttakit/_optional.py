"""Optional dependencies, imported where a feature needs them; a missing one names its extra.

Each heavy or feature-only package is imported where a feature needs it, and a missing one
names the extra that installs it.

The extras (see ``pyproject.toml``): ``report`` (Jinja2 for report.html, matplotlib for
``views`` and detection drawings), ``coco`` (pycocotools for COCO box mAP), ``onnx``
(onnx, onnxscript, onnxruntime) and ``openvino``.

Example:
    >>> require("json", "report", "reading JSON").dumps([1])
    '[1]'
    >>> require("no_such_module_here", "report", "report.html")
    Traceback (most recent call last):
    ...
    ttakit.errors.MissingExtraError: report.html needs the 'report' extra: pip install 'ttakit[report]'
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingExtraError

__all__ = ["extra_message", "require"]


def extra_message(feature: str, extra: str) -> str:
    """The one line that says which extra ``feature`` needs."""
    return f"{feature} needs the '{extra}' extra: pip install 'ttakit[{extra}]'"


def require(module: str, extra: str, feature: str) -> ModuleType:
    """``module`` imported, or :class:`~ttakit.errors.MissingExtraError` naming ``extra``.

    Args:
        module: the module to import (``"jinja2"``, ``"pycocotools.cocoeval"``).
        extra: the ttakit extra that installs it (``"report"``, ``"coco"``, ``"onnx"``, ...).
        feature: what needs it, as the message's subject (``"report.html"``).

    Raises:
        MissingExtraError: ``module`` cannot be imported (also a BackendError and an ImportError).
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(extra_message(feature, extra)) from e
