"""Single-image prediction: plain vs TTA top-k with class names, and each view's top-1."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from .data import load_image
from .models import LoadedModel
from .tasks.classify import ClassificationTTA

__all__ = ["ClassScore", "ImagePrediction", "predict_images", "topk"]


@dataclass(frozen=True)
class ClassScore:
    """One ranked class."""

    index: int
    label: str
    prob: float


@dataclass(frozen=True)
class ImagePrediction:
    """Plain and TTA results for one image.

    Attributes:
        path: the input file.
        plain: top-k of the un-augmented image.
        tta: top-k of the merged prediction.
        views: top-1 of each view, in policy order (``ClassScore`` plus the view name).
        conformal_set: the classes of the conformal prediction set, most probable first (with a
            calibrated policy; else ``None``).
    """

    path: str
    plain: list[ClassScore]
    tta: list[ClassScore]
    views: list[tuple[str, ClassScore]]
    conformal_set: list[ClassScore] | None = None


def topk(probs: Tensor, class_names: Sequence[str], k: int) -> list[ClassScore]:
    """The ``k`` most probable classes of a ``(C,)`` probability vector."""
    values, indices = probs.topk(min(k, probs.numel()))
    return [ClassScore(int(i), class_names[int(i)], float(v)) for v, i in zip(values, indices)]


def set_scores(probs: Tensor, in_set: Tensor, class_names: Sequence[str]) -> list[ClassScore]:
    """The classes of a ``(C,)`` bool set, most probable first."""
    idx = in_set.nonzero().squeeze(1)
    idx = idx[probs[idx].argsort(descending=True)]
    return [ClassScore(int(i), class_names[int(i)], float(probs[i])) for i in idx]


def predict_images(
    lm: LoadedModel,
    paths: Sequence[str | Path],
    tta: ClassificationTTA,
    k: int = 5,
    images: Sequence[Image.Image] | None = None,
) -> list[ImagePrediction]:
    """Decode (unless ``images`` are given) and predict each photo through
    :meth:`ClassificationTTA.predict`, so adaptive TTA applies as it does everywhere.

    All files are decoded first, so a bad file fails before any model time is spent. A view
    that adaptive TTA did not run for an image is left out of that image's ``views``.
    """
    decoded = list(images) if images is not None else [load_image(p) for p in paths]
    # With test-time adaptation the photos are a stream: one adaptation step per batch, in order.
    step = tta.adapt_options.batch if tta.adapter is not None else max(len(decoded), 1)
    out = []
    for s in range(0, len(decoded), step):
        out += _predict_batch(lm, paths[s:s + step], tta, k, decoded[s:s + step])
    return out


def _predict_batch(lm: LoadedModel, paths: Sequence[str | Path], tta: ClassificationTTA, k: int,
                   decoded: Sequence[Image.Image]) -> list[ImagePrediction]:
    res = tta.predict(decoded)
    plain_logits = res.plain_logits if res.plain_logits is not None and tta.adapter is None else None
    if plain_logits is None:  # no identity view, or adapted: the plain column is the unadapted model
        plain_logits = tta.unadapted_logits(decoded)
    plain = torch.softmax(plain_logits.float(), dim=-1).cpu()  # (B, C)
    merged = res.probs.cpu()  # (B, C)
    per_view = torch.softmax(res.view_logits.float(), dim=-1).cpu()  # (B, V, C), NaN where not run
    out = []
    for b, path in enumerate(paths):
        views = [(v.name, topk(per_view[b, i], lm.class_names, 1)[0])
                 for i, v in enumerate(tta.views) if not per_view[b, i].isnan().any()]
        in_set = None if res.sets is None else set_scores(merged[b], res.sets[b].cpu(), lm.class_names)
        out.append(ImagePrediction(str(path), topk(plain[b], lm.class_names, k), topk(merged[b], lm.class_names, k), views,
                                   in_set))
    return out
