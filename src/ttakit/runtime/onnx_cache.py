"""A torch model exported to ONNX once, checked against torch, and cached on disk.

:class:`CachedExport` is what the ONNX backends (:mod:`ttakit.runtime.backends`) run: one file
per model key, weights digest, input size, opset, runtime and its version, in
``cache_dir() / "backends"``; another process with the same model finds the file and skips the
export. The file has a dynamic batch axis and dynamic spatial axes, and is checked against the
torch model at the input size and at a second, non-square size. A model whose trace bakes in
its input size (the second check fails) is exported once per view size instead, lazily, each
file checked at its size.

(The whole-policy TTA graph is another thing: :mod:`ttakit.runtime.export`.)

Example:
    >>> net = timm.create_model("test_resnet", num_classes=10).eval()
    >>> with eval_mode(net.train()):
    ...     net.training
    False
    >>> net.training
    True
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import BackendError
from ..files import write_atomic
from .config import cache_dir, model_device

__all__ = [
    "checking_runtime",
    "DEFAULT_OPSET",
    "CachedExport",
    "Runner",
    "as_numpy",
    "eval_mode",
    "onnx_export",
    "quiet_export",
    "weights_digest",
]

DEFAULT_OPSET = 17  # GridSample and every op the views and merges need; widely supported
Size = tuple[int, int]
Runner = Callable[[np.ndarray], list[np.ndarray]]  # (N, C, h, w) float32 -> the graph's outputs


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


def checking_runtime() -> Any:
    """onnxruntime, which checks an exported graph against torch.

    Raises:
        BackendError: onnxruntime is not installed (the check is never skipped in silence).
    """
    try:
        import onnxruntime  # noqa: PLC0415 - an optional extra
    except ImportError as e:
        raise BackendError("checking the exported graph needs onnxruntime: pip install 'ttakit[onnx]', "
                           "or export without the check (`check=False`)") from e
    return onnxruntime


def as_numpy(x: Tensor) -> np.ndarray:
    """A contiguous NCHW float32 array: shares ``x``'s memory when it already is one (a
    contiguous float32 CPU tensor), else one copy (channels-last, half, another device)."""
    return x.detach().to("cpu", torch.float32).contiguous().numpy()


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode inside the block; every submodule's own train/eval flag is
    restored afterwards (``module.train(old)`` would reset them all from the top's)."""
    modes = {m: m.training for m in module.modules()}
    try:
        yield module.eval()
    finally:
        for m, training in modes.items():
            m.training = training


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    """Silence the tracer's chatter (shape-as-constant and deprecation warnings): the result is
    checked numerically instead."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def onnx_export(
    module: nn.Module,
    example: Tensor | tuple[Tensor, ...],
    path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    input_name: str | Sequence[str] = "images",
    output_names: Sequence[str] = ("output",),
    dynamic_spatial: bool = True,
) -> Path:
    """Export ``module`` to ONNX with a dynamic batch axis (and spatial axes if asked).

    Uses the TorchScript-tracing exporter (``dynamo=False``): it exports a CNN in seconds, and
    dynamic spatial axes need no shape constraints (the ``torch.export`` path took minutes or
    stalled on them). Every submodule's train/eval mode is restored afterwards.

    Args:
        example: one example input, or a tuple of them (one per name in ``input_name``).
        input_name: the input's name, or one name per example input.

    Raises:
        BackendError: the exporter failed (the message names the operator when it says so).
    """
    try:
        import onnx  # noqa: F401, PLC0415 - the TorchScript exporter writes through it
    except ImportError as e:
        raise BackendError("ONNX export needs the onnx package: pip install 'ttakit[onnx]' (or 'ttakit[openvino]')") from e
    path = Path(path)
    inputs = [input_name] if isinstance(input_name, str) else list(input_name)
    examples = (example,) if isinstance(example, Tensor) else tuple(example)
    spatial = {2: "height", 3: "width"} if dynamic_spatial else {}
    axes: dict[str, dict[int, str]] = {name: {0: "batch", **spatial} for name in inputs}
    for name in output_names:
        axes[name] = {0: "batch"}
    try:
        with quiet_export(), torch.no_grad(), eval_mode(module):
            torch.onnx.export(
                module, examples, str(path), dynamo=False, opset_version=opset, input_names=inputs,
                output_names=list(output_names), dynamic_axes=axes, do_constant_folding=True,
            )
    except Exception as e:  # noqa: BLE001 - the exporter raises many types; all mean the same here
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise BackendError(f"ONNX export of {type(module).__name__} failed: {first}") from e
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


class CachedExport:
    """A torch model exported to ONNX once, cached on disk, checked against torch.

    Args:
        model: the network (eval mode is used for the export; its modes are restored).
        key: names the model (timm architecture or class name); part of the cache key.
        input_size: ``(H, W)`` of the export example and of the first check.
        tag: the runtime and its version (``"onnxruntime 1.31.1"``): part of the cache key.
        opset: ONNX opset.
        cache: reuse and write files in ``cache_dir() / "backends"``; otherwise a private
            temporary folder, deleted with this object.
        tolerance: largest relative difference accepted by the checks.

    The graph is fp32 whatever precision a backend then runs it at: ``load`` (see
    :meth:`path_for`) opens it at fp32, and the backend checks its own precision
    (:mod:`ttakit.runtime.precision`). The cache key also holds the weights digest and the
    torch version. A file is written next to a ``.json`` record (what was exported, whether
    its spatial axes are dynamic) by an atomic rename, so processes exporting at the same time
    never see half a file.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        key: str,
        input_size: Size,
        tag: str,
        opset: int = DEFAULT_OPSET,
        cache: bool = True,
        tolerance: float = 1e-3,
    ) -> None:
        self.model = model
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.digest = weights_digest(model)
        self.fields = {
            "key": key, "class": type(model).__qualname__, "weights": self.digest, "input_size": list(self.input_size),
            "opset": opset, "backend": tag, "torch": torch.__version__, "exporter": "torchscript",
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
        return f"{self.fields['key']}|{self.fields['backend']}|{self.digest[:16]}"

    def _path(self, size: Size | None) -> Path:
        if size in self._paths:
            return self._paths[size]
        fields = {**self.fields, "fixed_size": None if size is None else list(size)}
        h = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
        name = f"{_slug(str(self.fields['key']))}-{_slug(str(self.fields['backend']).split()[0])}-{h}"
        path = self.folder / (name + ("" if size is None else f"-{size[0]}x{size[1]}") + ".onnx")
        self._paths[size] = path
        return path

    def fixed_size(self, path: Path) -> bool:
        """Whether ``path`` (from :meth:`path_for`) was exported for one input size only."""
        return path != self._path(None)

    def _example(self, size: Size) -> Tensor:
        g = torch.Generator().manual_seed(0)
        return torch.randn(2, 3, *size, generator=g).to(model_device(self.model))

    def reference(self, x: Tensor) -> Any:
        """The torch model's output for ``x`` (eval mode, on the model's device)."""
        with torch.inference_mode(), eval_mode(self.model):
            return self.model(x.to(model_device(self.model)).contiguous())

    def _check_other_size(self, size: Size, run: Runner) -> tuple[float, str]:
        """Largest difference between torch and ``run`` at another ``size`` (``inf`` when
        either refuses it), and why it was refused (empty when it was not)."""
        x = self._example(size)
        try:
            ref = self.reference(x)
        except RuntimeError as e:  # torch's own shape errors: the model takes one size only
            return float("inf"), f"torch at {size[0]}x{size[1]}: {e}"
        try:
            got = run(as_numpy(x))
        except Exception as e:  # noqa: BLE001 - each runtime raises its own types (onnxruntime's derive from Exception); the cause is recorded
            return float("inf"), f"the ONNX graph at {size[0]}x{size[1]}: {type(e).__name__}: {e}"
        return _close(ref, got), ""

    def path_for(self, size: Size, load: Callable[[Path], Runner]) -> tuple[Path, Runner | None]:
        """The ONNX file that runs images of ``size``, exported and checked if not cached.

        Args:
            size: ``(h, w)`` of the images to run.
            load: opens a file in the backend's runtime at fp32 (used for the checks).

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
        ref = self.reference(example)
        names = _output_names(ref)
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(suffix=".onnx.tmp", dir=self.folder)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            onnx_export(self.model, example, tmp, opset=self.opset, output_names=names, dynamic_spatial=fixed is None)
            run = load(tmp)
            err = _close(ref, run(as_numpy(example)))
            if not err <= self.tolerance:
                raise BackendError(
                    f"the ONNX export of {self.fields['key']} differs from torch by {err:.3g} at {size[0]}x{size[1]} "
                    f"(more than {self.tolerance:g}); use backend='torch' for this model")
            record = {**self.fields, "spatial": "fixed", "checked": {f"{size[0]}x{size[1]}": err}}
            if fixed is None:  # one more check at another, non-square size: are the spatial axes really free?
                other = (max(16, size[0] * 7 // 8), max(16, size[1] * 9 // 8))
                err2, refused = self._check_other_size(other, run)
                record["checked"][f"{other[0]}x{other[1]}"] = err2 if np.isfinite(err2) else None
                if refused:  # why this model is exported per size, kept with the cache entry
                    record["refused"] = refused
                record["spatial"] = "dynamic" if err2 <= self.tolerance else "fixed"
            else:
                record["fixed_size"] = list(fixed)
            tmp.replace(path)
            write_atomic(path.with_suffix(".json"), json.dumps(record, indent=1) + "\n")
            self.exported.append(path)
            return run  # loaded in memory: the rename does not affect it
        finally:
            tmp.unlink(missing_ok=True)
