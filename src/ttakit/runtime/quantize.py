"""int8 static quantisation of an ONNX graph, calibrated on the user's own photos, cached.

ONNX Runtime's quantiser (``onnxruntime.quantization.quantize_static``) writes a QDQ graph:
weights int8 per output channel, activations uint8 with ranges measured on the calibration
photos. ONNX Runtime runs it with its int8 kernels (VNNI/AMX where the CPU has them), and
OpenVINO reads the same QDQ graph and runs it in int8 too, so one quantised file serves both
backends. (NNCF, OpenVINO's own quantiser, would bring scipy, scikit-learn, networkx and
ninja with it; ONNX Runtime is already here.)

The file is cached next to the fp32 export, keyed by the fp32 file and a digest of the
calibration inputs, so a later process with the same model and photos skips calibration.

Example:
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten()).eval()
    >>> calibration_digest(torch.zeros(2, 3, 8, 8)) == calibration_digest(torch.zeros(2, 3, 8, 8))
    True
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import BackendError, ConfigError

__all__ = ["calibration_digest", "quantized_path"]

CALIBRATION_BATCH = 8  # inputs per calibration forward: the ranges are the same, memory stays small


def calibration_digest(x: Tensor) -> str:
    """SHA-256 prefix of the calibration inputs' shape and bytes (part of the cache key)."""
    a = x.detach().to("cpu", torch.float32).contiguous().numpy()
    return hashlib.sha256(repr(a.shape).encode() + a.tobytes()).hexdigest()[:16]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


class _Reader:
    """Feeds the calibration inputs to the quantiser, a few at a time."""

    def __init__(self, name: str, x: np.ndarray) -> None:
        self.batches = iter([{name: x[i:i + CALIBRATION_BATCH]} for i in range(0, len(x), CALIBRATION_BATCH)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)

    def rewind(self) -> None:  # the MinMax calibrator reads once; other methods are not used here
        pass


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Python logging below ERROR off inside the block; the previous level is restored."""
    before = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(before)


def quantized_path(fp32: Path, calibration: Tensor, folder: Path | None = None) -> Path:
    """The int8 QDQ version of the ONNX file ``fp32``, calibrated on ``calibration`` (model
    inputs, ``(N, C, H, W)``, already normalised), quantised now unless cached.

    Args:
        fp32: the checked fp32 graph.
        calibration: at least one input; 32-200 typical photos give stable ranges.
        folder: where the file is cached (default: beside ``fp32``).

    Raises:
        ConfigError: no calibration inputs.
        BackendError: onnxruntime's quantiser is missing or failed.
    """
    if calibration.ndim != 4 or len(calibration) == 0:
        raise ConfigError(f"int8 needs calibration images (N, C, H, W) with N >= 1, got shape {tuple(calibration.shape)}")
    try:
        import onnxruntime as ort  # noqa: PLC0415 - optional
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static  # noqa: PLC0415
    except ImportError as e:
        raise BackendError("int8 quantisation needs onnxruntime: pip install 'ttakit[onnx]'") from e
    folder = folder or fp32.parent
    key = f"{_file_digest(fp32)}-{calibration_digest(calibration)}-ort{ort.__version__}"
    out = folder / f"{fp32.stem}-int8-{hashlib.sha256(key.encode()).hexdigest()[:16]}.onnx"
    if out.exists():
        return out
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx.tmp", dir=folder)
    os.close(fd)
    try:
        name = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).get_inputs()[0].name
        x = calibration.detach().to("cpu", torch.float32).contiguous().numpy()
        extra: dict[str, Any] = {"ActivationSymmetric": False, "WeightSymmetric": True}
        with _quiet():  # the quantiser logs advice on the root logger; the result is checked instead
            quantize_static(str(fp32), tmp, _Reader(name, x), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, extra_options=extra)
        Path(tmp).replace(out)  # atomic: concurrent processes never see half a file
    except Exception as e:  # noqa: BLE001 - the quantiser raises many types
        raise BackendError(f"int8 quantisation of {fp32.name} failed: {str(e).splitlines()[0][:300]}") from e
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out
