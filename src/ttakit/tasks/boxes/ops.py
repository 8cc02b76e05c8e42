"""Box tensor helpers shared by the box merges and the WBF engine: checks, clipping, IoU, output order.

Every merge computes in float64 wherever the device has it (ensemble_boxes works in numpy
float64) and returns ``(boxes (M, 4), scores (M,), labels (M,))`` by descending score, in the
input's float dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ...errors import ConfigError, check_shape

__all__ = [
    "Merged",
    "Weights",
    "check_boxes",
    "check_view_ids",
    "compute_dtype",
    "dense_rank",
    "empty_result",
    "finish",
    "iou_pairs",
    "prepare",
    "round_f32",
    "view_weights",
    "weighted_scores",
]

Merged = tuple[Tensor, Tensor, Tensor]  # boxes (M, 4), scores (M,), labels (M,)
Weights = Tensor | Sequence[float] | None  # (V,) per-view weights, None: all 1


def compute_dtype(device: torch.device) -> torch.dtype:
    """float64 wherever it exists, so that decisions match ensemble_boxes (numpy float64)."""
    return torch.float32 if device.type == "mps" else torch.float64


def round_f32(x: Tensor) -> Tensor:
    """Round to float32 and back: ensemble_boxes keeps fused boxes in a float32 array."""
    return x.to(torch.float32).to(x.dtype)


def check_boxes(boxes: Tensor, scores: Tensor, labels: Tensor, view_ids: Tensor | None = None) -> int:
    """Check ``boxes (N, 4)``, ``scores (N,)``, ``labels (N,)`` (and ``view_ids (N,)``); returns ``N``.

    Raises:
        ShapeError: a shape other than these.
    """
    check_shape("boxes", boxes.shape, "(N, 4)")
    n = boxes.shape[0]
    check_shape("scores", scores.shape, f"({n})")
    check_shape("labels", labels.shape, f"({n})")
    if view_ids is not None:
        check_shape("view_ids", view_ids.shape, f"({n})")
    return n


def view_weights(weights: Weights, n_views: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The ``(V,)`` view weights (all 1 when ``None``), checked finite, non-negative, not all 0."""
    if n_views < 1:
        raise ConfigError(f"n_views must be >= 1, got {n_views}")
    if weights is None:
        return torch.ones(n_views, dtype=dtype, device=device)
    w = torch.as_tensor(weights, dtype=dtype, device=device)
    check_shape("weights", w.shape, f"({n_views})")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or not float(w.sum()) > 0:
        raise ConfigError(f"weights must be finite, non-negative and not all zero, got {w.tolist()}")
    return w


def check_view_ids(view_ids: Tensor, n_views: int) -> None:
    if view_ids.numel() and (int(view_ids.min()) < 0 or int(view_ids.max()) >= n_views):
        raise ConfigError(f"view_ids must be in [0, {n_views})")


def weighted_scores(scores: Tensor, view_ids: Tensor, n_views: int, weights: Weights) -> Tensor:
    """``score * w[view] / w.sum()`` (ensemble_boxes' NMS convention); unchanged without weights."""
    if weights is None:
        return scores
    check_shape("view_ids", view_ids.shape, f"({scores.shape[0]})")
    w = view_weights(weights, n_views, compute_dtype(scores.device), scores.device)
    check_view_ids(view_ids, n_views)
    return (scores.to(w.dtype) * w[view_ids.long()] / w.sum()).to(_out_dtype(scores))


def prepare(boxes: Tensor, image_size: tuple[int, int] | None, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """Order each box's corners, clip to the image when its size is known, find zero areas.

    Returns the boxes in ``dtype`` (divided by the image size when given, as ensemble_boxes
    expects [0, 1] coordinates), the factor that maps them back, and the non-zero-area mask.
    """
    b = boxes.to(dtype)
    b = torch.stack([torch.minimum(b[:, 0], b[:, 2]), torch.minimum(b[:, 1], b[:, 3]),
                     torch.maximum(b[:, 0], b[:, 2]), torch.maximum(b[:, 1], b[:, 3])], 1)  # (N, 4)
    if image_size is not None:
        h, w = image_size
        scale = torch.tensor([w, h, w, h], dtype=dtype, device=b.device)
        b = (b / scale).clamp(0.0, 1.0)
    else:
        scale = torch.ones(4, dtype=dtype, device=b.device)
    nonzero = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) != 0  # (N,)
    return b, scale, nonzero


def _out_dtype(t: Tensor) -> torch.dtype:
    return t.dtype if t.is_floating_point() else torch.float32


def empty_result(boxes: Tensor, scores: Tensor) -> Merged:
    """No boxes, in the dtypes and on the device a merge of ``boxes``, ``scores`` returns."""
    return (boxes.new_zeros((0, 4), dtype=_out_dtype(boxes)), scores.new_zeros((0,), dtype=_out_dtype(scores)),
            torch.zeros(0, dtype=torch.int64, device=boxes.device))


def finish(boxes: Tensor, scores: Tensor, labels: Tensor, like_boxes: Tensor, like_scores: Tensor) -> Merged:
    """Sort by descending score (ties in input order) and cast to the input's dtypes."""
    order = torch.argsort(scores, descending=True, stable=True)
    return (boxes[order].to(_out_dtype(like_boxes)), scores[order].to(_out_dtype(like_scores)),
            labels[order].to(torch.int64))


def iou_pairs(a: Tensor, b: Tensor) -> Tensor:
    """IoU of matching rows ``a (..., 4)`` and ``b (..., 4)``, in ensemble_boxes' operation order."""
    w = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp_min(0)
    h = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp_min(0)
    inter = w * h
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / (area_a + area_b - inter)


def dense_rank(labels: Tensor) -> Tensor:
    """Labels renumbered ``0..L-1`` in sorted order."""
    return torch.unique(labels, return_inverse=True)[1]
