"""The ONNX runtimes as backends: ONNX Runtime and OpenVINO run a model's cached, checked export.

A graph backend runs :class:`~ttakit.runtime.onnx_cache.CachedExport` (made once and cached)
or a given ONNX file, one loaded graph per file, numpy in and out. Each precision is checked
against fp32 torch the first time a backend prepares it for a graph
(:mod:`ttakit.runtime.precision`); int8 runs the graph quantised on the user's own photos
(:mod:`ttakit.runtime.quantize`). ONNX Runtime's CPU provider has no bf16 or fp16 convolution
kernels on x86 (its bf16 fast-math GEMM is for ARM64), so it refuses those.

Example:
    >>> from ttakit.runtime.backends import create_backend
    >>> net = timm.create_model("test_resnet", num_classes=10).eval()
    >>> be = create_backend("onnxruntime", net, input_size=(64, 64), key="test_resnet", cache=False)
    >>> be.check["figures"]["max_logit_diff"] < 1e-3, OnnxRuntimeBackend.precisions
    (True, ('fp32', 'int8'))
"""

from __future__ import annotations

import json
import sys
import tempfile
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import BackendError, ConfigError
from .backend_base import BACKENDS, Backend, Size, _import
from .config import RunConfig, default_run_config
from .onnx_cache import CachedExport, Runner, as_numpy
from .precision import PRECISIONS as PRECISION_LIMITS
from .precision import ParityFigures, parity, parity_inputs, require_cpu_precision
from .quantize import quantized_path
from .signal_stack import kept_signal_stack

__all__ = ["OnnxRuntimeBackend", "OpenVINOBackend"]

CHECK_PHOTOS = 8  # the user's calibration photos added to the bundled photo's views in a precision check


