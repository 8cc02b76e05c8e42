"""Inference backends: one object the view loop calls like a model, whatever runs it.

A backend maps a ``(N, C, h, w)`` float tensor to the model's output (logits, or ``(N, K, h, w)``
maps), as torch tensors. :class:`TorchBackend` calls the ``nn.Module`` as it is;
:class:`OnnxRuntimeBackend` and :class:`OpenVINOBackend` run an ONNX export of it.

The export (:class:`ModelExport`) is made once per model key, weights digest, input size, opset,
backend and its version, and precision, and cached in ``cache_dir() / "backends"``; another
process with the same model finds the file and skips the export. It has a dynamic batch axis
and dynamic spatial axes, and is checked against the torch model at the input size and at a
second, non-square size. A model whose trace bakes in its input size (the second check fails)
is exported once per view size instead, lazily, each file checked at its size.

Inputs may arrive channels-last: the ONNX backends hand the runtime a contiguous ``float32``
NCHW numpy array and return the outputs as tensors on the input's device.

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

import contextlib
import hashlib
import json
import os
import re
import tempfile
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import BackendError, ConfigError
from .config import cache_dir, model_device

__all__ = [
    "BACKENDS",
    "DEFAULT_OPSET",
    "PRECISIONS",
    "Backend",
    "ModelExport",
    "OnnxRuntimeBackend",
    "OpenVINOBackend",
    "TorchBackend",
    "create_backend",
    "list_backends",
    "onnx_export",
    "resolve_backend",
    "weights_digest",
]

DEFAULT_OPSET = 17  # GridSample and every op the views and merges need; widely supported
PRECISIONS = ("fp32", "bf16")
Size = tuple[int, int]
Runner = Callable[[np.ndarray], list[np.ndarray]]  # (N, C, h, w) float32 -> the graph's outputs


# --------------------------------------------------------------------------- helpers
def weights_digest(model: nn.Module) -> str:
    """SHA-256 of the model's state dict (names, dtypes, shapes and bytes), independent of
    the memory format and device the parameters are in.

    Example:
        >>> import copy
        >>> a = torch.nn.Linear(2, 2); b = copy.deepcopy(a)
        >>> weights_digest(a) == weights_digest(b), len(weights_digest(a))
        (True, 64)
    """
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _as_numpy(x: Tensor) -> np.ndarray:
    """A contiguous NCHW float32 array; channels-last or half inputs are copied once."""
    return x.detach().to("cpu", torch.float32).contiguous().numpy()


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Silence the tracer's chatter (shape-as-constant and deprecation warnings): the result is
    checked numerically instead."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def onnx_export(
    module: nn.Module,
    example: Tensor,
    path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    input_name: str = "images",
    output_names: Sequence[str] = ("output",),
    dynamic_spatial: bool = True,
) -> Path:
    """Export ``module`` to ONNX with a dynamic batch axis (and spatial axes if asked).

    Uses the TorchScript-tracing exporter (``dynamo=False``): it exports a CNN in seconds, and
    dynamic spatial axes need no shape constraints (the ``torch.export`` path took minutes or
    stalled on them). Every submodule's train/eval mode is restored afterwards (the exporter
    would otherwise reset them from the top module's mode).

    Raises:
        BackendError: the exporter failed (the message names the operator when it says so).
    """
    try:
        import onnx  # noqa: F401, PLC0415 - the TorchScript exporter writes through it
    except ImportError as e:
        raise BackendError("ONNX export needs the onnx package: pip install 'ttakit[onnx]' (or 'ttakit[openvino]')") from e
    path = Path(path)
    modes = {m: m.training for m in module.modules()}
    axes: dict[str, dict[int, str]] = {input_name: {0: "batch", **({2: "height", 3: "width"} if dynamic_spatial else {})}}
    for name in output_names:
        axes[name] = {0: "batch"}
    try:
        with _quiet_export(), torch.no_grad():
            module.eval()
            torch.onnx.export(
                module, (example,), str(path), dynamo=False, opset_version=opset, input_names=[input_name],
                output_names=list(output_names), dynamic_axes=axes, do_constant_folding=True,
            )
    except Exception as e:  # noqa: BLE001 - the exporter raises many types; all mean the same here
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise BackendError(f"ONNX export of {type(module).__name__} failed: {first}") from e
    finally:
        for m, training in modes.items():
            m.training = training
    return path


def _output_names(out: Any) -> list[str]:
    if isinstance(out, Tensor):
        return ["output"]
    if isinstance(out, (tuple, list)) and out and all(isinstance(o, Tensor) for o in out):
        return [f"output_{i}" for i in range(len(out))]
    raise BackendError(
        f"the ONNX backends take models returning a tensor or a tuple of tensors, not {type(out).__name__}; "
        "wrap the model so that it returns tensors, or use backend='torch'")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:60] or "model"


def _close(ref: Any, got: Any) -> float:
    """Largest absolute difference between the torch outputs and the runtime's, relative to
    the outputs' scale (at least 1)."""
    refs = [ref] if isinstance(ref, Tensor) else list(ref)
    worst = 0.0
    for r, g in zip(refs, got):
        r = r.detach().float().cpu().numpy()
        if r.shape != g.shape:
            return float("inf")
        worst = max(worst, float(np.abs(r - g).max()) / max(1.0, float(np.abs(r).max())))
    return worst


