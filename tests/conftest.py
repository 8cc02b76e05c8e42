"""Shared fixtures: tiny models, synthetic images, the real-photo folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

import ttakit

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
