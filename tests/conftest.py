"""Shared fixtures: tiny models, synthetic images, the real-photo folder.

Only light modules are imported at the top: pytest-xdist's controller loads this file too,
before it starts the workers, and needs none of torch, timm or ttakit (about 8 s on 2 cores).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

SAMPLE_DIR = Path(__file__).resolve().parents[2] / "shared" / "imagenet-sample"


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """``../shared/imagenet-sample``; tests using it skip cleanly where it is absent."""
    if not SAMPLE_DIR.is_dir() or not any(SAMPLE_DIR.glob("*.JPEG")):
        pytest.skip(f"real photos not found at {SAMPLE_DIR}")
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def default_lm() -> Any:
    """The embedded default model (offline ImageNet weights), a ``ttakit.LoadedModel``."""
    import ttakit

    return ttakit.load_model()


@pytest.fixture()
def tiny_model() -> Any:
    """A tiny timm CNN with fixed random weights (10 classes)."""
    import timm
    import torch

    torch.manual_seed(0)
    return timm.create_model("test_resnet", pretrained=False, num_classes=10).eval()


@pytest.fixture()
def images() -> Any:
    """A (4, 3, 64, 80) batch of normalised random images."""
    import torch

    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 64, 80, generator=g)


@pytest.fixture()
def labelled_folder(tmp_path: Path) -> Path:
    """``tmp_path/data``: an ImageFolder of classes cat, dog, fox with three random 40 x 48 photos each."""
    import numpy as np
    from PIL import Image

    root = tmp_path / "data"
    for c, name in enumerate(("cat", "dog", "fox")):
        (root / name).mkdir(parents=True)
        for i in range(3):
            rgb = np.random.default_rng(10 * c + i).integers(0, 255, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(rgb).save(root / name / f"{i}.png")
    return root


@pytest.fixture()
def labelled_model(tmp_path: Path) -> Any:
    """timm's ``test_resnet`` with fixed random weights and the 3 classes of ``labelled_folder``
    (cat, dog, fox), named by ``tmp_path/labels.txt``: a ``ttakit.LoadedModel``."""
    import torch

    import ttakit

    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(("cat", "dog", "fox")))
    torch.manual_seed(0)
    return ttakit.load_model("test_resnet", weights="random", num_classes=3, labels=labels)


# The longest files first (their seconds on 2 cores): pytest-xdist hands out whole files in
# collection order (--dist loadfile --no-loadscope-reorder), and a long file started last
# would leave one worker running alone at the end.
LONGEST_FIRST = ("test_scripts_quick.py", "test_distributed.py",  # about 100 and 60 s
                 "test_real_photos.py", "test_backends.py", "test_export.py", "test_cli.py",  # 20-40 s
                 "test_report_gallery.py", "test_readme.py", "test_report.py", "test_fork_safety.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def pytest_configure(config: pytest.Config) -> None:
    # Under pytest-xdist each worker gets its share of the cores: two workers with torch's
    # default of one thread per core would run 2x oversubscribed (tiny models slow down many times).
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
