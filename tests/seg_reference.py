"""Reference segmentation metrics for the tests: confusion matrices and Boundary IoU by its paper's per-class erosion.

The library scores segmentation with :mod:`ttakit.evaluation.seg_stats` (five counts per
class and image, one edge band for all classes). This module is the slower textbook form it
is checked against, written independently:

- a ``(K, K)`` confusion matrix per image (rows: true class, columns: predicted), and mIoU as
  the mean over classes present or predicted of ``TP / (TP + FP + FN)``;
- Boundary IoU (Cheng et al., "Boundary IoU: Improving Object-Centric Image Segmentation
  Evaluation", CVPR 2021): each class region's band within ``d`` (2% of the image diagonal)
  of its contour, the region minus its erosion by a ``(2d+1)`` square (the outside counted as
  background), compared class by class. ``_erode`` is itself checked against
  ``scipy.ndimage.binary_erosion``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def confusion(target: Tensor, pred: Tensor, valid: Tensor, k: int) -> Tensor:
    """``(K, K)`` int64 counts of (true, predicted) class over the ``valid`` pixels."""
    t, p = target[valid].long(), pred[valid].long()
    return torch.bincount(t * k + p, minlength=k * k).reshape(k, k)


def _erode(onehot: Tensor, d: int) -> Tensor:
    """Binary erosion of ``(C, H, W)`` 0/1 maps by a ``(2d+1)`` square, the outside counted as
    background: a pixel stays where its whole window is inside the region (integral image)."""
    w = 2 * d + 1
    x = F.pad(onehot, (d + 1, d, d + 1, d)).cumsum(-1).cumsum(-2)  # (C, H+2d+1, W+2d+1)
    window = x[:, w:, w:] - x[:, :-w, w:] - x[:, w:, :-w] + x[:, :-w, :-w]  # (C, H, W)
    return (window > w * w - 0.5).float()


def _class_bands(labels: Tensor, valid: Tensor, k: int, ratio: float) -> Tensor:
    """``(K, H, W)`` bool: each class region minus its erosion, on the ``valid`` pixels."""
    h, w = labels.shape
    d = max(1, round(ratio * math.hypot(h, w)))
    bands = torch.zeros(k, h, w, dtype=torch.bool)
    present = torch.unique(labels[valid])
    present = present[(present >= 0) & (present < k)]
    if len(present):
        region = (labels[None] == present.view(-1, 1, 1)).float()
        bands[present] = (region - _erode(region, d)).bool() & valid
    return bands


def boundary_counts(target: Tensor, pred: Tensor, valid: Tensor, k: int, ratio: float = 0.02) -> Tensor:
    """``(K, 2)`` boundary-IoU intersection and union pixel counts of one image, per class."""
    truth, guess = _class_bands(target, valid, k, ratio), _class_bands(pred, valid, k, ratio)
    return torch.stack([(truth & guess).flatten(1).sum(1), (truth | guess).flatten(1).sum(1)], 1)


def _nanmean(x: np.ndarray) -> np.ndarray:
    n = np.isfinite(x).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.nansum(x, -1) / n, np.nan)


def miou(conf: Tensor | np.ndarray) -> np.ndarray:
    """Mean IoU over the classes present or predicted, of ``(..., K, K)`` confusion counts."""
    c = np.asarray(conf, dtype=np.float64)
    tp = np.diagonal(c, axis1=-2, axis2=-1)
    union = c.sum(-1) + c.sum(-2) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return _nanmean(np.where(union > 0, tp / union, np.nan))


def boundary_iou(counts: Tensor | np.ndarray) -> np.ndarray:
    """Mean boundary IoU over classes with a boundary, of ``(..., K, 2)`` summed counts."""
    c = np.asarray(counts, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _nanmean(np.where(c[..., 1] > 0, c[..., 0] / c[..., 1], np.nan))
