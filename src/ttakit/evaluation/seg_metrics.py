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

__all__ = ["band_counts", "boundary_counts", "class_bands", "boundary_iou", "confusion", "dice", "iou_per_class", "miou", "pixel_accuracy"]


def confusion(target: Tensor, pred: Tensor, valid: Tensor, k: int) -> Tensor:
    """``(K, K)`` int64 counts of (true, predicted) class over the ``valid`` pixels.

    Example:
        >>> confusion(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), torch.tensor([True, True, True]), 2).tolist()
        [[1, 0], [1, 1]]
    """
    t, p = target[valid].long(), pred[valid].long()
    return torch.bincount(t * k + p, minlength=k * k).reshape(k, k)


def _erode(onehot: Tensor, d: int) -> Tensor:
    """Binary erosion of ``(C, H, W)`` 0/1 maps by a ``(2d+1)`` square, the outside counted as
    background (so a region touching the border has a contour there, as in the paper): a pixel
    stays where its whole window is inside the region, i.e. the window's sum is full. Window
    sums come from cumulative sums (separable, any ``d`` at the same cost)."""
    w = 2 * d + 1
    x = F.pad(onehot, (d + 1, d, d + 1, d)).cumsum(-1).cumsum(-2)  # (C, H+2d+1, W+2d+1) integral image
    window = x[:, w:, w:] - x[:, :-w, w:] - x[:, w:, :-w] + x[:, :-w, :-w]  # (C, H, W)
    return (window > w * w - 0.5).float()


def class_bands(labels: Tensor, valid: Tensor, k: int, ratio: float = 0.02) -> Tensor:
    """``(K, H, W)`` bool: each class region's boundary band, the part within ``d = max(1,
    round(ratio * diagonal))`` pixels of its contour (the region minus its erosion), on the
    ``valid`` pixels only."""
    h, w = labels.shape
    d = max(1, round(ratio * math.hypot(h, w)))
    bands = torch.zeros(k, h, w, dtype=torch.bool)
    present = torch.unique(labels[valid])
    present = present[(present >= 0) & (present < k)]
    if len(present):
        region = (labels[None] == present.view(-1, 1, 1)).float()  # (C, H, W), present classes only
        bands[present] = (region - _erode(region, d)).bool() & valid
    return bands


def band_counts(truth: Tensor, pred: Tensor) -> Tensor:
    """``(K, 2)`` boundary-IoU intersection and union pixel counts of two ``(K, H, W)`` band stacks."""
    return torch.stack([(truth & pred).flatten(1).sum(1), (truth | pred).flatten(1).sum(1)], 1)


def boundary_counts(target: Tensor, pred: Tensor, valid: Tensor, k: int, ratio: float = 0.02) -> Tensor:
    """``(K, 2)`` boundary-IoU intersection and union pixel counts of one image, per class
    (see :func:`class_bands`; pixels outside ``valid`` count for neither).

    Example:
        >>> t = torch.zeros(8, 8, dtype=torch.long); t[2:6, 2:6] = 1
        >>> c = boundary_counts(t, t, torch.ones(8, 8, dtype=torch.bool), 2)
        >>> (c[:, 0] == c[:, 1]).all().item()      # a perfect prediction: intersection = union
        True
    """
    return band_counts(class_bands(target, valid, k, ratio), class_bands(pred, valid, k, ratio))


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
