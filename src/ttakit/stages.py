"""Input stages: how the decoded source photo becomes the model input (resize the short side, cut a window).

An :class:`Input` is the part of a view that runs before any tensor transform, on the photo
itself (``input=256:1.0`` in policy text); ``None`` in a view means the model's own
preprocessing. :func:`input_matrix` maps the plain input's coordinates onto a stage's, so
outputs of a stage can be mapped back; :mod:`ttakit.data` renders stages from photos.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from . import functional as Fn
from .errors import PolicyError
from .functional import Size
from .params import POSITIONS, read_float, read_int

__all__ = ["Input", "input_matrix", "window_corner"]


@dataclass(frozen=True)
class Input:
    """The input stage of a view: how the decoded source photo becomes the model input.

    The short side of the photo is resized to ``floor(size / crop_pct)`` with the model's own
    interpolation, then a ``size x size`` window is cut at ``position`` (timm's convention:
    ``crop_pct=1.0`` keeps the whole centre square). The plain view (no input stage) is the
    model's own data config, so ``Input(224, 0.875)`` equals it for a model whose config is
    224 px at crop 0.875.

    Attributes:
        size: side of the square model input, in pixels.
        crop_pct: share of the resized short side that the window covers, in (0, 1].
        position: where the window sits: center, tl, tr, bl or br.

    Example:
        >>> Input(256, 1.0).name
        'input=256:1'
        >>> Input.from_arg("288:0.9:tl")
        Input(size=288, crop_pct=0.9, position='tl')
    """

    size: int
    crop_pct: float = 1.0
    position: str = "center"

    key: ClassVar[str] = "input"

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 8:
            raise PolicyError(f"input size must be an integer of at least 8 pixels, got {self.size!r}")
        if not 0 < self.crop_pct <= 1:
            raise PolicyError(f"input crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.position not in POSITIONS:
            raise PolicyError(f"input position must be one of {', '.join(POSITIONS)}, got {self.position!r}")

    @property
    def name(self) -> str:
        pct = f"{self.crop_pct:g}"
        return f"input={self.size}:{pct}" + ("" if self.position == "center" else f":{self.position}")

    @classmethod
    def from_arg(cls, arg: str) -> Input:
        parts = arg.split(":")
        if not 1 <= len(parts) <= 3:
            raise PolicyError(f"input expects SIZE:CROP_PCT[:POSITION] (e.g. input=256:1.0), got {arg!r}")
        size = read_int(parts[0], "input size")
        pct = read_float(parts[1], "input crop_pct") if len(parts) > 1 else 1.0
        return cls(size, pct, parts[2] if len(parts) > 2 else "center")

    @classmethod
    def of_model(cls, data_config: Mapping[str, Any]) -> Input:
        """The input stage equal to the model's own preprocessing (the plain view), for
        mapping other stages back onto it.

        Raises:
            PolicyError: the model's preprocessing is not a centre crop of a square input, so
                other stages cannot be mapped back onto it.
        """
        size = tuple(data_config["input_size"][-2:])
        if size[0] != size[1] or data_config.get("crop_mode", "center") != "center":
            raise PolicyError(f"input stages need a square, centre-cropped model input to map back onto; "
                              f"this model's is {size[0]}x{size[1]} ({data_config.get('crop_mode')})")
        return cls(int(size[0]), float(data_config.get("crop_pct", 1.0)))

    def scale_size(self) -> int:
        """The short side the photo is resized to (timm: ``floor(size / crop_pct)``)."""
        return math.floor(self.size / self.crop_pct)

    def window(self, photo_size: Size) -> tuple[float, float, float, float]:
        """The part of a ``photo_size`` ``(H, W)`` photo this stage shows, in photo pixels:
        ``(top, left, height, width)`` with pixel edges at integers."""
        H, W = photo_size
        s = self.scale_size()
        # torchvision's Resize(int): the short side becomes s >= size (crop_pct <= 1), the long
        # side int(s * long / short), so the window always fits.
        rh, rw = (s, int(s * W / H)) if H <= W else (int(s * H / W), s)
        top, left = window_corner((rh, rw), self.size, self.position)
        sy, sx = rh / H, rw / W
        return top / sy, left / sx, self.size / sy, self.size / sx

    def __str__(self) -> str:
        return self.name


def window_corner(size: Size, side: int, position: str) -> tuple[int, int]:
    """Top-left corner of a ``side`` square at ``position``; the centre is rounded as
    torchvision's ``CenterCrop`` rounds it."""
    if position == "center":
        return int(round((size[0] - side) / 2.0)), int(round((size[1] - side) / 2.0))
    return Fn.crop_box(size, (side, side), position)


def input_matrix(source: Input | None, plain: Input, photo_size: Size) -> Tensor:
    """3x3 map from the plain input's normalised coordinates to ``source``'s, for one photo
    of ``photo_size``: both are windows of the same photo, so the map is a scale and shift."""
    if source is None:
        return torch.eye(3, dtype=torch.float64)
    (t0, l0, h0, w0), (t1, l1, h1, w1) = plain.window(photo_size), source.window(photo_size)
    # x_photo = l0 + (u0 + 1) / 2 * w0 = l1 + (u1 + 1) / 2 * w1, solved for u1.
    ax, ay = w0 / w1, h0 / h1
    bx = (2 * (l0 - l1) + w0 - w1) / w1
    by = (2 * (t0 - t1) + h0 - h1) / h1
    return Fn.affine_matrix([[ax, 0.0, bx], [0.0, ay, by]])
