"""The transform contract: what every view transform gives (name, geometry, augment, de-augment, graph form).

Concrete transforms (flips, turns, crops, resizes, photometric changes) are in
:mod:`ttakit.transforms`, which also names them for the policy text.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from . import functional as Fn
from .errors import PolicyError
from .functional import Size
from .params import KeyName

__all__ = ["Normalization", "Transform"]

_EYE = torch.eye(3, dtype=torch.float64)


@dataclass(frozen=True)
class Normalization:
    """Per-channel normalisation of the model input: ``x = (pixel - mean) / std``."""

    mean: tuple[float, ...] = (0.485, 0.456, 0.406)  # ImageNet defaults, replaced by the model's
    std: tuple[float, ...] = (0.229, 0.224, 0.225)


class Transform(KeyName, ABC):
    """One deterministic image transform with explicit parameters (subclasses are frozen
    dataclasses). Photometric transforms leave the geometry unchanged. Its ``name`` is read
    back by :func:`ttakit.transforms.parse_transform`."""

    geometric: ClassVar[bool] = True

    # ------------------------------------------------------------------ naming
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
            >>> from ttakit.transforms import HFlip
            >>> HFlip().invert_boxes(torch.tensor([[10., 5., 30., 20.]]), (40, 100))
            tensor([[70.,  5., 90., 20.]])
        """
        if not self.geometric:
            return boxes
        m = self.matrix(image_size)
        if not Fn.is_axis_aligned(m):
            raise PolicyError(f"{self.name} is not axis-aligned, so its boxes cannot be mapped back "
                              "(use flips, quarter turns, scale, resize, crop or shift)")
        return Fn.map_boxes(boxes, torch.linalg.inv(m), self.output_size(image_size), image_size)

    # ------------------------------------------------------------------ static graph (export)
    graph_opset: ClassVar[int] = 1  # the lowest ONNX opset its graph steps export at

    def graph_steps(self, size: Size, norm: Normalization) -> list[nn.Module]:
        """This transform on images of ``size`` as static, exportable modules (:mod:`ttakit.graph`).

        Raises:
            PolicyError: the transform has no graph form.

        Example:
            >>> from ttakit.transforms import Crop
            >>> Crop("center", (2, 2)).graph_steps((4, 4), Normalization())
            [Window()]
        """
        raise PolicyError(f"transform {self.name!r} has no graph form, so it cannot be exported; "
                          "leave it out of exported policies")

    def graph_inverse_steps(self) -> list[nn.Module]:
        """The exact inverse of this transform as static modules, for maps on any grid (flips
        and quarter turns have one; resampling transforms do not).

        Raises:
            PolicyError: the transform has no exact inverse on every grid.
        """
        raise PolicyError(f"transform {self.name!r} has no exact inverse on every grid")

    def __str__(self) -> str:
        return self.name
