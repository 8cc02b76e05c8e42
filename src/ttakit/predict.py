"""Single-image prediction: plain vs TTA top-k with class names, and each view's top-1."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from .data import load_image
from .engine import ClassificationTTA, model_device
from .models import LoadedModel
from .transforms import View

__all__ = ["ClassScore", "ImagePrediction", "format_predictions", "predict_images", "predictions_to_json", "topk"]


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
    """

    path: str
    plain: list[ClassScore]
    tta: list[ClassScore]
    views: list[tuple[str, ClassScore]]


def topk(probs: Tensor, class_names: Sequence[str], k: int) -> list[ClassScore]:
    """The ``k`` most probable classes of a ``(C,)`` probability vector."""
    values, indices = probs.topk(min(k, probs.numel()))
    return [ClassScore(int(i), class_names[int(i)], float(v)) for v, i in zip(values, indices)]


def predict_images(
    lm: LoadedModel,
    paths: Sequence[str | Path],
    tta: ClassificationTTA,
    k: int = 5,
    images: Sequence[Image.Image] | None = None,
) -> list[ImagePrediction]:
    """Decode (unless ``images`` are given), preprocess with the model's own timm config and
    predict each image.

    All files are decoded first, so a bad file fails before any model time is spent.
    """
    transform = lm.transform()
    decoded = images if images is not None else [load_image(p) for p in paths]
    x = torch.stack([transform(im) for im in decoded])  # (B, C, H, W)
    x = x.to(model_device(lm.model))
    logits = tta.forward_views(x)  # (B, V, C)
    merged = tta.merge_views(logits).cpu()  # (B, C)
    ident = [i for i, v in enumerate(tta.views) if v.is_identity]
    plain_logits = logits[:, ident[0]] if ident else tta.forward_views(x, [View()])[:, 0]
    plain = torch.softmax(plain_logits.float(), dim=-1).cpu()
    per_view = torch.softmax(logits.float(), dim=-1).cpu()  # (B, V, C)
    out = []
    for b, path in enumerate(paths):
        views = [(v.name, topk(per_view[b, i], lm.class_names, 1)[0]) for i, v in enumerate(tta.views)]
        out.append(ImagePrediction(str(path), topk(plain[b], lm.class_names, k), topk(merged[b], lm.class_names, k), views))
    return out


def predictions_to_json(lm: LoadedModel, tta: ClassificationTTA, preds: Sequence[ImagePrediction]) -> dict[str, Any]:
    """The ``--json`` document of ``ttakit predict``."""
    return {
        "model": lm.name,
        "policy": [v.name for v in tta.views],
        "merge": tta.merge_name,
        "images": [
            {
                "path": p.path,
                "plain": [asdict(s) for s in p.plain],
                "tta": [asdict(s) for s in p.tta],
                "views": [{"name": n, **asdict(s)} for n, s in p.views],
            }
            for p in preds
        ],
    }


def _cell(s: ClassScore | None, width: int) -> str:
    if s is None:
        return " " * (width + 8)
    label = s.label if len(s.label) <= width else s.label[: width - 1] + "…"
    return f"{label:<{width}} {s.prob:7.2%}"


def format_predictions(lm: LoadedModel, tta: ClassificationTTA, preds: Sequence[ImagePrediction]) -> str:
    """Human-readable table: plain and TTA top-k side by side, then each view's top-1."""
    lines = []
    width = 30
    for p in preds:
        lines.append(f"{p.path}")
        lines.append(f"  model {lm.name} ({lm.weights}); policy {tta.policy.name} ({len(tta.views)} views), merge {tta.merge_name}")
        lines.append(f"  {'#':>2}  {'plain':<{width + 8}}   {'tta':<{width + 8}}")
        for r in range(max(len(p.plain), len(p.tta))):
            a = p.plain[r] if r < len(p.plain) else None
            b = p.tta[r] if r < len(p.tta) else None
            lines.append(f"  {r + 1:>2}  {_cell(a, width)}   {_cell(b, width)}")
        if p.plain and p.tta:
            verdict = "same top-1" if p.plain[0].index == p.tta[0].index else "top-1 CHANGED"
            lines.append(f"  {verdict}: plain {p.plain[0].label} -> tta {p.tta[0].label}")
        lines.append("  views:")
        name_w = max(len(n) for n, _ in p.views)
        for name, s in p.views:
            lines.append(f"    {name:<{name_w}}  {_cell(s, width)}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
