"""Inference backends: one object the view loop calls like a model, whatever runs it.

A backend maps a ``(N, C, h, w)`` float tensor to the model's output (logits, or ``(N, K, h, w)``
maps), as torch tensors. :class:`TorchBackend` calls the ``nn.Module`` as it is;
:class:`OnnxRuntimeBackend` and :class:`OpenVINOBackend` run its ONNX export
(:class:`~ttakit.runtime.onnx_cache.CachedExport`, made once and cached) or a given ONNX file.
Names resolve once, through :data:`BACKENDS` (a :class:`~ttakit.registry.Registry`).

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

import importlib
from abc import ABC, abstractmethod
from dataclasses import replace
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import BackendError, ConfigError
from ..registry import Registry
from .config import RunConfig, default_run_config, model_device
from .onnx_cache import DEFAULT_OPSET, CachedExport, Runner, as_numpy

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

PRECISIONS = ("fp32", "bf16")
Size = tuple[int, int]


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def _import(module: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise BackendError(f"the {module} backend needs {module}: pip install 'ttakit[{extra}]'") from e


class Backend(ABC):
    """What the view loop calls: ``backend(x)`` with ``x`` ``(N, C, h, w)`` float images
    returns the model output for them, as torch tensors on ``x``'s device.

    Attributes:
        name: registry name (``torch``, ``onnxruntime``, ``openvino``).
        precision: ``fp32`` or ``bf16`` (checked once, when the backend is built).
    """

    name: ClassVar[str]
    precision: str = "fp32"

    def __init__(self, precision: str) -> None:
        _check_precision(precision)
        self.precision = precision

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

    def __init__(self, model: nn.Module, precision: str = "fp32") -> None:
        super().__init__(precision)
        self.module = model

    @classmethod
    def create(cls, model: nn.Module, *, precision: str, **_: Any) -> TorchBackend:
        return cls(model, precision)

    def __call__(self, x: Tensor) -> Any:
        if self.precision == "bf16":
            with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
                return self.module(x)
        return self.module(x)

    @property
    def cache_key(self) -> str:
        n = sum(p.numel() for p in self.module.parameters())
        return f"torch|{self.precision}|{type(self.module).__name__}|{n}"


class _FileSource:
    """A ready ONNX file used for every size (no export, no checks)."""

    exported: ClassVar[list[Path]] = []

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise BackendError(f"{self.path}: ONNX file not found")
        self.cache_key = f"file|{self.path.resolve()}"

    def path_for(self, size: Size, load: Any) -> tuple[Path, Runner | None]:
        return self.path, None


class _GraphBackend(Backend):
    """Shared by the ONNX runtimes: one loaded graph per file, numpy in and out."""

    package: ClassVar[tuple[str, str]]  # (module, the ttakit extra that installs it)

    def __init__(self, source: CachedExport | str | Path, precision: str) -> None:
        super().__init__(precision)
        self.source = source if isinstance(source, CachedExport) else _FileSource(source)
        self._runners: dict[Path, Runner] = {}
        self._by_size: dict[Size, Runner] = {}  # the per-call fast path

    @classmethod
    def runtime(cls) -> Any:
        """The runtime's Python module (``BackendError`` naming the extra when missing)."""
        return _import(*cls.package)

    @classmethod
    def version(cls) -> str:
        return str(cls.runtime().__version__).split("-")[0]  # openvino "2026.4.1-22982-...": the release

    @classmethod
    def _export(cls, model: nn.Module, *, input_size: Size, key: str, precision: str, cache: bool, opset: int,
                gpu: bool = False) -> CachedExport:
        return CachedExport(model, key=key, input_size=input_size, tag=f"{cls.name} {cls.version()}",
                            precision=precision, opset=opset, cache=cache,
                            tolerance=1e-2 if gpu else 1e-3)  # GPU kernels may use TF32

    @abstractmethod
    def _load(self, path: Path) -> Runner:
        """Open ``path`` in the runtime."""

    def _for_size(self, size: Size) -> Runner:
        run = self._by_size.get(size)
        if run is None:
            path, fresh = self.source.path_for(size, self._load)
            if path not in self._runners:
                self._runners[path] = fresh or self._load(path)
            run = self._by_size[size] = self._runners[path]
        return run

    def run_config(self, device: torch.device | str = "cpu") -> RunConfig:
        """The device's defaults, but NCHW: the runtimes take contiguous NCHW arrays, so a
        channels-last batch would only be copied back."""
        return replace(default_run_config(device), channels_last=False)

    def prepare(self, size: Size) -> None:
        """Export (if not cached), check and load the graph for images of ``size`` now rather
        than at the first call."""
        self._for_size((int(size[0]), int(size[1])))

    def __call__(self, x: Tensor) -> Any:
        run = self._for_size((x.shape[-2], x.shape[-1]))
        outs = [torch.from_numpy(o) for o in run(as_numpy(x))]
        if x.device.type != "cpu":
            outs = [o.to(x.device) for o in outs]
        return outs[0] if len(outs) == 1 else tuple(outs)

    @property
    def cache_key(self) -> str:
        return f"{self.label}|{self.source.cache_key}"

    @property
    def exported(self) -> list[Path]:
        """Files exported by this backend (empty when every file came from the cache)."""
        return list(self.source.exported)


