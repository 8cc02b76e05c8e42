"""Dense TTA: segmentation maps and keypoints, each view's geometry undone before merging.

Both wrappers use the same loop as classification (:func:`ttakit.runtime.loop.run_views`); only the
per-view post-processing differs. Every geometric view's prediction is mapped back onto the
un-augmented output grid by the view's own ``invert_dense``/``invert_points``: flips and
quarter turns exactly, rotations, zooms, shifts and crops by resampling with a validity mask,
so a pixel is merged only over the views that saw it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor, nn

from .. import functional as Fn
from ..corrections import Corrected, correct
from ..data import input_transform, to_photo
from ..errors import ConfigError, ShapeError, check_shape
from ..policy import PolicyLike
from ..registry import Registry
from ..runtime.backends import Backend
from ..runtime.config import RunConfig, model_device
from ..runtime.loop import ViewInputs, as_view_inputs
from ..stages import Input
from ..transforms import Normalization
from ..views import View
from .base import Images, TTABase
from .window import WindowConfig, frame_matrix, sliding_window_tta, stage_key

__all__ = ["ACTIVATIONS", "DENSE_MERGES", "DenseResult", "KeypointsTTA", "SegmentationTTA", "UNCERTAINTIES",
           "window_inputs"]

ACTIVATIONS = Registry[Callable[[Tensor], Tensor]]("activation", sort=False)  # each view's map, before merging
ACTIVATIONS.add("softmax", lambda y: torch.softmax(y, dim=1))
ACTIVATIONS.add("sigmoid", torch.sigmoid)
ACTIVATIONS.add("none", lambda y: y)  # also written None: merge the logits


def _masked_mean(ys: Tensor, masks: Tensor, weights: Tensor) -> Tensor:
    """``ys`` (V, B, K, H, W), ``masks`` (V, 1|B, 1, H, W), ``weights`` (V,) -> (B, K, H, W)."""
    w = masks * weights.view(-1, 1, 1, 1, 1)
    total = w.sum(0)  # (B, 1, H, W)
    merged = (ys * w).sum(0) / total.clamp_min(1e-12)
    # A pixel no view saw falls back to the plain average of the (border-padded) predictions.
    fallback = (ys * weights.view(-1, 1, 1, 1, 1)).sum(0) / weights.sum()
    return torch.where(total > 0, merged, fallback)


def _masked_max(ys: Tensor, masks: Tensor, weights: Tensor) -> Tensor:
    valid = (masks > 0) & (weights.view(-1, 1, 1, 1, 1) > 0)
    return torch.where(valid, ys, torch.full_like(ys, -torch.inf)).max(0).values.nan_to_num(neginf=0.0)


DENSE_MERGES = Registry[Callable[[Tensor, Tensor, Tensor], Tensor]]("dense merge", sort=False)
DENSE_MERGES.add("mean", _masked_mean)
DENSE_MERGES.add("max", _masked_max)


def _variance(ys: Tensor, masks: Tensor, merged: Tensor) -> Tensor:
    w = masks.expand(-1, ys.shape[1], 1, *ys.shape[-2:])
    n = w.sum(0).clamp_min(1.0)
    return (((ys - merged) ** 2) * w).sum(0).div(n).mean(1, keepdim=True)  # (B, 1, H, W)


def _entropy(ys: Tensor, masks: Tensor, merged: Tensor) -> Tensor:
    p = merged.clamp_min(1e-12)
    if merged.shape[1] == 1:  # binary map: Bernoulli entropy
        q = (1 - merged).clamp_min(1e-12)
        return -(p * p.log() + q * q.log())
    return -(p * p.log()).sum(1, keepdim=True)


UNCERTAINTIES = Registry[Callable[[Tensor, Tensor, Tensor], Tensor]]("uncertainty", sort=False)
UNCERTAINTIES.add("variance", _variance)
UNCERTAINTIES.add("entropy", _entropy)


@dataclass(frozen=True)
class DenseResult:
    """Merged dense prediction.

    Attributes:
        output: ``(B, K, H', W')`` tensor, or a dict of them (non-dense keys averaged as is).
        uncertainty: ``(B, 1, H', W')`` per dense key (a dict for dict outputs), or ``None``.
        coverage: ``(B or 1, 1, H', W')`` number of views that saw each pixel.
    """

    output: Tensor | dict[str, Tensor]
    uncertainty: Tensor | dict[str, Tensor] | None
    coverage: Tensor


def _size(inputs: Tensor | ViewInputs, source: Input | Corrected | None) -> tuple[int, int]:
    return as_view_inputs(inputs).size(source)


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
            ``uncertainty="variance"`` needs every view's whole map, so it is refused).

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
        window: WindowConfig | None = None,
    ) -> None:
        super().__init__(model, policy, norm=norm, run_config=run_config, data_config=data_config, backend=backend)
        # Names resolved once, here; an unknown one raises UnknownNameError listing the known.
        self._merge = DENSE_MERGES.get(merge)
        self.merge_name, self.window = merge, window
        if window is not None and uncertainty == "variance":
            raise ConfigError("uncertainty='variance' needs every view's whole map; with a window use 'entropy'")
        self._activation = ACTIVATIONS.get("none" if activation is None else activation)
        self._uncertainty = None if uncertainty is None else UNCERTAINTIES.get(uncertainty)
        self.dense_keys = None if dense_keys is None else tuple(dense_keys)
        self.output_size = output_size

    def _grid(self, inputs: Tensor | ViewInputs, outs: Sequence[Tensor]) -> tuple[int, int]:
        """The plain output grid: from a plain-input view that keeps the input size, else scaled."""
        if self.output_size is not None:
            return self.output_size
        size = _size(inputs, None)
        for view, y in zip(self.views, outs):
            if view.source is None and view.output_size(size) == size:
                return tuple(y.shape[-2:])  # type: ignore[return-value]
        view, y = self.views[0], outs[0]
        h, w = view.output_size(_size(inputs, view.stage))
        return round(size[0] * y.shape[-2] / h), round(size[1] * y.shape[-1] / w)

    def _merge_maps(self, outs: Sequence[Tensor], inputs: Tensor | ViewInputs) -> tuple[Tensor, Tensor | None, Tensor]:
        Y, M = self.deaugment_maps(outs, inputs)
        merged = self._merge(Y, M, self.weights_or_ones().to(Y))
        unc = self._uncertainty(Y, M, merged) if self._uncertainty else None
        return merged, unc, M.sum(0)

    def deaugment_maps(self, outs: Sequence[Tensor], inputs: Tensor | ViewInputs) -> tuple[Tensor, Tensor]:
        """Each view's map (of :meth:`run`, in ``self.views`` order), activated and mapped back
        onto the plain input's output grid, with the mask of the pixels it saw: ``Y (V, B, K,
        H', W')`` and ``M (V, 1|B, 1, H', W')``, unmerged (the evaluation pipeline stores them)."""
        for y in outs:
            check_shape("segmentation output", y.shape, "(B, K, H, W)")
        size, grid = _size(inputs, None), self._grid(inputs, outs)
        ys, masks = [], []
        for view, y in zip(self.views, outs):
            vsize = _size(inputs, view.stage)
            vgrid = (round(vsize[0] * grid[0] / size[0]), round(vsize[1] * grid[1] / size[1]))
            # Undo the view's transforms onto its input stage's grid ...
            y, m = view.invert_dense(self._activation(y.float()), vsize, vgrid)  # (B, K, h', w'), (1, 1, h', w')
            stage = self.stage_matrices(inputs, view)  # (B, 3, 3) or None
            if stage is not None:  # ... then that stage's window of each photo onto the plain one's
                m = Fn.warp(m.expand(y.shape[0], -1, -1, -1), stage, grid, mode="nearest")
                m = m * Fn.valid_mask(stage, grid, y.device)
                y = Fn.warp(y, stage, grid, padding_mode="border")
            ys.append(y)
            masks.append(m)
        rows = max(m.shape[0] for m in masks)  # 1 unless an input stage made masks per photo
        return torch.stack(ys), torch.stack([m.expand(rows, -1, -1, -1) for m in masks])  # (V, B, K, H', W'), (V, 1|B, 1, H', W')

    @torch.inference_mode()
    def predict(self, x: Images) -> DenseResult:
        """Merged maps with per-pixel uncertainty (if asked) and view coverage, on the plain
        input's output grid."""
        if self.window is not None:
            return self._predict_windows(x)
        inputs = self.inputs(x)
        outs = self.run(inputs)
        if isinstance(outs[0], Tensor):
            merged, unc, cov = self._merge_maps(outs, inputs)  # type: ignore[arg-type]
            return DenseResult(merged, unc, cov)
        if not isinstance(outs[0], dict):
            raise ShapeError("segmentation output", "a (B, K, H, W) tensor or a dict of tensors", ())
        keys = self.dense_keys or tuple(k for k, v in outs[0].items() if isinstance(v, Tensor) and v.ndim == 4)
        if not any(k in outs[0] for k in keys):
            raise ShapeError("segmentation output", "a dict with at least one (B, K, H, W) map", ())
        merged_d: dict[str, Tensor] = {}
        unc_d: dict[str, Tensor] = {}
        coverage: list[Tensor] = []
        w = self.weights_or_ones().float()
        for k in outs[0]:
            if k in keys:
                merged_d[k], u, cov = self._merge_maps([o[k] for o in outs], inputs)
                coverage.append(cov)
                if u is not None:
                    unc_d[k] = u
            else:  # a non-spatial head (class scores, ...): weighted mean over views
                stack = torch.stack([o[k].float() for o in outs])
                merged_d[k] = (stack * w.view(-1, *([1] * (stack.ndim - 1)))).sum(0) / w.sum()
        return DenseResult(merged_d, unc_d or None, coverage[0])  # the first map's grid

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
                                          weights=w, activation=self._activation, merge=self.merge_name,
                                          norm=self.norm, run_config=self.run_config, stages=stages)
        unc = self._uncertainty(merged[None], seen[None], merged) if self._uncertainty else None
        return DenseResult(merged, unc, seen)

    def forward(self, x: Images) -> Tensor | dict[str, Tensor]:
        """The merged output (same structure as the model's)."""
        return self.predict(x).output


