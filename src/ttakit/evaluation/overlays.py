"""Gallery pictures for segmentation and detection: masks and boxes drawn over a photo, from plain arrays.

Every function takes numpy arrays (a ``(H, W, 3)`` uint8 photo, ``(H, W)`` class maps,
``(M, 4)`` xyxy boxes in photo pixels) and returns small JPEG data URIs, so a report draws the
same pictures whatever stored them. Class maps are shrunk by nearest neighbour (a class
index is never blended); the photo is shrunk smoothly.

Example:
    >>> photo = np.zeros((40, 60, 3), np.uint8)
    >>> truth = np.zeros((40, 60), np.int64); truth[10:30, 10:40] = 1
    >>> plain, tta = np.zeros_like(truth), truth.copy()
    >>> [label for label, _ in segmentation_panels(photo, truth, plain, tta)]
    ['photo', 'truth', 'plain', 'TTA', 'changed']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from .thumbnails import jpeg_uri

__all__ = ["CHANGE_COLOURS", "PANEL_PX", "class_colours", "detection_panels", "pick_changes", "segmentation_panels"]

PANEL_PX = 160  # long side of a gallery panel (shown at 120 CSS px: sharp on 1.3x screens)
# Pixels TTA changed: now right, now wrong, or wrong either way (another wrong class).
CHANGE_COLOURS = {"fixed": (22, 163, 74), "broken": (220, 38, 38), "other": (234, 179, 8)}
_PALETTE = ((37, 99, 235), (220, 38, 38), (22, 163, 74), (217, 119, 6), (124, 58, 237), (8, 145, 178),
            (219, 39, 119), (101, 163, 13), (146, 64, 14), (71, 85, 105))


def class_colours(num_classes: int, background: int | None = 0) -> np.ndarray:
    """``(K, 3)`` uint8 colours of ``K`` classes; the ``background`` class is black (drawn untinted)."""
    colours = np.zeros((num_classes, 3), np.uint8)
    others = [i for i in range(num_classes) if i != background]  # they take the palette in order
    if others:  # a task without classes (a regression) has no colours to give
        colours[others] = [_PALETTE[n % len(_PALETTE)] for n in range(len(others))]
    return colours


def _shrink(photo: np.ndarray, side: int) -> tuple[Image.Image, float]:
    """The photo as a PIL image at most ``side`` px on its long side, and the scale applied."""
    img = Image.fromarray(np.ascontiguousarray(photo[..., :3]).astype(np.uint8))
    scale = min(1.0, side / max(img.size))
    if scale < 1.0:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.Resampling.BILINEAR, reducing_gap=2.0)
    return img, scale


def _nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A ``(H, W)`` integer map resized to ``size`` (w, h) by nearest neighbour."""
    h, w = labels.shape
    rows = np.minimum((np.arange(size[1]) + 0.5) * h / size[1], h - 1).astype(np.int64)
    cols = np.minimum((np.arange(size[0]) + 0.5) * w / size[0], w - 1).astype(np.int64)
    return labels[rows[:, None], cols[None, :]]


