"""COCO box mAP of weighted images: pycocotools' matching once, its accumulation vectorised over weights.

The paired interval of a detection policy needs mAP on thousands of bootstrap resamples of
the images. Re-running ``COCOeval`` per resample is far too slow, but its costly part, the
per-image matching of detections to ground truth at each IoU threshold
(``COCOeval.evaluateImg``), does not depend on the resample: only the accumulation does. So
:func:`match_table` runs pycocotools' matching once, and :func:`weighted_map` repeats COCO's
accumulation (precision made monotone, sampled at 101 recall thresholds, averaged over IoU
thresholds and categories that have ground truth) for many image weightings at once, an image
drawn twice counting its detections and ground truth twice. With every weight 1 it equals
``COCOeval.stats[0]`` (mAP@[.5:.95]); a one-hot weight gives an image's own AP.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._optional import require

__all__ = ["MatchTable", "coco_gt", "coco_map", "match_table", "per_image_map", "weighted_map"]

_RECALLS = np.linspace(0.0, 1.00, 101, endpoint=True)  # COCO's recall thresholds


def coco_gt(annotations: str) -> Any:
    """pycocotools' ``COCO`` of an annotation file (its progress prints silenced)."""
    COCO = require("pycocotools.coco", "coco", "COCO box mAP").COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(annotations)


def coco_map(gt: Any, rows: np.ndarray, image_ids: Sequence[int]) -> dict[str, float | None]:
    """COCO box mAP@[.5:.95], mAP@.5 and mAP@.75 (pycocotools' ``COCOeval``) of detections
    ``rows (M, 7)``: ``image_id, x, y, w, h, score, category_id``, over ``image_ids``
    (``None`` where no image has ground truth)."""
    COCOeval = require("pycocotools.cocoeval", "coco", "COCO box mAP").COCOeval

    if len(rows) == 0:  # loadRes cannot take an empty list; nothing detected scores 0
        has_gt = bool(gt.getAnnIds(imgIds=list(image_ids)))
        return {k: 0.0 if has_gt else None for k in ("map", "map50", "map75")}
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(rows), "bbox")
        ev.params.imgIds = list(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: (float(v) if v >= 0 else None) for k, v in zip(("map", "map50", "map75"), ev.stats[:3])}


@dataclass(frozen=True)
class MatchTable:
    """pycocotools' matches of one set of detections, per category, ready to accumulate.

    Attributes:
        n_images: images scored (weights have this many columns, in ``image_ids`` order).
        thresholds: the IoU thresholds (COCO: 0.5, 0.55, ..., 0.95).
        categories: per category with ground truth somewhere: ``(image (D,), tp (T, D),
            counted (T, D), gt (N,))``, detections sorted by descending score as COCO sorts
            them; ``tp`` a match, ``counted`` not ignored, ``gt`` each image's non-ignored
            ground-truth boxes.
    """

    n_images: int
    thresholds: tuple[float, ...]
    categories: tuple[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], ...]


def match_table(gt: Any, rows: np.ndarray, image_ids: Sequence[int]) -> MatchTable:
    """Match detections ``rows (M, 7)`` (as :func:`coco_map` takes them) to the ground truth
    of ``image_ids`` with pycocotools (area ``all``, at most 100 detections per image)."""
    COCOeval = require("pycocotools.cocoeval", "coco", "COCO box mAP").COCOeval

    ids = list(image_ids)
    pos = {i: k for k, i in enumerate(ids)}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(rows) if len(rows) else _empty_results(gt)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = ids
        ev.evaluate()
    p = ev.params
    max_det, n_area, n_img = p.maxDets[-1], len(p.areaRng), len(p.imgIds)
    cats = []
    for k, _ in enumerate(p.catIds):
        evals = [ev.evalImgs[k * n_area * n_img + i] for i in range(n_img)]  # area "all" comes first
        evals = [(i, e) for i, e in zip(p.imgIds, evals) if e is not None]
        gt_count = np.zeros(len(ids))
        for i, e in evals:
            gt_count[pos[i]] += np.count_nonzero(np.asarray(e["gtIgnore"]) == 0)
        if not gt_count.any():
            continue  # COCO leaves such a category out of the mean
        scores = np.concatenate([e["dtScores"][:max_det] for _, e in evals] + [np.zeros(0)])
        image = np.concatenate([np.full(len(e["dtScores"][:max_det]), pos[i]) for i, e in evals] + [np.zeros(0)])
        order = np.argsort(-scores, kind="mergesort")  # COCO's own sort, ties kept in image order
        t = len(p.iouThrs)
        matched = np.concatenate([e["dtMatches"][:, :max_det] for _, e in evals] + [np.zeros((t, 0))], axis=1)[:, order]
        ignored = np.concatenate([e["dtIgnore"][:, :max_det] for _, e in evals] + [np.zeros((t, 0))], axis=1)[:, order]
        cats.append((image[order].astype(np.int64), (matched > 0) & (ignored == 0), ignored == 0, gt_count))
    return MatchTable(len(ids), tuple(float(x) for x in p.iouThrs), tuple(cats))


