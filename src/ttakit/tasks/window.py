"""Sliding-window inference with TTA: every view tiled as MONAI tiles a photo, tiles and views in shared forwards, stitched with weights.

A photo larger than the model's input is not resized whole: it is cut into overlapping tiles,
each tile goes through the model, and the tile outputs are blended back with a weight map
(``constant``, or ``gaussian`` with ``sigma = sigma_scale x tile`` so a tile's edges count
less). The tiling, weights, padding and blending follow MONAI's
``sliding_window_inference`` to the letter (its scan interval ``int(tile x (1 - overlap))``,
its last window pushed back inside the photo, its ``diff // 2`` padding of a photo smaller
than a tile, its weight floor), so with the identity policy the stitched map equals MONAI's.

TTA inside the window: each view re-samples the photo and that view's photo is tiled with the
same plan (so ``hflip`` equals MONAI on the flipped photo, flipped back). The ``(view, tile)``
pairs of all views are streamed in steps of ``WindowConfig.batch`` tiles, one
:func:`~ttakit.runtime.loop.run_views` call per step, so a photo of a single tile still fills
a forward with its views. A view whose inverse is exact on any grid (flips, quarter turns,
photometric changes) is undone tile by tile and added straight into the merged map, each tile
divided by that view's own weight sum (known before any forward), so no per-view map is held;
any other view (zoom, rotation) or a ``max`` merge is stitched in its own frame and then undone
whole, with the mask of the pixels it saw. Both go into the one masked merge
(:class:`~ttakit.tasks.masked_merge.MaskedMerge`), so a pixel no view saw gets the same answer
as without a window. Peak memory is the merged map plus one step's tiles,
never the photo times the views. The stitched maps may live on another device
(``stitch_device="cpu"``) than the model.

Everything here is a function of tiles and outputs: any callable (a torch model, a backend)
runs the forwards.

Example:
    >>> net = torch.nn.Conv2d(3, 2, 3, padding=1)
    >>> cfg = WindowConfig(tile=16, overlap=0.25, blend="gaussian")
    >>> plan_windows((40, 23), cfg.size, cfg.overlap).starts
    ((0, 12, 24), (0, 7))
    >>> merged, seen = sliding_window_tta(net, torch.randn(1, 3, 40, 23), [View()], cfg)
    >>> merged.shape, bool((seen == 1).all())
    (torch.Size([1, 2, 40, 23]), True)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import functional as Fn
from ..errors import ConfigError, PolicyError, ShapeError, check_shape
from ..runtime.config import RunConfig
from ..runtime.loop import run_views
from ..transforms import Normalization
from ..views import View
from .masked_merge import FOLDS, MaskedMerge
from .window_plan import (BLENDS, Size, WindowConfig, WindowPlan, exact_on_tiles, frame_matrix, importance_map,
                          plan_windows, stage_key, tile_starts)

__all__ = ["BLENDS", "WindowConfig", "WindowPlan", "exact_on_tiles", "frame_matrix", "importance_map", "plan_windows",
           "sliding_window_tta", "stage_key", "stitch_views", "tile_starts"]


# --------------------------------------------------------------------------- stitching
def _scaled(a: int, b: int, z: float) -> slice:
    """MONAI's tile slice on an output grid of stride ``1 / z``."""
    return slice(int(a * z), int(b * z))


@dataclass
class _ViewTiling:
    """One view's photo, plan and (once the output grid is known) weight sums."""

    index: int
    view: View
    plan: WindowPlan
    exact: bool
    frame: Size  # (h, w) of the photo the view's transforms start from (the stage's, or the photo's)
    count: Tensor | None = None  # (1, 1, Ph', Pw') summed tile weights on the padded output grid
    num: Tensor | None = None  # (B, K, Ph', Pw') weighted sum: views stitched whole only
    left: int = 0  # tiles not yet added


