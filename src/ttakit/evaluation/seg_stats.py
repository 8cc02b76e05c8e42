"""Exact segmentation scores streamed per image: O(K) counts per image, full-resolution argmax, a metric object.

Every dataset score of a segmentation row (mIoU, Dice, pixel accuracy, boundary IoU, and any
bootstrap resample of them) is a ratio of sums over images of five per-class counts, so each
image is kept as a ``(5, K)`` integer array and no pixel map is stored:

    0 intersection  (true class c and predicted c)
    1 predicted area (predicted c)
    2 true area      (true c)
    3 boundary intersection, 4 boundary union  (Boundary IoU bands of class c, see edge_band)

all over the valid pixels (inside the part of the photo the model saw, not the ignore index).
The union of class ``c`` is ``predicted + true - intersection``. The prediction is the argmax of
the merged class probabilities brought onto the mask's own pixels (:func:`photo_argmax`: the
probabilities resized in channel groups, so a 150-class map of a large photo never exists whole).

Example:
    >>> t = torch.tensor([[0, 0, 1, 1]]); p = torch.tensor([[0, 1, 1, 1]])
    >>> s = image_stats(t, p, torch.ones(1, 4, dtype=torch.bool), 2)
    >>> s[:3].tolist()
    [[1, 2], [1, 3], [2, 2]]
    >>> m = SegmentationStats(2); m.update(s); round(m.compute()["miou"], 4)    # IoU 1/2 and 2/3
    0.5833
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


__all__ = ["SegmentationStats", "budget_side", "edge_band", "image_stats", "photo_argmax", "stats_miou", "stats_scores"]

_GROUP_ELEMENTS = 1 << 24  # floats of one channel group of a full-resolution map (64 MB)


def edge_band(labels: Tensor, ratio: float = 0.02) -> Tensor:
    """``(H, W)`` bool: the pixels within ``d = max(1, round(ratio x diagonal))`` of a contour of
    their own class region (the outside counting as another class), i.e. whose ``(2d+1)^2``
    window leaves the photo or holds another label. Class ``c``'s Boundary-IoU band (Cheng et
    al., CVPR 2021: the class region minus its erosion by a ``(2d+1)`` square) is this band
    where the label is ``c``; found here with two separable min/max filters, whatever the
    number of classes (checked against the per-class erosion in the tests)."""
    h, w = labels.shape
    d = max(1, round(ratio * math.hypot(h, w)))
    x = labels.float()[None, None]
    hi = F.max_pool2d(F.max_pool2d(x, (1, 2 * d + 1), 1, (0, d)), (2 * d + 1, 1), 1, (d, 0))
    lo = -F.max_pool2d(F.max_pool2d(-x, (1, 2 * d + 1), 1, (0, d)), (2 * d + 1, 1), 1, (d, 0))
    band = (hi != lo)[0, 0]
    band[:d], band[h - d:], band[:, :d], band[:, w - d:] = True, True, True, True  # the window leaves the photo
    return band


def image_stats(target: Tensor, pred: Tensor, valid: Tensor, k: int, ratio: float = 0.02,
                target_band: Tensor | None = None, boundary: bool = True) -> Tensor:
    """``(5, K)`` int64 counts of one image (see the module docstring); ``target_band`` is the
    truth's :func:`edge_band` when already computed (it does not depend on the row); without
    ``boundary`` the two boundary rows are left at 0 (a row whose mIoU alone is reported)."""
    t, p = target[valid].long(), pred[valid].long()
    inter = torch.bincount(t[t == p], minlength=k)[:k]
    pred_area, true_area = torch.bincount(p, minlength=k)[:k], torch.bincount(t, minlength=k)[:k]
    if not boundary:
        return torch.stack([inter, pred_area, true_area, torch.zeros_like(inter), torch.zeros_like(inter)])
    tb = (edge_band(target, ratio) if target_band is None else target_band)[valid]
    pb = edge_band(pred, ratio)[valid]
    b_inter = torch.bincount(t[tb & pb & (t == p)], minlength=k)[:k]
    b_union = torch.bincount(t[tb], minlength=k)[:k] + torch.bincount(p[pb], minlength=k)[:k] - b_inter
    return torch.stack([inter, pred_area, true_area, b_inter, b_union])


def photo_argmax(probs: Tensor, size: tuple[int, int], window: tuple[int, int, int, int] | None = None) -> Tensor:
    """Argmax ``(H, W)`` int64 of class probabilities ``(K, h, w)`` resized (bilinear, edges
    aligned) onto the ``(top, left, height, width)`` window of a photo of ``size`` (the whole
    photo by default); ``-1`` outside the window. Channel groups are resized one at a time
    (the result equals the argmax of the whole resized map, first index on ties).

    Example:
        >>> p = torch.tensor([[[0.9, 0.1]], [[0.1, 0.9]]])    # 2 classes on a 1 x 2 grid
        >>> photo_argmax(p, (1, 4)).tolist()
        [[0, 0, 1, 1]]
    """
    H, W = size
    top, left, h, w = (0, 0, H, W) if window is None else window
    k = probs.shape[0]
    if (h, w) == tuple(probs.shape[-2:]):
        inner = probs.argmax(0)
    elif k * h * w <= _GROUP_ELEMENTS:  # all classes at once
        inner = F.interpolate(probs[None].float(), size=(h, w), mode="bilinear", align_corners=False)[0].argmax(0)
    else:
        group = max(1, _GROUP_ELEMENTS // max(1, h * w))
        best = torch.full((h, w), -torch.inf)
        inner = torch.zeros((h, w), dtype=torch.long)
        for c0 in range(0, k, group):
            up = F.interpolate(probs[None, c0:c0 + group].float(), size=(h, w), mode="bilinear", align_corners=False)[0]
            value, index = up.max(0)
            better = value > best  # strictly: an earlier class keeps a tie, as argmax does
            torch.maximum(best, value, out=best)
            inner.masked_scatter_(better, index[better] + c0)
    if (top, left, h, w) == (0, 0, H, W):
        return inner
    out = torch.full((H, W), -1, dtype=torch.long)
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + h, H), min(left + w, W)
    out[y0:y1, x0:x1] = inner[y0 - top:y1 - top, x0 - left:x1 - left]
    return out


def _nanmean(x: np.ndarray) -> np.ndarray:
    n = np.isfinite(x).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.nansum(x, -1) / n, np.nan)


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def stats_miou(stats: np.ndarray) -> np.ndarray:
    """Mean IoU over the classes present or predicted, of summed ``(..., 5, K)`` counts."""
    s = np.asarray(stats, dtype=np.float64)
    return _nanmean(_ratio(s[..., 0, :], s[..., 1, :] + s[..., 2, :] - s[..., 0, :]))


def stats_scores(stats: np.ndarray) -> dict[str, Any]:
    """Every score of summed ``(5, K)`` counts: miou, pixel_acc, mean_dice, boundary_iou, per_class_iou."""
    s = np.asarray(stats, dtype=np.float64)
    inter, pred, true = s[0], s[1], s[2]
    iou = _ratio(inter, pred + true - inter)
    return {
        "miou": float(_nanmean(iou)),
        "pixel_acc": float(_ratio(inter.sum(), true.sum())),
        "mean_dice": float(_nanmean(_ratio(2 * inter, pred + true))),
        "boundary_iou": float(_nanmean(_ratio(s[3], s[4]))),
        "per_class_iou": [None if np.isnan(v) else float(v) for v in iou],
    }


class SegmentationStats:
    """Streaming per-image counts of one row, as torchvision's reference metrics: ``update``
    per image (or batch of images), ``synchronize`` across processes, ``compute`` at the end.
    Memory: ``5 x K`` integers per image, whatever the photo size.

    Args:
        num_classes: K.
    """

    def __init__(self, num_classes: int) -> None:
        self.k = num_classes
        self._parts: list[Tensor] = []

    def update(self, stats: Tensor) -> None:
        """Add ``(5, K)`` or ``(n, 5, K)`` per-image counts (:func:`image_stats`)."""
        self._parts.append((stats[None] if stats.ndim == 2 else stats).to(torch.int64).cpu())

    @property
    def per_image(self) -> Tensor:
        """``(N, 5, K)`` the counts of every image so far, in update order."""
        return torch.cat(self._parts) if self._parts else torch.zeros(0, 5, self.k, dtype=torch.int64)

    def synchronize(self) -> None:
        """Gather every process's images (in rank order) when torch.distributed is initialised."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        parts: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, self.per_image)
        self._parts = [p for p in parts if p is not None]

    def compute(self) -> dict[str, Any]:
        """The row's scores (see :func:`stats_scores`) over every image."""
        return stats_scores(self.per_image.sum(0).numpy())

    def image_scores(self) -> Mapping[str, np.ndarray]:
        """``(N,)`` each image's own mIoU (over the classes in its mask or prediction) and pixel accuracy."""
        s = self.per_image.numpy().astype(np.float64)
        return {"miou": stats_miou(s), "pixel_acc": _ratio(s[:, 0].sum(-1), s[:, 2].sum(-1))}


def budget_side(budget: int, n: int, views: int, k: int, grid: tuple[int, int], itemsize: int) -> int:
    """The long side of stored per-view maps that fits ``budget`` bytes: ``n`` images x ``views``
    x (``k`` classes + a mask) x side^2 (scaled by the grid's aspect) x ``itemsize`` bytes,
    capped at the grid's own long side; 0 when not even one pixel fits."""
    h, w = grid
    aspect = min(h, w) / max(h, w)
    per_pixel = max(1, n) * views * (k + 1) * itemsize
    side = int(math.sqrt(budget / per_pixel / aspect)) if budget > 0 else 0
    return min(side, max(h, w))