_ORT_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


@BACKENDS.register("onnxruntime")
class OnnxRuntimeBackend(_GraphBackend):
    """ONNX Runtime: ``CPUExecutionProvider`` by default, CUDA or TensorRT when asked.

    Args:
        source: a :class:`~ttakit.runtime.onnx_cache.CachedExport` (what
            :func:`create_backend` builds) or an ONNX file.
        providers: execution providers in order of preference, short (``cpu``, ``cuda``,
            ``tensorrt``) or full names; default ``("cpu",)``. Each one asked for must be
            available.
        precision: only ``fp32`` (ONNX Runtime's CPU and CUDA providers run the fp32 graph).
        threads: intra-op threads (default: ONNX Runtime's choice, the physical cores).
        device_id: the GPU of the CUDA/TensorRT providers.
        spinning: let idle intra-op threads spin between calls (ONNX Runtime's default). Off
            by default here: between two calls the view loop builds the next micro-batch with
            torch ops, and spinning threads take the cores those ops need (measured in
            ``benchmarks/bench_ort_overhead.py``).

    Example:
        >>> backend = OnnxRuntimeBackend("model.onnx")  # a graph with input (N, C, H, W)  # doctest: +SKIP
        >>> backend(torch.zeros(1, 3, 224, 224)).shape  # doctest: +SKIP
        torch.Size([1, 1000])
    """

    name = "onnxruntime"
    package = ("onnxruntime", "onnx")

    def __init__(
        self,
        source: CachedExport | str | Path,
        *,
        providers: Sequence[str] | None = None,
        precision: str = "fp32",
        threads: int | None = None,
        device_id: int = 0,
        spinning: bool = False,
    ) -> None:
        super().__init__(source, precision)
        if precision != "fp32":
            raise BackendError(
                f"the onnxruntime backend runs fp32 only, not {precision}: use backend 'openvino' with "
                "precision bf16 on a CPU that has it, or the torch backend with bf16 autocast (--amp bf16)")
        self._ort = ort = self.runtime()
        wanted = [_ORT_PROVIDERS.get(p, p) for p in (providers or ("cpu",))]
        have = ort.get_available_providers()
        missing = [p for p in wanted if p not in have]
        if missing:
            raise BackendError(
                f"onnxruntime here has no {', '.join(missing)} (available: {', '.join(have)}); "
                "for CUDA/TensorRT install onnxruntime-gpu (and TensorRT) instead of onnxruntime")
        if "CPUExecutionProvider" not in wanted:  # the fallback for operators a GPU provider lacks
            wanted.append("CPUExecutionProvider")
        gpu = {"device_id": device_id}
        self.providers = [(p, gpu) if p in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else p for p in wanted]
        self.threads = threads
        self.spinning = spinning

    @classmethod
    def create(cls, model: nn.Module, *, input_size: Size, key: str, precision: str, cache: bool,
               device: torch.device, providers: Sequence[str] | None, threads: int | None,
               opset: int) -> OnnxRuntimeBackend:
        if providers is None:
            providers = ("cuda", "cpu") if device.type == "cuda" else ("cpu",)
        gpu = any(p not in ("cpu", "CPUExecutionProvider") for p in providers)
        export = cls._export(model, input_size=input_size, key=key, precision=precision, cache=cache, opset=opset,
                             gpu=gpu)
        return cls(export, providers=providers, precision=precision, threads=threads, device_id=device.index or 0)

    def _load(self, path: Path) -> Runner:
        so = self._ort.SessionOptions()
        so.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3  # errors only
        if self.threads:
            so.intra_op_num_threads = self.threads
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        try:
            session = self._ort.InferenceSession(str(path), so, providers=self.providers)
        except Exception as e:  # noqa: BLE001 - runtime errors have no common type
            raise BackendError(f"onnxruntime could not load {path.name}: {str(e).splitlines()[0][:300]}") from e
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x})


