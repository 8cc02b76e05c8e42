"""Shared fixtures: tiny models, synthetic images, the real-photo folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import ttakit
from ttakit.transforms import Crop, HFlip, Resize, Rot90, Rotate, Scale, Shift, VFlip

# Geometric transforms shared by the transform and dense round-trip tests.
EXACT = [HFlip(), VFlip(), Rot90(1), Rot90(2), Rot90(3)]
SHIFTS = [Shift(5, -3), Shift(-7, 0), Shift(0, 11)]
RESAMPLED = [
    Rotate(15.0), Rotate(-30.0), Scale(0.8), Scale(1.25), Scale(0.83), Scale(1.5),
    Resize(size=(40, 50)), Resize(factor=1.5), Resize(factor=0.83),
    Crop("center", fraction=0.75), Crop("tl", size=(30, 40)), Crop("br", size=(31, 41)),
    Crop("tr", fraction=0.5), Crop("bl", size=(20, 20)),
]

SAMPLE_DIR = Path(__file__).resolve().parents[2] / "shared" / "imagenet-sample"


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """``../shared/imagenet-sample``; tests using it skip cleanly where it is absent."""
    if not SAMPLE_DIR.is_dir() or not any(SAMPLE_DIR.glob("*.JPEG")):
        pytest.skip(f"real photos not found at {SAMPLE_DIR}")
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def default_lm() -> ttakit.LoadedModel:
    """The embedded default model (offline ImageNet weights)."""
    return ttakit.load_model()


@pytest.fixture()
def tiny_model() -> torch.nn.Module:
    """A tiny timm CNN with fixed random weights (10 classes)."""
    torch.manual_seed(0)
    return timm.create_model("test_resnet", pretrained=False, num_classes=10).eval()


@pytest.fixture()
def images() -> torch.Tensor:
    """A (4, 3, 64, 80) batch of normalised random images."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 64, 80, generator=g)


def smooth_images(b: int = 2, c: int = 3, h: int = 48, w: int = 70, seed: int = 0) -> torch.Tensor:
    """Low-frequency images, for round trips through resampling."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(b, c, 5, 6, generator=g)
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)


@pytest.fixture()
def labelled_folder(tmp_path: Path) -> Path:
    """``tmp_path/data``: an ImageFolder of classes cat, dog, fox with three random 40 x 48 photos each."""
    root = tmp_path / "data"
    for c, name in enumerate(("cat", "dog", "fox")):
        (root / name).mkdir(parents=True)
        for i in range(3):
            rgb = np.random.default_rng(10 * c + i).integers(0, 255, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(rgb).save(root / name / f"{i}.png")
    return root