class _Stitcher:
    """The merged map of one batch of photos, filled view by view, tile by tile."""

    def __init__(self, size: Size, views: Sequence[View], weights: Tensor, config: WindowConfig, merge: str,
                 device: torch.device, sink: Callable[[int, Tensor, Tensor], None] | None = None,
                 stages: Mapping[str, tuple[Tensor, Tensor | None]] | None = None) -> None:
        if merge not in FOLDS.names():
            raise ConfigError(f"sliding-window TTA merges by {' or '.join(FOLDS.names())}, got {merge!r}")
        self.size, self.config, self.device, self.sink = size, config, device, sink
        self.merged = MaskedMerge(merge)  # the one masked merge: tiles of exact views go straight in
        self.weights = weights.double() / weights.double().sum()  # (V,) shares of the mean
        self.tilings = []
        self.stages = dict(stages or {})
        for i, v in enumerate(views):
            frame = tuple(self.stages[stage_key(v)][0].shape[-2:]) if v.stage is not None else size
            self.tilings.append(_ViewTiling(i, v, plan_windows(v.output_size(frame), config.size, config.overlap),
                                            exact_on_tiles(v) and self.merged.fold.linear and sink is None, frame))
            self.tilings[-1].left = len(self.tilings[-1].plan.windows)
        self.z: tuple[float, float] | None = None
        self._counts: dict[tuple, Tensor] = {}  # the latest tile plan's summed blend weights
        self.weight_out: Tensor | None = None  # (1, 1, h', w') tile weights on the output grid

    # -- grids
    def grid(self, size: Size, pad: tuple[int, int, int, int]) -> tuple[Size, tuple[slice, slice]]:
        """Output grid of a padded frame and the slice of it that is the unpadded photo."""
        zy, zx = self.z  # type: ignore[misc]
        ph, pw = size[0] + pad[0] + pad[1], size[1] + pad[2] + pad[3]
        full = (int(ph * zy), int(pw * zx))
        crop = (slice(round(pad[0] * zy), round((pad[0] + size[0]) * zy)) if pad[0] + pad[1] else slice(0, full[0]),
                slice(round(pad[2] * zx), round((pad[2] + size[1]) * zx)) if pad[2] + pad[3] else slice(0, full[1]))
        return full, crop

    def frame_grid(self, size: Size) -> Size:
        """The output grid of an un-augmented frame of ``size`` (the unpadded part of its padded grid)."""
        plan = plan_windows(size, self.config.size, self.config.overlap)
        _, (sy, sx) = self.grid(size, plan.pad)
        return sy.stop - sy.start, sx.stop - sx.start

    @property
    def out_size(self) -> Size:
        """The photo's output grid."""
        return self.frame_grid(self.size)

    def start(self, y: Tensor) -> None:
        """Set the output grid from the first tile output ``(B, K, h', w')``."""
        th, tw = self.config.size
        self.z = (y.shape[-2] / th, y.shape[-1] / tw)
        w = importance_map(self.config.size, self.config.blend, self.config.sigma_scale)[None, None]
        if tuple(y.shape[-2:]) != (th, tw):
            w = F.interpolate(w, y.shape[-2:], mode="nearest-exact")
        self.weight_out = w.to(self.device)

    def _count(self, t: _ViewTiling) -> Tensor:
        # Views tiled alike (a flip and the identity) share one count map: one full-size map
        # fewer while consecutive views' tiles share a step.
        key = (tuple(t.plan.size), tuple(t.plan.pad), tuple(t.plan.tile), tuple(map(tuple, t.plan.windows)))
        if key not in self._counts:
            self._counts = {key: self._count_map(t)}  # only the latest plan is kept
        return self._counts[key]

    def _count_map(self, t: _ViewTiling) -> Tensor:
        full, _ = self.grid(t.plan.size, t.plan.pad)
        count = torch.zeros((1, 1, *full), device=self.device)
        th, tw = t.plan.tile
        for y0, x0 in t.plan.windows:
            count[..., _scaled(y0, y0 + th, self.z[0]), _scaled(x0, x0 + tw, self.z[1])] += self.weight_out  # type: ignore[index]
        return count

    # -- adding tiles
    def add(self, t: _ViewTiling, y0: int, x0: int, y: Tensor) -> None:
        """Add one tile's activated output ``(B, K, h', w')`` of view ``t`` at padded ``(y0, x0)``."""
        if self.z is None:
            self.start(y)
        th, tw = t.plan.tile
        sy, sx = _scaled(y0, y0 + th, self.z[0]), _scaled(x0, x0 + tw, self.z[1])  # type: ignore[index]
        full, crop = self.grid(t.plan.size, t.plan.pad)
        if t.count is None:
            t.count = self._count(t)
            if t.exact:  # added tile by tile, straight into the merged map
                self.merged.open_view((y.shape[0], y.shape[1], *self.out_size), float(self.weights[t.index]),
                                      self.device)
            else:
                t.num = torch.zeros((y.shape[0], y.shape[1], *full), device=self.device)
        y = y.to(self.device) * self.weight_out  # (B, K, h', w')
        if t.exact:
            self._add_exact(t, sy, sx, crop, y / t.count[..., sy, sx])
        else:
            t.num[..., sy, sx] += y  # type: ignore[index]
        t.left -= 1
        if t.left == 0:
            self._finish(t, crop)

    def _add_exact(self, t: _ViewTiling, sy: slice, sx: slice, crop: tuple[slice, slice], y: Tensor) -> None:
        # The part of the tile inside the unpadded view photo ...
        a0, a1 = max(sy.start, crop[0].start), min(sy.stop, crop[0].stop)
        b0, b1 = max(sx.start, crop[1].start), min(sx.stop, crop[1].stop)
        if a0 >= a1 or b0 >= b1:
            return
        part = y[..., a0 - sy.start:a1 - sy.start, b0 - sx.start:b1 - sx.start]
        # ... mapped back onto the photo's output grid: its box through the view's inverse, its
        # pixels through the view's exact inverse.
        vgrid = (crop[0].stop - crop[0].start, crop[1].stop - crop[1].start)
        box = torch.tensor([[b0 - crop[1].start, a0 - crop[0].start, b1 - crop[1].start, a1 - crop[0].start]],
                           dtype=torch.float64)
        x0, y0, x1, y1 = (round(float(v)) for v in t.view.invert_boxes(box, self.out_size)[0])
        if t.view.output_size(self.out_size) != vgrid:
            raise ShapeError("view output grid", str(t.view.output_size(self.out_size)), vgrid)
        part, _ = t.view.invert_dense(part, (y1 - y0, x1 - x0), (y1 - y0, x1 - x0))
        self.merged.add_part(part, slice(y0, y1), slice(x0, x1))

    def _finish(self, t: _ViewTiling, crop: tuple[slice, slice]) -> None:
        w = float(self.weights[t.index])
        if t.exact:
            self.merged.close_view()
        else:
            vmap = (t.num / t.count)[..., crop[0], crop[1]]  # type: ignore[operator]
            y, m = t.view.invert_dense(vmap, t.frame, self.frame_grid(t.frame))
            matrix = self.stages[stage_key(t.view)][1] if t.view.stage is not None else None
            if matrix is not None:  # the stage's window of the photo, back onto the photo's grid
                matrix = matrix.to(self.device)
                m = Fn.warp(m.expand(y.shape[0], -1, -1, -1), matrix, self.out_size, mode="nearest")
                m = (m * Fn.valid_mask(matrix, self.out_size, self.device)).amin(0, keepdim=True)
                y = Fn.warp(y, matrix, self.out_size, padding_mode="border")
            if self.sink is not None:  # each view's own map, handed on as soon as it is whole
                self.sink(t.index, y, m)
            else:
                self.merge_view(y, m, w)
        t.count = t.num = None

    def merge_view(self, y: Tensor, m: Tensor, w: float) -> None:
        """Merge a whole view map ``(B, K, H', W')`` seen where ``m (1|B, 1, H', W')`` > 0."""
        self.merged.add(y.to(self.device), m.to(self.device), w)

    def result(self) -> tuple[Tensor, Tensor]:
        """The merged map (finished in place: the largest tensor here, never copied) and the
        number of views that saw each pixel."""
        coverage = self.merged.coverage
        return self.merged.result(), coverage


