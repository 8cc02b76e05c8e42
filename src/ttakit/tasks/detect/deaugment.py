"""Model-free box de-augmentation: each view's detections mapped back through the view and its input stage.

:func:`deaugment_detections` takes the views, each view's raw detector output (from any
runtime) and the batch's :class:`~ttakit.tasks.geometry.Geometry`, and never sees a model.
Boxes come back in the original photo's pixels when photo sizes are known, and in the input
tensor's pixels otherwise. :class:`~ttakit.tasks.detect.DetectionTTA` is this function with a
model in front.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ...errors import ConfigError, PolicyError
from ...policy import Policy
from ...stages import Input
from ...views import View
from ..boxes.options import BoxMergeOptions
from ..boxes.registry import box_merge_options, get_box_merge
from ..geometry import Geometry
from ..plan import AllViews, Fetch
from .format import Detections, ViewDetections, as_detections

__all__ = ["DetectHead", "DetectionResult", "check_box_views", "deaugment_detections", "detect_head", "photo_windows"]


@dataclass(frozen=True)
class DetectionResult:
    """What :meth:`DetectionTTA.predict <ttakit.tasks.detect.DetectionTTA.predict>` and a
    ``detect`` plan return.

    Attributes:
        detections: per image, the merged ``{"boxes" (M, 4), "scores" (M,), "labels" (M,)}``,
            boxes in the original image's pixels, by descending score.
        views: with ``keep_views=True``, per image and view, that view's own detections mapped
            back to the original image (``None`` otherwise).
    """

    detections: Detections
    views: list[list[dict[str, Tensor]]] | None = None


def _to_photo(boxes: Tensor, windows: Tensor, size: tuple[int, int]) -> Tensor:
    """Boxes ``(M, 4)`` in the pixels of an input stage of ``size`` to photo pixels, through each
    box's ``(top, left, height, width)`` photo window ``windows (M, 4)``."""
    h, w = size
    win = windows.to(boxes.device, torch.float64)
    scale = torch.stack([win[:, 3] / w, win[:, 2] / h], 1).repeat(1, 2)  # (M, 4)
    offset = torch.stack([win[:, 1], win[:, 0]], 1).repeat(1, 2)
    return (boxes.double() * scale + offset).to(boxes.dtype)


def photo_windows(view: View, geometry: Geometry) -> Tensor:
    """``(B, 4)`` ``(top, left, height, width)`` of each photo that ``view``'s input shows.

    Example:
        >>> cfg = {"input_size": (3, 100, 100), "crop_pct": 1.0, "crop_mode": "center"}
        >>> photo_windows(View(), Geometry((100, 100), [(200, 400)], cfg))
        tensor([[  0., 100., 200., 200.]], dtype=torch.float64)
    """
    if geometry.photo_sizes is None:
        raise PolicyError(f"{view.name}: photo windows need the photo sizes; pass photos")
    if view.source is None and geometry.data_config is None:
        raise PolicyError(f"{view.name}: mapping boxes to photo pixels needs the model's data_config")
    stage = view.source or Input.of_model(geometry.data_config)  # type: ignore[arg-type]
    return torch.tensor([stage.window(s) for s in geometry.photo_sizes], dtype=torch.float64)


def check_box_views(views: Sequence[View], input_size: tuple[int, int]) -> None:
    """Refuse views whose boxes cannot come back (free rotations) before any model time is
    spent: probe each on an empty box list at a size where any crop fits.

    Raises:
        PolicyError: naming the view.

    Example:
        >>> check_box_views([View((Rotate(10.0),))], (32, 32))
        Traceback (most recent call last):
        ...
        ttakit.errors.PolicyError: view 'rotate=10.0': rotate=10.0 is not axis-aligned, ...)
    """
    h, w = input_size
    for view in views:
        view.invert_boxes(torch.zeros(0, 4), (4 * h + 1, 4 * w + 3))


def _n_images(out: Any) -> int:
    if isinstance(out, tuple) and len(out) == 3 and not isinstance(out[0], dict):
        return len(out[0])
    return len(out)