def _normalised(photos: Sequence[Image.Image], norm: Normalization) -> Tensor:
    batch = torch.stack([TF.pil_to_tensor(p) for p in photos]).float() / 255  # (B, 3, H, W)
    mean, std = torch.tensor(norm.mean).view(1, -1, 1, 1), torch.tensor(norm.std).view(1, -1, 1, 1)
    return (batch - mean) / std


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
        self.flip_pairs = tuple((int(a), int(b)) for a, b in (flip_pairs or ()))

    def _swap(self, n: int) -> Tensor:
        perm = torch.arange(n)
        for a, b in self.flip_pairs:
            perm[a], perm[b] = b, a
        return perm

    @staticmethod
    def _split(out: Any) -> tuple[Tensor, Tensor | None]:
        if isinstance(out, Tensor):
            return out, None
        if isinstance(out, dict):
            return out["keypoints"], out.get("scores")
        return out[0], (out[1] if len(out) > 1 else None)

    @torch.inference_mode()
    def predict(self, x: Images) -> tuple[Tensor, Tensor | None]:
        """``(B, N, 2)`` merged coordinates (pixels of the plain input) and ``(B, N)`` mean
        scores (``None`` without)."""
        inputs = self.inputs(x)
        size = _size(inputs, None)
        pts_all, sc_all = [], []
        for view, out in zip(self.views, self.run(inputs)):
            pts, scores = self._split(out)
            check_shape("keypoints", pts.shape, "(B, N, 2)")
            vsize = _size(inputs, view.stage)
            pts = view.invert_points(pts.float(), vsize)  # pixels of the view's input stage
            stage = self.stage_matrices(inputs, view)
            if stage is not None:  # that stage's window of each photo -> the plain input's
                u = Fn.transform_points(Fn.pixels_to_normalized(pts, vsize), torch.linalg.inv(stage))
                pts = Fn.normalized_to_pixels(u, size)
            if view.mirrored:
                perm = self._swap(pts.shape[1]).to(pts.device)
                pts = pts[:, perm]
                scores = None if scores is None else scores[:, perm]
            pts_all.append(pts)
            sc_all.append(scores)
        P = torch.stack(pts_all)  # (V, B, N, 2)
        w = self.weights_or_ones().to(P).view(-1, 1, 1)  # (V, 1, 1)
        if all(s is not None for s in sc_all):
            S = torch.stack([s.float() for s in sc_all])  # (V, B, N)
            ws = w * S.clamp_min(0)
            ws = torch.where(ws.sum(0, keepdim=True) > 0, ws, w.expand_as(S))
            merged = (P * ws.unsqueeze(-1)).sum(0) / ws.sum(0).unsqueeze(-1)
            return merged, (S * w).sum(0) / w.sum(0)
        return (P * w.unsqueeze(-1)).sum(0) / w.sum(), None

    def forward(self, x: Images) -> Tensor:
        """Merged ``(B, N, 2)`` keypoints."""
        return self.predict(x)[0]
