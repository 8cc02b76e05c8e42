"""Geometric transforms and smooth images shared by the transform and dense round-trip tests."""

from __future__ import annotations

import torch

from ttakit.transforms import Crop, HFlip, Resize, Rot90, Rotate, Scale, Shift, VFlip

EXACT = [HFlip(), VFlip(), Rot90(1), Rot90(2), Rot90(3)]
SHIFTS = [Shift(5, -3), Shift(-7, 0), Shift(0, 11)]
RESAMPLED = [
    Rotate(15.0), Rotate(-30.0), Scale(0.8), Scale(1.25), Scale(0.83), Scale(1.5),
    Resize(size=(40, 50)), Resize(factor=1.5), Resize(factor=0.83),
    Crop("center", fraction=0.75), Crop("tl", size=(30, 40)), Crop("br", size=(31, 41)),
    Crop("tr", fraction=0.5), Crop("bl", size=(20, 20)),
]


def smooth_images(b: int = 2, c: int = 3, h: int = 48, w: int = 70, seed: int = 0) -> torch.Tensor:
    """Low-frequency images, for round trips through resampling."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(b, c, 5, 6, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
