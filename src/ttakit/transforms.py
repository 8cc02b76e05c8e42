"""View transforms: frozen parameter holders, each an explicit (augment, de-augment) pair.

A :class:`Transform` knows its parameters and nothing else. ``apply`` augments a batch of
normalised images; ``matrix`` gives the geometry as a normalised-coordinate map (original ->
augmented, see :mod:`ttakit.functional`); ``invert_dense`` maps a dense prediction of the
augmented image back onto the original grid, with a mask of the pixels the view really saw;
``invert_points`` does the same for keypoints. A :class:`View` is a sequence of transforms
applied left to right and undone right to left.

Every transform has a canonical name (``hflip``, ``scale=1.1``, ``crop=tl:192``) that the
policy parser reads back, so ``parse(t.name) == t``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from . import functional as Fn
from .errors import PolicyError, ShapeError
from .functional import Size

__all__ = [
    "Brightness",
    "Contrast",
    "Crop",
    "HFlip",
    "Input",
    "Normalization",
    "Resize",
    "Rot90",
    "Rotate",
    "Scale",
    "Shift",
    "TRANSFORMS",
    "Transform",
    "VFlip",
    "View",
    "input_matrix",
    "parse_transform",
    "window_corner",
]

_EYE = torch.eye(3, dtype=torch.float64)


@dataclass(frozen=True)
class Normalization:
    """Per-channel normalisation of the model input: ``x = (pixel - mean) / std``."""

    mean: tuple[float, ...] = (0.485, 0.456, 0.406)  # ImageNet defaults, replaced by the model's
    std: tuple[float, ...] = (0.229, 0.224, 0.225)


class Transform(ABC):
    """One deterministic image transform with explicit parameters (subclasses are frozen
    dataclasses). Photometric transforms leave the geometry unchanged."""

    key: ClassVar[str]  # name in policy text, e.g. "scale"
    geometric: ClassVar[bool] = True

    # ------------------------------------------------------------------ naming
    @property
    def name(self) -> str:
        """Canonical name, readable back by :func:`parse_transform`."""
        arg = self.arg()
        return self.key if arg is None else f"{self.key}={arg}"

    def arg(self) -> str | None:
        """The parameter as written after ``=`` in the name (``None``: no parameter)."""
        return None

    @classmethod
    @abstractmethod
    def from_arg(cls, arg: str) -> Transform | None:
        """Build from a text argument; ``None`` means the identity (e.g. ``scale=1``)."""

    # ------------------------------------------------------------------ geometry
    def output_size(self, size: Size) -> Size:
        """``(H, W)`` of the augmented image for an input of ``size``."""
        return size

    def matrix(self, size: Size) -> Tensor:
        """3x3 float64 map from original to augmented normalised coordinates."""
        return _EYE

    # ------------------------------------------------------------------ augment / de-augment
    @abstractmethod
    def apply(self, x: Tensor, norm: Normalization) -> Tensor:
        """Augment a batch ``(B, C, H, W)`` of normalised images."""

    def invert_dense(self, y: Tensor, mask: Tensor, image_size: Size, grid_size: Size) -> tuple[Tensor, Tensor]:
        """Map a dense prediction of the augmented image back to the original grid.

        Args:
            y: ``(B, K, h, w)`` prediction on the augmented image's output grid.
            mask: ``(1 or B, 1, h, w)`` float validity of ``y``'s pixels.
            image_size: ``(H, W)`` of the image this transform received.
            grid_size: ``(H', W')`` of the output grid that belongs to ``image_size``.

        Returns:
            ``(y, mask)`` on ``grid_size``; the mask is 0 where the view never saw the pixel.
        """
        if not self.geometric:
            return y, mask
        m = self.matrix(image_size)
        y = Fn.warp(y, m, grid_size, padding_mode="border")
        mask = Fn.warp(mask, m, grid_size, mode="nearest") * Fn.valid_mask(m, grid_size, y.device)
        return y, mask

    def invert_points(self, points: Tensor, image_size: Size) -> Tensor:
        """Map ``(..., 2)`` pixel ``(x, y)`` keypoints of the augmented image back to the
        original image of ``image_size``."""
        if not self.geometric:
            return points
        out_size = self.output_size(image_size)
        m_inv = torch.linalg.inv(self.matrix(image_size))
        u = Fn.pixels_to_normalized(points, out_size)
        return Fn.normalized_to_pixels(Fn.transform_points(u, m_inv), image_size)

    def invert_boxes(self, boxes: Tensor, image_size: Size) -> Tensor:
        """Map ``(..., 4)`` xyxy pixel boxes (pixel edges at 0 and ``W``) of the augmented image
        back to the original image of ``image_size``.

        A box is first clipped to the augmented image (a box cut by a crop, shift or zoom keeps
        the part the view showed), its two corners go through the inverse of :meth:`matrix`,
        min/max are re-sorted (a flip swaps them) and the result is clipped to the original
        image. Exact for flips and quarter turns; photometric transforms return ``boxes``.

        Raises:
            PolicyError: the map is not axis-aligned (a free rotation): a rotated box is no box.

        Example:
            >>> HFlip().invert_boxes(torch.tensor([[10., 5., 30., 20.]]), (40, 100))
            tensor([[70.,  5., 90., 20.]])
        """
        if not self.geometric:
            return boxes
        m = self.matrix(image_size)
        if not _axis_aligned(m):
            raise PolicyError(f"{self.name} is not axis-aligned, so its boxes cannot be mapped back "
                              "(use flips, quarter turns, scale, resize, crop or shift)")
        return _map_boxes(boxes, torch.linalg.inv(m), self.output_size(image_size), image_size)

    def __str__(self) -> str:
        return self.name


def _axis_aligned(m: Tensor) -> bool:
    """Whether a 3x3 map keeps boxes boxes: no shear or rotation other than quarter turns."""
    a = m[:2, :2].abs()
    tol = 1e-9 * float(a.sum())
    return bool(a[0, 1] + a[1, 0] <= tol or a[0, 0] + a[1, 1] <= tol)


def _map_boxes(boxes: Tensor, m: Tensor, size: Size, target: Size) -> Tensor:
    """Clip ``(..., 4)`` xyxy pixel boxes to an image of ``size``, send their corners through
    the normalised map ``m`` onto an image of ``target``, re-sort and clip (float64 inside)."""
    (h, w), (H, W) = size, target
    b = boxes.to(torch.float64)
    b = torch.minimum(b.clamp_min(0.0), b.new_tensor([w, h, w, h]))
    corners = b.unflatten(-1, (2, 2)) * b.new_tensor([2.0 / w, 2.0 / h]) - 1.0  # (..., 2, 2) normalised
    p = (Fn.transform_points(corners, m) + 1.0) * b.new_tensor([W / 2.0, H / 2.0])
    out = torch.cat([p.amin(-2), p.amax(-2)], -1)  # (..., 4) xyxy again
    out = torch.minimum(out.clamp_min(0.0), out.new_tensor([W, H, W, H]))
    return out.to(boxes.dtype if boxes.is_floating_point() else torch.float32)


def _float(arg: str, what: str) -> float:
    try:
        return float(arg)
    except ValueError as e:
        raise PolicyError(f"{what} expects a number, got {arg!r}") from e


def _int(arg: str, what: str) -> int:
    try:
        return int(arg)
    except ValueError as e:
        raise PolicyError(f"{what} expects an integer, got {arg!r}") from e


def _flag(arg: str, what: str) -> bool:
    low = arg.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise PolicyError(f"{what} expects 0 or 1, got {arg!r}")


def _num(v: float) -> str:
    """Shortest text of a float that reads back to the same value (``1.1``, ``-10.0``)."""
    return repr(float(v))


# ============================================================================ geometric, exact
class _Mirror(Transform):
    """A flip along one axis: its own inverse, exact on any grid."""
    _block: ClassVar[list[list[float]]]  # its 2x2 map in normalised coordinates
    _op: ClassVar[Callable[[Tensor], Tensor]]

    @classmethod
    def from_arg(cls, arg: str) -> Transform | None:
        return cls() if _flag(arg, cls.key) else None

    def matrix(self, size: Size) -> Tensor:
        return Fn.affine_matrix(self._block)

    def apply(self, x: Tensor, norm: Normalization) -> Tensor:
        return type(self)._op(x)

    def invert_dense(self, y: Tensor, mask: Tensor, image_size: Size, grid_size: Size) -> tuple[Tensor, Tensor]:
        op = type(self)._op
        return op(y), op(mask)


@dataclass(frozen=True)
class HFlip(_Mirror):
    """Mirror left-right."""

    key: ClassVar[str] = "hflip"
    _block = [[-1.0, 0.0], [0.0, 1.0]]
    _op = staticmethod(Fn.hflip)


@dataclass(frozen=True)
class VFlip(_Mirror):
    """Mirror top-bottom."""

    key: ClassVar[str] = "vflip"
    _block = [[1.0, 0.0], [0.0, -1.0]]
    _op = staticmethod(Fn.vflip)


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
        k = _int(arg, "rot90") % 4
        return cls(k) if k else None

    def output_size(self, size: Size) -> Size:
        return (size[1], size[0]) if self.k % 2 else size

    def matrix(self, size: Size) -> Tensor:
        return Fn.rot90_matrix(self.k)

    def apply(self, x: Tensor, norm: Normalization) -> Tensor:
        return Fn.rot90(x, self.k)

    def invert_dense(self, y: Tensor, mask: Tensor, image_size: Size, grid_size: Size) -> tuple[Tensor, Tensor]:
        return Fn.rot90(y, -self.k), Fn.rot90(mask, -self.k)


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
        dx, dy = (_int(p, "shift") for p in parts)
        return cls(dx, dy) if (dx or dy) else None

    def matrix(self, size: Size) -> Tensor:
        H, W = size
        return Fn.affine_matrix([[1.0, 0.0, 2.0 * self.dx / W], [0.0, 1.0, 2.0 * self.dy / H]])

    def apply(self, x: Tensor, norm: Normalization) -> Tensor:
        return Fn.shift(x, self.dx, self.dy)

    def invert_dense(self, y: Tensor, mask: Tensor, image_size: Size, grid_size: Size) -> tuple[Tensor, Tensor]:
        if tuple(grid_size) == tuple(image_size) == tuple(y.shape[-2:]):  # same grid: exact
            return Fn.shift(y, -self.dx, -self.dy), Fn.shift(mask, -self.dx, -self.dy)
        return super().invert_dense(y, mask, image_size, grid_size)


# ============================================================================ geometric, resampled
@dataclass(frozen=True)
class Rotate(Transform):
    """Rotate by ``degrees`` counter-clockwise about the centre, same size; corners that
    leave the image are filled with 0 (the mean colour)."""

    degrees: float

    key: ClassVar[str] = "rotate"

    def arg(self) -> str:
        return _num(self.degrees)

    @classmethod
    def from_arg(cls, arg: str) -> Rotate | None:
        d = _float(arg, "rotate")
        return cls(d) if d % 360 else None

    def matrix(self, size: Size) -> Tensor:
        return Fn.rotation_matrix(self.degrees, size)

    def apply(self, x: Tensor, norm: Normalization) -> Tensor:
        size = tuple(x.shape[-2:])
        return Fn.warp(x, torch.linalg.inv(self.matrix(size)), size)


@dataclass(frozen=True)
class Scale(Transform):
    """Zoom about the centre at the same output size: ``factor > 1`` zooms in (centre crop of
    an enlarged image), ``factor < 1`` zooms out (shrunk image padded with 0)."""

    factor: float

    key: ClassVar[str] = "scale"

    def __post_init__(self) -> None:
        if not self.factor > 0:
            raise PolicyError(f"scale factor must be positive, got {self.factor}")

    def arg(self) -> str:
        return _num(self.factor)

    @classmethod
    def from_arg(cls, arg: str) -> Scale | None:
        f = _float(arg, "scale")
        return None if f == 1.0 else cls(f)

    def matrix(self, size: Size) -> Tensor:
        return Fn.scale_matrix(size, self.factor)

    def apply(self, x: Tensor, norm: Normalization) -> Tensor:
        return Fn.zoom(x, self.factor)


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

    def __post_init__(self) -> None:
        if (self.size is None) == (self.factor is None):
            raise PolicyError("resize needs exactly one of size or factor")
        if self.factor is not None and not self.factor > 0:
            raise PolicyError(f"resize factor must be positive, got {self.factor}")

    def arg(self) -> str:
        if self.size is not None:
            h, w = self.size
            return str(h) if h == w else f"{h}x{w}"
        return _num(self.factor)  # type: ignore[arg-type]

    @classmethod
    def from_arg(cls, arg: str) -> Resize | None:
        if "." in arg:
            f = _float(arg, "resize")
            return None if f == 1.0 else cls(factor=f)
        parts = arg.lower().split("x")
        if len(parts) not in (1, 2):
            raise PolicyError(f"resize expects SIZE, HxW or a factor like 1.25, got {arg!r}")
        hw = [_int(p, "resize") for p in parts]
        return cls(size=(hw[0], hw[-1]))

    def output_size(self, size: Size) -> Size:
        if self.size is not None:
            return self.size
        return Fn.scale_resize_size(size, self.factor)  # type: ignore[arg-type]

    def apply(self, x: Tensor, norm: Normalization) -> Tensor:
        return Fn.resize(x, self.output_size(tuple(x.shape[-2:])), mode="bicubic")

    def invert_dense(self, y: Tensor, mask: Tensor, image_size: Size, grid_size: Size) -> tuple[Tensor, Tensor]:
        return Fn.resize(y, grid_size), Fn.resize(mask, grid_size, mode="nearest")


_POSITIONS = ("center", "tl", "tr", "bl", "br")


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
        if self.position not in _POSITIONS:
            raise PolicyError(f"crop position must be one of {', '.join(_POSITIONS)}, got {self.position!r}")
        if (self.size is None) == (self.fraction is None):
            raise PolicyError("crop needs exactly one of size or fraction")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise PolicyError(f"crop fraction must be in (0, 1], got {self.fraction}")

    def arg(self) -> str:
        if self.size is not None:
            h, w = self.size
            return f"{self.position}:{h}" if h == w else f"{self.position}:{h}x{w}"
        return f"{self.position}:{_num(self.fraction)}"  # type: ignore[arg-type]

    @classmethod
    def from_arg(cls, arg: str) -> Crop:
        pos, sep, size = arg.partition(":")
        if not sep:
            raise PolicyError(f"crop expects POSITION:SIZE (e.g. crop=tl:192 or crop=center:0.875), got {arg!r}")
        if "." in size:
            return cls(pos, fraction=_float(size, "crop"))
        hw = [_int(p, "crop") for p in size.lower().split("x")]
        return cls(pos, size=(hw[0], hw[-1]))

    def output_size(self, size: Size) -> Size:
        if self.size is not None:
            return self.size
        return max(1, round(size[0] * self.fraction)), max(1, round(size[1] * self.fraction))  # type: ignore[operator]

    def _box(self, size: Size) -> tuple[int, int, int, int]:
        h, w = self.output_size(size)
        try:
            top, left = Fn.crop_box(size, (h, w), self.position)
        except ShapeError as e:
            raise PolicyError(f"{self.name}: {e}") from e
        return top, left, h, w

    def matrix(self, size: Size) -> Tensor:
        (H, W), (top, left, h, w) = size, self._box(size)
        return Fn.affine_matrix([[W / w, 0.0, (W - 2 * left - w) / w], [0.0, H / h, (H - 2 * top - h) / h]])

    def apply(self, x: Tensor, norm: Normalization) -> Tensor:
        return Fn.crop(x, *self._box(tuple(x.shape[-2:])))


# ============================================================================ photometric
class _Photometric(Transform):
    """A pixel-space change by one ``factor`` (1 is the identity); the geometry is unchanged."""

    factor: float
    geometric: ClassVar[bool] = False
    _op: ClassVar[Callable[..., Tensor]]

    def arg(self) -> str:
        return _num(self.factor)

    @classmethod
    def from_arg(cls, arg: str) -> Transform | None:
        f = _float(arg, cls.key)
        return None if f == 1.0 else cls(f)  # type: ignore[call-arg]

    def apply(self, x: Tensor, norm: Normalization) -> Tensor:
        return type(self)._op(x, self.factor, norm.mean, norm.std)


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


TRANSFORMS: dict[str, type[Transform]] = {
    t.key: t for t in (HFlip, VFlip, Rot90, Rotate, Scale, Resize, Crop, Shift, Brightness, Contrast)
}


def parse_transform(key: str, arg: str | None) -> Transform | None:
    """Build one transform from its key and text argument (``None`` for the identity).

    Raises:
        PolicyError: unknown key or malformed argument.
    """
    cls = TRANSFORMS.get(key)
    if cls is None:
        raise PolicyError(f"unknown transform {key!r}; known: {', '.join(sorted(TRANSFORMS))}")
    if arg is None:
        if key in ("hflip", "vflip"):
            return cls.from_arg("1")
        raise PolicyError(f"transform {key!r} needs a value, e.g. {key}=...")
    return cls.from_arg(arg)


# ============================================================================ input stage
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
        if self.position not in _POSITIONS:
            raise PolicyError(f"input position must be one of {', '.join(_POSITIONS)}, got {self.position!r}")

    @property
    def name(self) -> str:
        pct = f"{self.crop_pct:g}"
        return f"input={self.size}:{pct}" + ("" if self.position == "center" else f":{self.position}")

    @classmethod
    def from_arg(cls, arg: str) -> Input:
        parts = arg.split(":")
        if not 1 <= len(parts) <= 3:
            raise PolicyError(f"input expects SIZE:CROP_PCT[:POSITION] (e.g. input=256:1.0), got {arg!r}")
        size = _int(parts[0], "input size")
        pct = _float(parts[1], "input crop_pct") if len(parts) > 1 else 1.0
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
        return _EYE
    (t0, l0, h0, w0), (t1, l1, h1, w1) = plain.window(photo_size), source.window(photo_size)
    # x_photo = l0 + (u0 + 1) / 2 * w0 = l1 + (u1 + 1) / 2 * w1, solved for u1.
    ax, ay = w0 / w1, h0 / h1
    bx = (2 * (l0 - l1) + w0 - w1) / w1
    by = (2 * (t0 - t1) + h0 - h1) / h1
    return Fn.affine_matrix([[ax, 0.0, bx], [0.0, ay, by]])


# ============================================================================ views
@dataclass(frozen=True)
class View:
    """One augmented view: an optional input stage (how the source photo becomes the model
    input; ``None`` is the model's own preprocessing), then tensor transforms applied left
    to right. ``View()`` is the identity."""

    transforms: tuple[Transform, ...] = ()
    source: Input | None = None

    @property
    def name(self) -> str:
        parts = ([self.source.name] if self.source is not None else []) + [t.name for t in self.transforms]
        return "|".join(parts) or "identity"

    @property
    def is_identity(self) -> bool:
        return not self.transforms and self.source is None

    @property
    def mirrored(self) -> bool:
        """An odd number of flips: left and right are swapped in the view."""
        return sum(isinstance(t, (HFlip, VFlip)) for t in self.transforms) % 2 == 1

    def __str__(self) -> str:
        return self.name

    def then(self, other: View) -> View:
        """This view followed by ``other`` (at most one of them may have an input stage: it
        always runs first, whatever the order they are written in)."""
        if self.source is not None and other.source is not None:
            raise PolicyError(f"a view has one input stage; {self.source.name!r} and {other.source.name!r} were combined")
        return View(self.transforms + other.transforms, self.source or other.source)

    def sizes(self, size: Size) -> list[Size]:
        """Image sizes before each transform and after the last (``len + 1`` entries)."""
        out = [size]
        for t in self.transforms:
            out.append(t.output_size(out[-1]))
        return out

    def output_size(self, size: Size) -> Size:
        return self.sizes(size)[-1]

    def apply(self, x: Tensor, norm: Normalization) -> Tensor:
        """Augment ``(B, C, H, W)`` normalised images."""
        for t in self.transforms:
            x = t.apply(x, norm)
        return x

    def invert_dense(self, y: Tensor, image_size: Size, grid_size: Size) -> tuple[Tensor, Tensor]:
        """Map the view's dense prediction ``(B, K, h, w)`` onto ``grid_size``, the output grid of
        the un-augmented ``image_size`` image.

        Returns:
            ``(y, mask)``: ``(B, K, H', W')`` and a ``(1, 1, H', W')`` float validity mask.
        """
        sizes = self.sizes(image_size)
        # Output grid of each intermediate image, assuming one stride for the whole view.
        ry, rx = grid_size[0] / image_size[0], grid_size[1] / image_size[1]
        grids = [grid_size] + [(max(1, round(h * ry)), max(1, round(w * rx))) for h, w in sizes[1:]]
        mask = y.new_ones((1, 1, *y.shape[-2:]))
        for t, s, g in zip(reversed(self.transforms), reversed(sizes[:-1]), reversed(grids[:-1])):
            y, mask = t.invert_dense(y, mask, s, g)
        if tuple(y.shape[-2:]) != tuple(grid_size):  # only when the model's stride is uneven
            y, mask = Fn.resize(y, grid_size), Fn.resize(mask, grid_size, mode="nearest")
        return y, mask

    def invert_points(self, points: Tensor, image_size: Size) -> Tensor:
        """Map ``(..., 2)`` pixel keypoints predicted on the view back to the original image."""
        sizes = self.sizes(image_size)
        for t, s in zip(reversed(self.transforms), reversed(sizes[:-1])):
            points = t.invert_points(points, s)
        return points

    def invert_boxes(self, boxes: Tensor, image_size: Size) -> Tensor:
        """Map ``(..., 4)`` xyxy pixel boxes detected on the view back to the original image of
        ``image_size`` (the view's input stage), through the transforms right to left.

        Raises:
            PolicyError: a transform is not axis-aligned (a free rotation); names the view.

        Example:
            >>> View((Rot90(1), HFlip())).invert_boxes(torch.tensor([[0., 0., 4., 2.]]), (10, 30))
            tensor([[28.,  6., 30., 10.]])
        """
        sizes = self.sizes(image_size)
        try:
            for t, s in zip(reversed(self.transforms), reversed(sizes[:-1])):
                boxes = t.invert_boxes(boxes, s)
        except PolicyError as e:
            raise PolicyError(f"view {self.name!r}: {e}") from e
        return boxes