def _pairs(tilings: Sequence[_ViewTiling]) -> Iterator[tuple[_ViewTiling, int, int]]:
    for t in tilings:
        for y0, x0 in t.plan.windows:
            yield t, y0, x0


def _run_tiles(model: Callable[[Tensor], Any], images: Tensor, stitcher: _Stitcher, config: WindowConfig,
               activation: Callable[[Tensor], Tensor], norm: Normalization, run_config: RunConfig) -> None:
    """Stream every (view, tile) pair through the model in steps of ``config.batch`` tiles."""
    B, th, tw = images.shape[0], *config.size
    rendered: dict[int, Tensor] = {}  # view index -> its padded photo (at most the views of one step)

    # Flips and quarter turns of the unpadded photo: a view's tile is the view of the photo's
    # tile under it (exact), so these views hold no rendered copy of the whole photo.
    cut = {t.index for t in stitcher.tilings if exact_on_tiles(t.view) and not any(t.plan.pad)
           and all(v.geometric for v in t.view.transforms)}

    def tile(t: _ViewTiling, y0: int, x0: int) -> Tensor:
        if t.index in cut:
            box = torch.tensor([[x0, y0, x0 + tw, y0 + th]], dtype=torch.float64)
            a, b, c, d = (round(float(v)) for v in t.view.invert_boxes(box, t.frame)[0])
            return t.view.apply(images[..., b:d, a:c], norm)
        return view_photo(t)[..., y0:y0 + th, x0:x0 + tw]

    def view_photo(t: _ViewTiling) -> Tensor:
        if t.index not in rendered:
            source = stitcher.stages[stage_key(t.view)][0] if t.view.stage is not None else images
            x = t.view.apply(source.to(images.device), norm)
            p = t.plan.pad
            if any(p):  # F.pad takes the last dimension first
                x = F.pad(x, (p[2], p[3], p[0], p[1]), mode=config.padding_mode,
                          **({"value": config.padding_value} if config.padding_mode == "constant" else {}))
            rendered[t.index] = x
        return rendered[t.index]

    identity = [View()]
    step: list[tuple[_ViewTiling, int, int]] = []
    pairs = list(_pairs(stitcher.tilings))
    for i, pair in enumerate(pairs):
        step.append(pair)
        if len(step) < config.batch and i + 1 < len(pairs):
            continue
        tiles = torch.cat([tile(t, y0, x0) for t, y0, x0 in step])  # (n B, C, th, tw)
        out = run_views(model, tiles, identity, norm, run_config)[0]
        check_shape("segmentation output", out.shape, "(N, K, h, w)")
        out = activation(out.float())
        for j, (t, y0, x0) in enumerate(step):
            stitcher.add(t, y0, x0, out[j * B:(j + 1) * B])
            if t.left == 0:
                rendered.pop(t.index, None)
        step = []


