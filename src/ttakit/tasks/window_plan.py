"""Sliding-window plans: the window config, MONAI's tile starts and padding, blending weights, and which views undo per tile.

Pure functions of sizes and views (no model, no tensors of photos): :mod:`ttakit.tasks.window`
runs and stitches the tiles they plan.

Example:
    >>> cfg = WindowConfig(tile=16, overlap=0.25, blend="gaussian")
    >>> plan_windows((40, 23), cfg.size, cfg.overlap).starts
    ((0, 12, 24), (0, 7))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .. import functional as Fn
from ..errors import ArgumentError, PolicyError
from ..registry import Registry
from ..validate import as_config, check_bool, check_choice, check_device, check_finite, check_int, check_positive, check_range
from ..views import View

__all__ = ["BLENDS", "WindowConfig", "WindowPlan", "exact_on_tiles", "frame_matrix", "importance_map", "plan_windows",
           "stage_key", "tile_starts"]

Size = tuple[int, int]  # (height, width)


def _constant(size: Size, sigma_scale: float) -> Tensor:
    return torch.ones(size, dtype=torch.float32)


def _gaussian(size: Size, sigma_scale: float) -> Tensor:
    # MONAI's compute_importance_map: a separable Gaussian of sigma = sigma_scale x side,
    # centred on the tile, floored at max(its minimum, 1e-3) so no pixel weighs zero.
    out = None
    for i, p in enumerate(size):
        x = torch.arange(start=-(p - 1) / 2.0, end=(p - 1) / 2.0 + 1, dtype=torch.float)
        x = torch.exp(x**2 / (-2 * (p * sigma_scale) ** 2))
        out = x if i == 0 else out.unsqueeze(-1) * x[None]  # type: ignore[union-attr]
    assert out is not None
    return torch.clamp(out, min=max(float(out.min()), 1e-3))


BLENDS = Registry[Callable[[Size, float], Tensor]]("blend", sort=False)
BLENDS.add("constant", _constant)
BLENDS.add("gaussian", _gaussian)

_PADDING = ("constant", "reflect", "replicate", "circular")


@dataclass(frozen=True)
class WindowConfig:
    """How a photo is cut into tiles and stitched back (MONAI's ``sliding_window_inference`` options).

    Attributes:
        tile: tile side in pixels of the model input, or ``(height, width)``.
        overlap: share of a tile's side it shares with the next tile, in ``[0, 1)``.
        blend: ``constant`` (equal weights) or ``gaussian`` (a tile's centre counts more).
        sigma_scale: the Gaussian's sigma as a share of the tile side.
        padding_mode: how a photo smaller than a tile is padded (``F.pad``: ``constant``,
            ``reflect``, ``replicate``, ``circular``); the padding is cropped off the output.
        padding_value: the fill of ``constant`` padding (in normalised input units).
        batch: tiles per step; each step is one view-loop call, whose micro-batches mix tiles
            and views. It sets the peak memory of the model outputs.
        stitch_device: where the stitched maps are kept (``"cpu"`` keeps a large map off the
            accelerator); ``None``: the input's device.
        whole_photo: also run the whole photo resized to one tile, bring its map back to the
            photo and merge it as one more view (global context for the tiles).

    Example:
        >>> WindowConfig(tile=512, overlap=0.25, blend="gaussian").size
        (512, 512)
        >>> WindowConfig(overlap=1.0)
        Traceback (most recent call last):
        ...
        ttakit.errors.ArgumentError: overlap must be in [0, 1), got 1.0
    """

    tile: int | tuple[int, int] = 512
    overlap: float = 0.25
    blend: str = "constant"
    sigma_scale: float = 0.125
    padding_mode: str = "constant"
    padding_value: float = 0.0
    batch: int = 4
    stitch_device: str | None = None
    whole_photo: bool = False

    def __post_init__(self) -> None:
        tile = self.tile
        size = (tile, tile) if isinstance(tile, int) and not isinstance(tile, bool) else tile
        if not isinstance(size, (tuple, list)) or len(size) != 2 or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size):
            raise ArgumentError(f"tile must be a positive integer or (height, width), got {self.tile!r}")
        object.__setattr__(self, "tile", tuple(size))
        object.__setattr__(self, "overlap", check_range("overlap", self.overlap, 0, 1, high_open=True))
        check_choice("blend", self.blend, BLENDS.names())
        object.__setattr__(self, "sigma_scale", check_positive("sigma_scale", self.sigma_scale))
        check_choice("padding_mode", self.padding_mode, _PADDING)
        object.__setattr__(self, "padding_value", check_finite("padding_value", self.padding_value))
        check_int("batch (tiles per step)", self.batch)
        if self.stitch_device is not None:
            check_device("stitch_device", self.stitch_device)
        check_bool("whole_photo", self.whole_photo)

    @classmethod
    def of(cls, window: WindowConfig | int | tuple[int, int] | Mapping[str, Any] | None) -> WindowConfig | None:
        """``window`` as a config: a :class:`WindowConfig` as it is, an int or ``(h, w)`` as the
        tile size (other fields default), a dict as the config's fields; ``None`` stays ``None``.

        Example:
            >>> WindowConfig.of(64).size, WindowConfig.of({"tile": 32, "overlap": 0.5}).overlap
            ((64, 64), 0.5)
        """
        if window is None or isinstance(window, cls):
            return window
        if isinstance(window, (int, tuple, list)) and not isinstance(window, bool):
            return cls(tile=window)  # type: ignore[arg-type]
        return as_config(cls, window, "window")

    @property
    def size(self) -> Size:
        """``(height, width)`` of a tile."""
        return self.tile  # type: ignore[return-value]


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start of every tile along one side of ``length`` pixels (after padding to ``tile``),
    as MONAI scans: steps of ``int(tile x (1 - overlap))`` (at least 1), the last tile pushed
    back to end at the edge.

    Example:
        >>> tile_starts(150, 64, 0.25), tile_starts(128, 64, 0.0), tile_starts(30, 64, 0.5)
        ([0, 48, 86], [0, 64], [0])
    """
    size = max(length, tile)
    if size == tile:
        return [0]
    step = max(1, int(tile * (1 - overlap)))
    n = math.ceil(size / step)
    last = next((d for d in range(n) if d * step + tile >= size), None)
    count = 1 if last is None else last + 1
    return [i * step - max(i * step + tile - size, 0) for i in range(count)]


@dataclass(frozen=True)
class WindowPlan:
    """The tiles of one photo.

    Attributes:
        size: ``(H, W)`` of the photo.
        tile: ``(h, w)`` of a tile.
        pad: ``(top, bottom, left, right)`` padding (only where the photo is smaller than a tile).
        starts: tile starts along the padded height and width.
    """

    size: Size
    tile: Size
    pad: tuple[int, int, int, int]
    starts: tuple[tuple[int, ...], tuple[int, ...]]

    @property
    def padded(self) -> Size:
        return self.size[0] + self.pad[0] + self.pad[1], self.size[1] + self.pad[2] + self.pad[3]

    @property
    def windows(self) -> list[tuple[int, int]]:
        """``(top, left)`` of every tile, rows first (MONAI's order)."""
        return [(y, x) for y in self.starts[0] for x in self.starts[1]]


def plan_windows(size: Size, tile: Size, overlap: float) -> WindowPlan:
    """The tiles of a photo of ``size`` (see :func:`tile_starts`); a side shorter than the
    tile is padded by ``diff // 2`` before and the rest after."""
    pads = []
    for s, t in zip(size, tile):
        diff = max(t - s, 0)
        pads += [diff // 2, diff - diff // 2]
    starts = tuple(tuple(tile_starts(s, t, overlap)) for s, t in zip(size, tile))
    return WindowPlan(tuple(size), tuple(tile), tuple(pads), starts)  # type: ignore[arg-type]


def importance_map(tile: Size, blend: str = "constant", sigma_scale: float = 0.125) -> Tensor:
    """``(h, w)`` float32 weights of a tile's pixels when tiles are blended.

    Example:
        >>> w = importance_map((5, 5), "gaussian")
        >>> bool(w[2, 2] == 1.0), bool(w[0, 0] == w.min()), round(float(w.min()), 4)
        (True, True, 0.001)
    """
    return BLENDS.get(blend)(tuple(tile), sigma_scale)  # type: ignore[arg-type]


def exact_on_tiles(view: View) -> bool:
    """Whether ``view`` can be undone tile by tile: every transform has an exact inverse on any
    grid (flips, quarter turns) or moves no pixel (photometric), and it has no input stage."""
    if view.stage is not None:
        return False
    for t in view.transforms:
        if t.geometric:
            try:
                t.graph_inverse_steps()
            except PolicyError:
                return False
    return True


def stage_key(view: View) -> str:
    """The key of a view's rendered photo in ``stages`` (its input stage and corrections)."""
    return "identity" if view.stage is None else view.stage.name


def frame_matrix(photo: Size, window: tuple[float, float, float, float], batch: int = 1) -> Tensor:
    """``(batch, 3, 3)`` map from the whole photo's normalised coordinates to those of its
    ``(top, left, height, width)`` window (what an input stage shows), for
    :func:`~ttakit.functional.warp` to bring the window's map back onto the photo.

    Example:
        >>> frame_matrix((10, 20), (0.0, 0.0, 10.0, 20.0))[0].diagonal().tolist()   # the whole photo
        [1.0, 1.0, 1.0]
    """
    (H, W), (t, l_, h, w) = photo, window
    # x_photo = (u0 + 1) / 2 * W = l + (u1 + 1) / 2 * w, solved for u1 (as stages.input_matrix).
    m = Fn.affine_matrix([[W / w, 0.0, (W - w - 2 * l_) / w], [0.0, H / h, (H - h - 2 * t) / h]])
    return m.expand(batch, 3, 3)
