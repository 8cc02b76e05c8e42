"""ttach 0.0.3's functional API (``ttach.functional``): the tensor ops its transforms and users' own transforms call.

Same names, signatures and results as ttach's, so a user's transform written with
``import ttach.functional as F`` runs unchanged with ``import ttakit.compat.ttach.functional as F``.
These are ttach's primitives as they are: :func:`scale` sizes with ``int()`` and
:func:`center_crop` puts an odd margin's extra pixel above/left, as ttach's do. The drop-in's
*transforms* (``tta.Scale``, ``tta.FiveCrops``) are built on ttakit's views instead and carry
the fixes README's "Migrating from ttach" lists. Images are ``(B, C, H, W)``; keypoints are
``(..., 2)`` ``(x, y)`` in ``[0, 1]``.

Example:
    >>> from ttakit.compat.ttach import functional as F
    >>> x = torch.arange(6.0).view(1, 1, 2, 3)
    >>> F.hflip(x)[0, 0, 0].tolist(), tuple(F.scale(x, 0.5).shape), tuple(F.center_crop(x, 1, 1).shape)
    ([2.0, 1.0, 0.0], (1, 1, 1, 1), (1, 1, 1, 1))
    >>> F.keypoints_rot90(torch.tensor([[0.25, 0.5]]), k=1).tolist()
    [[0.5, 0.75]]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "add",
    "center_crop",
    "crop",
    "crop_lb",
    "crop_lt",
    "crop_rb",
    "crop_rt",
    "hflip",
    "keypoints_hflip",
    "keypoints_rot90",
    "keypoints_vflip",
    "max",
    "min",
    "multiply",
    "resize",
    "rot90",
    "scale",
    "sum",
    "vflip",
]


def rot90(x: Tensor, k: int = 1) -> Tensor:
    """Rotate a batch of images by 90 degrees ``k`` times (counter-clockwise)."""
    return torch.rot90(x, k, (2, 3))


def hflip(x: Tensor) -> Tensor:
    """Flip a batch of images left-right."""
    return x.flip(3)


def vflip(x: Tensor) -> Tensor:
    """Flip a batch of images top-bottom."""
    return x.flip(2)


def sum(x1: Tensor, x2: Tensor) -> Tensor:  # noqa: A001 - ttach's name
    """The sum of two tensors."""
    return x1 + x2


def add(x: Tensor, value: float) -> Tensor:
    """``value`` added to every element."""
    return x + value


def max(x1: Tensor, x2: Tensor) -> Tensor:  # noqa: A001 - ttach's name
    """The elementwise maximum of two tensors."""
    return torch.max(x1, x2)


def min(x1: Tensor, x2: Tensor) -> Tensor:  # noqa: A001 - ttach's name
    """The elementwise minimum of two tensors."""
    return torch.min(x1, x2)


def multiply(x: Tensor, factor: float) -> Tensor:
    """Every element multiplied by ``factor``."""
    return x * factor


def scale(x: Tensor, scale_factor: float, interpolation: str = "nearest", align_corners: bool | None = None) -> Tensor:
    """A batch of images resized by ``scale_factor`` to ``int(H * f) x int(W * f)`` (ttach's
    sizes; ``tta.Scale`` rounds instead), not antialiased."""
    h, w = x.shape[2:]
    return F.interpolate(x, size=(int(h * scale_factor), int(w * scale_factor)), mode=interpolation,
                         align_corners=align_corners)


def resize(x: Tensor, size: tuple[int, int], interpolation: str = "nearest", align_corners: bool | None = None) -> Tensor:
    """A batch of images resized to ``size`` ``(H, W)``, not antialiased."""
    return F.interpolate(x, size=size, mode=interpolation, align_corners=align_corners)


def crop(x: Tensor, x_min: int | None = None, x_max: int | None = None, y_min: int | None = None,
         y_max: int | None = None) -> Tensor:
    """The window ``[y_min:y_max, x_min:x_max]`` of a batch of images."""
    return x[:, :, y_min:y_max, x_min:x_max]


def crop_lt(x: Tensor, crop_h: int, crop_w: int) -> Tensor:
    """The top-left ``crop_h x crop_w`` corner."""
    return x[:, :, 0:crop_h, 0:crop_w]


def crop_lb(x: Tensor, crop_h: int, crop_w: int) -> Tensor:
    """The bottom-left ``crop_h x crop_w`` corner."""
    return x[:, :, -crop_h:, 0:crop_w]


def crop_rt(x: Tensor, crop_h: int, crop_w: int) -> Tensor:
    """The top-right ``crop_h x crop_w`` corner."""
    return x[:, :, 0:crop_h, -crop_w:]


def crop_rb(x: Tensor, crop_h: int, crop_w: int) -> Tensor:
    """The bottom-right ``crop_h x crop_w`` corner."""
    return x[:, :, -crop_h:, -crop_w:]


def center_crop(x: Tensor, crop_h: int, crop_w: int) -> Tensor:
    """The centre ``crop_h x crop_w`` window from row ``H // 2 - crop_h // 2`` and column
    ``W // 2 - crop_w // 2``: ttach's rule, an odd margin's extra pixel above/left."""
    top, left = x.shape[2] // 2 - crop_h // 2, x.shape[3] // 2 - crop_w // 2
    return x[:, :, top:top + crop_h, left:left + crop_w]


def _disassemble_keypoints(keypoints: Tensor) -> tuple[Tensor, Tensor]:
    return keypoints[..., 0], keypoints[..., 1]


def _assemble_keypoints(x: Tensor, y: Tensor) -> Tensor:
    return torch.stack([x, y], dim=-1)


def keypoints_hflip(keypoints: Tensor) -> Tensor:
    """``(x, y)`` in ``[0, 1]`` after a left-right flip: ``(1 - x, y)``."""
    x, y = _disassemble_keypoints(keypoints)
    return _assemble_keypoints(1.0 - x, y)


def keypoints_vflip(keypoints: Tensor) -> Tensor:
    """``(x, y)`` in ``[0, 1]`` after a top-bottom flip: ``(x, 1 - y)``."""
    x, y = _disassemble_keypoints(keypoints)
    return _assemble_keypoints(x, 1.0 - y)


def keypoints_rot90(keypoints: Tensor, k: int = 1) -> Tensor:
    """``(x, y)`` in ``[0, 1]`` after :func:`rot90` by ``k`` (0 to 3) quarter turns.

    Raises:
        ValueError: ``k`` is not 0, 1, 2 or 3.
    """
    if k not in {0, 1, 2, 3}:
        raise ValueError(f"Parameter k must be in [0:3], got {k!r}")
    if k == 0:
        return keypoints
    x, y = _disassemble_keypoints(keypoints)
    xy = {1: (y, 1.0 - x), 2: (1.0 - x, 1.0 - y), 3: (1.0 - y, x)}[k]
    return _assemble_keypoints(*xy)

