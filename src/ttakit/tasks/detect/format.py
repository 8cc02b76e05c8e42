"""The detection format: per-image dicts checked, and every view's de-augmented boxes as one table.

A detector returns, per image, ``{"boxes": (k, 4), "scores": (k,), "labels": (k,)}`` with
boxes xyxy in the pixels of the image it was given (torchvision's format);
:func:`as_detections` checks and normalises that. :class:`ViewDetections` holds every view's
boxes of a batch, mapped back to the original images, and merges them per image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ...errors import ShapeError, check_shape
from ..boxes.merges import concat
from ..boxes.options import BoxMergeOptions
from ..boxes.registry import BoxMerge

__all__ = ["Detections", "ViewDetections", "as_detections", "detection_record"]

Detections = list[dict[str, Tensor]]  # per image: {"boxes": (k, 4), "scores": (k,), "labels": (k,)}


def detection_record(boxes: Tensor, scores: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """One image's detections as a dict: boxes and scores float32, labels int64."""
    return {"boxes": boxes.float(), "scores": scores.float(), "labels": labels.long()}


def as_detections(out: Any, n: int) -> Detections:
    """Check and normalise a detector's output for ``n`` images: a list of dicts with
    ``boxes`` ``(k, 4)``, ``scores`` ``(k,)`` and ``labels`` ``(k,)`` (torchvision's format),
    or a ``(boxes, scores, labels)`` triple of per-image sequences. Boxes and scores become
    float32, labels int64.

    Raises:
        ShapeError: another structure, another number of images, or mismatched sizes.

    Example:
        >>> d = as_detections(([torch.tensor([[1, 2, 5, 6]])], [torch.tensor([0.9])], [torch.tensor([3])]), 1)
        >>> d[0]["boxes"], d[0]["labels"]
        (tensor([[1., 2., 5., 6.]]), tensor([3]))
    """
    if isinstance(out, tuple) and len(out) == 3 and not isinstance(out[0], dict):
        out = [{"boxes": b, "scores": s, "labels": lab} for b, s, lab in zip(*out)]
    if not isinstance(out, (list, tuple)) or not all(isinstance(r, Mapping) for r in out):
        raise ShapeError("detector output", "a list of per-image dicts with boxes, scores and labels", ())
    if len(out) != n:
        raise ShapeError("detector output", f"one dict per image ({n})", (len(out),))
    records = []
    for r in out:
        missing = {"boxes", "scores", "labels"} - set(r)
        if missing:
            raise ShapeError("detector output", f"dicts with boxes, scores and labels (missing {', '.join(sorted(missing))})", ())
        boxes = r["boxes"].reshape(-1, 4) if r["boxes"].numel() == 0 else r["boxes"]
        check_shape("detector boxes", boxes.shape, "(k, 4)")
        k = boxes.shape[0]
        check_shape("detector scores", r["scores"].shape, f"({k})")
        check_shape("detector labels", r["labels"].shape, f"({k})")
        records.append(detection_record(boxes, r["scores"], r["labels"]))
    return records


@dataclass(frozen=True)
class ViewDetections:
    """Every view's de-augmented detections of a batch, as one flat table.

    Attributes:
        boxes: ``(M, 4)`` xyxy pixels of the original image (photo or input tensor).
        scores: ``(M,)`` confidences.
        labels: ``(M,)`` int64 class labels.
        images: ``(M,)`` image of each box, in ``[0, n_images)``.
        views: ``(M,)`` view of each box, in ``[0, len(view_names))``.
        n_images: images in the batch (images without boxes count).
        view_names: the views, in column order.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    images: Tensor
    views: Tensor
    n_images: int
    view_names: tuple[str, ...]

    def select(self, columns: Sequence[int]) -> ViewDetections:
        """The detections of the views ``columns`` (renumbered ``0..len(columns)-1``; a column
        given twice is a view counted twice, as a policy may repeat a view)."""
        rows = [torch.nonzero(self.views == c).squeeze(1) for c in columns]
        idx = torch.cat(rows) if rows else self.views.new_zeros(0)
        new = torch.cat([torch.full_like(r, j) for j, r in enumerate(rows)]) if rows else idx
        return ViewDetections(self.boxes[idx], self.scores[idx], self.labels[idx], self.images[idx], new,
                              self.n_images, tuple(self.view_names[c] for c in columns))

    def _by_image(self) -> list[tuple[Tensor, ...]]:
        order = torch.argsort(self.images, stable=True)
        counts = torch.bincount(self.images, minlength=self.n_images).tolist()
        cols = (self.boxes, self.scores, self.labels, self.views)
        return list(zip(*(t[order].split(counts) for t in cols)))

    def merge(
        self,
        merge: BoxMerge | None,
        weights: Tensor | Sequence[float] | None = None,
        options: BoxMergeOptions | None = None,
        max_detections: int | None = None,
    ) -> Detections:
        """Merge each image's boxes over the views with ``merge`` and its ``options`` (``merge=None``:
        keep them all, sorted by score, as a one-view policy does); at most ``max_detections`` per image."""
        out = []
        for boxes, scores, labels, views in self._by_image():
            if merge is None:
                b, s, lab = concat(boxes, scores, labels)
            else:
                b, s, lab = merge(boxes, scores, labels, views, len(self.view_names), weights, options)
            out.append(detection_record(b[:max_detections], s[:max_detections], lab[:max_detections]))
        return out

    def per_view(self) -> list[list[dict[str, Tensor]]]:
        """``[image][view]`` dicts of each view's own de-augmented detections."""
        out = []
        for boxes, scores, labels, views in self._by_image():
            out.append([detection_record(boxes[views == v], scores[views == v], labels[views == v])
                        for v in range(len(self.view_names))])
        return out