def _tint(base: np.ndarray, where: np.ndarray, colours: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """``base`` (h, w, 3) float with ``colours`` (h, w, 3) blended in where ``where``."""
    out = base.copy()
    out[where] = (1 - alpha) * base[where] + alpha * colours[where]
    return out


def segmentation_panels(
    photo: np.ndarray, truth: np.ndarray, plain: np.ndarray, tta: np.ndarray,
    num_classes: int | None = None, ignore_index: int | None = 255, background: int | None = 0,
    side: int = PANEL_PX,
) -> list[tuple[str, str]]:
    """The pictures of one segmentation gallery card: ``(label, data URI)`` of the photo, the
    truth, the plain and the TTA prediction (each class tinted over the photo, background
    untinted, ignored pixels grey) and the pixels TTA changed (green: now right, red: now
    wrong, yellow: another wrong class) over a dimmed photo.

    Args:
        photo: ``(H, W, 3)`` uint8.
        truth: ``(H, W)`` class indices (``ignore_index`` where unlabelled).
        plain: ``(H, W)`` the plain model's classes.
        tta: ``(H, W)`` the TTA classes.
        num_classes: classes to colour (default: the largest index seen + 1).
        side: long side of each picture in pixels.
    """
    if not (truth.shape == plain.shape == tta.shape == photo.shape[:2]):
        raise ValueError(f"photo {photo.shape[:2]}, truth {truth.shape}, plain {plain.shape} and tta {tta.shape} "
                         "must have the same height and width")
    img, _ = _shrink(photo, side)
    size = img.size
    base = np.asarray(img, np.float32)
    t, p, q = (_nearest(np.asarray(a, np.int64), size) for a in (truth, plain, tta))
    valid = t != ignore_index if ignore_index is not None else np.ones_like(t, bool)
    k = num_classes or int(max(np.max(t[valid], initial=0), p.max(initial=0), q.max(initial=0))) + 1
    colours = class_colours(k, background)

    def overlay(labels: np.ndarray, known: np.ndarray) -> np.ndarray:
        lab = np.clip(labels, 0, k - 1)
        out = _tint(base, known & (labels != background), colours[lab].astype(np.float32))
        return _tint(out, ~known, np.full_like(base, 128.0), 0.7)  # unlabelled: grey

    everywhere = np.ones_like(valid)
    changed = base * 0.35 + 0.65 * base.mean(-1, keepdims=True) * 0.6  # dimmed, desaturated
    for kind, where in (("fixed", (p != q) & (q == t)), ("broken", (p != q) & (p == t)),
                        ("other", (p != q) & (p != t) & (q != t))):
        changed = _tint(changed, where & valid, np.broadcast_to(np.float32(CHANGE_COLOURS[kind]), base.shape), 0.9)
    pictures = [("photo", base), ("truth", overlay(t, valid)), ("plain", overlay(p, everywhere)),
                ("TTA", overlay(q, everywhere)), ("changed", changed)]
    return [(label, jpeg_uri(Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8)), side, 85))
            for label, a in pictures]


def _boxes_picture(img: Image.Image, scale: float, boxes: np.ndarray, labels: np.ndarray,
                   colours: np.ndarray, dashed: bool = False) -> str:
    """``img`` with ``boxes`` (photo pixels) drawn, each in its class's colour."""
    img = img.copy()
    draw = ImageDraw.Draw(img)
    for (x1, y1, x2, y2), c in zip(np.asarray(boxes, np.float64).reshape(-1, 4) * scale, labels):
        colour = tuple(int(v) for v in colours[int(c) % len(colours)])
        draw.rectangle((x1, y1, x2, y2), outline=(255, 255, 255), width=3)  # a halo: visible on any photo
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=1 if dashed else 2)
    return jpeg_uri(img, max(img.size), 85)


def detection_panels(
    photo: np.ndarray, truth_boxes: np.ndarray, truth_labels: np.ndarray,
    plain: Mapping[str, np.ndarray], tta: Mapping[str, np.ndarray], num_classes: int,
    score_threshold: float = 0.3, side: int = PANEL_PX,
) -> list[tuple[str, str]]:
    """The pictures of one detection gallery card: ``(label, data URI)`` of the photo with
    the true boxes, the plain and the TTA detections (``boxes`` ``(M, 4)`` xyxy in photo
    pixels, ``scores``, ``labels``) scoring at least ``score_threshold``, in class colours.
    """
    img, scale = _shrink(photo, side)
    colours = class_colours(num_classes, background=None)

    def shown(d: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        keep = np.asarray(d["scores"]) >= score_threshold
        return np.asarray(d["boxes"]).reshape(-1, 4)[keep], np.asarray(d["labels"])[keep]

    return [("truth", _boxes_picture(img, scale, truth_boxes, truth_labels, colours)),
            ("plain", _boxes_picture(img, scale, *shown(plain), colours)),
            ("TTA", _boxes_picture(img, scale, *shown(tta), colours))]


def pick_changes(plain: Sequence[float], tta: Sequence[float], count: int) -> dict[str, list[int]]:
    """The images whose per-image score TTA ``raised`` most and ``lowered`` most (at most
    ``count`` each, largest change first; unchanged and unscored images are left out).

    Example:
        >>> pick_changes([0.5, 0.5, 0.5, float("nan")], [0.9, 0.5, 0.2, 0.7], 2)
        {'raised': [0], 'lowered': [2]}
    """
    delta = np.asarray(tta, np.float64) - np.asarray(plain, np.float64)
    order = np.argsort(-np.nan_to_num(delta, nan=0.0), kind="stable")
    raised = [int(i) for i in order if delta[i] > 0][:count]
    lowered = [int(i) for i in order[::-1] if delta[i] < 0][:count]
    return {"raised": raised, "lowered": lowered}
