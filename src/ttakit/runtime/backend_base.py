"""What every backend is: the ``Backend`` interface, the ``BACKENDS`` registry and the torch backend.

:class:`Backend` is what the view loop calls like a model; :data:`BACKENDS` holds every
backend by name; the torch backend runs the ``nn.Module`` as it is, or under autocast.

:mod:`ttakit.runtime.graph_backends` adds the ONNX runtimes; :mod:`ttakit.runtime.backends`
is where users build one by name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .._optional import require
from ..errors import BackendError, ConfigError
from ..registry import Registry
from .config import RunConfig, default_run_config
from .precision import PRECISIONS as PRECISION_LIMITS

__all__ = ["BACKENDS", "PRECISIONS", "Backend", "TorchBackend"]

Size = tuple[int, int]
PRECISIONS = tuple(PRECISION_LIMITS.names())  # fp32, bf16, fp16, int8


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def _import(module: str, extra: str) -> Any:
    return require(module, extra, f"the {module} backend")


class Backend(ABC):
    """What the view loop calls: ``backend(x)`` with ``x`` ``(N, C, h, w)`` float images
    returns the model output for them, as torch tensors on ``x``'s device.

    Attributes:
        name: registry name (``torch``, ``onnxruntime``, ``openvino``).
        precision: ``fp32`` or ``bf16`` (checked once, when the backend is built).
    """

    name: ClassVar[str]
    precisions: ClassVar[tuple[str, ...]]  # what this backend can run
    refusals: ClassVar[dict[str, str]] = {}  # why it cannot run another precision
    precision: str = "fp32"

    def __init__(self, precision: str) -> None:
        self.accept(precision)
        self.precision = precision

    @classmethod
    def accept(cls, precision: str, calibration: Tensor | None = None) -> None:
        """Refuse, in one line, a precision this backend or this CPU cannot run (before any
        export is made).

        Raises:
            ConfigError: an unknown precision, or int8 without calibration images.
            BackendError: a precision this backend cannot run, or this CPU lacks.
        """
        _check_precision(precision)
        if precision not in cls.precisions:
            why = cls.refusals.get(precision, f"it runs {', '.join(cls.precisions)}")
            raise BackendError(f"the {cls.name} backend cannot run {precision}: {why}")

    @classmethod
    @abstractmethod
    def create(cls, model: nn.Module, *, input_size: Size, key: str, precision: str, cache: bool,
               device: torch.device, providers: Sequence[str] | None, threads: int | None, opset: int) -> Backend:
        """Build this backend for ``model`` (see :func:`create_backend` for the arguments)."""

    @abstractmethod
    def __call__(self, x: Tensor) -> Any:
        """Run the model on ``(N, C, h, w)`` images."""

    def run_config(self, device: torch.device | str = "cpu") -> RunConfig:
        """How the view loop feeds this backend when no run config is given: the device's
        defaults (:func:`~ttakit.runtime.config.default_run_config`)."""
        return default_run_config(device)

    @property
    def label(self) -> str:
        """``name`` plus the precision when it is not fp32 (``openvino:bf16``)."""
        return self.name if self.precision == "fp32" else f"{self.name}:{self.precision}"

    @property
    @abstractmethod
    def cache_key(self) -> str:
        """Names this backend and model in tuned run configs (:func:`tune_run_config`)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.cache_key!r})"


BACKENDS: Registry[type[Backend]] = Registry("backend", sort=False)


@BACKENDS.register("torch")
class TorchBackend(Backend):
    """The ``nn.Module`` called as it is (``bf16``: under bf16 autocast).

    Example:
        >>> TorchBackend(torch.nn.Identity())(torch.ones(1, 3, 2, 2)).shape
        torch.Size([1, 3, 2, 2])
    """

    name = "torch"
    precisions = ("fp32", "bf16", "fp16")
    refusals = {"int8": "use backend onnxruntime or openvino, which run a graph quantised on your photos"}

    def __init__(self, model: nn.Module, precision: str = "fp32") -> None:
        super().__init__(precision)
        self.module = model

    @classmethod
    def create(cls, model: nn.Module, *, precision: str, **_: Any) -> TorchBackend:  # type: ignore[override]
        return cls(model, precision)

    def __call__(self, x: Tensor) -> Any:
        if self.precision != "fp32":
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            with torch.autocast(device_type=x.device.type, dtype=dtype):
                return self.module(x)
        return self.module(x)

    @property
    def cache_key(self) -> str:
        n = sum(p.numel() for p in self.module.parameters())
        return f"torch|{self.precision}|{type(self.module).__name__}|{n}"