@BACKENDS.register("openvino")
class OpenVINOBackend(_GraphBackend):
    """OpenVINO on the CPU, latency mode, with an explicit inference precision.

    Args:
        source: a :class:`~ttakit.runtime.onnx_cache.CachedExport` or an ONNX file.
        precision: ``fp32`` (set explicitly: on CPUs with bf16 units OpenVINO would otherwise
            choose bf16) or ``bf16`` (only where the CPU reports BF16 support).
        threads: inference threads (default: OpenVINO's choice).

    Raises:
        BackendError: ``bf16`` on a CPU without bf16 support.
    """

    name = "openvino"
    package = ("openvino", "openvino")

    def __init__(self, source: CachedExport | str | Path, *, precision: str = "fp32", threads: int | None = None) -> None:
        super().__init__(source, precision)
        self._core = self.runtime().Core()
        if precision == "bf16":
            caps = list(self._core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
            if "BF16" not in caps:
                raise BackendError(
                    f"this CPU has no bf16 support in OpenVINO (it reports {', '.join(caps)}): use precision fp32")
        self.config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "PERFORMANCE_HINT": "LATENCY",  # the loop sends one micro-batch at a time
        }
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = int(threads)

    @classmethod
    def create(cls, model: nn.Module, *, input_size: Size, key: str, precision: str, cache: bool,
               device: torch.device, threads: int | None, opset: int, **_: Any) -> OpenVINOBackend:
        if device.type != "cpu":
            raise BackendError(f"the openvino backend runs on the CPU, not {device}: use onnxruntime with the CUDA provider")
        export = cls._export(model, input_size=input_size, key=key, precision=precision, cache=cache, opset=opset)
        return cls(export, precision=precision, threads=threads)

    def _load(self, path: Path) -> Runner:
        try:
            compiled = self._core.compile_model(str(path), "CPU", self.config)
        except Exception as e:  # noqa: BLE001
            raise BackendError(f"OpenVINO could not compile {path.name}: {str(e).splitlines()[0][:300]}") from e
        request = compiled.create_infer_request()
        outputs = list(compiled.outputs)

        def run(x: np.ndarray) -> list[np.ndarray]:
            # share_outputs=False: the next call reuses the request's buffers; the loop keeps slices.
            res = request.infer({0: x}, share_inputs=True, share_outputs=False)
            return [np.asarray(res[o]) for o in outputs]

        return run


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
) -> Backend:
    """Build the backend called ``name`` for ``model`` (the name is resolved here, once).

    Args:
        name: ``torch``, ``onnxruntime`` or ``openvino``.
        model: the network.
        input_size: ``(H, W)`` of the model's input (the export example; other sizes work too).
        key: names the model in the cache (e.g. the timm name).
        precision: ``fp32`` or ``bf16`` (torch: bf16 autocast; openvino: the inference
            precision hint, where the CPU supports it; onnxruntime: refused).
        cache: reuse exports from ``cache_dir() / "backends"`` (and write new ones there).
        device: torch device; for onnxruntime, ``cuda[:i]`` picks the CUDA provider on GPU ``i``.
        providers: onnxruntime providers (``cpu``, ``cuda``, ``tensorrt``), overriding ``device``.
        threads: runtime threads (default: the runtime's choice).
        opset: ONNX opset of the export.

    Raises:
        UnknownNameError: unknown name (the message lists the known ones).
        ConfigError: unknown precision.
        BackendError: the backend's package is missing (the message names the extra), the
            precision or provider is not available here, or the export failed its check.

    Example:
        >>> net = timm.create_model("test_resnet", num_classes=10).eval()
        >>> be = create_backend("openvino", net, input_size=(64, 64), key="test_resnet", cache=False)
        >>> be(torch.zeros(3, 3, 64, 64)).shape
        torch.Size([3, 10])
    """
    backend = BACKENDS.get(name).create(model, input_size=input_size, key=key, precision=precision, cache=cache,
                         device=torch.device(device), providers=providers, threads=threads, opset=opset)
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