def _empty_results(gt: Any) -> Any:
    """A results object without detections (``loadRes`` refuses an empty list)."""
    COCO = require("pycocotools.coco", "coco", "COCO box mAP").COCO

    res = COCO()
    res.dataset = {"images": list(gt.dataset["images"]), "categories": list(gt.dataset["categories"]),
                   "annotations": []}
    res.createIndex()
    return res


def weighted_map(table: MatchTable, weights: np.ndarray, iou: float | None = None) -> np.ndarray:
    """COCO mAP of each row of image ``weights (R, N)`` (mAP@[.5:.95], or at the one IoU
    threshold ``iou``); ``nan`` where no weighted image has ground truth.

    Example:
        >>> gt = _toy_gt()
        >>> rows = np.array([[1, 0, 0, 10, 10, 0.9, 1], [2, 50, 50, 10, 10, 0.8, 1]], float)
        >>> t = match_table(gt, rows, [1, 2])
        >>> weighted_map(t, np.array([[1., 1.], [1., 0.], [0., 1.]])).round(3).tolist()
        [0.505, 1.0, 0.0]
    """
    w = np.asarray(weights, dtype=np.float64)  # (R, N)
    pick = slice(None) if iou is None else [_index(table.thresholds, iou)]
    total, count = np.zeros(len(w)), np.zeros(len(w))
    for image, tp, counted, gt_count in table.categories:
        tp, fp = tp[pick], (counted & ~tp)[pick]  # (T, D)
        npig = w @ gt_count  # (R,) weighted ground truth of this category
        ap = _ap(w[:, None, image], tp, fp, npig)  # (R, T)
        total += np.where(npig > 0, ap.sum(1), 0.0)
        count += (npig > 0) * tp.shape[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def per_image_map(table: MatchTable) -> np.ndarray:
    """``(N,)`` each image's own mAP@[.5:.95] (``nan`` without ground truth): the same as
    :func:`weighted_map` with one-hot weights, at the cost of one pass over the detections."""
    n = table.n_images
    total, count = np.zeros(n), np.zeros(n)
    for image, tp, counted, gt_count in table.categories:
        order = np.argsort(image, kind="stable")  # by image, still by score within one
        sizes = np.bincount(image, minlength=n)
        slot = np.arange(len(order)) - np.repeat(np.cumsum(sizes) - sizes, sizes)  # rank within its image
        width = max(int(sizes.max(initial=0)), 1)
        rows, cols = image[order], slot
        wd = np.zeros((n, 1, width))
        wd[rows, 0, cols] = 1.0
        pad_tp = np.zeros((n, tp.shape[0], width), dtype=bool)
        pad_fp = np.zeros_like(pad_tp)
        pad_tp[rows, :, cols] = tp[:, order].T
        pad_fp[rows, :, cols] = (counted & ~tp)[:, order].T
        ap = _ap(wd, pad_tp, pad_fp, gt_count)  # (N, T)
        total += np.where(gt_count > 0, ap.sum(1), 0.0)
        count += (gt_count > 0) * tp.shape[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def _ap(wd: np.ndarray, tp: np.ndarray, fp: np.ndarray, npig: np.ndarray) -> np.ndarray:
    """COCO's AP ``(R, T)`` of detections sorted by score with weights ``wd (R, 1, D)``, matches
    ``tp``/``fp`` ``(T, D)`` or ``(R, T, D)`` and weighted ground-truth counts ``npig (R,)``."""
    eps, n_rec = np.spacing(1), len(_RECALLS)
    tp_sum = np.cumsum(wd * tp, 2)  # (R, T, D)
    fp_sum = np.cumsum(wd * fp, 2)
    recall = tp_sum / np.maximum(npig, eps)[:, None, None]
    precision = tp_sum / (tp_sum + fp_sum + eps)
    # COCO's envelope: precision made non-increasing from the right ...
    precision = np.maximum.accumulate(precision[..., ::-1], axis=2)[..., ::-1]
    # ... sampled at each recall threshold r_j: the precision at the first detection whose
    # recall reaches r_j, i.e. after all those reaching fewer thresholds (0 where none does).
    reached = np.searchsorted(_RECALLS, recall, side="right")  # thresholds <= each recall, (R, T, D)
    rt = reached.shape[0] * reached.shape[1]
    flat = reached.reshape(rt, -1) + (n_rec + 1) * np.arange(rt)[:, None]
    before = np.cumsum(np.bincount(flat.ravel(), minlength=rt * (n_rec + 1)).reshape(rt, n_rec + 1), 1)[:, :n_rec]
    padded = np.concatenate([precision.reshape(rt, -1), np.zeros((rt, 1))], 1)
    return np.take_along_axis(padded, before, 1).reshape(*precision.shape[:2], n_rec).mean(2)


def _index(thresholds: Sequence[float], iou: float) -> int:
    for i, t in enumerate(thresholds):
        if abs(t - iou) < 1e-9:
            return i
    raise ValueError(f"IoU {iou} is not one of the thresholds {thresholds}")


def _toy_gt() -> Any:
    """Two images, one box each (for the doctest)."""
    COCO = require("pycocotools.coco", "coco", "COCO box mAP").COCO

    gt = COCO()
    gt.dataset = {"images": [{"id": 1}, {"id": 2}], "categories": [{"id": 1, "name": "a"}],
                  "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100,
                                   "iscrowd": 0},
                                  {"id": 2, "image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100,
                                   "iscrowd": 0}]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt
