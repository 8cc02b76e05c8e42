"""Dense TTA: segmentation maps and keypoints, each view's geometry undone before merging.

The wrappers are the model-free de-augmenters of :mod:`ttakit.tasks.deaugment` with a model in
front. Both use the same loop as classification (:func:`ttakit.runtime.loop.run_views`); only the
per-view post-processing differs. Every geometric view's prediction is mapped back onto the
un-augmented output grid by the view's own ``invert_dense``/``invert_points``: flips and
quarter turns exactly, rotations, zooms, shifts and crops by resampling with a validity mask,
so a pixel is merged only over the views that saw it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..policy import PolicyLike
from ..runtime.backends import Backend
from ..runtime.config import RunConfig
from ..runtime.loop import ViewInputs
from ..transforms import Normalization
from .base import Images, TTABase
from .deaugment import (
    ACTIVATIONS,
    DENSE_MERGES,
    UNCERTAINTIES,
    DenseResult,
    KeypointsHead,
    SegmentHead,
    deaugment_maps,
)

__all__ = ["ACTIVATIONS", "DENSE_MERGES", "DenseResult", "KeypointsTTA", "SegmentationTTA", "UNCERTAINTIES"]


class SegmentationTTA(TTABase):
    """TTA for models mapping ``(B, C, H, W)`` images to ``(B, K, H', W')`` logits (any output
    stride), or to a dict of such maps and other heads.

    Args:
        model: the segmentation network.
        policy: preset name, policy text, JSON path or policy object.
        merge: ``mean`` (default) or ``max``, over the views that saw each pixel.
        activation: applied to each view before merging: ``softmax`` (over K), ``sigmoid``, or
            ``"none"``/``None`` (merge logits).
        dense_keys: for dict outputs, the keys holding maps to de-augment (default: every 4-D
            value); other values are averaged over views as they are.
        uncertainty: ``None``, ``variance`` (across views, mean over K) or ``entropy`` (of
            the merged probabilities), returned by :meth:`predict`.
        output_size: the plain output grid ``(H', W')``; inferred from the views otherwise.
        data_config: timm data config turning photos into inputs (from the model if ``None``).
        backend: ``"torch"`` (default), ``"onnxruntime"``, ``"openvino"`` or a backend object.

    Calls take ``(B, C, H, W)`` images, or photos for policies with input stages (multi-scale
    inference from the source photo, ``input(224:0.875,320:0.875)``): each stage's prediction
    is mapped back onto the plain input's grid through the two windows of the photo, with a
    validity mask, so a pixel is merged only over the views that saw it.

    Example:
        >>> net = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)     # 4 classes at stride 2
        >>> tta = SegmentationTTA(net, "flip*scale(1,1.25)", activation="softmax", uncertainty="entropy")
        >>> images = torch.randn(2, 3, 32, 48)
        >>> res = tta.predict(images)
        >>> res.output.shape, res.uncertainty.shape, len(tta.views)
        (torch.Size([2, 4, 16, 24]), torch.Size([2, 1, 16, 24]), 8)
        >>> tta(images).argmax(1).shape          # forward() returns the merged output only
        torch.Size([2, 16, 24])
    """

    def __init__(
        self,
        model: nn.Module,
        policy: PolicyLike = "hflip",
        merge: str = "mean",
        activation: str | None = "softmax",
        *,
        dense_keys: Sequence[str] | None = None,
        uncertainty: str | None = None,
        output_size: tuple[int, int] | None = None,
        norm: Normalization | None = None,
        run_config: RunConfig | None = None,
        data_config: Mapping[str, Any] | None = None,
        backend: str | Backend | None = None,
    ) -> None:
        super().__init__(model, policy, norm=norm, run_config=run_config, data_config=data_config, backend=backend)
        self.head = SegmentHead(self.view_weights, merge=merge, activation=activation, uncertainty=uncertainty,
                                dense_keys=dense_keys, output_size=output_size)
        self.dense_keys, self.output_size = self.head.dense_keys, output_size

    def deaugment_maps(self, outs: Sequence[Tensor], inputs: Tensor | ViewInputs) -> tuple[Tensor, Tensor]:
        """Each view's map (of :meth:`run`, in ``self.views`` order), activated and mapped back
        onto the plain input's output grid, with the mask of the pixels it saw: ``Y (V, B, K,
        H', W')`` and ``M (V, 1|B, 1, H', W')``, unmerged (see
        :func:`ttakit.tasks.deaugment.deaugment_maps`, which needs no model)."""
        return deaugment_maps(self.views, outs, self.geometry(inputs), activation=self.head.activation,
                              output_size=self.output_size)

    @torch.inference_mode()
    def predict(self, x: Images) -> DenseResult:
        """Merged maps with per-pixel uncertainty (if asked) and view coverage, on the plain
        input's output grid."""
        return self.execute(x, self.head)

    def forward(self, x: Images) -> Tensor | dict[str, Tensor]:
        """The merged output (same structure as the model's)."""
        return self.predict(x).output


class KeypointsTTA(TTABase):
    """TTA for keypoint regressors returning ``(B, N, 2)`` pixel coordinates ``(x, y)`` of the
    input image (pixel centres at integers), optionally with ``(B, N)`` scores as a second
    tuple element or under ``"scores"`` in a dict (coordinates under ``"keypoints"``).

    Each view's coordinates are mapped back to the original image; after a mirror (an odd
    number of hflip/vflip) the left/right keypoints named in ``flip_pairs`` are swapped, since
    the model calls the mirrored left eye "right". Views are merged by a weighted mean (view
    weights x scores when the model gives scores).

    Example:
        >>> class Brightest(torch.nn.Module):   # one keypoint: the brightest pixel
        ...     def forward(self, x):
        ...         i = x.sum(1).flatten(1).argmax(1)
        ...         return torch.stack([i % x.shape[-1], i // x.shape[-1]], -1)[:, None].float()
        >>> images = torch.zeros(1, 3, 20, 30)
        >>> images[0, :, 5, 7] = 1.0
        >>> KeypointsTTA(Brightest(), "flip")(images).round()    # found in every flipped view, mapped back
        tensor([[[7., 5.]]])
    """

    def __init__(
        self,
        model: nn.Module,
        policy: PolicyLike = "hflip",
        flip_pairs: Sequence[tuple[int, int]] | None = None,
        *,
        norm: Normalization | None = None,
        run_config: RunConfig | None = None,
        data_config: Mapping[str, Any] | None = None,
        backend: str | Backend | None = None,
    ) -> None:
        super().__init__(model, policy, norm=norm, run_config=run_config, data_config=data_config, backend=backend)
        self.head = KeypointsHead(self.view_weights, flip_pairs=flip_pairs)
        self.flip_pairs = self.head.flip_pairs

    @torch.inference_mode()
    def predict(self, x: Images) -> tuple[Tensor, Tensor | None]:
        """``(B, N, 2)`` merged coordinates (pixels of the plain input) and ``(B, N)`` mean
        scores (``None`` without); see :func:`ttakit.tasks.deaugment.deaugment_points`."""
        return self.execute(x, self.head)

    def forward(self, x: Images) -> Tensor:
        """Merged ``(B, N, 2)`` keypoints."""
        return self.predict(x)[0]
