"""Tensor transforms: frozen parameter holders, each an explicit (augment, de-augment, graph) triple.

A :class:`Transform` knows its parameters and nothing else. ``apply`` augments a batch of
normalised images; ``matrix`` gives the geometry as a normalised-coordinate map (original ->
augmented, see :mod:`ttakit.functional`); ``invert_dense`` maps a dense prediction of the
augmented image back onto the original grid, with a mask of the pixels the view really saw;
``invert_points`` and ``invert_boxes`` do the same for keypoints and boxes; ``graph_steps``
gives the transform as static, exportable modules (:mod:`ttakit.graph`). Views (sequences of
transforms after an input stage) are in :mod:`ttakit.views`, input stages in
:mod:`ttakit.stages`.

Every transform has a canonical name (``hflip``, ``scale=1.1``, ``crop=tl:192``) that the
policy parser reads back, so ``parse(t.name) == t``.

Example:
    >>> t = parse_transform("crop", "tl:2")
    >>> t, t.name, t.apply(torch.arange(9.).view(1, 1, 3, 3), Normalization()).flatten().tolist()
    (Crop(position='tl', size=(2, 2), fraction=None), 'crop=tl:2', [0.0, 1.0, 3.0, 4.0])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from . import functional as Fn
from . import graph as G
from .errors import PolicyError, ShapeError
from .functional import Size
from .params import POSITIONS, read_flag, read_float, read_int, write_float
from .registry import Registry
from .transform_base import Normalization, Transform

__all__ = [
    "Brightness",
    "Contrast",
    "Crop",
    "HFlip",
    "Normalization",
    "Resize",
    "Rot90",
    "Rotate",
    "Scale",
    "Shift",
    "TRANSFORMS",
    "Transform",
    "VFlip",
    "parse_transform",
]

# ============================================================================ geometric, exact
class _Mirror(Transform):
    """A flip along one axis: its own inverse, exact on any grid."""
    _block: ClassVar[list[list[float]]]  # its 2x2 map in normalised coordinates
    _op: ClassVar[Callable[[Tensor], Tensor]]
    _dims: ClassVar[tuple[int, ...]]  # the axis it flips, for the graph form

    @classmethod
    def from_arg(cls, arg: str) -> Transform | None:
        return cls() if read_flag(arg, cls.key) else None

    def matrix(self, size: Size) -> Tensor:
        return Fn.affine_matrix(self._block)

    def apply(self, x: Tensor, norm: Normalization) -> Tensor:
        return type(self)._op(x)

    def invert_dense(self, y: Tensor, mask: Tensor, image_size: Size, grid_size: Size) -> tuple[Tensor, Tensor]:
        op = type(self)._op
        return op(y), op(mask)

    def graph_steps(self, size: Size, norm: Normalization) -> list[nn.Module]:
        return [G.Flip(self._dims)]

    def graph_inverse_steps(self) -> list[nn.Module]:
        return [G.Flip(self._dims)]


@dataclass(frozen=True)
class HFlip(_Mirror):
    """Mirror left-right."""

    key: ClassVar[str] = "hflip"
    _block = [[-1.0, 0.0], [0.0, 1.0]]
    _op = staticmethod(Fn.hflip)
    _dims = (-1,)


@dataclass(frozen=True)
class VFlip(_Mirror):
    """Mirror top-bottom."""

    key: ClassVar[str] = "vflip"
    _block = [[1.0, 0.0], [0.0, -1.0]]
    _op = staticmethod(Fn.vflip)
    _dims = (-2,)


@dataclass(frozen=True)
class Rot90(Transform):
    """Rotate by ``k`` quarter turns counter-clockwise (as ``torch.rot90`` and ttach do)."""

    k: int  # 1, 2 or 3

    key: ClassVar[str] = "rot90"

    def __post_init__(self) -> None:
        if self.k % 4 == 0:
            raise PolicyError("rot90=0 is the identity; leave it out of the view")
        object.__setattr__(self, "k", self.k % 4)

    def arg(self) -> str:
        return str(self.k)

    @classmethod
    def from_arg(cls, arg: str) -> Rot90 | None:
        k = read_int(arg, "rot90") % 4
        return cls(k) if k else None

    def output_size(self, size: Size) -> Size:
        return (size[1], size[0]) if self.k % 2 else size

    def matrix(self, size: Size) -> Tensor:
        return Fn.rot90_matrix(self.k)

    def apply(self, x: Tensor, norm: Normalization) -> Tensor:
        return Fn.rot90(x, self.k)

    def invert_dense(self, y: Tensor, mask: Tensor, image_size: Size, grid_size: Size) -> tuple[Tensor, Tensor]:
        return Fn.rot90(y, -self.k), Fn.rot90(mask, -self.k)

    def graph_steps(self, size: Size, norm: Normalization) -> list[nn.Module]:
        return [G.QuarterTurn(self.k)]

    def graph_inverse_steps(self) -> list[nn.Module]:
        return [G.QuarterTurn(-self.k)]


@dataclass(frozen=True)
class Shift(Transform):
    """Translate by whole pixels, ``dx`` right and ``dy`` down; uncovered pixels are 0."""

    dx: int
    dy: int

    key: ClassVar[str] = "shift"

    def arg(self) -> str:
        return f"{self.dx}:{self.dy}"

    @classmethod
    def from_arg(cls, arg: str) -> Shift | None:
        parts = arg.split(":")
        if len(parts) != 2:
            raise PolicyError(f"shift expects DX:DY in pixels (e.g. shift=8:-4), got {arg!r}")
        dx, dy = (read_int(p, "shift") for p in parts)
        return cls(dx, dy) if (dx or dy) else None

    def matrix(self, size: Size) -> Tensor:
        H, W = size
        return Fn.affine_matrix([[1.0, 0.0, 2.0 * self.dx / W], [0.0, 1.0, 2.0 * self.dy / H]])

    def apply(self, x: Tensor, norm: Normalization) -> Tensor:
        return Fn.shift(x, self.dx, self.dy)

    def invert_dense(self, y: Tensor, mask: Tensor, image_size: Size, grid_size: Size) -> tuple[Tensor, Tensor]:
        if tuple(grid_size) == tuple(image_size) == tuple(y.shape[-2:]):  # same grid: exact
            # The map continues from its edge where the view saw nothing (as resampled inverses
            # pad with the border), so a pixel no view saw still gets a prediction; the mask says so.
            H, W = y.shape[-2:]
            rows = (torch.arange(H, device=y.device) + self.dy).clamp(0, H - 1)
            cols = (torch.arange(W, device=y.device) + self.dx).clamp(0, W - 1)
            return y[..., rows[:, None], cols], Fn.shift(mask, -self.dx, -self.dy)
        return super().invert_dense(y, mask, image_size, grid_size)

    def graph_steps(self, size: Size, norm: Normalization) -> list[nn.Module]:
        return [G.Window(size, -self.dy, -self.dx, size)]


# ============================================================================ geometric, resampled
@dataclass(frozen=True)
class Rotate(Transform):
    """Rotate by ``degrees`` counter-clockwise about the centre, same size; corners that
    leave the image are filled with 0 (the mean colour)."""

    degrees: float

    key: ClassVar[str] = "rotate"
    graph_opset: ClassVar[int] = 16  # GridSample

    def arg(self) -> str:
        return write_float(self.degrees)

    @classmethod
    def from_arg(cls, arg: str) -> Rotate | None:
        d = read_float(arg, "rotate")
        return cls(d) if d % 360 else None

    def matrix(self, size: Size) -> Tensor:
        return Fn.rotation_matrix(self.degrees, size)

    def apply(self, x: Tensor, norm: Normalization) -> Tensor:
        size = tuple(x.shape[-2:])
        return Fn.warp(x, torch.linalg.inv(self.matrix(size)), size)

    def graph_steps(self, size: Size, norm: Normalization) -> list[nn.Module]:
        return [G.Warp(torch.linalg.inv(self.matrix(size)), size)]


@dataclass(frozen=True)
class Scale(Transform):
    """Zoom about the centre at the same output size: ``factor > 1`` zooms in (centre crop of
    an enlarged image), ``factor < 1`` zooms out (shrunk image padded with 0)."""

    factor: float

    key: ClassVar[str] = "scale"
    mode: ClassVar[str] = "bilinear"  # interpolation of the enlarged or shrunk image

    def __post_init__(self) -> None:
        if not self.factor > 0:
            raise PolicyError(f"scale factor must be positive, got {self.factor}")

    def arg(self) -> str:
        return write_float(self.factor)

    @classmethod
    def from_arg(cls, arg: str) -> Scale | None:
        f = read_float(arg, "scale")
        return None if f == 1.0 else cls(f)

    def matrix(self, size: Size) -> Tensor:
        return Fn.scale_matrix(size, self.factor)

    def apply(self, x: Tensor, norm: Normalization) -> Tensor:
        return Fn.zoom(x, self.factor, self.mode)

    def invert_dense(self, y: Tensor, mask: Tensor, image_size: Size, grid_size: Size) -> tuple[Tensor, Tensor]:
        big = Fn.scale_resize_size(image_size, self.factor)
        if big[0] >= image_size[0] and big[1] >= image_size[1]:  # zoom in: no padding inside the view
            return super().invert_dense(y, mask, image_size, grid_size)
        # Zoom out: the shrunk image sits in padding. Reads are clamped half a grid pixel inside
        # its edge, so the model's answer on the padding never bleeds into the outermost pixels.
        box = []
        for n, s, g in ((image_size[1], big[1], y.shape[-1]), (image_size[0], big[0], y.shape[-2])):  # x, then y
            start, length = max(0, -((s - n) // 2)), min(n, s)
            box.append((2 * start / n + 1 / g - 1, 2 * (start + length) / n - 1 / g - 1))
        (x0, x1), (y0, y1) = box
        m = self.matrix(image_size)
        out = Fn.warp(y, m, grid_size, padding_mode="border", bounds=(x0, y0, x1, y1))
        mask = Fn.warp(mask, m, grid_size, mode="nearest") * Fn.valid_mask(m, grid_size, y.device)
        return out, mask

    def graph_steps(self, size: Size, norm: Normalization) -> list[nn.Module]:
        # Fn.zoom: resize to round(size * factor), then a centre crop or pad back to size
        big = Fn.scale_resize_size(size, self.factor)
        steps: list[nn.Module] = [] if big == tuple(size) else [G.Resample(size, big, self.mode)]
        return steps + [G.Window(big, (big[0] - size[0]) // 2, (big[1] - size[1]) // 2, size)]


@dataclass(frozen=True)
class Resize(Transform):
    """Change the input resolution: to a fixed ``size`` ``(H, W)``, or by ``factor``.

    The whole field of view is kept; only the number of pixels changes (the model must accept
    other input sizes, as CNNs with global pooling do). In text, ``resize=288`` or
    ``resize=288x320`` is a size and ``resize=1.25`` (with a decimal point) a factor.
    """

    size: tuple[int, int] | None = None
    factor: float | None = None

    key: ClassVar[str] = "resize"
    mode: ClassVar[str] = "bicubic"  # interpolation of the image (dense outputs go back bilinear)

    def __post_init__(self) -> None:
        if (self.size is None) == (self.factor is None):
            raise PolicyError("resize needs exactly one of size or factor")
        if self.factor is not None and not self.factor > 0:
            raise PolicyError(f"resize factor must be positive, got {self.factor}")

    def arg(self) -> str:
        if self.size is not None:
            h, w = self.size
            return str(h) if h == w else f"{h}x{w}"
        return write_float(self.factor)  # type: ignore[arg-type]

    @classmethod
    def from_arg(cls, arg: str) -> Resize | None:
        if "." in arg:
            f = read_float(arg, "resize")
            return None if f == 1.0 else cls(factor=f)
        parts = arg.lower().split("x")
        if len(parts) not in (1, 2):
            raise PolicyError(f"resize expects SIZE, HxW or a factor like 1.25, got {arg!r}")
        hw = [read_int(p, "resize") for p in parts]
        return cls(size=(hw[0], hw[-1]))

    def output_size(self, size: Size) -> Size:
        if self.size is not None:
            return self.size
        return Fn.scale_resize_size(size, self.factor)  # type: ignore[arg-type]

    def apply(self, x: Tensor, norm: Normalization) -> Tensor:
        return Fn.resize(x, self.output_size(tuple(x.shape[-2:])), mode=self.mode)

    def invert_dense(self, y: Tensor, mask: Tensor, image_size: Size, grid_size: Size) -> tuple[Tensor, Tensor]:
        return Fn.resize(y, grid_size), Fn.resize(mask, grid_size, mode="nearest")

    def graph_steps(self, size: Size, norm: Normalization) -> list[nn.Module]:
        out = self.output_size(size)
        return [] if tuple(out) == tuple(size) else [G.Resample(size, out, self.mode)]


@dataclass(frozen=True)
class Crop(Transform):
    """Crop a window at a named position; the model sees the smaller image (compose with
    ``resize`` to bring it back to full size). ``size`` is pixels ``(h, w)`` or, as
    ``fraction``, a share of each side resolved on the image it is given."""

    position: str  # center, tl, tr, bl or br
    size: tuple[int, int] | None = None
    fraction: float | None = None

    key: ClassVar[str] = "crop"

    def __post_init__(self) -> None:
        if self.position not in POSITIONS:
            raise PolicyError(f"crop position must be one of {', '.join(POSITIONS)}, got {self.position!r}")
        if (self.size is None) == (self.fraction is None):
            raise PolicyError("crop needs exactly one of size or fraction")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise PolicyError(f"crop fraction must be in (0, 1], got {self.fraction}")

    def arg(self) -> str:
        if self.size is not None:
            h, w = self.size
            return f"{self.position}:{h}" if h == w else f"{self.position}:{h}x{w}"
        return f"{self.position}:{write_float(self.fraction)}"  # type: ignore[arg-type]

    @classmethod
    def from_arg(cls, arg: str) -> Crop:
        pos, sep, size = arg.partition(":")
        if not sep:
            raise PolicyError(f"crop expects POSITION:SIZE (e.g. crop=tl:192 or crop=center:0.875), got {arg!r}")
        if "." in size:
            return cls(pos, fraction=read_float(size, "crop"))
        hw = [read_int(p, "crop") for p in size.lower().split("x")]
        return cls(pos, size=(hw[0], hw[-1]))

    def output_size(self, size: Size) -> Size:
        if self.size is not None:
            return self.size
        return max(1, round(size[0] * self.fraction)), max(1, round(size[1] * self.fraction))  # type: ignore[operator]

    def box(self, size: Size) -> tuple[int, int, int, int]:
        """The window cut from an image of ``size``: ``(top, left, height, width)`` pixels."""
        h, w = self.output_size(size)
        try:
            top, left = Fn.crop_box(size, (h, w), self.position)
        except ShapeError as e:
            raise PolicyError(f"{self.name}: {e}") from e
        return top, left, h, w

    def matrix(self, size: Size) -> Tensor:
        (H, W), (top, left, h, w) = size, self.box(size)
        return Fn.affine_matrix([[W / w, 0.0, (W - 2 * left - w) / w], [0.0, H / h, (H - 2 * top - h) / h]])

    def apply(self, x: Tensor, norm: Normalization) -> Tensor:
        return Fn.crop(x, *self.box(tuple(x.shape[-2:])))

    def graph_steps(self, size: Size, norm: Normalization) -> list[nn.Module]:
        top, left, h, w = self.box(size)
        return [G.Window(size, top, left, (h, w))]


# ============================================================================ photometric
class _Photometric(Transform):
    """A pixel-space change by one ``factor`` (1 is the identity); the geometry is unchanged."""

    factor: float
    geometric: ClassVar[bool] = False
    _op: ClassVar[Callable[..., Tensor]]

    def arg(self) -> str:
        return write_float(self.factor)

    @classmethod
    def from_arg(cls, arg: str) -> Transform | None:
        f = read_float(arg, cls.key)
        return None if f == 1.0 else cls(f)  # type: ignore[call-arg]

    def apply(self, x: Tensor, norm: Normalization) -> Tensor:
        return type(self)._op(x, self.factor, norm.mean, norm.std)

    def graph_steps(self, size: Size, norm: Normalization) -> list[nn.Module]:
        return [G.Pixelwise(type(self)._op, self.factor, norm)]


@dataclass(frozen=True)
class Brightness(_Photometric):
    """Multiply pixel values by ``factor`` (in pixel space, clipped to [0, 1])."""

    factor: float
    key: ClassVar[str] = "brightness"
    _op = staticmethod(Fn.adjust_brightness)


@dataclass(frozen=True)
class Contrast(_Photometric):
    """Scale contrast about the image's mean grey by ``factor`` (in pixel space)."""

    factor: float
    key: ClassVar[str] = "contrast"
    _op = staticmethod(Fn.adjust_contrast)


TRANSFORMS = Registry[type[Transform]]("transform")  # policy-text key -> transform class
for _t in (HFlip, VFlip, Rot90, Rotate, Scale, Resize, Crop, Shift, Brightness, Contrast):
    TRANSFORMS.add(_t.key, _t)


def parse_transform(key: str, arg: str | None) -> Transform | None:
    """Build one transform from its key and text argument (``None`` for the identity).

    Raises:
        UnknownNameError: unknown key (a :class:`PolicyError`).
        PolicyError: malformed argument.
    """
    cls = TRANSFORMS.get(key)
    if arg is None:
        if key in ("hflip", "vflip"):
            return cls.from_arg("1")
        raise PolicyError(f"transform {key!r} needs a value, e.g. {key}=...")
    return cls.from_arg(arg)
