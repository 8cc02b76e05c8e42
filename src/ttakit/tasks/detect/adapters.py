"""Detector adapters: other detectors' outputs turned into per-image detections in torchvision's format.

:func:`yolo_adapter` decodes YOLO-style raw outputs ``(N, A, 4 + 1 + C)`` (optionally
letterboxing each view to the model's size) and :func:`function_adapter` wraps any function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

from ... import functional as Fn
from ...errors import ConfigError, ShapeError, check_shape
from .format import Detections, as_detections, detection_record

__all__ = ["YoloDecode", "decode_yolo", "function_adapter", "yolo_adapter"]


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


def _rank_within(groups: Tensor, n_groups: int) -> tuple[Tensor, Tensor]:
    """Position of each row within its group (rows already sorted by group) and group sizes."""
    counts = torch.bincount(groups, minlength=n_groups)
    start = torch.cumsum(counts, 0) - counts
    return torch.arange(groups.numel(), device=groups.device) - start[groups], counts


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
    return [detection_record(*r) for r in zip(*parts)]


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


