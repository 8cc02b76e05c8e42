"""Segmentation metrics from per-image counts: confusion matrices and boundary IoU, summed over images.

Every dataset metric here is a ratio of sums over images (mIoU is not the mean of per-image
IoUs), so each image is kept as counts: a ``(K, K)`` confusion matrix (rows: true class,
columns: predicted) and ``(K, 2)`` boundary intersection/union pixel counts. Summing them with
image weights gives the metric of any bootstrap resample (:func:`miou`, :func:`boundary_iou`
take a leading batch of weightings).

Boundary IoU (Cheng et al., "Boundary IoU: Improving Object-Centric Image Segmentation
Evaluation", CVPR 2021) compares only the pixels within ``d`` of each class region's contour
(``d`` = 2% of the image diagonal, the paper's setting): plain mIoU barely moves when a
prediction's edges are off by a few pixels, while TTA's averaging mostly changes edges.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["boundary_counts", "boundary_iou", "confusion", "dice", "iou_per_class", "miou", "pixel_accuracy"]


def confusion(target: Tensor, pred: Tensor, valid: Tensor, k: int) -> Tensor:
    """``(K, K)`` int64 counts of (true, predicted) class over the ``valid`` pixels.

    Example:
        >>> confusion(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), torch.tensor([True, True, True]), 2).tolist()
        [[1, 0], [1, 1]]
    """
    t, p = target[valid].long(), pred[valid].long()
    return torch.bincount(t * k + p, minlength=k * k).reshape(k, k)


def _erode(onehot: Tensor, d: int) -> Tensor:
    """Binary erosion of ``(C, H, W)`` maps by a ``(2d+1)`` square, the outside counted as
    background (so a region touching the border has a contour there, as in the paper)."""
    x = F.pad(1.0 - onehot[:, None], (d, d, d, d), value=1.0)  # (C, 1, H+2d, W+2d) "not the class"
    x = F.max_pool2d(x, (1, 2 * d + 1), stride=1)  # separable: rows, then columns
    x = F.max_pool2d(x, (2 * d + 1, 1), stride=1)
    return 1.0 - x[:, 0]


def boundary_counts(target: Tensor, pred: Tensor, valid: Tensor, k: int, ratio: float = 0.02) -> Tensor:
    """``(K, 2)`` boundary-IoU intersection and union pixel counts of one image, per class.

    The boundary of a class region is the part within ``d = max(1, round(ratio * diagonal))``
    pixels of its contour (the region minus its erosion); pixels outside ``valid`` count for
    neither.

    Example:
        >>> t = torch.zeros(8, 8, dtype=torch.long); t[2:6, 2:6] = 1
        >>> c = boundary_counts(t, t, torch.ones(8, 8, dtype=torch.bool), 2)
        >>> (c[:, 0] == c[:, 1]).all().item()      # a perfect prediction: intersection = union
        True
    """
    h, w = target.shape
    d = max(1, round(ratio * math.hypot(h, w)))
    present = torch.unique(torch.cat([target[valid], pred[valid]]))
    present = present[(present >= 0) & (present < k)]
    out = torch.zeros(k, 2, dtype=torch.int64)
    if not len(present):
        return out
    classes = present.view(-1, 1, 1)
    gt = (target[None] == classes).float()  # (C, H, W)
    pr = (pred[None] == classes).float()
    gb = (gt - _erode(gt, d)).bool() & valid
    pb = (pr - _erode(pr, d)).bool() & valid
    out[present, 0] = (gb & pb).flatten(1).sum(1)
    out[present, 1] = (gb | pb).flatten(1).sum(1)
    return out


def iou_per_class(conf: Tensor | np.ndarray) -> np.ndarray:
    """``(..., K)`` IoU of each class from ``(..., K, K)`` confusion counts (``nan`` for a
    class neither present nor predicted)."""
    c = np.asarray(conf, dtype=np.float64)
    tp = np.diagonal(c, axis1=-2, axis2=-1)
    union = c.sum(-1) + c.sum(-2) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def _nanmean(x: np.ndarray) -> np.ndarray:
    n = np.isfinite(x).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.nansum(x, -1) / n, np.nan)


def miou(conf: Tensor | np.ndarray) -> np.ndarray:
    """Mean IoU over the classes present or predicted, of ``(..., K, K)`` confusion counts.

    Example:
        >>> float(miou(np.array([[3, 1], [0, 4]])))   # IoU 3/4 and 4/5
        0.775
    """
    return _nanmean(iou_per_class(conf))


def dice(conf: Tensor | np.ndarray) -> np.ndarray:
    """Mean Dice (F1) over the classes present or predicted: ``2 TP / (2 TP + FP + FN)``."""
    c = np.asarray(conf, dtype=np.float64)
    tp = np.diagonal(c, axis1=-2, axis2=-1)
    total = c.sum(-1) + c.sum(-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _nanmean(np.where(total > 0, 2 * tp / total, np.nan))


def pixel_accuracy(conf: Tensor | np.ndarray) -> np.ndarray:
    """Share of valid pixels whose class is right."""
    c = np.asarray(conf, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.trace(c, axis1=-2, axis2=-1) / c.sum((-2, -1))


def boundary_iou(counts: Tensor | np.ndarray) -> np.ndarray:
    """Mean boundary IoU over classes with a boundary, of ``(..., K, 2)`` summed counts."""
    c = np.asarray(counts, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _nanmean(np.where(c[..., 1] > 0, c[..., 0] / c[..., 1], np.nan))