def deaugment_detections(views: Sequence[View], outs: Sequence[Any], geometry: Geometry) -> ViewDetections:
    """Map each view's detections (per image ``{"boxes", "scores", "labels"}``, boxes xyxy in
    the view's pixels, see :func:`~ttakit.tasks.detect.as_detections`) back to the original
    images, as one table, unmerged.

    Example:
        >>> views = [View(), View((HFlip(),))]
        >>> det = lambda box: [{"boxes": torch.tensor([box]), "scores": torch.ones(1), "labels": torch.zeros(1)}]
        >>> vd = deaugment_detections(views, [det([1., 2., 4., 6.]), det([6., 2., 9., 6.])], Geometry((10, 10)))
        >>> vd.boxes
        tensor([[1., 2., 4., 6.],
                [1., 2., 4., 6.]])
    """
    n = geometry.batch_size if geometry.batch_size is not None else _n_images(outs[0])
    cols: list[tuple[Tensor, ...]] = []
    for v, (view, out) in enumerate(zip(views, outs)):
        recs = as_detections(out, n)
        counts = torch.tensor([len(r["scores"]) for r in recs])
        size = geometry.size(view.stage)
        boxes = view.invert_boxes(torch.cat([r["boxes"] for r in recs]), size)  # (m, 4) input-stage pixels
        images = torch.repeat_interleave(torch.arange(len(recs)), counts).to(boxes.device)
        if geometry.photo_sizes is not None:  # the stage's window of each photo -> that photo's pixels
            boxes = _to_photo(boxes, photo_windows(view, geometry)[images.cpu()], size)
        cols.append((boxes, torch.cat([r["scores"] for r in recs]), torch.cat([r["labels"] for r in recs]),
                     images, torch.full_like(images, v)))
    boxes, scores, labels, images, vidx = (torch.cat(c) for c in zip(*cols))
    # A box wholly outside the original image (a zoomed-out view's padding) is clipped to a line: dropped.
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return ViewDetections(boxes[keep], scores[keep], labels[keep], images[keep], vidx[keep], n,
                          tuple(v.name for v in views))


class DetectHead(AllViews):
    """Detection as a :class:`~ttakit.tasks.plan.Plan` task: :func:`deaugment_detections`, then
    a class-aware box merge per image (a one-view policy keeps its boxes unmerged).

    Args:
        weights: ``(V,)`` view weights (``None``: equal).
        merge: ``wbf`` (default), ``nms``, ``soft_nms`` or ``concat``.
        merge_options: the merge's options object, or a mapping of ``KEY``/``MERGE.KEY`` to values.
        max_detections: keep at most this many merged boxes per image.
        keep_views: also return each view's own de-augmented boxes.
    """

    def __init__(self, weights: Tensor | None = None, *, merge: str = "wbf",
                 merge_options: BoxMergeOptions | Mapping[str, Any] | None = None,
                 max_detections: int | None = None, keep_views: bool = False) -> None:
        self.weights, self.merge_name, self.merge = weights, merge, get_box_merge(merge)
        self.merge_options = box_merge_options(merge, merge_options)  # checked once, here
        if max_detections is not None and max_detections < 1:
            raise ConfigError(f"max_detections must be a positive integer, got {max_detections}")
        self.max_detections, self.keep_views = max_detections, keep_views

    def finish(self, views: Sequence[View], n: int, fetch: Fetch, geometry: Geometry) -> DetectionResult:
        det = deaugment_detections(views, fetch(None, views), geometry)
        merge = None if len(views) == 1 else self.merge
        merged = det.merge(merge, self.weights, self.merge_options, self.max_detections)
        return DetectionResult(merged, det.per_view() if self.keep_views else None)


def detect_head(policy: Policy, **options: Any) -> DetectHead:
    """The detection head of ``policy`` (its view weights; options as :class:`DetectHead`)."""
    w = None if policy.weights is None else torch.tensor(policy.weights, dtype=torch.float32)
    return DetectHead(w, **options)
