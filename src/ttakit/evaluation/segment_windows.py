"""Sliding-window segmentation in the evaluation pipeline: every view stitched at the photo's own size, each row merged and counted per photo.

With a :class:`~ttakit.tasks.window.WindowConfig` the segmenter sees each photo at its own
size, cut into tiles (:func:`~ttakit.tasks.window.stitch_views`: the tiles of consecutive
views share forwards). As each view's stitched map arrives it is counted alone (for
``per_view.json``) and added into the running merge of every row that holds it (the one
masked merge, :class:`~ttakit.tasks.masked_merge.MaskedMerge`, as without a window); once a photo's views
are all in, every row's merged map is counted exactly against the mask
(:func:`~ttakit.evaluation.seg_stats.image_stats`). Memory: one merged map per multi-view
row plus the views in flight, for one photo at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ..tasks.dense import window_inputs
from ..tasks.masked_merge import MaskedMerge
from ..tasks.window import WindowConfig, stitch_views
from ..transforms import Normalization
from ..runtime.config import RunConfig
from ..views import View
from .seg_stats import image_stats, photo_argmax

__all__ = ["RowPlan", "window_chunk"]


@dataclass(frozen=True)
class RowPlan:
    """A row to count: its stored-counts key, its views' columns, merge and weights."""

    key: str
    cols: list[int]
    merge: str
    weights: Sequence[float] | None
    boundary: bool = True  # False: a view counted only for its mIoU alone


def _merging(row: RowPlan) -> tuple[MaskedMerge, dict[int, float]]:
    """One row's running merge over the views of one photo, and each of its views' weight.

    Example:
        >>> acc, weight = _merging(RowPlan("k", [0, 1], "mean", None))
        >>> acc.add(torch.ones(1, 2, 1, 2), torch.ones(1, 1, 1, 2), weight[0])
        >>> acc.add(torch.zeros(1, 2, 1, 2), torch.tensor([[[[1.0, 0.0]]]]), weight[1])   # view 1 saw one pixel
        >>> acc.result()[0, 0].tolist()
        [[0.5, 1.0]]
    """
    w = [1.0] * len(row.cols) if row.weights is None else [float(v) for v in row.weights]
    return MaskedMerge(row.merge), dict(zip(row.cols, w))


def window_chunk(
    model: Callable[[Tensor], Any],
    photos: Sequence[Image.Image],
    truths: Sequence[tuple[Tensor, Tensor, Tensor, Any]],
    views: Sequence[View],
    rows: Sequence[RowPlan],
    config: WindowConfig,
    norm: Normalization,
    data_config: Mapping[str, Any],
    run_config: RunConfig,
    device: torch.device,
    k: int,
    ratio: float,
    store_grid: tuple[int, int] | None,
) -> tuple[dict[str, Tensor], Tensor | None, Tensor | None]:
    """Count every row on the decoded ``photos`` (the pipeline's: none is decoded again; their masks, valid pixels and truth bands in
    ``truths``); returns ``{row key: (n, 5, K) counts}`` and, when ``store_grid`` is given, the
    reduced per-view maps ``(n, U, K, h, w)`` and masks ``(n, U, 1, h, w)`` (each photo's maps
    squashed onto that grid)."""
    counts: dict[str, list[Tensor]] = {r.key: [] for r in rows}
    maps, masks = [], []
    for photo, (t, valid, bands, _) in zip(photos, truths):
        images, stages = window_inputs(photo, views, norm, data_config)  # (1, 3, H, W) at the photo's own size
        images = images.to(device)
        size = tuple(t.shape)
        singles = {r.cols[0]: r for r in rows if len(r.cols) == 1}
        merging = {r.key: _merging(r) for r in rows if len(r.cols) > 1}
        small_y: list[Tensor] = [torch.zeros(0)] * len(views)
        small_m: list[Tensor] = [torch.zeros(0)] * len(views)

        def count(row: RowPlan, probs: Tensor) -> None:
            pred = photo_argmax(probs[0].cpu(), size)  # type: ignore[arg-type]
            counts[row.key].append(image_stats(t, pred, valid, k, ratio, bands, row.boundary))

        def sink(u: int, y: Tensor, m: Tensor) -> None:
            if u in singles:
                count(singles[u], y)
            for acc, weight in merging.values():
                if u in weight:
                    acc.add(y, m, weight[u])
            if store_grid is not None:
                small_y[u] = F.interpolate(y.float(), size=store_grid, mode="area").cpu()
                small_m[u] = F.interpolate(m.float(), size=store_grid, mode="area").cpu()

        stitch_views(model, images, views, config, sink, activation=lambda y: torch.softmax(y, 1), norm=norm,
                     run_config=run_config, stages=stages)
        for r in rows:
            if r.key in merging:
                count(r, merging[r.key][0].result())
        if store_grid is not None:
            maps.append(torch.cat(small_y))  # (U, K, h, w)
            masks.append(torch.cat(small_m))
    stacked = {key: torch.stack(v).to(torch.int32) for key, v in counts.items()}
    if store_grid is None:
        return stacked, None, None
    return stacked, torch.stack(maps), torch.stack(masks)