# --------------------------------------------------------------------------- the export
class ModelExport:
    """A torch model exported to ONNX once, cached on disk, checked against torch.

    Args:
        model: the network (eval mode is used for the export; its modes are restored).
        key: names the model (timm architecture or class name); part of the cache key.
        input_size: ``(H, W)`` of the export example and of the first check.
        tag: the runtime and its version (``"onnxruntime 1.31.1"``): part of the cache key.
        precision: ``fp32`` or ``bf16`` (part of the cache key).
        opset: ONNX opset.
        cache: reuse and write files in ``cache_dir() / "backends"``; otherwise a private
            temporary folder, deleted with this object.
        tolerance: largest relative difference accepted by the checks.

    The cache key also holds the weights digest and the torch version. A file is written next
    to a ``.json`` record (what was exported, whether its spatial axes are dynamic) by an
    atomic rename, so processes exporting at the same time never see half a file.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        key: str,
        input_size: Size,
        tag: str,
        precision: str = "fp32",
        opset: int = DEFAULT_OPSET,
        cache: bool = True,
        tolerance: float = 1e-3,
    ) -> None:
        self.model = model
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.digest = weights_digest(model)
        self.fields = {
            "key": key, "class": type(model).__qualname__, "weights": self.digest, "input_size": list(self.input_size),
            "opset": opset, "backend": tag, "precision": precision, "torch": torch.__version__, "exporter": "torchscript",
        }
        self.opset = opset
        self.tolerance = tolerance
        self._tmp = None if cache else tempfile.TemporaryDirectory(prefix="ttakit-backend-")
        self.folder = cache_dir() / "backends" if cache else Path(self._tmp.name)  # type: ignore[union-attr]
        self.exported: list[Path] = []  # files this object wrote (not found in the cache)
        self._spatial: str | None = None  # "dynamic" or "fixed", once known
        self._paths: dict[Size | None, Path] = {}

    @property
    def cache_key(self) -> str:
        return f"{self.fields['key']}|{self.fields['backend']}|{self.fields['precision']}|{self.digest[:16]}"

    def _path(self, size: Size | None) -> Path:
        if size in self._paths:
            return self._paths[size]
        fields = {**self.fields, "fixed_size": None if size is None else list(size)}
        h = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
        name = f"{_slug(str(self.fields['key']))}-{_slug(str(self.fields['backend']).split()[0])}-{h}"
        path = self.folder / (name + ("" if size is None else f"-{size[0]}x{size[1]}") + ".onnx")
        self._paths[size] = path
        return path

    def _example(self, size: Size) -> Tensor:
        g = torch.Generator().manual_seed(0)
        return torch.randn(2, 3, *size, generator=g).to(model_device(self.model))

    def _reference(self, x: Tensor) -> Any:
        modes = {m: m.training for m in self.model.modules()}
        try:
            with torch.inference_mode():
                self.model.eval()
                return self.model(x.contiguous())
        finally:
            for m, training in modes.items():
                m.training = training

    def path_for(self, size: Size, load: Callable[[Path], Runner]) -> tuple[Path, Runner | None]:
        """The ONNX file that runs images of ``size``, exported and checked if not cached.

        Args:
            size: ``(h, w)`` of the images to run.
            load: opens a file in the backend's runtime (used for the checks).

        Returns:
            ``(path, runner)``: ``runner`` is the checked, loaded graph when it was exported
            just now (so the caller need not load it again), else ``None``.
        """
        size = (int(size[0]), int(size[1]))
        run: Runner | None = None
        if self._spatial is None:
            dynamic = self._path(None)
            meta = dynamic.with_suffix(".json")
            if not (dynamic.exists() and meta.exists()):
                run = self._export(dynamic, None, load)
            self._spatial = json.loads(meta.read_text())["spatial"]
        if self._spatial == "dynamic" or size == self.input_size:  # the first file was checked at input_size
            return self._path(None), run
        fixed = self._path(size)
        if not (fixed.exists() and fixed.with_suffix(".json").exists()):
            return fixed, self._export(fixed, size, load)
        return fixed, None

    def _export(self, path: Path, fixed: Size | None, load: Callable[[Path], Runner]) -> Runner:
        size = fixed or self.input_size
        example = self._example(size)
        ref = self._reference(example)
        names = _output_names(ref)
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(suffix=".onnx.tmp", dir=self.folder)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            onnx_export(self.model, example, tmp, opset=self.opset, output_names=names, dynamic_spatial=fixed is None)
            run = load(tmp)
            err = _close(ref, run(_as_numpy(example)))
            if not err <= self.tolerance:
                raise BackendError(
                    f"the ONNX export of {self.fields['key']} differs from torch by {err:.3g} at {size[0]}x{size[1]} "
                    f"(more than {self.tolerance:g}); use backend='torch' for this model")
            record = {**self.fields, "spatial": "fixed", "checked": {f"{size[0]}x{size[1]}": err}}
            if fixed is None:  # one more check at another, non-square size: are the spatial axes really free?
                other = (max(16, size[0] * 7 // 8), max(16, size[1] * 9 // 8))
                try:
                    x2 = self._example(other)
                    err2 = _close(self._reference(x2), run(_as_numpy(x2)))
                except Exception:  # noqa: BLE001 - a model that refuses other sizes is exported per size
                    err2 = float("inf")
                record["checked"][f"{other[0]}x{other[1]}"] = err2 if np.isfinite(err2) else None
                record["spatial"] = "dynamic" if err2 <= self.tolerance else "fixed"
            else:
                record["fixed_size"] = list(fixed)
            tmp.replace(path)
            fd, meta_tmp = tempfile.mkstemp(suffix=".json.tmp", dir=self.folder)
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(record, indent=1) + "\n")
            Path(meta_tmp).replace(path.with_suffix(".json"))
            self.exported.append(path)
            return run  # loaded in memory: the rename does not affect it
        finally:
            tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- backends
class Backend(ABC):
    """What the view loop calls: ``backend(x)`` with ``x`` ``(N, C, h, w)`` float images
    returns the model output for them, as torch tensors on ``x``'s device.

    Attributes:
        name: registry name (``torch``, ``onnxruntime``, ``openvino``).
        precision: ``fp32`` or ``bf16``.
    """

    name: ClassVar[str]
    precision: str = "fp32"

    @abstractmethod
    def __call__(self, x: Tensor) -> Any:
        """Run the model on ``(N, C, h, w)`` images."""

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


class TorchBackend(Backend):
    """The ``nn.Module`` called as it is (``bf16``: under bf16 autocast).

    Example:
        >>> TorchBackend(torch.nn.Identity())(torch.ones(1, 3, 2, 2)).shape
        torch.Size([1, 3, 2, 2])
    """

    name = "torch"

    def __init__(self, model: nn.Module, precision: str = "fp32") -> None:
        _check_precision(precision)
        self.module = model
        self.precision = precision

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

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise BackendError(f"{self.path}: ONNX file not found")
        self.cache_key = f"file|{self.path.resolve()}"

    def path_for(self, size: Size, load: Callable[[Path], Runner]) -> tuple[Path, Runner | None]:
        return self.path, None


class _GraphBackend(Backend):
    """Shared by the ONNX runtimes: one loaded graph per file, numpy in and out."""

    def __init__(self, source: ModelExport | str | Path, precision: str) -> None:
        _check_precision(precision)
        self.precision = precision
        self.source = source if isinstance(source, ModelExport) else _FileSource(source)
        self._runners: dict[Path, Runner] = {}
        self._by_size: dict[Size, Runner] = {}  # the per-call fast path

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

    def prepare(self, size: Size) -> None:
        """Export (if not cached), check and load the graph for images of ``size`` now rather
        than at the first call."""
        self._for_size((int(size[0]), int(size[1])))

    def __call__(self, x: Tensor) -> Any:
        run = self._for_size((x.shape[-2], x.shape[-1]))
        outs = [torch.from_numpy(o).to(x.device) for o in run(_as_numpy(x))]
        return outs[0] if len(outs) == 1 else tuple(outs)

    @property
    def cache_key(self) -> str:
        return f"{self.label}|{self.source.cache_key}"

    @property
    def exported(self) -> list[Path]:
        """Files exported by this backend (empty when every file came from the cache)."""
        return list(self.source.exported) if isinstance(self.source, ModelExport) else []


_ORT_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


class OnnxRuntimeBackend(_GraphBackend):
    """ONNX Runtime: ``CPUExecutionProvider`` by default, CUDA or TensorRT when asked.

    Args:
        source: a :class:`ModelExport` (what :func:`create_backend` builds) or an ONNX file.
        providers: execution providers in order of preference, short (``cpu``, ``cuda``,
            ``tensorrt``) or full names; default ``("cpu",)``. Each one asked for must be
            available.
        precision: only ``fp32`` (ONNX Runtime's CPU and CUDA providers run the fp32 graph).
        threads: intra-op threads (default: ONNX Runtime's choice, the physical cores).
        device_id: the GPU of the CUDA/TensorRT providers.

    Example:
        >>> backend = OnnxRuntimeBackend("model.onnx")  # a graph with input (N, C, H, W)  # doctest: +SKIP
        >>> backend(torch.zeros(1, 3, 224, 224)).shape  # doctest: +SKIP
        torch.Size([1, 1000])
    """

    name = "onnxruntime"

    def __init__(
        self,
        source: ModelExport | str | Path,
        *,
        providers: Sequence[str] | None = None,
        precision: str = "fp32",
        threads: int | None = None,
        device_id: int = 0,
    ) -> None:
        _check_precision(precision)
        ort = _import("onnxruntime", "onnx")
        if precision != "fp32":
            raise BackendError(
                f"the onnxruntime backend runs fp32 only, not {precision}: use backend 'openvino' with "
                "precision bf16 on a CPU that has it, or the torch backend with bf16 autocast (--amp bf16)")
        super().__init__(source, precision)
        self._ort = ort
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

    def _load(self, path: Path) -> Runner:
        so = self._ort.SessionOptions()
        so.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3  # errors only
        if self.threads:
            so.intra_op_num_threads = self.threads
        try:
            session = self._ort.InferenceSession(str(path), so, providers=self.providers)
        except Exception as e:  # noqa: BLE001 - runtime errors have no common type
            raise BackendError(f"onnxruntime could not load {path.name}: {str(e).splitlines()[0][:300]}") from e
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x})


class OpenVINOBackend(_GraphBackend):
    """OpenVINO on the CPU, latency mode, with an explicit inference precision.

    Args:
        source: a :class:`ModelExport` or an ONNX file.
        precision: ``fp32`` (set explicitly: on CPUs with bf16 units OpenVINO would otherwise
            choose bf16) or ``bf16`` (only where the CPU reports BF16 support).
        threads: inference threads (default: OpenVINO's choice).

    Raises:
        BackendError: ``bf16`` on a CPU without bf16 support.
    """

    name = "openvino"

    def __init__(self, source: ModelExport | str | Path, *, precision: str = "fp32", threads: int | None = None) -> None:
        ov = _import("openvino", "openvino")
        super().__init__(source, precision)
        self._core = ov.Core()
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


# --------------------------------------------------------------------------- registry
BACKENDS: dict[str, type[Backend]] = {
    "torch": TorchBackend,
    "onnxruntime": OnnxRuntimeBackend,
    "openvino": OpenVINOBackend,
}
_EXTRAS = {"onnxruntime": "onnx", "openvino": "openvino"}


def list_backends() -> list[str]:
    """Names :func:`create_backend` accepts."""
    return list(BACKENDS)


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def _import(module: str, extra: str) -> Any:
    try:
        return __import__(module)
    except ImportError as e:
        raise BackendError(f"the {module} backend needs {module}: pip install 'ttakit[{extra}]'") from e


def _version(name: str) -> str:
    if name == "onnxruntime":
        return _import("onnxruntime", "onnx").__version__
    return _import("openvino", "openvino").__version__.split("-")[0]  # "2026.4.1-22982-...": the release


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
        ConfigError: unknown name or precision.
        BackendError: the backend's package is missing (the message names the extra), the
            precision or provider is not available here, or the export failed its check.

    Example:
        >>> net = timm.create_model("test_resnet", num_classes=10).eval()
        >>> be = create_backend("openvino", net, input_size=(64, 64), key="test_resnet", cache=False)
        >>> be(torch.zeros(3, 3, 64, 64)).shape
        torch.Size([3, 10])
    """
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    _check_precision(precision)
    if name == "torch":
        return TorchBackend(model, precision)
    dev = torch.device(device)
    if name == "openvino" and dev.type != "cpu":
        raise BackendError(f"the openvino backend runs on the CPU, not {dev}: use onnxruntime with the CUDA provider")
    if name == "onnxruntime" and providers is None:
        providers = ("cuda", "cpu") if dev.type == "cuda" else ("cpu",)
    gpu = name == "onnxruntime" and any(p not in ("cpu", "CPUExecutionProvider") for p in providers or ())
    export = ModelExport(model, key=key, input_size=input_size, tag=f"{name} {_version(name)}", precision=precision,
                         opset=opset, cache=cache, tolerance=1e-2 if gpu else 1e-3)  # GPU kernels may use TF32
    backend: _GraphBackend
    if name == "onnxruntime":
        backend = OnnxRuntimeBackend(export, providers=providers, precision=precision, threads=threads,
                                     device_id=dev.index or 0)
    else:
        backend = OpenVINOBackend(export, precision=precision, threads=threads)
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
