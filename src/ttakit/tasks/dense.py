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
from pathlib import Path
from typing import Any

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor, nn

from ..corrections import correct
from ..data import input_transform, to_photo
from ..errors import ConfigError, ShapeError
from ..policy import PolicyLike
from ..runtime.backends import Backend
from ..runtime.config import RunConfig, model_device
from ..runtime.loop import ViewInputs
from ..transforms import Normalization
from ..views import View
from .base import Images, TTABase
from .deaugment import (
    ACTIVATIONS,
    DENSE_MERGES,
    UNCERTAINTIES,
    DenseResult,
    KeypointsHead,
    SegmentHead,
    deaugment_maps,
    keypoints_head,
)
from ..task_spec import TaskSpec, register_task
from .window import WindowConfig, frame_matrix, sliding_window_tta, stage_key

__all__ = ["ACTIVATIONS", "DENSE_MERGES", "DenseResult", "KeypointsTTA", "SegmentationTTA", "UNCERTAINTIES",
           "window_inputs"]


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
        window: sliding-window inference (:class:`~ttakit.tasks.window.WindowConfig`): the
            photo is kept at its own size (photos are only normalised) and cut into tiles;
            each view is tiled, undone and merged, and the tiles stitched with their weights
            (input stages and corrections re-sample the photo, which is then tiled;
            ``uncertainty="variance"`` needs every view's whole map, so it is refused). An
            int or ``(h, w)`` is the tile size (other fields default); a dict holds the
            config's fields (an unknown key is refused).

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
        window: WindowConfig | int | tuple[int, int] | Mapping[str, Any] | None = None,
    ) -> None:
        window = WindowConfig.of(window)  # checked before the model is touched
        super().__init__(model, policy, norm=norm, run_config=run_config, data_config=data_config, backend=backend)
        self.head = SegmentHead(self.view_weights, merge=merge, activation=activation, uncertainty=uncertainty,
                                dense_keys=dense_keys, output_size=output_size)
        self.dense_keys, self.output_size = self.head.dense_keys, output_size
        self.merge_name, self.window = merge, window
        if window is not None and uncertainty == "variance":
            raise ConfigError("uncertainty='variance' needs every view's whole map; with a window use 'entropy'")

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
        if self.window is not None:
            return self._predict_windows(x)
        return self.execute(x, self.head)

    def _predict_windows(self, x: Images) -> DenseResult:
        """Sliding-window prediction (see :mod:`~ttakit.tasks.window`): photos at their own size."""
        if isinstance(x, Tensor) and x.is_floating_point():
            images, stages = x, {}
        else:
            images, stages = window_inputs(x, self.views, self.norm, self.data_config)
        if not isinstance(images, Tensor):
            raise ShapeError("sliding-window input", "(B, C, H, W) images or photos", ())
        w = None if self.view_weights is None else self.view_weights
        merged, seen = sliding_window_tta(self.backend, images.to(model_device(self.model)), self.views, self.window,
                                          weights=w, activation=self.head.activation, merge=self.merge_name,
                                          norm=self.norm, run_config=self.run_config, stages=stages)
        unc = self.head.uncertainty(merged[None], seen[None], merged) if self.head.uncertainty else None
        return DenseResult(merged, unc, seen)

    def forward(self, x: Images) -> Tensor | dict[str, Tensor]:
        """The merged output (same structure as the model's)."""
        return self.predict(x).output


def _normalised(photos: Sequence[Image.Image], norm: Normalization) -> Tensor:
    batch = torch.stack([TF.pil_to_tensor(p) for p in photos]).float().div_(255)  # (B, 3, H, W), in place
    mean, std = torch.tensor(norm.mean).view(1, -1, 1, 1), torch.tensor(norm.std).view(1, -1, 1, 1)
    return batch.sub_(mean).div_(std)


def window_inputs(x: Images, views: Sequence[View], norm: Normalization, data_config: Mapping[str, Any]
                  ) -> tuple[Tensor, dict[str, tuple[Tensor, Tensor | None]]]:
    """Photos as one ``(B, C, H, W)`` batch at their own size, normalised (what is tiled), and
    the photo of every view with an input stage or corrections: the corrected photo at its own
    size, or the stage's rendering (:func:`~ttakit.data.input_transform`) with the map back
    onto the photo (:func:`~ttakit.tasks.window.frame_matrix`).

    Raises:
        ShapeError: the photos differ in size (tile them one at a time).
    """
    single = isinstance(x, (str, Path, Image.Image)) or isinstance(x, Tensor) and x.ndim == 3
    photos = [to_photo(p) for p in ([x] if single else list(x))]  # type: ignore[union-attr, arg-type]
    if len({p.size for p in photos}) > 1:
        raise ShapeError("photos for sliding-window inference", "one size per call", tuple(p.size for p in photos))
    size = (photos[0].height, photos[0].width)
    stages: dict[str, tuple[Tensor, Tensor | None]] = {}
    for v in views:
        if v.stage is None or stage_key(v) in stages:
            continue
        shown = [correct(p, v.corrections) for p in photos] if v.corrections else photos
        if v.source is None:  # corrections alone: the same frame
            stages[stage_key(v)] = (_normalised(shown, norm), None)
        else:
            render = input_transform(v.source, {**data_config, "mean": norm.mean, "std": norm.std})
            stages[stage_key(v)] = (torch.stack([render(p) for p in shown]),
                                    frame_matrix(size, v.source.window(size), len(photos)))
    return _normalised(photos, norm), stages


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


register_task(TaskSpec("keypoints", "keypoints, mapped back and merged", head=keypoints_head))