def stitch_views(
    model: Callable[[Tensor], Any],
    images: Tensor,
    views: Sequence[View],
    config: WindowConfig,
    sink: Callable[[int, Tensor, Tensor], None],
    *,
    activation: Callable[[Tensor], Tensor] = lambda y: y,
    norm: Normalization = Normalization(),
    run_config: RunConfig | None = None,
    stages: Mapping[str, tuple[Tensor, Tensor | None]] | None = None,
) -> None:
    """Sliding-window inference of every view, unmerged: ``sink(view_index, map (B, K, H', W'),
    mask (1, 1, H', W'))`` gets each view's stitched map, undone onto the photo's output grid,
    as soon as its last tile is in (views in order; the tiles of consecutive views share
    forwards, so at most a step's worth of views is held). What an evaluation needs to merge
    the views of several policies in several ways."""
    check_shape("images", images.shape, "(B, C, H, W)")
    device = torch.device(config.stitch_device) if config.stitch_device else images.device
    stitcher = _Stitcher(tuple(images.shape[-2:]), views, torch.ones(len(views)), config, "mean", device, sink,  # type: ignore[arg-type]
                         stages)
    _run_tiles(model, images, stitcher, config, activation, norm, run_config or RunConfig())


def sliding_window_tta(
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    views: Sequence[View],
    config: WindowConfig = WindowConfig(),
    *,
    weights: Tensor | None = None,
    activation: Callable[[Tensor], Tensor] = lambda y: y,
    merge: str = "mean",
    norm: Normalization = Normalization(),
    run_config: RunConfig | None = None,
    stages: Mapping[str, tuple[Tensor, Tensor | None]] | None = None,
) -> tuple[Tensor, Tensor]:
    """Sliding-window inference of ``model`` on ``images`` under every view, merged.

    Args:
        model: maps ``(N, C, h, w)`` tiles to ``(N, K, h', w')`` maps (any stride).
        images: ``(B, C, H, W)`` normalised photos of one size.
        views: the views (the identity alone: plain sliding-window inference).
        config: tiles, overlap, blending, padding, tiles per step, stitching device.
        weights: ``(V,)`` view weights (equal if ``None``).
        activation: applied to each tile's output before blending (softmax, sigmoid, none).
        merge: ``mean`` (weighted, over the views that saw each pixel) or ``max``; a pixel no
            view saw is the same merge over every view, unmasked
            (:class:`~ttakit.tasks.masked_merge.MaskedMerge`).
        norm: the model's input normalisation (photometric views need it).
        run_config: micro-batch, memory format and autocast of the view loop.
        stages: the photos of views with an input stage or corrections, by :func:`stage_key`:
            ``(rendered (B, C, h, w), matrix (B, 3, 3) or None)``, the matrix mapping the
            photo's normalised coordinates to the rendering's (:func:`frame_matrix`; ``None``:
            the same frame, e.g. corrections alone). Each such view re-samples the photo, is
            tiled, stitched, undone and mapped back onto the photo with a validity mask.

    Returns:
        ``(merged (B, K, H', W'), coverage (1, 1, H', W'))``: the merged map on the photo's
        output grid (``H' = H`` for a stride-1 model), and the number of views that saw each
        pixel (as :class:`~ttakit.tasks.deaugment.DenseResult`'s ``coverage``; a broadcast view
        of one number when every view saw the whole photo).

    Raises:
        ShapeError: ``images`` is not ``(B, C, H, W)``.
        PolicyError: a view with an input stage or photo corrections (it needs the source
            photo: pass photos to :class:`~ttakit.tasks.dense.SegmentationTTA`).
    """
    check_shape("images", images.shape, "(B, C, H, W)")
    for v in views:
        if v.stage is not None and stage_key(v) not in (stages or {}):
            raise PolicyError(f"view {v.name!r} re-renders the source photo; sliding-window inference on a tensor "
                              "takes tensor views only (pass photos to SegmentationTTA instead)")
    run_config = run_config or RunConfig()
    w = torch.ones(len(views)) if weights is None else weights.detach().float().cpu()
    extra = config.whole_photo
    if extra:
        w = torch.cat([w, w.mean()[None]])
    device = torch.device(config.stitch_device) if config.stitch_device else images.device
    size: Size = tuple(images.shape[-2:])  # type: ignore[assignment]
    stitcher = _Stitcher(size, views, w, config, merge, device, stages=stages)
    _run_tiles(model, images, stitcher, config, activation, norm, run_config)
    if extra:  # the whole photo at one tile's size, its map brought back onto the photo's grid
        small = Fn.resize(images, config.size)
        y = activation(run_views(model, small, [View()], norm, run_config)[0].float())
        y = F.interpolate(y, size=stitcher.out_size, mode="bilinear", align_corners=False)
        stitcher.merge_view(y, torch.ones(1, 1, *stitcher.out_size), float(stitcher.weights[-1]))
    return stitcher.result()
