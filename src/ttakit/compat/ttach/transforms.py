"""ttach's transforms, each parameter value a ttakit transform: flips, quarter turns, scale, resize, add, multiply, five crops.

Flips, quarter turns and crops are ttakit's own (:mod:`ttakit.transforms`). ttach's ``Scale``
and ``Resize`` change the image size with the interpolation the user names, and ``Add`` and
``Multiply`` change raw pixel values; they are the small ttakit transforms :class:`Interpolate`
and :class:`Pixelwise` below, so a ttach policy runs through ttakit's views and Plan.

Example:
    >>> import ttakit.compat.ttach as tta
    >>> s = tta.Scale([0.9])
    >>> s.ttakit_transform(0.9).output_size((224, 224))      # ttach's int() made it 201
    (202, 202)
    >>> x = torch.arange(20.0).view(1, 1, 4, 5)
    >>> torch.equal(s.apply_deaug_mask(s.apply_aug_image(x, scale=2), scale=2), x)
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor

from ... import functional as Fn
from ...errors import ArgumentError
from ...transform_base import Normalization, Transform
from ...transforms import Crop, HFlip, Rot90, VFlip
from ...validate import check_bool, check_choice, check_finite, check_int, check_positive, check_size
from .base import DualTransform, ImageOnlyTransform

__all__ = [
    "Add",
    "FiveCrops",
    "HorizontalFlip",
    "Interpolate",
    "Multiply",
    "Pixelwise",
    "Resize",
    "Rotate90",
    "Scale",
    "VerticalFlip",
]


_MODES = ("nearest", "nearest-exact", "bilinear", "bicubic", "area")  # F.interpolate's modes for images


def _values(name: str, values: Any, check: Any) -> list[Any]:
    """``values`` as a non-empty list, each checked by ``check(name, value)``."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ArgumentError(f"{name} must be a non-empty list, got {values!r}")
    return [check(f"{name} value", v) for v in values]


def _interpolation(interpolation: Any, align_corners: Any) -> None:
    check_choice("interpolation", interpolation, _MODES)
    if align_corners is not None:
        check_bool("align_corners", align_corners)


def _resize(x: Tensor, size: tuple[int, int], mode: str, align_corners: bool | None, antialias: bool) -> Tensor:
    """``F.interpolate`` to ``size`` as ttach calls it; antialiased (bilinear/bicubic shrinking)
    only when asked."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    antialias = antialias and mode in ("bilinear", "bicubic")
    return F.interpolate(x, size=size, mode=mode, align_corners=align_corners, antialias=antialias)


@dataclass(frozen=True)
class Interpolate(Transform):
    """ttach's ``Scale`` (by ``factor``) and ``Resize`` (to ``size``) as a ttakit transform: the
    whole image resampled with ``mode`` (as ttach, not antialiased unless ``antialias``); a mask
    goes back onto the exact original grid."""

    size: tuple[int, int] | None = None  # the output size (Resize), or
    factor: float | None = None  # the factor of each side, rounded (Scale)
    mode: str = "nearest"  # F.interpolate's mode
    align_corners: bool | None = None  # F.interpolate's align_corners
    antialias: bool = False  # antialias bilinear/bicubic shrinking, image and mask side (ttach does not)

    key: ClassVar[str] = "ttach_resize"

    def arg(self) -> str:
        return f"{self.size[0]}x{self.size[1]}" if self.size is not None else f"{self.factor:g}"

    @classmethod
    def from_arg(cls, arg: str) -> Transform | None:
        raise NotImplementedError("ttach transforms are built in Python, not from policy text")

    def output_size(self, size: tuple[int, int]) -> tuple[int, int]:
        if self.size is not None:
            return tuple(self.size)  # type: ignore[return-value]
        # round(), not ttach's int(): 224 x 0.9 is 202 pixels, not 201.
        return max(1, round(size[0] * self.factor)), max(1, round(size[1] * self.factor))  # type: ignore[operator]

    def apply(self, x: Tensor, norm: Normalization) -> Tensor:
        return _resize(x, self.output_size(tuple(x.shape[-2:])), self.mode, self.align_corners, self.antialias)

    def invert_dense(self, y: Tensor, mask: Tensor, image_size: tuple[int, int], grid_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        return (_resize(y, tuple(grid_size), self.mode, self.align_corners, self.antialias),
                Fn.resize(mask, grid_size, mode="nearest"))


@dataclass(frozen=True)
class Pixelwise(Transform):
    """ttach's ``Add`` (``op="add"``) and ``Multiply`` (``op="multiply"``) on raw pixel values."""

    op: str
    value: float

    key: ClassVar[str] = "ttach_pixel"
    geometric: ClassVar[bool] = False

    def arg(self) -> str:
        return f"{self.op}:{self.value:g}"

    @classmethod
    def from_arg(cls, arg: str) -> Transform | None:
        raise NotImplementedError("ttach transforms are built in Python, not from policy text")

    def apply(self, x: Tensor, norm: Normalization) -> Tensor:
        return x + self.value if self.op == "add" else x * self.value


