"""What a conformal calibration was made for: model, weights, merge, adaptive and adaptation.

A calibration's coverage holds for the probabilities it was calibrated on: the same model and
weights, merge, adaptive threshold and adaptation. ``ttakit calibrate`` writes this record
next to the calibration (``meta["conformal_for"]``); a wrapper given a calibrated policy
compares it with its own and refuses one that differs, naming what. A policy calibrated before
the record existed has none: its coverage is *unverified* (a warning says so).

Example:
    >>> net = torch.nn.Linear(2, 3)
    >>> rec = calibration_record(net, merge="mean", model_name="lin")
    >>> record_mismatch(rec, calibration_record(net, merge="gmean"))
    "merge ('mean' when calibrated, 'gmean' now)"
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["calibration_record", "record_mismatch", "weights_fingerprint"]


def weights_fingerprint(model: nn.Module, samples: int = 64) -> str:
    """A sha256 prefix of the model's state: every tensor's name, shape, sum and up to
    ``samples`` evenly spaced values (cheap on any model; a retrained or other model differs).

    Example:
        >>> a = torch.nn.Linear(2, 2)
        >>> weights_fingerprint(a) == weights_fingerprint(a), len(weights_fingerprint(a))
        (True, 16)
    """
    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not isinstance(t, torch.Tensor):
                continue
            flat = t.detach().reshape(-1).double().cpu()
            step = max(1, flat.numel() // samples)
            h.update(f"{name}{tuple(t.shape)}{float(flat.sum()) if flat.numel() else 0.0!r}".encode())
            h.update(flat[::step][:samples].numpy().tobytes())
    return h.hexdigest()[:16]


def calibration_record(model: nn.Module | None, *, merge: str, model_name: str | None = None,
                       adaptive: float | None = None, adapt: str | None = None,
                       adapt_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The record of what produces the probabilities a calibration covers (``None`` fields:
    unknown here, not compared)."""
    return {
        "model": model_name,
        "weights": None if model is None else weights_fingerprint(model),
        "merge": merge,
        "adaptive": adaptive,
        "adapt": adapt,
        "adapt_options": None if adapt is None else dict(adapt_options or {}),
    }


def record_mismatch(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> str | None:
    """What differs between the calibration's record and the current run, as text naming each
    field (``None``: nothing; a field unknown on either side is not compared, except that the
    adaptive threshold and adaptation count even when one side has none)."""
    always = ("adaptive", "adapt", "adapt_options", "merge")
    diff = [f"{k} ({recorded.get(k)!r} when calibrated, {now.get(k)!r} now)" for k in recorded
            if recorded.get(k) != now.get(k) and (k in always or (recorded.get(k) is not None and now.get(k) is not None))]
    return "; ".join(diff) or None
