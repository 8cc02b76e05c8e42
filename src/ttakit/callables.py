"""Import a user's callable named ``MODULE:FUNCTION`` or ``path/file.py:FUNCTION`` (models, detectors, loaders).

Task-neutral: the detection, segmentation and classification loaders all resolve their
``--model``/``--detector`` specs here. Nothing is added to ``sys.path``.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from .errors import ModelLoadError

__all__ = ["call_spec", "import_callable", "is_callable_spec", "load_module_spec"]

L = TypeVar("L")


def is_callable_spec(spec: str) -> bool:
    """Whether ``spec`` names a callable (``MODULE:FUNCTION`` or ``path/file.py:FUNCTION``)
    rather than a registered name such as ``torchvision:NAME``.

    Example:
        >>> is_callable_spec("examples/detection_demo.py:load_detector"), is_callable_spec("torchvision:fcos")
        (True, False)
    """
    module, colon, attr = spec.rpartition(":")
    return bool(colon and module and attr) and module != "torchvision"


def _load_file(path: Path, name: str) -> ModuleType:
    """Import the source file ``path`` as the module ``name`` (the importlib documentation's
    recipe; registered in ``sys.modules`` so that dataclasses and pickle find it)."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} is not a Python source file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _module_of_file(path: Path) -> ModuleType:
    """The module already imported from ``path`` (a file is not run twice), else ``path``
    imported under its stem (or, if another module has that name, a name made unique)."""
    real = os.path.realpath(path)
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if file and os.path.realpath(file) == real:
            return module
    name = path.stem
    if name in sys.modules:
        name = f"{name}_{hashlib.sha1(real.encode()).hexdigest()[:8]}"
    return _load_file(Path(real), name)


def _import_module(name: str) -> ModuleType:
    """An installed module, else ``name`` as a file under the working folder (``examples.x``
    is ``./examples/x.py``), as ``python -m`` would find it."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if not e.name or not (name == e.name or name.startswith(e.name + ".")):
            raise  # the module was found but one of its own imports is missing
        local = Path.cwd().joinpath(*name.split("."))
        for path in (local.with_suffix(".py"), local / "__init__.py"):
            if path.is_file():
                return _load_file(path, name)
        raise


def import_callable(spec: str, what: str = "model") -> Callable[..., Any]:
    """The callable named by ``spec``: ``MODULE:FUNCTION`` (an importable module, or a module
    file under the working folder, e.g. ``examples.detection_demo:load_detector``) or
    ``path/file.py:FUNCTION``. ``what`` names the thing in error messages.

    Raises:
        ModelLoadError: no such file or module, an import error inside it, or no such callable.

    Example:
        >>> import_callable("ttakit.models:load_model").__name__
        'load_model'
        >>> import_callable("ttakit.models:nothing", "detector")
        Traceback (most recent call last):
        ...
        ttakit.errors.ModelLoadError: detector 'ttakit.models:nothing': 'ttakit.models' has no callable 'nothing'
    """
    module_name, colon, attr = spec.rpartition(":")
    if not colon or not module_name or not attr:
        raise ModelLoadError(f"{what} {spec!r}: expected MODULE:FUNCTION or path/file.py:FUNCTION")
    try:
        if module_name.endswith(".py") or "/" in module_name or "\\" in module_name:
            path = Path(module_name)
            if not path.is_file():
                raise ModelLoadError(f"{what} {spec!r}: {path} not found")
            module = _module_of_file(path)
        else:
            module = _import_module(module_name)
    except ImportError as e:
        raise ModelLoadError(f"{what} {spec!r}: cannot import {module_name!r} ({e})") from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ModelLoadError(f"{what} {spec!r}: {module_name!r} has no callable {attr!r}")
    return fn


def call_spec(spec: str, weights: str | None = None, what: str = "model") -> Any:
    """Import the loader ``spec`` names and call it, with ``weights=`` when ``weights`` is given.

    Raises:
        ModelLoadError: the loader cannot be imported, or takes no ``weights`` argument.

    Example:
        >>> call_spec("ttakit.models:imagenet_class_names")[281]
        'tabby, tabby cat'
    """
    fn = import_callable(spec, what)
    if weights and "weights" not in inspect.signature(fn).parameters:
        raise ModelLoadError(f"{what} {spec!r} takes no weights argument")
    return fn(weights=weights) if weights else fn()


def load_module_spec(spec: str, weights: str | None, what: str, loaded: type[L],
                     wrap: Callable[[Any, dict[str, Any]], L]) -> L:
    """Call the loader ``spec`` names: what it returns is used as it is when it is already a
    ``loaded`` (a model with its data config and class names), or, when it is a bare
    ``nn.Module``, given to ``wrap(module, data_config)`` with timm's data config resolved from
    the module.

    Raises:
        ModelLoadError: the loader cannot be imported or returns something else.

    Example:
        >>> from ttakit.models import LoadedModel
        >>> load_module_spec("ttakit.models:imagenet_class_names", None, "model", LoadedModel, None)
        Traceback (most recent call last):
        ...
        ttakit.errors.ModelLoadError: model 'ttakit.models:imagenet_class_names' returned list, not an nn.Module
    """
    from torch import nn

    got = call_spec(spec, weights, what)
    if isinstance(got, loaded):
        return got
    if not isinstance(got, nn.Module):
        raise ModelLoadError(f"{what} {spec!r} returned {type(got).__name__}, not an nn.Module")
    import timm

    return wrap(got, timm.data.resolve_data_config({}, model=got))