class _Flip(DualTransform):
    """Off or on: ``apply`` is ``False`` or ``True``."""

    identity_param = False
    flip: type[Transform]

    def __init__(self) -> None:
        super().__init__("apply", [False, True])

    def ttakit_transform(self, value: Any) -> Transform | None:
        return self.flip() if value else None


class HorizontalFlip(_Flip):
    """Flip images left-right (ttakit's ``hflip``)."""

    flip = HFlip


class VerticalFlip(_Flip):
    """Flip images top-bottom (ttakit's ``vflip``)."""

    flip = VFlip


class Rotate90(DualTransform):
    """Rotate by multiples of 90 degrees counter-clockwise (ttakit's ``rot90``).

    Raises:
        ArgumentError: an angle that is not a multiple of 90 (ttach turned 45 into 0).
    """

    identity_param = 0

    def __init__(self, angles: Sequence[int]) -> None:
        angles = _values("Rotate90 angles", angles, lambda n, v: check_int(n, v, low=-(10**9)))
        bad = [a for a in angles if a % 90]
        if bad:
            raise ArgumentError(f"Rotate90 angles must be multiples of 90, got {bad}")
        if self.identity_param not in angles:
            angles = [self.identity_param, *angles]
        super().__init__("angle", list(angles))

    def ttakit_transform(self, value: Any) -> Transform | None:
        if value % 90:
            raise ValueError(f"Rotate90 angles must be multiples of 90, got {value}")
        k = (value // 90) % 4
        return Rot90(k) if k else None


class Scale(DualTransform):
    """Resize images by each factor in ``scales`` with ``interpolation`` (the identity 1 is
    added); a mask comes back to the size it had. ``antialias=True`` (not in ttach) antialiases
    bilinear/bicubic shrinking."""

    identity_param = 1

    def __init__(self, scales: Sequence[float], interpolation: str = "nearest", align_corners: bool | None = None,
                 antialias: bool = False) -> None:
        scales = _values("Scale scales", scales, check_positive)  # a factor of 0 has no pixels
        _interpolation(interpolation, align_corners)
        check_bool("antialias", antialias)
        if self.identity_param not in scales:
            scales = [self.identity_param, *scales]
        self.interpolation, self.align_corners, self.antialias = interpolation, align_corners, antialias
        super().__init__("scale", list(scales))

    def ttakit_transform(self, value: Any) -> Transform | None:
        if value == self.identity_param:
            return None
        return Interpolate(factor=float(value), mode=self.interpolation, align_corners=self.align_corners,
                           antialias=self.antialias)

    def source_size(self, t: Transform, size: tuple[int, int]) -> tuple[int, int]:
        f = t.factor  # type: ignore[attr-defined]
        return max(1, round(size[0] / f)), max(1, round(size[1] / f))


class Resize(DualTransform):
    """Resize images to each ``(H, W)`` in ``sizes``; masks go back to ``original_size``
    (in the wrappers, to the size of the image given, even without ``original_size``).
    ``antialias=True`` (not in ttach) antialiases bilinear/bicubic shrinking."""

    def __init__(self, sizes: Sequence[tuple[int, int]], original_size: tuple[int, int] | None = None,
                 interpolation: str = "nearest", align_corners: bool | None = None, antialias: bool = False) -> None:
        sizes = _values("Resize sizes", sizes, check_size)
        original_size = None if original_size is None else check_size("original_size", original_size)
        _interpolation(interpolation, align_corners)
        check_bool("antialias", antialias)
        if original_size is not None and original_size not in sizes:
            sizes = [original_size, *sizes]
        self.interpolation, self.align_corners, self.antialias = interpolation, align_corners, antialias
        self.original_size = original_size
        super().__init__("size", list(sizes))

    def ttakit_transform(self, value: Any) -> Transform | None:
        if self.original_size is not None and tuple(value) == tuple(self.original_size):
            return None
        return Interpolate(size=tuple(value), mode=self.interpolation, align_corners=self.align_corners,
                           antialias=self.antialias)

    def apply_deaug_mask(self, mask: Tensor, *args: Any, **params: Any) -> Tensor:
        if self.original_size is None:
            raise ValueError("Provide original image size to make mask backward transformation")
        return super().apply_deaug_mask(mask, *args, **params)

    def source_size(self, t: Transform, size: tuple[int, int]) -> tuple[int, int]:
        return tuple(self.original_size)  # type: ignore[arg-type, return-value]


class _PixelValues(ImageOnlyTransform):
    """A raw pixel change by each of ``values`` (the identity value is added)."""

    op: str

    def __init__(self, name: str, values: Sequence[float]) -> None:
        values = _values(f"{type(self).__name__} {name}s", values, check_finite)
        if self.identity_param not in values:
            values = [self.identity_param, *values]
        super().__init__(name, list(values))

    def ttakit_transform(self, value: Any) -> Transform | None:
        return None if value == self.identity_param else Pixelwise(self.op, float(value))


class Add(_PixelValues):
    """Add each value in ``values`` to every pixel (the identity 0 is added)."""

    identity_param, op = 0, "add"

    def __init__(self, values: Sequence[float]) -> None:
        super().__init__("value", values)


class Multiply(_PixelValues):
    """Multiply every pixel by each factor in ``factors`` (the identity 1 is added)."""

    identity_param, op = 1, "multiply"

    def __init__(self, factors: Sequence[float]) -> None:
        super().__init__("factor", factors)


class FiveCrops(ImageOnlyTransform):
    """The four corner crops and the centre crop of ``crop_height x crop_width`` (ttakit's
    ``crop``); classification only, as in ttach: masks and keypoints are refused."""

    masks_ok = False

    def __init__(self, crop_height: int, crop_width: int) -> None:
        size = (check_int("crop_height", crop_height), check_int("crop_width", crop_width))
        super().__init__("crop_fn", [Crop(p, size) for p in ("tl", "bl", "br", "tr", "center")])

    def ttakit_transform(self, value: Any) -> Transform | None:
        return value

    def apply_aug_image(self, image: Tensor, *args: Any, **params: Any) -> Tensor:
        crop = params.get(self.pname)
        return image if crop is None else crop.apply(image, Normalization())

    def apply_deaug_mask(self, mask: Tensor, *args: Any, **params: Any) -> Tensor:
        raise ValueError("`FiveCrop` augmentation is not suitable for mask!")

    def apply_deaug_keypoints(self, keypoints: Tensor, *args: Any, **params: Any) -> Tensor:
        raise ValueError("`FiveCrop` augmentation is not suitable for keypoints!")
