"""ttach 0.0.3's public API on ttakit's views and Plan: ``import ttakit.compat.ttach as tta``.

Each ttach transform parameter is a ttakit transform (flips, quarter turns and crops are
ttakit's own; ttach's ``Scale``/``Resize``/``Add``/``Multiply`` are ttakit transforms defined
in :mod:`.transforms`), each :class:`Compose` combination a :class:`~ttakit.views.View`, and the
wrappers run a :class:`ttakit.Plan` and undo each view with ttakit's inverses. Where ttach's
behaviour is a bug the drop-in differs; README's "Migrating from ttach" lists each difference.

Example:
    >>> import ttakit.compat.ttach as tta
    >>> net = torch.nn.Conv2d(3, 2, 1)
    >>> model = tta.SegmentationTTAWrapper(net, tta.aliases.d4_transform(), merge_mode="mean")
    >>> x = torch.randn(1, 3, 8, 8)
    >>> torch.allclose(model(x), net(x), atol=1e-6)    # a pointwise net: every view undone exactly
    True
"""

from __future__ import annotations

from . import aliases, base, functional, transforms
from .base import BaseTransform, Compose, DualTransform, ImageOnlyTransform, Merger
from .transforms import Add, FiveCrops, HorizontalFlip, Multiply, Resize, Rotate90, Scale, VerticalFlip
from .wrappers import ClassificationTTAWrapper, KeypointsTTAWrapper, SegmentationTTAWrapper

__all__ = [
    "Add",
    "BaseTransform",
    "ClassificationTTAWrapper",
    "Compose",
    "DualTransform",
    "FiveCrops",
    "HorizontalFlip",
    "ImageOnlyTransform",
    "KeypointsTTAWrapper",
    "Merger",
    "Multiply",
    "Resize",
    "Rotate90",
    "Scale",
    "SegmentationTTAWrapper",
    "VerticalFlip",
    "aliases",
    "base",
    "functional",
    "transforms",
]