def _norm(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std the model's inputs are normalised with (timm's config, else ImageNet's)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))



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
    """Shared by the ONNX runtimes: one loaded graph per file, numpy in and out, each graph's
    precision checked once against fp32 torch."""

    package: ClassVar[tuple[str, str]]  # (module, the ttakit extra that installs it)

    def __init__(self, source: CachedExport | str | Path, precision: str, calibration: Tensor | None = None,
                 verbose: bool = False) -> None:
        self.accept(precision, calibration)
        self.precision = precision
        self.source = source if isinstance(source, CachedExport) else _FileSource(source)
        self.calibration = calibration
        self.verbose = verbose
        self.check: dict[str, Any] | None = None  # the precision check's figures (first graph prepared)
        self._runners: dict[Path, Runner] = {}
        self._by_size: dict[Size, Runner] = {}  # the per-call fast path

    @classmethod
    def accept(cls, precision: str, calibration: Tensor | None = None) -> None:
        super().accept(precision)
        if precision != "fp32":
            require_cpu_precision(precision, cls.name)
        if precision == "int8" and calibration is None:
            raise ConfigError("int8 needs calibration images: pass calibration=(N, C, H, W) model inputs made from "
                              "your own photos (the CLI takes --calibration DIR, default the first photos of DATA)")

    @classmethod
    def runtime(cls) -> Any:
        """The runtime's Python module (``BackendError`` naming the extra when missing)."""
        return _import(*cls.package)

    @classmethod
    def version(cls) -> str:
        return str(cls.runtime().__version__).split("-")[0]  # openvino "2026.4.1-22982-...": the release

    @classmethod
    def _export(cls, model: nn.Module, *, input_size: Size, key: str, cache: bool, opset: int,
                gpu: bool = False) -> CachedExport:
        return CachedExport(model, key=key, input_size=input_size, tag=f"{cls.name} {cls.version()}",
                            opset=opset, cache=cache, tolerance=1e-2 if gpu else 1e-3)  # GPU kernels may use TF32

    @abstractmethod
    def _load(self, path: Path, precision: str) -> Runner:
        """Open ``path`` in the runtime, to run at ``precision``."""

    def _for_size(self, size: Size) -> Runner:
        run = self._by_size.get(size)
        if run is None:
            path, fresh = self.source.path_for(size, lambda f: self._load(f, "fp32"))
            if self.precision != "fp32":
                fresh = None  # the export check ran the graph at fp32
            if self.precision == "int8":  # calibrated at the photos' own size unless the graph has one size
                fixed = isinstance(self.source, CachedExport) and self.source.fixed_size(path)
                path = quantized_path(path, self._calibration(size if fixed else None), self._folder(path))
            if path not in self._runners:
                self._runners[path] = fresh or self._load(path, self.precision)
                self._check(path, self._runners[path], size)
            run = self._by_size[size] = self._runners[path]
        return run

    def _calibration(self, size: Size | None) -> Tensor:
        x = self.calibration
        assert x is not None  # checked in __init__
        if size is not None and tuple(x.shape[-2:]) != size:  # a graph exported for another size
            x = torch.nn.functional.interpolate(x.float(), size=size, mode="bilinear", align_corners=False)
        return x

    def _folder(self, path: Path) -> Path | None:
        """Where the int8 file and the check records of ``path`` go: beside an exported graph;
        for a given file, a private temporary folder (the user's folder is left alone)."""
        if isinstance(self.source, CachedExport):
            return None
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="ttakit-int8-")
        return Path(self._tmp.name)

    _tmp: tempfile.TemporaryDirectory | None = None

    def _reference(self, x: Tensor, path: Path) -> Any:
        """fp32 torch's output (an exported model), else the given file's at fp32."""
        if isinstance(self.source, CachedExport):
            return self.source.reference(x)
        return self._load(self.source.path, "fp32")(as_numpy(x))[0]

    def _check(self, path: Path, run: Runner, size: Size) -> None:
        """Check ``run`` (the graph ``path`` at this backend's precision) against fp32 on the
        bundled photo's views (plus a few calibration photos): once per graph and precision,
        remembered beside the graph; raise :class:`BackendError` when it misses its limits."""
        if self.precision == "fp32" and not isinstance(self.source, CachedExport):
            return  # a given fp32 file is run as it is (nothing to compare it with)
        limits = PRECISION_LIMITS.get(self.precision)
        folder = self._folder(path) or path.parent
        record = folder / f"{path.stem}.{self.precision}.check.json"
        fresh = not record.exists()
        if fresh:
            photos = None if self.calibration is None else self._calibration(size)[-CHECK_PHOTOS:]
            x = parity_inputs(size, *_norm(getattr(self.source, "model", nn.Identity())), photos=photos)
            ref = self._reference(x, path)
            ref = ref if isinstance(ref, Tensor) else ref[0]
            got = np.concatenate([run(as_numpy(x[i:i + 8]))[0] for i in range(0, len(x), 8)])
            figures = parity(ref, got, tie=limits.tie)
        else:
            figures = ParityFigures(**json.loads(record.read_text())["figures"])
        tolerance = getattr(self.source, "tolerance", None) if self.precision == "fp32" else None
        limits.check(figures, self.name, tolerance)
        self.check = {"backend": self.label, "checked_against": "fp32 torch", "size": list(size),
                      "figures": figures.as_dict(), "limits": {k: v for k, v in vars(limits).items() if k != "hardware"}}
        if fresh:
            record.write_text(json.dumps(self.check, indent=1) + "\n")
            if self.verbose:
                print(f"{self.label} checked against fp32 torch: {figures.line()}", file=sys.stderr)

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
        precision: ``fp32``, or ``int8`` (the graph quantised on ``calibration``; ONNX
            Runtime's x86 CPU provider has no bf16/fp16 convolution kernels, so those are refused).
        calibration: ``(N, C, H, W)`` model inputs from the user's photos (``int8`` only).
        verbose: print the precision check's figures the first time they are measured.
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
    precisions = ("fp32", "int8")
    refusals = dict.fromkeys(("bf16", "fp16"), (
        "ONNX Runtime's CPU provider has no bf16/fp16 convolution kernels on x86 (its bf16 fast math is for ARM64); "
        "use backend openvino for bf16, or precision int8"))

    def __init__(
        self,
        source: CachedExport | str | Path,
        *,
        providers: Sequence[str] | None = None,
        precision: str = "fp32",
        calibration: Tensor | None = None,
        verbose: bool = False,
        threads: int | None = None,
        device_id: int = 0,
        spinning: bool = False,
    ) -> None:
        super().__init__(source, precision, calibration, verbose)
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
               opset: int, calibration: Tensor | None = None, verbose: bool = False) -> OnnxRuntimeBackend:
        if providers is None:
            providers = ("cuda", "cpu") if device.type == "cuda" else ("cpu",)
        gpu = any(p not in ("cpu", "CPUExecutionProvider") for p in providers)
        cls.accept(precision, calibration)
        export = cls._export(model, input_size=input_size, key=key, cache=cache, opset=opset, gpu=gpu)
        return cls(export, providers=providers, precision=precision, calibration=calibration, verbose=verbose,
                   threads=threads, device_id=device.index or 0)

    def _load(self, path: Path, precision: str) -> Runner:  # an int8 graph holds its own precision
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
    """OpenVINO on the CPU, with an explicit inference precision.

    Args:
        source: a :class:`~ttakit.runtime.onnx_cache.CachedExport` or an ONNX file.
        precision: ``fp32`` (set explicitly: on CPUs with bf16 units OpenVINO would otherwise
            choose bf16), ``bf16`` or ``fp16`` (where the CPU has them), or ``int8`` (the graph
            quantised on ``calibration``, which OpenVINO runs with its int8 kernels).
        calibration: ``(N, C, H, W)`` model inputs from the user's photos (``int8`` only).
        verbose: print the precision check's figures the first time they are measured.
        threads: inference threads (default: OpenVINO's choice).
        streams: ``1`` runs each micro-batch as one request on every core (OpenVINO's LATENCY
            hint); ``0`` (default) lets OpenVINO's THROUGHPUT hint choose several streams and
            splits each micro-batch between that many requests run at once, which keeps the
            cores busy on the small per-stream batches TTA sends (BENCHMARKS.md, precision table).

    Raises:
        BackendError: a precision this CPU lacks.
    """

    name = "openvino"
    package = ("openvino", "openvino")
    precisions = ("fp32", "bf16", "fp16", "int8")
    _HINTS: ClassVar[dict[str, str]] = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}

    def __init__(self, source: CachedExport | str | Path, *, precision: str = "fp32", calibration: Tensor | None = None,
                 verbose: bool = False, threads: int | None = None, streams: int = 0) -> None:
        super().__init__(source, precision, calibration, verbose)
        self._core = self.runtime().Core()
        self.streams = streams
        self.threads = threads

    def config(self, precision: str) -> dict[str, Any]:
        """The compile options for ``precision`` (an int8 graph's other layers run at f32)."""
        cfg: dict[str, Any] = {"INFERENCE_PRECISION_HINT": self._HINTS[precision],
                               "PERFORMANCE_HINT": "LATENCY" if self.streams == 1 else "THROUGHPUT"}
        if self.streams > 1:
            cfg["NUM_STREAMS"] = self.streams
        if self.threads:
            cfg["INFERENCE_NUM_THREADS"] = int(self.threads)
        return cfg

    @classmethod
    def create(cls, model: nn.Module, *, input_size: Size, key: str, precision: str, cache: bool,
               device: torch.device, threads: int | None, opset: int, calibration: Tensor | None = None,
               verbose: bool = False, **_: Any) -> OpenVINOBackend:
        if device.type != "cpu":
            raise BackendError(f"the openvino backend runs on the CPU, not {device}: use onnxruntime with the CUDA provider")
        cls.accept(precision, calibration)
        export = cls._export(model, input_size=input_size, key=key, cache=cache, opset=opset)
        return cls(export, precision=precision, calibration=calibration, verbose=verbose, threads=threads)

    def _load(self, path: Path, precision: str) -> Runner:
        if precision != "int8":
            return self._compile(path, precision)
        # OpenVINO runs a QDQ graph with free spatial axes wrongly (every top-1 changed on the
        # sample photos, OpenVINO 2026.4): fix (H, W) and compile once per size seen.
        by_size: dict[tuple[int, ...], Runner] = {}

        def run_int8(x: np.ndarray) -> list[np.ndarray]:
            run = by_size.get(x.shape[1:])
            if run is None:
                run = by_size[x.shape[1:]] = self._compile(path, precision, x.shape[1:])
            return run(x)

        return run_int8

    def _compile(self, path: Path, precision: str, shape: tuple[int, ...] | None = None) -> Runner:
        try:
            # Loading the CPU plugin sets this thread's signal stack, and freeing the Core puts an
            # older one back, possibly freed by then: keep ours (runtime/signal_stack.py).
            with kept_signal_stack():
                model = self._core.read_model(str(path))
                if shape is not None:
                    model.reshape([-1, *shape])  # the batch axis stays free
                compiled = self._core.compile_model(model, "CPU", self.config(precision))
        except Exception as e:  # noqa: BLE001
            raise BackendError(f"OpenVINO could not compile {path.name}: {str(e).splitlines()[0][:300]}") from e
        outputs = list(compiled.outputs)
        n = 1 if self.streams == 1 else int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        if n == 1:
            request = compiled.create_infer_request()

            def run(x: np.ndarray) -> list[np.ndarray]:
                # share_outputs=False: the next call reuses the request's buffers; the loop keeps slices.
                res = request.infer({0: x}, share_inputs=True, share_outputs=False)
                return [np.asarray(res[o]) for o in outputs]

            return run
        # n requests started at once and waited for in order: no Python callback runs on
        # OpenVINO's threads (a callback taking the GIL there aborted the process now and then).
        requests = [compiled.create_infer_request() for _ in range(n)]

        def run_split(x: np.ndarray) -> list[np.ndarray]:
            # One micro-batch split between the streams: (N, ...) -> up to n parts, run at once.
            pieces = [p for p in np.array_split(x, min(n, len(x))) if len(p)]
            for request, piece in zip(requests, pieces):
                request.start_async({0: np.ascontiguousarray(piece)}, share_inputs=False)
            parts = []
            for request in requests[:len(pieces)]:
                request.wait()
                parts.append([request.get_tensor(o).data.copy() for o in outputs])
            return [np.concatenate([p[k] for p in parts]) for k in range(len(outputs))]

        return run_split


