"""Pictures: the views as the model sees them, and accuracy-vs-cost plots."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from ._optional import require
from .runtime.loop import ViewInputs, as_view_inputs
from .transforms import Normalization
from .views import View

__all__ = ["denormalize", "save_view_grid"]


def denormalize(x: Tensor, norm: Normalization) -> Tensor:
    """``(C, H, W)`` normalised image -> ``(H, W, C)`` pixels in [0, 1]."""
    mean = x.new_tensor(norm.mean).view(-1, 1, 1)
    std = x.new_tensor(norm.std).view(-1, 1, 1)
    return (x * std + mean).clamp(0, 1).permute(1, 2, 0)


def _figure():  # noqa: ANN202 - matplotlib types
    """matplotlib's pyplot on the Agg backend.

    Raises:
        MissingExtraError: matplotlib is not installed (the ``report`` extra).
    """
    matplotlib = require("matplotlib", "report", "drawing views")
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def save_view_grid(
    x: Tensor | ViewInputs,
    views: Sequence[View],
    norm: Normalization,
    titles: Sequence[str],
    merged_title: str,
    out: str | Path,
) -> Path:
    """Save a grid of the views of one image, each exactly as the model sees it (its input
    stage rendered from the photo, then its transforms) with its title, and a final panel
    with the plain input and the merged result.

    Args:
        x: one image: a ``(C, H, W)`` / ``(1, C, H, W)`` tensor or inputs rendered from a photo.
    """
    plt = _figure()
    inputs = as_view_inputs(x.unsqueeze(0) if isinstance(x, Tensor) and x.ndim == 3 else x)
    n = len(views) + 1
    cols = min(5, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.3 * rows), squeeze=False)
    panels = [(v.apply(inputs.render(v.stage)[:1], norm)[0], t) for v, t in zip(views, titles)]
    panels.append((inputs.render(None)[0], merged_title))
    for ax, (img, title) in zip(axes.flat, panels):
        ax.imshow(denormalize(img.detach().float().cpu(), norm).numpy())
        ax.set_title(title, fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    return _save(plt, fig, out)


def _save(plt, fig, out: str | Path) -> Path:  # noqa: ANN001 - matplotlib types
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out

