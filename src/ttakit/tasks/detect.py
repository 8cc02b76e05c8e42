"""Object-detection TTA: every view's boxes mapped back exactly, then merged by WBF, NMS or soft-NMS.

The model runs on the same view loop as every task (:func:`ttakit.runtime.loop.run_views`)
and returns per-image detections in torchvision's format: a list of dicts with ``boxes``
``(k, 4)`` xyxy in the pixels of the image it was given (pixel edges at 0 and ``W``),
``scores`` ``(k,)`` and ``labels`` ``(k,)``. Each view's boxes are then mapped back by the
view's own ``invert_boxes`` (flips and quarter turns exactly, scale, resize, crop and shift
through their exact maps, boxes cut by the view clipped to what it showed), then through the
input stage's window of the photo, and merged per image by a class-aware box merge of
:mod:`ttakit.tasks.boxes` with the policy's view weights.

Boxes come back in the ORIGINAL photo's pixels when photos are given (paths, PIL images,
uint8 tensors), and in the input tensor's pixels when preprocessed ``(B, C, H, W)`` tensors
are. Free rotations are refused: a rotated box is no box.

Adapters turn other detectors into this format: :func:`yolo_adapter` decodes YOLO-style raw
outputs ``(N, A, 4 + 1 + C)`` (optionally letterboxing each view to the model's size) and
:func:`function_adapter` wraps any function. :func:`load_detector` resolves a
``MODULE:FUNCTION`` or a torchvision detection model name, as the command line does.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

from .. import functional as Fn
from ..errors import ConfigError, ModelLoadError, PolicyError, ShapeError, WeightsError, check_shape
from ..models import LoadedModel
from ..policy import PolicyLike
from ..runtime.config import RunConfig
from ..runtime.loop import ViewInputs, as_view_inputs
from ..transforms import Input, Normalization, View
from .base import Images, TTABase
from .boxes import BoxMergeFn, concat, get_box_merge

__all__ = [
    "DetectionResult",
    "DetectionTTA",
    "Detections",
    "LoadedDetector",
    "ViewDetections",
    "YoloDecode",
    "as_detections",
    "function_adapter",
    "load_detector",
    "merge_options_for",
    "yolo_adapter",
]

Detections = list[dict[str, Tensor]]  # per image: {"boxes": (k, 4), "scores": (k,), "labels": (k,)}


# --------------------------------------------------------------------------- detections
def _record(boxes: Tensor, scores: Tensor, labels: Tensor) -> dict[str, Tensor]:
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
        records.append(_record(boxes, r["scores"], r["labels"]))
    return records


def _rank_within(groups: Tensor, n_groups: int) -> tuple[Tensor, Tensor]:
    """Position of each row within its group (rows already sorted by group) and group sizes."""
    counts = torch.bincount(groups, minlength=n_groups)
    start = torch.cumsum(counts, 0) - counts
    return torch.arange(groups.numel(), device=groups.device) - start[groups], counts


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
        merge: BoxMergeFn | None,
        weights: Tensor | Sequence[float] | None = None,
        options: Mapping[str, Any] | None = None,
        max_detections: int | None = None,
    ) -> Detections:
        """Merge each image's boxes over the views (``merge=None``: keep them all, sorted by
        score, as a one-view policy does); at most ``max_detections`` per image."""
        out = []
        for boxes, scores, labels, views in self._by_image():
            if merge is None:
                b, s, lab = concat(boxes, scores, labels)
            else:
                b, s, lab = merge(boxes, scores, labels, views, len(self.view_names), weights, **(options or {}))
            out.append(_record(b[:max_detections], s[:max_detections], lab[:max_detections]))
        return out

    def per_view(self) -> list[list[dict[str, Tensor]]]:
        """``[image][view]`` dicts of each view's own de-augmented detections."""
        out = []
        for boxes, scores, labels, views in self._by_image():
            out.append([_record(boxes[views == v], scores[views == v], labels[views == v])
                        for v in range(len(self.view_names))])
        return out


