"""Inference backends: one object the view loop calls like a model, whatever runs it.

A backend maps a ``(N, C, h, w)`` float tensor to the model's output (logits, or ``(N, K, h, w)``
maps), as torch tensors. :class:`TorchBackend` calls the ``nn.Module`` as it is;
:class:`OnnxRuntimeBackend` and :class:`OpenVINOBackend` run its ONNX export
(:class:`~ttakit.runtime.onnx_cache.CachedExport`, made once and cached) or a given ONNX file.
Names resolve once, through :data:`BACKENDS` (a :class:`~ttakit.registry.Registry`).

Precisions: ``fp32`` everywhere; ``bf16`` and ``fp16`` on OpenVINO where the CPU has them (and
torch autocast); ``int8`` on ONNX Runtime and OpenVINO, from a graph quantised on the user's
own photos (:mod:`ttakit.runtime.quantize`). The first time a backend prepares a precision
for a graph, it is checked against fp32 torch by what that precision promises
(:mod:`ttakit.runtime.precision`); the figures are kept beside the cached graph and on the
backend (``backend.check``). ONNX Runtime's CPU provider has no bf16 or fp16 convolution
kernels on x86 (its bf16 fast-math GEMM is for ARM64), so it refuses those. The interface and
torch backend live in :mod:`~ttakit.runtime.backend_base`, the ONNX runtimes in
:mod:`~ttakit.runtime.graph_backends`; this module builds one by name.

Inputs may arrive channels-last: the ONNX backends hand the runtime a contiguous ``float32``
NCHW numpy array (no copy when the input already is one) and return the outputs as tensors on
the input's device.

Example:
    >>> net = timm.create_model("test_resnet", num_classes=10).eval()
    >>> backend = create_backend("onnxruntime", net, input_size=(64, 64), key="test_resnet", cache=False)
    >>> backend(torch.zeros(2, 3, 64, 64)).shape
    torch.Size([2, 10])
    >>> ttakit.ClassificationTTA(net, "hflip", backend=backend)(torch.zeros(2, 3, 64, 64)).shape
    torch.Size([2, 10])
    >>> lm = ttakit.load_model()   # by name: exported once, cached for later processes  # doctest: +SKIP
    >>> tta = ttakit.ClassificationTTA(lm.model, "d4", backend="openvino")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .backend_base import BACKENDS, PRECISIONS, Backend, Size, TorchBackend
from .config import model_device
from .graph_backends import OnnxRuntimeBackend, OpenVINOBackend, _GraphBackend
from .onnx_cache import DEFAULT_OPSET

__all__ = [
    "BACKENDS",
    "PRECISIONS",
    "Backend",
    "OnnxRuntimeBackend",
    "OpenVINOBackend",
    "TorchBackend",
    "create_backend",
    "list_backends",
    "resolve_backend",
]


def list_backends() -> list[str]:
    """Names :func:`create_backend` accepts."""
    return BACKENDS.names()


def create_backend(
    name: str,
    model: nn.Module,
    *,
    input_size: Size,
    key: str,
    precision: str = "fp32",
    cache: bool = True,
    device: torch.device | str = "cpu",
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    opset: int = DEFAULT_OPSET,
    calibration: Tensor | None = None,
    verbose: bool = False,
) -> Backend:
    """Build the backend called ``name`` for ``model`` (the name is resolved here, once).

    Args:
        name: ``torch``, ``onnxruntime`` or ``openvino``.
        model: the network.
        input_size: ``(H, W)`` of the model's input (the export example; other sizes work too).
        key: names the model in the cache (e.g. the timm name).
        precision: ``fp32``, ``bf16``, ``fp16`` or ``int8``. torch: autocast (no int8);
            openvino: the inference precision hint where the CPU has it, int8 from the
            quantised graph; onnxruntime: fp32 and int8. Checked against fp32 torch
            (:mod:`ttakit.runtime.precision`); the figures are in ``backend.check``.
        cache: reuse exports from ``cache_dir() / "backends"`` (and write new ones there).
        device: torch device; for onnxruntime, ``cuda[:i]`` picks the CUDA provider on GPU ``i``.
        providers: onnxruntime providers (``cpu``, ``cuda``, ``tensorrt``), overriding ``device``.
        threads: runtime threads (default: the runtime's choice).
        opset: ONNX opset of the export.
        calibration: ``(N, C, H, W)`` model inputs (normalised) made from your own photos,
            for int8: the activation ranges are measured on them.
        verbose: print the precision check's figures when they are first measured.

    Raises:
        UnknownNameError: unknown name (the message lists the known ones).
        ConfigError: unknown precision, or int8 without calibration images.
        BackendError: the backend's package is missing (the message names the extra), the
            precision or provider is not available here, or the export or the precision
            failed its check (one line, with the figures).

    Example:
        >>> net = timm.create_model("test_resnet", num_classes=10).eval()
        >>> be = create_backend("openvino", net, input_size=(64, 64), key="test_resnet", cache=False)
        >>> be(torch.zeros(3, 3, 64, 64)).shape
        torch.Size([3, 10])
    """
    extra = {} if name == "torch" else {"calibration": calibration, "verbose": verbose}
    backend = BACKENDS.get(name).create(model, input_size=input_size, key=key, precision=precision, cache=cache,
                                        device=torch.device(device), providers=providers, threads=threads, opset=opset,
                                        **extra)
    if isinstance(backend, _GraphBackend):
        backend.prepare(input_size)  # export and check here, at the boundary, not in the first batch
    return backend


def resolve_backend(
    backend: str | Backend | None,
    model: nn.Module,
    *,
    input_size: Size,
    key: str | None = None,
    device: torch.device | str | None = None,
) -> Backend:
    """What a task wrapper runs: ``None``/``"torch"`` wraps ``model`` as it is, another name
    builds that backend (fp32, cached export), a :class:`Backend` is used as given."""
    if backend is None:
        return TorchBackend(model)
    if isinstance(backend, Backend):
        return backend
    if isinstance(backend, str):
        name = key or getattr(model, "pretrained_cfg", {}).get("architecture") or type(model).__name__
        return create_backend(backend, model, input_size=input_size, key=name,
                              device=device if device is not None else model_device(model))
    raise ConfigError(f"backend must be a name ({', '.join(BACKENDS)}) or a Backend, got {type(backend).__name__}")
