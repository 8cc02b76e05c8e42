"""A reduced precision against fp32 on the same images: the plain model's top-1, paired.

After ``evaluate`` ran a backend at bf16, fp16 or int8, :func:`evaluate_precision` runs the
plain view once more in fp32 torch (into ``OUT/fp32/``: one view per image, resumable like any
run) and compares the two plain rows image by image with the paired statistics of
:mod:`ttakit.evaluation.stats`: the change of top-1 with its interval and McNemar p-value, and
the share of images whose top-1 class stayed the same.

Example:
    >>> logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    >>> row = compare_plain(logits, logits.flip(1), torch.tensor([0, 1, 1]), "int8")
    >>> row["agreement"], row["top1_fp32"], row["top1"]
    (0.0, 0.6666666666666666, 0.3333333333333333)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import DatasetError
from ..files import write_atomic
from ..models import LoadedModel
from ..policy import create_policy
from ..runtime.backends import Backend
from ..runtime.config import default_run_config
from .evaluate import evaluate
from .scoring import EvalOptions
from .stats import compare
from .classify_logits import load_logits

__all__ = ["compare_plain", "evaluate_precision"]

PLAIN = "identity"  # the stored name of the plain view


def compare_plain(fp32: Tensor, reduced: Tensor, labels: Tensor, precision: str) -> dict[str, Any]:
    """``reduced``'s plain logits ``(N, C)`` against ``fp32``'s on the same images, paired.

    Returns:
        ``top1_fp32``, ``top1``, ``agreement`` (share of images with the same top-1 class),
        the paired comparison's fields (``delta_top1``, ``ci_top1``, ``p_value``, ...) and a
        one-line ``verdict``.
    """
    if fp32.shape != reduced.shape or len(labels) != len(fp32):
        raise DatasetError(f"fp32 logits {tuple(fp32.shape)} and {precision} logits {tuple(reduced.shape)} "
                           f"of {len(labels)} labels do not pair up")
    f_ok, r_ok = fp32.argmax(-1) == labels, reduced.argmax(-1) == labels
    f_nll = torch.nn.functional.cross_entropy(fp32.float(), labels, reduction="none")
    r_nll = torch.nn.functional.cross_entropy(reduced.float(), labels, reduction="none")
    c = compare(f_ok, r_ok, f_nll, r_nll)
    agreement = float((fp32.argmax(-1) == reduced.argmax(-1)).double().mean()) if len(labels) else float("nan")
    return {"precision": precision, "n": len(labels), "top1_fp32": float(f_ok.double().mean()),
            "top1": float(r_ok.double().mean()), "agreement": agreement, "fixed": c.fixed, "broken": c.broken,
            **c.to_dict(), "verdict": c.verdict(f"{precision} vs fp32") + f"; same top-1 on {agreement:.1%}"}


def _plain(out: Path) -> tuple[Tensor, Tensor, Tensor]:
    logits, labels, names, idx = load_logits(out)
    order = idx.argsort()
    return logits[order, names.index(PLAIN)], labels[order], idx[order]


def evaluate_precision(
    lm: LoadedModel,
    data: Any,
    out_dir: str | Path,
    backend: Backend,
    options: EvalOptions,
    device: torch.device | str = "cpu",
    progress: Callable[[int], Any] | None = None,
) -> dict[str, Any]:
    """The plain top-1 of ``backend``'s precision (a finished run in ``out_dir``) against fp32
    torch on the same images; the fp32 plain view is evaluated into ``out_dir/fp32`` and the
    comparison written to ``out_dir/precision.json``. Under torchrun every rank calls it (the
    fp32 run is shared out like any); the other ranks return ``{}``."""
    out = Path(out_dir)
    if not evaluate(lm, data, [create_policy("none")], out_dir=out / "fp32", run_config=default_run_config(device),
                    options=options, device=device, progress=progress):
        return {}  # not rank 0 under torchrun: rank 0 compares and writes
    fp32, labels, idx = _plain(out / "fp32")
    reduced, labels_r, idx_r = _plain(out)
    if not torch.equal(idx, idx_r):
        raise DatasetError(f"{out} and {out / 'fp32'} hold different images; delete {out / 'fp32'} and run again")
    row = {**compare_plain(fp32, reduced, labels, backend.precision), "backend": backend.label,
           "check": getattr(backend, "check", None)}
    write_atomic(out / "precision.json", json.dumps(row, indent=2) + "\n")
    return row