@dataclass(frozen=True)
class DetectionResult:
    """What :meth:`DetectionTTA.predict` returns.

    Attributes:
        detections: per image, the merged ``{"boxes" (M, 4), "scores" (M,), "labels" (M,)}``,
            boxes in the original image's pixels, by descending score.
        views: with ``keep_views=True``, per image and view, that view's own detections mapped
            back to the original image (``None`` otherwise).
    """

    detections: Detections
    views: list[list[dict[str, Tensor]]] | None = None


# --------------------------------------------------------------------------- merge options
def _accepts(merge: BoxMergeFn, key: str, value: Any) -> bool:
    """Whether ``merge`` takes the keyword ``key`` (tried on an empty input; a bad value for
    an option it does take raises its own error)."""
    e4, e1 = torch.zeros(0, 4), torch.zeros(0)
    try:
        merge(e4, e1, e1.long(), e1.long(), 1, None, **{key: value})
    except TypeError:
        return False
    return True


def merge_options_for(merge: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options of ``options`` that the box merge ``merge`` takes: ``KEY`` applies to every
    merge that has such an option, ``MERGE.KEY`` to that merge only.

    Raises:
        ConfigError: a ``MERGE.KEY`` option that this merge does not have.

    Example:
        >>> merge_options_for("nms", {"iou_threshold": 0.6, "skip_threshold": 0.1, "wbf.conf_type": "max"})
        {'iou_threshold': 0.6}
    """
    fn = get_box_merge(merge)
    mine: dict[str, Any] = {}
    for key, value in options.items():
        target, dot, name = key.rpartition(".")
        if dot and target != merge:
            continue
        if _accepts(fn, name, value):
            mine[name] = value
        elif dot:
            raise ConfigError(f"box merge {merge!r} has no option {name!r}")
    return mine


def _check_options(merge: str, options: Mapping[str, Any]) -> None:
    fn = get_box_merge(merge)
    bad = [k for k, v in options.items() if not _accepts(fn, k, v)]
    if bad:
        raise ConfigError(f"box merge {merge!r} has no option {', '.join(map(repr, bad))}")


# --------------------------------------------------------------------------- the wrapper
def _to_photo(boxes: Tensor, windows: Tensor, size: tuple[int, int]) -> Tensor:
    """Boxes ``(M, 4)`` in the pixels of an input stage of ``size`` to photo pixels, through each
    box's ``(top, left, height, width)`` photo window ``windows (M, 4)``."""
    h, w = size
    win = windows.to(boxes.device, torch.float64)
    scale = torch.stack([win[:, 3] / w, win[:, 2] / h], 1).repeat(1, 2)  # (M, 4)
    offset = torch.stack([win[:, 1], win[:, 0]], 1).repeat(1, 2)
    return (boxes.double() * scale + offset).to(boxes.dtype)


class DetectionTTA(TTABase):
    """TTA for object detectors returning per-image detections in torchvision's format.

    Args:
        model: the detector: ``(N, C, H, W)`` images -> a list of ``N`` dicts with ``boxes``
            (xyxy pixels of the image given), ``scores`` and ``labels`` (see
            :func:`yolo_adapter` and :func:`function_adapter` for other formats).
        policy: preset name, policy text, JSON path or policy object; every geometric view
            must be axis-aligned (flips, quarter turns, scale, resize, crop, shift, input stages).
        merge: ``wbf`` (default), ``nms``, ``soft_nms`` or ``concat`` (see
            :mod:`ttakit.tasks.boxes`); a one-view policy returns the view's boxes unmerged.
        merge_options: keyword options of the merge (``iou_threshold``, ``skip_threshold``,
            ``conf_type``, ``sigma``, ``method``, ...).
        max_detections: keep at most this many merged boxes per image (``None``: all).
        norm: the model's input normalisation (photometric views need it).
        run_config: micro-batch, memory format and autocast.
        data_config: timm data config that turns photos into the plain model input (a square
            centre window of the photo; boxes are mapped back through it).

    Raises:
        PolicyError: a view that is not axis-aligned (a free rotation), or an unknown merge.
        ConfigError: a merge option the merge does not have, or a bad value.

    Example:
        >>> class Bright(torch.nn.Module):   # boxes the pixels brighter than 0.5, label 0
        ...     def forward(self, x):
        ...         out = []
        ...         for img in x:
        ...             ys, xs = torch.nonzero(img.mean(0) > 0.5, as_tuple=True)
        ...             box = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()[None]
        ...             out.append({"boxes": box, "scores": torch.ones(1), "labels": torch.zeros(1, dtype=torch.long)})
        ...         return out
        >>> images = torch.zeros(1, 3, 40, 60)
        >>> images[0, :, 5:15, 8:20] = 1.0
        >>> tta = DetectionTTA(Bright(), "hflip*rot90(0,1)", merge="wbf")
        >>> tta(images)[0]["boxes"]           # found in every view, mapped back, fused
        tensor([[ 8.,  5., 20., 15.]])
    """

    def __init__(
        self,
        model: nn.Module,
        policy: PolicyLike = "hflip",
        merge: str = "wbf",
        *,
        merge_options: Mapping[str, Any] | None = None,
        max_detections: int | None = None,
        norm: Normalization | None = None,
        run_config: RunConfig | None = None,
        data_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(model, policy, norm=norm, run_config=run_config, data_config=data_config)
        self.merge_name = merge
        self._merge = get_box_merge(merge)
        self.merge_options = dict(merge_options or {})
        _check_options(merge, self.merge_options)
        if max_detections is not None and max_detections < 1:
            raise ConfigError(f"max_detections must be a positive integer, got {max_detections}")
        self.max_detections = max_detections
        # Refuse views whose boxes cannot come back before any model time is spent: probe each
        # on an empty box list at a size where any crop fits.
        h, w = self.data_config["input_size"][-2:]
        for view in self.views:
            view.invert_boxes(torch.zeros(0, 4), (4 * h + 1, 4 * w + 3))

    def _windows(self, view: View, photo_sizes: Sequence[tuple[int, int]]) -> Tensor:
        """``(B, 4)`` ``(top, left, height, width)`` of each photo that ``view``'s input shows."""
        stage = view.source or Input.of_model(self.data_config)
        return torch.tensor([stage.window(s) for s in photo_sizes], dtype=torch.float64)

    @torch.inference_mode()
    def detect_views(self, x: Images | ViewInputs) -> ViewDetections:
        """Run every view and map each view's boxes back to the original images (photo pixels
        for photos, input pixels for tensors), with no merging."""
        inputs = self.inputs(x)
        src = as_view_inputs(inputs)
        photos = getattr(inputs, "photo_sizes", None)
        cols: list[tuple[Tensor, ...]] = []
        for v, (view, out) in enumerate(zip(self.views, self.run(inputs))):
            recs = as_detections(out, src.batch_size)
            counts = torch.tensor([len(r["scores"]) for r in recs])
            size = src.size(view.source)
            boxes = view.invert_boxes(torch.cat([r["boxes"] for r in recs]), size)  # (m, 4) input-stage pixels
            images = torch.repeat_interleave(torch.arange(len(recs)), counts).to(boxes.device)
            if photos is not None:  # the stage's window of each photo -> that photo's pixels
                boxes = _to_photo(boxes, self._windows(view, photos)[images.cpu()], size)
            elif view.source is not None:
                raise PolicyError(f"{view.name}: mapping an input stage back needs the photo sizes; pass photos")
            cols.append((boxes, torch.cat([r["scores"] for r in recs]), torch.cat([r["labels"] for r in recs]),
                         images, torch.full_like(images, v)))
        boxes, scores, labels, images, views = (torch.cat(c) for c in zip(*cols))
        # A box wholly outside the original image (a zoomed-out view's padding) is clipped to a
        # line: dropped.
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return ViewDetections(boxes[keep], scores[keep], labels[keep], images[keep], views[keep],
                              src.batch_size, tuple(v.name for v in self.views))

    def predict(self, x: Images, keep_views: bool = False) -> DetectionResult:
        """Merged detections per image (and, with ``keep_views``, each view's own)."""
        det = self.detect_views(x)
        merge = None if len(self.views) == 1 else self._merge
        merged = det.merge(merge, self.view_weights, self.merge_options, self.max_detections)
        return DetectionResult(merged, det.per_view() if keep_views else None)

    def forward(self, x: Images) -> Detections:
        """The merged detections, one dict per image."""
        return self.predict(x).detections


# --------------------------------------------------------------------------- adapters
class _FunctionDetector(nn.Module):
    """Wraps a function as a detector module (its output checked by :func:`as_detections`)."""

    def __init__(self, fn: Callable[[Tensor], Any]) -> None:
        super().__init__()
        self.fn = fn  # an nn.Module is registered as a submodule: .to()/.eval() reach it

    def forward(self, x: Tensor) -> Detections:
        return as_detections(self.fn(x), x.shape[0])


def function_adapter(fn: Callable[[Tensor], Any]) -> nn.Module:
    """A detector module from a function mapping ``(N, C, H, W)`` images to per-image
    detections: a list of dicts (``boxes``, ``scores``, ``labels``) or a ``(boxes, scores,
    labels)`` triple of per-image sequences.

    Example:
        >>> fn = lambda x: ([torch.tensor([[0., 0., 4., 4.]])] * len(x), [torch.ones(1)] * len(x),
        ...                 [torch.zeros(1, dtype=torch.long)] * len(x))
        >>> DetectionTTA(function_adapter(fn), "none")(torch.zeros(2, 3, 8, 8))[1]["boxes"]
        tensor([[0., 0., 4., 4.]])
    """
    return _FunctionDetector(fn)


@dataclass(frozen=True)
class YoloDecode:
    """How raw YOLO outputs ``(N, A, 4 + 1 + C)`` become detections.

    Attributes:
        conf_threshold: keep anchors whose score (objectness x class probability) is above this.
        iou_threshold: per-image, per-class NMS threshold.
        max_detections: at most this many boxes per image.
        objectness: the output has an objectness column after the box (YOLOv5/v7); ``False``
            for ``(N, A, 4 + C)`` outputs (YOLOv8 after transposing).
        logits: the scores are logits (a sigmoid is applied) rather than probabilities.
        multi_label: one box per (anchor, class) above the threshold, not only the best class.
        class_agnostic: NMS across classes.
    """

    conf_threshold: float = 0.25
    iou_threshold: float = 0.45
    max_detections: int = 300
    objectness: bool = True
    logits: bool = False
    multi_label: bool = False
    class_agnostic: bool = False

    def __post_init__(self) -> None:
        for name in ("conf_threshold", "iou_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.max_detections < 1:
            raise ConfigError(f"max_detections must be positive, got {self.max_detections}")


def decode_yolo(raw: Tensor, cfg: YoloDecode) -> Detections:
    """Decode ``(N, A, 4 + 1 + C)`` rows ``cx, cy, w, h, obj, classes...`` (pixels of the model
    input) into per-image detections, all images in one batched NMS.

    Example:
        >>> raw = torch.tensor([[[10., 10., 4., 4., 0.9, 0.1, 0.8], [10., 11., 4., 4., 0.8, 0.1, 0.9]]])
        >>> decode_yolo(raw, YoloDecode())[0]
        {'boxes': tensor([[ 8.,  8., 12., 12.]]), 'scores': tensor([0.7200]), 'labels': tensor([1])}
    """
    check_shape("YOLO output", raw.shape, "(N, A, K)")
    first = 5 if cfg.objectness else 4
    n, n_cls = raw.shape[0], raw.shape[-1] - first
    if n_cls < 1:
        raise ShapeError("YOLO output", f"(N, A, {first} + classes)", raw.shape)
    p = raw.float()
    if cfg.logits:
        p = torch.cat([p[..., :4], p[..., 4:].sigmoid()], -1)
    cls = p[..., first:] * p[..., 4:5] if cfg.objectness else p[..., first:]  # (N, A, C)
    cx, cy, w, h = p[..., :4].unbind(-1)
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)  # (N, A, 4)
    if cfg.multi_label:
        img, anchor, label = torch.nonzero(cls > cfg.conf_threshold, as_tuple=True)
        score = cls[img, anchor, label]
    else:
        best, arg = cls.max(-1)  # (N, A)
        img, anchor = torch.nonzero(best > cfg.conf_threshold, as_tuple=True)
        score, label = best[img, anchor], arg[img, anchor]
    b = boxes[img, anchor]
    group = img if cfg.class_agnostic else img * n_cls + label
    keep = torchvision.ops.batched_nms(b, score, group, cfg.iou_threshold)  # by descending score
    keep = keep[torch.argsort(img[keep], stable=True)]  # by image, still by score within one
    rank, _ = _rank_within(img[keep], n)
    keep = keep[rank < cfg.max_detections]
    counts = torch.bincount(img[keep], minlength=n).tolist()
    parts = (t.split(counts) for t in (b[keep], score[keep], label[keep]))
    return [_record(*r) for r in zip(*parts)]


class _YoloDetector(nn.Module):
    """A YOLO-style network with decoding (and letterboxing) around it."""

    def __init__(self, model: nn.Module, decode: YoloDecode, letterbox: tuple[int, int] | None) -> None:
        super().__init__()
        self.model = model
        self.decode = decode
        self.letterbox = letterbox

    def forward(self, x: Tensor) -> Detections:
        h, w = x.shape[-2:]
        if self.letterbox is not None:
            # Fit the view into the model's size, keeping its aspect, centred on 0 (the mean colour).
            H, W = self.letterbox
            r = min(H / h, W / w)
            nh, nw = max(1, round(h * r)), max(1, round(w * r))
            top, left = (H - nh) // 2, (W - nw) // 2
            canvas = x.new_zeros((*x.shape[:-2], H, W))
            canvas[..., top:top + nh, left:left + nw] = Fn.resize(x, (nh, nw))
            x = canvas
        raw = self.model(x)
        recs = decode_yolo(raw[0] if isinstance(raw, (tuple, list)) else raw, self.decode)
        if self.letterbox is None:
            return recs
        shift = torch.tensor([left, top, left, top], dtype=torch.float32)
        scale = torch.tensor([nw / w, nh / h, nw / w, nh / h], dtype=torch.float32)
        limit = torch.tensor([w, h, w, h], dtype=torch.float32)
        for r in recs:  # back to the view's pixels, clipped to it
            b = (r["boxes"] - shift.to(r["boxes"])) / scale.to(r["boxes"])
            r["boxes"] = torch.minimum(b.clamp_min(0.0), limit.to(b))
        return recs


def yolo_adapter(
    model: nn.Module,
    conf_threshold: float = 0.25,
    iou_threshold: float = 0.45,
    *,
    letterbox: int | tuple[int, int] | None = None,
    max_detections: int = 300,
    objectness: bool = True,
    logits: bool = False,
    multi_label: bool = False,
    class_agnostic: bool = False,
) -> nn.Module:
    """A detector module from a YOLO-style network returning raw ``(N, A, 4 + 1 + C)``
    predictions (``cx, cy, w, h`` in pixels of its input, objectness, class scores), or a
    tuple whose first element is that.

    Args:
        model: the network.
        conf_threshold, iou_threshold, max_detections, objectness, logits, multi_label,
            class_agnostic: see :class:`YoloDecode`.
        letterbox: the model's fixed input size (``S`` or ``(H, W)``): each view is resized to
            fit it with its aspect ratio kept, padded with 0 (the mean colour), and the boxes
            mapped back to the view's pixels. ``None``: the view is fed as it is.

    Example:
        >>> class Raw(torch.nn.Module):     # one anchor: a 20x20 box at the input's centre
        ...     def forward(self, x):
        ...         h, w = x.shape[-2:]
        ...         return torch.tensor([[[w / 2, h / 2, 20.0, 20.0, 0.9, 0.9]]]).expand(len(x), 1, 6)
        >>> det = yolo_adapter(Raw(), letterbox=64)
        >>> det(torch.zeros(1, 3, 32, 128))[0]["boxes"]    # fed at 64 x 16, mapped back and clipped
        tensor([[44.,  0., 84., 32.]])
    """
    size = (letterbox, letterbox) if isinstance(letterbox, int) else letterbox
    cfg = YoloDecode(conf_threshold, iou_threshold, max_detections, objectness, logits, multi_label, class_agnostic)
    return _YoloDetector(model, cfg, None if size is None else tuple(size))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- loading
@dataclass(frozen=True)
class LoadedDetector(LoadedModel):
    """A detector ready for :class:`DetectionTTA`: a :class:`~ttakit.models.LoadedModel` whose
    ``model`` returns torchvision-format detections, ``name`` is what it was loaded from
    (``MODULE:FUNCTION`` or a torchvision model name), ``data_config`` says how photos become
    its input and ``class_names`` name its labels."""

    def label_name(self, label: int) -> str:
        return self.class_names[label] if 0 <= label < len(self.class_names) else str(label)


# torchvision detectors take [0, 1] images of any size and normalise and resize them inside.
_TORCHVISION_DATA = {"input_size": (3, 320, 320), "interpolation": "bilinear", "mean": (0.0, 0.0, 0.0),
                     "std": (1.0, 1.0, 1.0), "crop_pct": 1.0, "crop_mode": "center"}


def _torchvision_detector(name: str, weights: str | None, num_classes: int | None) -> LoadedDetector:
    from ..models import load_state_dict

    known = torchvision.models.list_models(module=torchvision.models.detection)
    if name not in known:
        raise ModelLoadError(f"unknown torchvision detection model {name!r}; known: {', '.join(sorted(known))}")
    model = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=num_classes or 91)
    if weights:
        state = load_state_dict(weights)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise WeightsError(f"{weights}: does not fit {name} ({str(e).splitlines()[0]})") from e
    classes = [str(i) for i in range(num_classes or 91)]
    if num_classes in (None, 91):  # the COCO label ids torchvision uses, named
        meta = torchvision.models.get_model_weights(name).DEFAULT.meta.get("categories")  # type: ignore[union-attr]
        classes = list(meta) if meta else classes
    return LoadedDetector(model.eval(), name, weights or "random", dict(_TORCHVISION_DATA), classes)


def _import_function(spec: str) -> Callable[..., Any]:
    module_name, _, attr = spec.rpartition(":")
    try:
        if module_name.endswith(".py") or os.sep in module_name or "/" in module_name:
            path = Path(module_name)
            if not path.is_file():
                raise ModelLoadError(f"detector {spec!r}: {path} not found")
            loader = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(loader)  # type: ignore[arg-type]
            loader.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            # The working folder is importable, as for `python -m`, so examples.x:f works.
            sys.path.insert(0, os.getcwd())
            try:
                module = importlib.import_module(module_name)
            finally:
                sys.path.remove(os.getcwd())
    except ImportError as e:
        raise ModelLoadError(f"detector {spec!r}: cannot import {module_name!r} ({e})") from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ModelLoadError(f"detector {spec!r}: {module_name!r} has no function {attr!r}")
    return fn


def load_detector(spec: str, weights: str | None = None, num_classes: int | None = None,
                  class_names: Sequence[str] | None = None) -> LoadedDetector:
    """Resolve a detector: ``MODULE:FUNCTION`` or ``path/file.py:FUNCTION`` (a callable
    returning an ``nn.Module`` in torchvision's output format or a :class:`LoadedDetector`;
    called with ``weights=`` when ``weights`` is given), or a torchvision detection model
    name (``torchvision:NAME`` or ``NAME``, random weights unless ``weights`` is a state dict;
    ``num_classes`` defaults to COCO's 91).

    Raises:
        ModelLoadError: nothing importable or known under that name.
        WeightsError: the weights do not fit.

    Example:
        >>> det = load_detector("fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=3)
        >>> det.weights, det.class_names
        ('random', ['0', '1', '2'])
    """
    if not spec:
        raise ModelLoadError("no detector given: name MODULE:FUNCTION or a torchvision detection model")
    if ":" in spec and not spec.startswith("torchvision:"):
        fn = _import_function(spec)
        params = inspect.signature(fn).parameters
        got = fn(weights=weights) if weights and "weights" in params else fn()
        if weights and "weights" not in params:
            raise ModelLoadError(f"detector {spec!r} takes no weights argument")
        if isinstance(got, LoadedDetector):
            det = got
        elif isinstance(got, nn.Module):
            import timm

            det = LoadedDetector(got, spec, weights or "(loader's)", timm.data.resolve_data_config({}, model=got),
                                 [str(i) for i in range(num_classes or 0)])
        else:
            raise ModelLoadError(f"detector {spec!r} returned {type(got).__name__}, not an nn.Module")
    else:
        det = _torchvision_detector(spec.removeprefix("torchvision:"), weights, num_classes)
    det.model.eval()
    return det if class_names is None else replace(det, class_names=list(class_names))
