"""Run setup, once, for the command line and Python alike: device, backend, precision and its check, int8 calibration, micro-batch.

:func:`prepare_run` turns a loaded model and a few plain settings into a :class:`PreparedRun`:
the model on its device, the :class:`~ttakit.runtime.config.RunConfig` (micro-batch, memory
format, autocast) and the :class:`~ttakit.runtime.backends.Backend` that runs it (torch, or an
ONNX export run by onnxruntime or OpenVINO, checked against fp32 at its precision). Every
setting is honoured or refused with one error naming the parameter; one that would do nothing
(int8 ``calibration`` photos at another precision) is refused too.

Example:
    >>> lm = LoadedModel(torch.nn.Conv2d(3, 4, 1), "conv", "none", {"input_size": (3, 8, 8)}, list("abcd"))
    >>> run = prepare_run(lm, device="cpu", precision="bf16", micro_batch=3)
    >>> run.device, run.run_config.micro_batch, run.run_config.amp_dtype, run.backend.label
    (device(type='cpu'), 3, torch.bfloat16, 'torch')
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..callables import is_callable_spec, load_module_spec
from ..data import preprocess
from ..datasets import calibration_photos
from ..errors import ConfigError
from ..models import DEFAULT_MODEL, LoadedModel, load_class_names, load_model
from .backends import PRECISIONS, Backend, TorchBackend, create_backend, list_backends
from .config import RunConfig, default_run_config, tune_run_config
from .precision import check_calibration_used

__all__ = ["AMP", "PreparedRun", "load_classifier", "prepare_run", "resolve_device"]

AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}  # autocast dtypes by name


@dataclass(frozen=True)
class PreparedRun:
    """A model ready to run: what :func:`prepare_run` returns (unpacks as ``lm, device, run_config, backend``).

    Attributes:
        lm: the loaded model (``torch.compile``'d when asked), on ``device``.
        device: where it runs.
        run_config: micro-batch, memory format and autocast of the view loop.
        backend: what runs ``lm.model`` (torch, or an ONNX backend at its precision).
    """

    lm: LoadedModel
    device: torch.device
    run_config: RunConfig
    backend: Backend

    def __iter__(self) -> Iterator[Any]:
        return iter((self.lm, self.device, self.run_config, self.backend))


def resolve_device(name: str | torch.device | None) -> torch.device:
    """A device: ``None`` means CUDA when available, else CPU.

    Raises:
        ConfigError: an unknown device, or CUDA asked for on a machine without it.
    """
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"unknown `device={name!r}` (use cpu, cuda or cuda:N)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"`device={name!r}` asked for, but no CUDA GPU is available")
    return dev


def load_classifier(spec: str | None, weights: str | None = None, labels: str | None = None,
                    options: Mapping[str, Any] | None = None) -> LoadedModel:
    """A classifier: a timm name (default: the embedded model), or ``MODULE:FUNCTION``
    returning an ``nn.Module`` (its classes named by ``labels``, a file, else numbered) or a
    :class:`~ttakit.models.LoadedModel`. ``options``: the task's options (a classifier's
    loading takes none); the signature is every task's model loader's."""
    if not spec or not is_callable_spec(spec):
        return load_model(spec or DEFAULT_MODEL, weights=weights, labels=labels)

    names = load_class_names(labels) if labels else None

    def wrap(model: torch.nn.Module, config: dict[str, Any]) -> LoadedModel:
        if names is not None:
            return LoadedModel(model.eval(), spec, weights or "(loader's)", config, names)
        with torch.inference_mode():  # numbered classes, as many as the model has outputs
            n = model.eval()(torch.zeros(1, *config["input_size"])).shape[-1]
        return LoadedModel(model.eval(), spec, weights or "(loader's)", config, [str(i) for i in range(n)])

    lm = load_module_spec(spec, weights, "model", LoadedModel, wrap)
    return lm if names is None else replace(lm, class_names=names)


def _calibration_inputs(calibration: str | Path | torch.Tensor | None, default: str | Path | None,
                        lm: LoadedModel) -> torch.Tensor:
    """Model inputs to calibrate int8 on: ``calibration`` (photos under a folder, or inputs
    already made), else 64 photos spread over ``default``."""
    if isinstance(calibration, torch.Tensor):
        return calibration
    folder = calibration or default
    if folder is None:
        raise ConfigError("`precision='int8'` needs your photos to calibrate on: give `calibration` (a folder)")
    return preprocess(calibration_photos(folder), lm.transform())


def prepare_run(
    lm: LoadedModel,
    *,
    device: str | torch.device | None = None,
    backend: str = "torch",
    precision: str = "fp32",
    amp: str | None = None,
    calibration: str | Path | torch.Tensor | None = None,
    calibration_default: str | Path | None = None,
    micro_batch: int | str | None = None,
    compile: bool = False,  # noqa: A002 - the CLI's --compile
    kind: str = "classifier",
    exportable: bool = True,
    tunable: bool = True,
    verbose: bool = True,
) -> PreparedRun:
    """Device, run config and backend of any task's model, each setting honoured or refused.

    Args:
        lm: the loaded model (moved to ``device``).
        device: ``cpu``, ``cuda``, ``cuda:1``, ... (default: CUDA when available).
        backend: ``torch``, or an ONNX backend (:func:`~ttakit.runtime.backends.list_backends`).
        precision: ``fp32``, ``bf16``/``fp16`` (torch autocast, or OpenVINO's inference precision),
            ``int8`` (an ONNX backend on a graph quantised on ``calibration`` photos).
        amp: autocast dtype (``bf16``/``fp16``) of the torch backend.
        calibration: int8 calibration photos (a folder) or model inputs; only with ``precision='int8'``.
        calibration_default: the folder calibrated on when ``calibration`` is not given (the data).
        micro_batch: images per forward, ``"auto"`` to measure once per device (cached), or
            ``None`` for the device's default.
        compile: ``torch.compile`` the model.
        kind: the model's kind in errors (``classifier``, ``segmenter``, ``detector``).
        exportable: its outputs export to ONNX (a detector's per-image box lists do not).
        tunable: ``micro_batch='auto'`` can time it on one tensor batch.
        verbose: say what the backend builds (exports, quantisation).

    Raises:
        ConfigError: a setting this model cannot honour, or one that does nothing here.
    """
    if backend not in list_backends():
        raise ConfigError(f"unknown `backend={backend!r}`; choose one of {', '.join(list_backends())}")
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown `precision={precision!r}`; choose one of {', '.join(PRECISIONS)}")
    if amp is not None and amp not in AMP:
        raise ConfigError(f"unknown `amp={amp!r}`; choose one of {', '.join(AMP)}")
    check_calibration_used(precision, calibration)  # calibration photos act, or are refused
    if micro_batch is not None and micro_batch != "auto" and (isinstance(micro_batch, bool) or not isinstance(
            micro_batch, int) or micro_batch < 1):
        raise ConfigError(f"`micro_batch` must be a positive integer or 'auto', got {micro_batch!r}")
    dev = resolve_device(device)
    lm.model.to(dev)
    if backend != "torch" and not exportable:
        raise ConfigError(f"`backend={backend!r}` cannot run a {kind} (its outputs do not export to ONNX); "
                          f"leave `backend` out for a {kind}")
    if backend != "torch" and (amp or compile):
        raise ConfigError(f"`amp` and `compile` are for the torch backend; with `backend={backend!r}` use `precision`")
    if backend == "torch":
        TorchBackend.accept(precision)  # int8 is refused in one line
    inputs = _calibration_inputs(calibration, calibration_default, lm) if precision == "int8" else None
    runner = None if backend == "torch" else create_backend(
        backend, lm.model, input_size=lm.input_size, key=lm.name, precision=precision, device=dev,
        calibration=inputs, verbose=verbose)
    if micro_batch == "auto":
        if not tunable:
            raise ConfigError(f"`micro_batch='auto'` measures a classifier; give a number for a {kind}")
        cfg = tune_run_config(lm.model if runner is None else runner, lm.input_size, dev)
    else:
        cfg = default_run_config(dev) if runner is None else runner.run_config(dev)
        if micro_batch:
            cfg = replace(cfg, micro_batch=micro_batch)
    if amp or (runner is None and precision in AMP):
        cfg = replace(cfg, amp_dtype=AMP[amp or precision])
    if compile:
        lm = replace(lm, model=torch.compile(lm.model))
    return PreparedRun(lm, dev, cfg, runner or TorchBackend(lm.model))
