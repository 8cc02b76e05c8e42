"""ttach's ready-made Compose policies: flips, d4, multi-scale, five and ten crops.

Example:
    >>> len(d4_transform()), len(ten_crop_transform(8, 8))
    (8, 10)
"""

from __future__ import annotations

from collections.abc import Sequence

from .base import Compose
from .transforms import FiveCrops, HorizontalFlip, Rotate90, Scale, VerticalFlip

__all__ = [
    "d4_transform",
    "five_crop_transform",
    "flip_transform",
    "hflip_transform",
    "multiscale_transform",
    "ten_crop_transform",
    "vflip_transform",
    "vlip_transform",
]


def flip_transform() -> Compose:
    return Compose([HorizontalFlip(), VerticalFlip()])


def hflip_transform() -> Compose:
    return Compose([HorizontalFlip()])


def vflip_transform() -> Compose:
    return Compose([VerticalFlip()])


vlip_transform = vflip_transform  # ttach's spelling, kept for old code


def d4_transform() -> Compose:
    return Compose([HorizontalFlip(), Rotate90(angles=[0, 90, 180, 270])])


def multiscale_transform(scales: Sequence[float], interpolation: str = "nearest") -> Compose:
    return Compose([Scale(scales, interpolation=interpolation)])


def five_crop_transform(crop_height: int, crop_width: int) -> Compose:
    return Compose([FiveCrops(crop_height, crop_width)])


def ten_crop_transform(crop_height: int, crop_width: int) -> Compose:
    return Compose([HorizontalFlip(), FiveCrops(crop_height, crop_width)])
