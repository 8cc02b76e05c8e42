"""Numeric precisions: what each one promises, how it is checked, and which CPUs have it.

A backend running a precision other than fp32 does not return torch's numbers, so its check is
not a logit tolerance but what the precision promises for a classifier: the same top-1 on
real-looking inputs, with probabilities that move by a bounded amount. :data:`PRECISIONS`
states the limits of each precision, in one place; :func:`parity` measures the figures and
:meth:`PrecisionLimits.check` refuses a precision that misses them, in one line that gives
them. The inputs are the bundled photo (``assets/tiger_cat.jpg``) under a few crops and flips,
plus the user's own photos where given (the int8 calibration photos).

Which precisions a CPU runs fast is asked of OpenVINO (``OPTIMIZATION_CAPABILITIES``); the
``TTAKIT_CPU_PRECISIONS`` environment variable (e.g. ``fp32`` or ``fp32,int8``) narrows that
answer, so that a machine with bf16 can check what a machine without it does.

Example:
    >>> PRECISIONS.get("bf16").min_top1_agreement
    0.9
    >>> ref = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]])
    >>> f = parity(ref, ref + 0.01)
    >>> f.top1_agreement, f.n
    (1.0, 2)
    >>> PRECISIONS.get("bf16").check(f, "openvino")  # passes: returns nothing
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from ..errors import BackendError, ConfigError
from ..registry import Registry
from .signal_stack import kept_signal_stack

__all__ = [
    "CPU_PRECISIONS_ENV",
    "PRECISIONS",
    "ParityFigures",
    "PrecisionLimits",
    "check_calibration_used",
    "cpu_precisions",
    "parity",
    "parity_inputs",
    "require_cpu_precision",
]

CPU_PRECISIONS_ENV = "TTAKIT_CPU_PRECISIONS"
ASSET = Path(__file__).resolve().parents[1] / "assets" / "tiger_cat.jpg"


@dataclass(frozen=True)
class ParityFigures:
    """How a backend's outputs compare with the fp32 reference on the same inputs.

    Attributes:
        n: inputs compared.
        top1_agreement: share of inputs whose top-1 class is the reference's.
        decided: inputs whose reference top-1 leads the runner-up by more than the tie margin
            (a near-tie may flip under any rounding: random-weight models are all near-ties).
        decided_agreement: share of the decided inputs that keep their top-1 (1.0 when none).
        max_prob_diff: largest absolute difference of a softmax probability.
        max_logit_diff: largest absolute output difference, relative to the outputs' scale
            (at least 1).
    """

    n: int
    top1_agreement: float
    decided: int
    decided_agreement: float
    max_prob_diff: float
    max_logit_diff: float

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    def line(self) -> str:
        return (f"top-1 agreement {self.top1_agreement:.1%} on {self.n} inputs ({self.decided_agreement:.1%} of the "
                f"{self.decided} not near a tie), largest probability difference "
                f"{self.max_prob_diff:.4f}, largest output difference {self.max_logit_diff:.3g}")


@dataclass(frozen=True)
class PrecisionLimits:
    """What one precision promises against fp32 torch.

    Attributes:
        name: ``fp32``, ``bf16``, ``fp16`` or ``int8``.
        max_logit_diff: largest relative output difference (fp32 only: the same numbers up to
            float rounding; ``None``: not checked).
        min_top1_agreement: smallest share of decided sample inputs (see ``tie``) that keep
            fp32's top-1.
        max_prob_diff: largest softmax probability difference on the sample inputs.
        tie: an input whose fp32 top-1 probability leads the runner-up by less than this is a
            near-tie, not counted in the agreement check (its flip is rounding, not an error).
        hardware: the OpenVINO CPU capability that runs it fast (``None``: every CPU).
    """

    name: str
    max_logit_diff: float | None  # fp32: a tolerance on the outputs themselves
    min_top1_agreement: float  # others: same answers ...
    max_prob_diff: float  # ... with bounded changes of confidence
    tie: float = 0.0
    hardware: str | None = None

    def check(self, figures: ParityFigures, backend: str, tolerance: float | None = None) -> None:
        """Raise :class:`BackendError` (one line, with the figures) when ``figures`` miss
        these limits; ``tolerance`` overrides ``max_logit_diff`` (GPU kernels may use TF32)."""
        limit = tolerance if tolerance is not None else self.max_logit_diff
        missed = []
        if limit is not None and not figures.max_logit_diff <= limit:
            missed.append(f"output difference {figures.max_logit_diff:.3g} > {limit:g}")
        if not figures.decided_agreement >= self.min_top1_agreement:
            missed.append(f"top-1 agreement {figures.decided_agreement:.1%} < {self.min_top1_agreement:.1%}")
        if not figures.max_prob_diff <= self.max_prob_diff:
            missed.append(f"probability difference {figures.max_prob_diff:.4f} > {self.max_prob_diff:g}")
        if missed:
            other = "backend='torch'" if self.name == "fp32" else "precision fp32"
            raise BackendError(f"{backend} {self.name} fails its check against fp32 torch ({'; '.join(missed)}; "
                               f"{figures.line()}): use {other} for this model")


PRECISIONS: Registry[PrecisionLimits] = Registry("precision", sort=False)
# Limits per precision. bf16 keeps 8 mantissa bits (about 2-3 significant digits per
# activation), fp16 11, int8 a calibrated 8-bit grid: a real photo's top-1 survives, its
# probabilities move by up to a few percent (bf16) or more (int8). Measured on the default
# model: bf16 0.6% of 500 photos changed top-1, probabilities moved by at most 0.06 (BENCHMARKS.md).
# fp32: the output tolerance says it all (agreement and probabilities follow from it).
PRECISIONS.add("fp32", PrecisionLimits("fp32", max_logit_diff=1e-3, min_top1_agreement=0.0, max_prob_diff=1.0))
PRECISIONS.add("bf16", PrecisionLimits("bf16", None, min_top1_agreement=0.9, max_prob_diff=0.1, tie=0.05, hardware="BF16"))
PRECISIONS.add("fp16", PrecisionLimits("fp16", None, min_top1_agreement=0.9, max_prob_diff=0.05, tie=0.02, hardware="FP16"))
PRECISIONS.add("int8", PrecisionLimits("int8", None, min_top1_agreement=0.8, max_prob_diff=0.25, tie=0.1, hardware="INT8"))


def cpu_precisions() -> tuple[str, ...]:
    """The precisions this CPU runs natively, as OpenVINO reports them (fp32 always), narrowed
    by ``$TTAKIT_CPU_PRECISIONS`` (a comma-separated list) when it is set.

    Without OpenVINO installed only fp32 is claimed.

    Example:
        >>> "fp32" in cpu_precisions()
        True
    """
    have = ["fp32"]
    try:
        import openvino  # noqa: PLC0415 - optional

        with kept_signal_stack():  # loading the CPU plugin sets the thread's signal stack (signal_stack.py)
            caps = set(openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        have += [p.name for _, p in PRECISIONS.items() if p.hardware and p.hardware in caps]
    except Exception:  # noqa: BLE001 - no OpenVINO, or no CPU plugin: claim only fp32
        pass
    forced = os.environ.get(CPU_PRECISIONS_ENV)
    if forced:
        allowed = {p.strip() for p in forced.split(",")}
        have = [p for p in have if p in allowed or p == "fp32"]
    return tuple(have)


def check_calibration_used(precision: str, calibration: object | None) -> None:
    """Refuse calibration photos in a run that does not quantise (they would change nothing).

    Example:
        >>> check_calibration_used("fp32", "photos/")
        Traceback (most recent call last):
        ...
        ttakit.errors.ConfigError: `calibration` photos calibrate int8 and do nothing at `precision='fp32'`: leave them out, or use `precision='int8'`
    """
    if calibration is not None and precision != "int8":
        raise ConfigError(f"`calibration` photos calibrate int8 and do nothing at `precision={precision!r}`: "
                          "leave them out, or use `precision='int8'`")


def require_cpu_precision(precision: str, backend: str) -> None:
    """Raise :class:`BackendError` in one line when this CPU lacks ``precision``."""
    have = cpu_precisions()
    if precision not in have:
        forced = f" (${CPU_PRECISIONS_ENV} is {os.environ[CPU_PRECISIONS_ENV]!r})" if os.environ.get(CPU_PRECISIONS_ENV) else ""
        raise BackendError(f"this CPU has no native {precision} for {backend} (it has {', '.join(have)}){forced}: "
                           "use precision fp32")


def parity_inputs(size: tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...],
                  photos: Tensor | None = None) -> Tensor:
    """Real-looking inputs for a precision check: the bundled photo under 8 crops and flips,
    resized to ``size`` and normalised by ``mean``/``std``, then ``photos`` (already
    normalised model inputs of ``size``, e.g. the user's own), if given.

    Returns:
        ``(8 + len(photos), 3, H, W)`` float32.

    Example:
        >>> parity_inputs((32, 40), (0.5,) * 3, (0.25,) * 3).shape
        torch.Size([8, 3, 32, 40])
    """
    img = Image.open(ASSET).convert("RGB")
    w, h = img.size
    boxes = [(0, 0, w, h), (w // 8, h // 8, w - w // 8, h - h // 8), (0, 0, w * 2 // 3, h * 2 // 3),
             (w // 3, h // 3, w, h), (w // 4, 0, w, h * 3 // 4), (0, h // 4, w * 3 // 4, h)]
    views = [img.crop(b) for b in boxes] + [ImageOps.mirror(img), ImageOps.mirror(img.crop(boxes[1]))]
    arrays = [np.asarray(v.resize((size[1], size[0]), Image.BICUBIC), dtype=np.float32) / 255.0 for v in views]
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (8, 3, H, W)
    x = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    if photos is not None:
        x = torch.cat([x, photos.to(torch.float32).cpu()])
    return x.contiguous()


def parity(reference: Tensor | np.ndarray, got: Tensor | np.ndarray, tie: float = 0.0) -> ParityFigures:
    """Figures of ``got`` against ``reference``: two ``(N, K)`` (or ``(N, K, ...)``) outputs of
    the same inputs; probabilities are the softmax over dim 1; an input whose reference top-1
    leads by no more than ``tie`` (in probability) is a near-tie, left out of ``decided``.

    Raises:
        BackendError: the shapes differ.
    """
    ref = torch.as_tensor(np.asarray(reference) if not isinstance(reference, Tensor) else reference).float().cpu()
    out = torch.as_tensor(np.asarray(got) if not isinstance(got, Tensor) else got).float().cpu()
    if ref.shape != out.shape:
        raise BackendError(f"the backend's output has shape {tuple(out.shape)}, torch's {tuple(ref.shape)}")
    logit = float((ref - out).abs().max()) / max(1.0, float(ref.abs().max()))
    if ref.ndim < 2 or ref.shape[1] < 2:  # not class scores: only the output difference means something
        return ParityFigures(int(ref.shape[0]), 1.0, 0, 1.0, 0.0, logit)
    pr, po = ref.softmax(1), out.softmax(1)
    same = pr.argmax(1) == po.argmax(1)  # (N, ...)
    top2 = pr.topk(2, dim=1).values
    decided = (top2[:, 0] - top2[:, 1]) > tie
    n_decided = int(decided.sum())
    kept = float(same[decided].float().mean()) if n_decided else 1.0
    return ParityFigures(int(same.numel()), float(same.float().mean()), n_decided, kept,
                         float((pr - po).abs().max()), logit)
