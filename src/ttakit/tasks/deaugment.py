"""Model-free dense de-augmentation: each view's map or keypoints mapped back onto the plain input, then merged.

These functions take the views, each view's raw output (from any runtime: torch, ONNX
Runtime, TensorRT, a server) and the batch's :class:`~ttakit.tasks.geometry.Geometry`; they
never see a model. Every geometric view's prediction is mapped back by the view's own
``invert_dense``/``invert_points`` (flips and quarter turns exactly, rotations, zooms, shifts
and crops by resampling with a validity mask, so a pixel is merged only over the views that
saw it), then through its input stage's window of each photo.
:class:`~ttakit.tasks.dense.SegmentationTTA` and :class:`~ttakit.tasks.dense.KeypointsTTA`
are these functions with a model in front.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .. import functional as Fn
from ..errors import ArgumentError, PolicyError, ShapeError, check_shape
from ..registry import Registry
from ..policy import Policy
from ..runtime.export import GraphHead, normalised_weights
from ..validate import check_pair, check_size
from ..views import View
from .geometry import Geometry
from .masked_merge import FOLDS, merge_stack
from .plan import AllViews, Fetch

__all__ = [
    "ACTIVATIONS",
    "DENSE_MERGES",
    "UNCERTAINTIES",
    "DenseResult",
    "KeypointsHead",
    "SegmentGraph",
    "SegmentHead",
    "deaugment_maps",
    "keypoints_head",
    "policy_weights",
    "segment_head",
    "deaugment_points",
    "dense_grid",
    "merge_dense",
    "merge_maps",
    "merge_points",
]

ACTIVATIONS = Registry[Callable[[Tensor], Tensor]]("activation", sort=False)  # each view's map, before merging
ACTIVATIONS.add("softmax", lambda y: torch.softmax(y, dim=1))
ACTIVATIONS.add("sigmoid", torch.sigmoid)
ACTIVATIONS.add("none", lambda y: y)  # also written None: merge the logits


def _stacked(name: str) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    def merge(ys: Tensor, masks: Tensor, weights: Tensor) -> Tensor:
        """``ys (V, B, K, H, W)``, ``masks (V, 1|B, 1, H, W)``, ``weights (V,)`` -> ``(B, K, H, W)``."""
        return merge_stack(ys, masks, weights, name)

    merge.__name__ = merge.__qualname__ = f"masked_{name}"
    return merge


# Every dense merge is the one masked merge (:mod:`~ttakit.tasks.masked_merge`: a pixel no
# view saw is the same merge over every view, unmasked), over stacked views.
DENSE_MERGES = Registry[Callable[[Tensor, Tensor, Tensor], Tensor]]("dense merge", sort=False)
for _name in FOLDS.names():
    DENSE_MERGES.add(_name, _stacked(_name))


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


def _resolve(registry: Registry, value: str | Callable | None, none: str | None = None) -> Callable | None:
    if value is None:
        return None if none is None else registry.get(none)
    return registry.get(value) if isinstance(value, str) else value


def dense_grid(views: Sequence[View], outs: Sequence[Tensor], geometry: Geometry,
               output_size: tuple[int, int] | None = None) -> tuple[int, int]:
    """The plain output grid ``(H', W')``: ``output_size`` if given, else from a plain-input view
    that keeps the input size, else the first view's grid scaled to the plain input."""
    if output_size is not None:
        return tuple(output_size)  # type: ignore[return-value]
    size = geometry.input_size
    for view, y in zip(views, outs):
        if view.source is None and view.output_size(size) == size:
            return tuple(y.shape[-2:])  # type: ignore[return-value]
    view, y = views[0], outs[0]
    h, w = view.output_size(geometry.size(view.stage))
    return round(size[0] * y.shape[-2] / h), round(size[1] * y.shape[-1] / w)


def deaugment_maps(views: Sequence[View], outs: Sequence[Tensor], geometry: Geometry, *,
                   activation: str | Callable[[Tensor], Tensor] | None = "softmax",
                   output_size: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
    """Each view's ``(B, K, h, w)`` map, activated and mapped back onto the plain input's output
    grid, with the mask of the pixels it saw, unmerged.

    Args:
        views: the views, in the order of ``outs``.
        outs: each view's raw map, batch first.
        geometry: the batch's input and photo sizes (:class:`~ttakit.tasks.geometry.Geometry`).
        activation: ``softmax`` (over K), ``sigmoid``, ``none``/``None`` (logits) or a function.
        output_size: the plain output grid; inferred from the views otherwise.

    Returns:
        ``Y (V, B, K, H', W')`` and ``M (V, 1|B, 1, H', W')``.

    Example:
        >>> views = [View(), View((HFlip(),))]
        >>> y = torch.arange(6.0).view(1, 1, 2, 3)             # the model's map of the plain image
        >>> Y, M = deaugment_maps(views, [y, y.flip(-1)], Geometry((2, 3)), activation=None)
        >>> torch.equal(Y[1], y), tuple(M.shape)               # the flipped view's map flipped back
        (True, (2, 1, 1, 2, 3))
    """
    act = _resolve(ACTIVATIONS, activation, none="none")
    for y in outs:
        check_shape("segmentation output", y.shape, "(B, K, H, W)")
    size, grid = geometry.input_size, dense_grid(views, outs, geometry, output_size)
    ys, masks = [], []
    for view, y in zip(views, outs):
        vsize = geometry.size(view.stage)
        vgrid = (round(vsize[0] * grid[0] / size[0]), round(vsize[1] * grid[1] / size[1]))
        # Undo the view's transforms onto its input stage's grid ...
        y, m = view.invert_dense(act(y.float()), vsize, vgrid)  # (B, K, h', w'), (1, 1, h', w')
        stage = geometry.stage_matrices(view)  # (B, 3, 3) or None
        if stage is not None:  # ... then that stage's window of each photo onto the plain one's
            stage = stage.to(y.device)
            m = Fn.warp(m.expand(y.shape[0], -1, -1, -1), stage, grid, mode="nearest")
            m = m * Fn.valid_mask(stage, grid, y.device)
            y = Fn.warp(y, stage, grid, padding_mode="border")
        ys.append(y)
        masks.append(m)
    rows = max(m.shape[0] for m in masks)  # 1 unless an input stage made masks per photo
    return torch.stack(ys), torch.stack([m.expand(rows, -1, -1, -1) for m in masks])  # (V, B, K, H', W'), (V, 1|B, 1, H', W')


def merge_maps(Y: Tensor, M: Tensor, weights: Tensor | None = None, *,
               merge: str | Callable[[Tensor, Tensor, Tensor], Tensor] = "mean",
               uncertainty: str | Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
               ) -> tuple[Tensor, Tensor | None, Tensor]:
    """Merge de-augmented maps ``Y (V, B, K, H, W)`` over the views that saw each pixel (masks
    ``M``), weighted by ``weights (V,)`` (``None``: equal): ``(merged, uncertainty or None,
    coverage (1|B, 1, H, W))``, the coverage counting the views of weight > 0 that saw each
    pixel. Every registered merge is :class:`~ttakit.tasks.masked_merge.MaskedMerge`'s (a
    pixel no view saw: the same merge over every view, unmasked)."""
    w = (torch.ones(Y.shape[0]) if weights is None else torch.as_tensor(weights)).to(Y)
    merged = _resolve(DENSE_MERGES, merge)(Y, M, w)  # type: ignore[misc]
    unc_fn = _resolve(UNCERTAINTIES, uncertainty)
    coverage = (M[w > 0] > 0).sum(0).to(Y.dtype)  # (1|B, 1, H, W)
    return merged, (unc_fn(Y, M, merged) if unc_fn else None), coverage


def merge_dense(views: Sequence[View], outs: Sequence[Any], geometry: Geometry, weights: Tensor | None = None, *,
                merge: str | Callable = "mean", activation: str | Callable | None = "softmax",
                uncertainty: str | Callable | None = None, dense_keys: Sequence[str] | None = None,
                output_size: tuple[int, int] | None = None) -> DenseResult:
    """De-augment and merge each view's output: a ``(B, K, H, W)`` map, or a dict of maps
    (``dense_keys``, default every 4-D value) and other heads (weighted mean over views).

    Example:
        >>> views = [View(), View((VFlip(),))]
        >>> y = torch.randn(2, 3, 4, 5)
        >>> res = merge_dense(views, [y, y.flip(-2)], Geometry((8, 10)), activation=None)
        >>> torch.allclose(res.output, y), tuple(res.coverage.shape)
        (True, (1, 1, 4, 5))
    """
    kw: dict[str, Any] = {"activation": activation, "output_size": output_size}
    if isinstance(outs[0], Tensor):
        merged, unc, cov = merge_maps(*deaugment_maps(views, outs, geometry, **kw), weights, merge=merge,
                                      uncertainty=uncertainty)
        return DenseResult(merged, unc, cov)
    if not isinstance(outs[0], dict):
        raise ShapeError("segmentation output", "a (B, K, H, W) tensor or a dict of tensors", ())
    keys = dense_keys or tuple(k for k, v in outs[0].items() if isinstance(v, Tensor) and v.ndim == 4)
    if not any(k in outs[0] for k in keys):
        raise ShapeError("segmentation output", "a dict with at least one (B, K, H, W) map", ())
    merged_d: dict[str, Tensor] = {}
    unc_d: dict[str, Tensor] = {}
    coverage: list[Tensor] = []
    w = (torch.ones(len(views)) if weights is None else torch.as_tensor(weights)).float()
    for k in outs[0]:
        if k in keys:
            Y, M = deaugment_maps(views, [o[k] for o in outs], geometry, **kw)
            merged_d[k], u, cov = merge_maps(Y, M, w, merge=merge, uncertainty=uncertainty)
            coverage.append(cov)
            if u is not None:
                unc_d[k] = u
        else:  # a non-spatial head (class scores, ...): weighted mean over views
            stack = torch.stack([o[k].float() for o in outs])
            merged_d[k] = (stack * w.to(stack).view(-1, *([1] * (stack.ndim - 1)))).sum(0) / w.sum()
    return DenseResult(merged_d, unc_d or None, coverage[0])  # the first map's grid


def _split_points(out: Any) -> tuple[Tensor, Tensor | None]:
    if isinstance(out, Tensor):
        return out, None
    if isinstance(out, dict):
        return out["keypoints"], out.get("scores")
    return out[0], (out[1] if len(out) > 1 else None)


def deaugment_points(views: Sequence[View], outs: Sequence[Any], geometry: Geometry, *,
                     flip_pairs: Sequence[tuple[int, int]] = ()) -> tuple[Tensor, Tensor | None]:
    """Each view's ``(B, N, 2)`` pixel keypoints ``(x, y)`` (optionally with ``(B, N)`` scores,
    as a second tuple element or a ``{"keypoints", "scores"}`` dict) mapped back to the plain
    input's pixels; after a mirror the keypoints named in ``flip_pairs`` are swapped.

    Returns:
        ``P (V, B, N, 2)`` and ``S (V, B, N)`` (``None`` unless every view gave scores).

    Example:
        >>> views = [View(), View((HFlip(),))]
        >>> pts = torch.tensor([[[2.0, 1.0]]])                 # (B, N, 2) in a 5x10 image
        >>> P, S = deaugment_points(views, [pts, torch.tensor([[[7.0, 1.0]]])], Geometry((5, 10)))
        >>> P[:, 0, 0].tolist()
        [[2.0, 1.0], [2.0, 1.0]]
    """
    size = geometry.input_size
    pts_all, sc_all = [], []
    for view, out in zip(views, outs):
        pts, scores = _split_points(out)
        check_shape("keypoints", pts.shape, "(B, N, 2)")
        vsize = geometry.size(view.stage)
        pts = view.invert_points(pts.float(), vsize)  # pixels of the view's input stage
        stage = geometry.stage_matrices(view)
        if stage is not None:  # that stage's window of each photo -> the plain input's
            u = Fn.transform_points(Fn.pixels_to_normalized(pts, vsize), torch.linalg.inv(stage).to(pts))
            pts = Fn.normalized_to_pixels(u, size)
        if view.mirrored and flip_pairs:
            perm = torch.arange(pts.shape[1])
            for a, b in flip_pairs:
                perm[a], perm[b] = b, a
            pts = pts[:, perm.to(pts.device)]
            scores = None if scores is None else scores[:, perm.to(scores.device)]
        pts_all.append(pts)
        sc_all.append(scores)
    scores_ok = all(s is not None for s in sc_all)
    return torch.stack(pts_all), (torch.stack([s.float() for s in sc_all]) if scores_ok else None)  # type: ignore[union-attr]


def merge_points(P: Tensor, S: Tensor | None, weights: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Weighted mean of de-augmented keypoints ``P (V, B, N, 2)`` over views (view weights x
    scores when ``S (V, B, N)`` is given): ``(B, N, 2)`` and ``(B, N)`` mean scores or ``None``."""
    w = (torch.ones(P.shape[0]) if weights is None else torch.as_tensor(weights)).to(P).view(-1, 1, 1)  # (V, 1, 1)
    if S is not None:
        ws = w * S.clamp_min(0)
        ws = torch.where(ws.sum(0, keepdim=True) > 0, ws, w.expand_as(S))
        merged = (P * ws.unsqueeze(-1)).sum(0) / ws.sum(0).unsqueeze(-1)
        return merged, (S * w).sum(0) / w.sum(0)
    return (P * w.unsqueeze(-1)).sum(0) / w.sum(), None


def _pairs(flip_pairs: Any) -> list[Any]:
    if flip_pairs is None:
        return []
    if isinstance(flip_pairs, (str, bytes)) or not isinstance(flip_pairs, Sequence):
        raise ArgumentError(f"flip_pairs must be a list of (left, right) keypoint indices, got {flip_pairs!r}")
    return list(flip_pairs)


class SegmentHead(AllViews):
    """Segmentation as a :class:`~ttakit.tasks.plan.Plan` task: :func:`merge_dense` of every
    view's map; the result is a :class:`DenseResult`."""

    def __init__(self, weights: Tensor | None = None, *, merge: str | Callable = "mean",
                 activation: str | Callable | None = "softmax", uncertainty: str | Callable | None = None,
                 dense_keys: Sequence[str] | None = None, output_size: tuple[int, int] | None = None) -> None:
        # Names resolved once, here; an unknown one raises UnknownNameError listing the known.
        self.weights, self.merge = weights, _resolve(DENSE_MERGES, merge)
        self.activation = _resolve(ACTIVATIONS, activation, none="none")
        self.uncertainty = _resolve(UNCERTAINTIES, uncertainty)
        self.dense_keys = None if dense_keys is None else tuple(dense_keys)
        self.output_size = None if output_size is None else check_size("output_size", output_size)

    def finish(self, views: Sequence[View], n: int, fetch: Fetch, geometry: Geometry) -> DenseResult:
        return merge_dense(views, fetch(None, views), geometry, self.weights, merge=self.merge,  # type: ignore[arg-type]
                           activation=self.activation, uncertainty=self.uncertainty, dense_keys=self.dense_keys,
                           output_size=self.output_size)


class KeypointsHead(AllViews):
    """Keypoints as a :class:`~ttakit.tasks.plan.Plan` task: :func:`deaugment_points` then
    :func:`merge_points`; the result is ``(points (B, N, 2), scores (B, N) or None)``."""

    def __init__(self, weights: Tensor | None = None, *, flip_pairs: Sequence[tuple[int, int]] | None = None) -> None:
        self.weights = weights
        self.flip_pairs = tuple(check_pair("flip_pairs", p) for p in _pairs(flip_pairs))

    def finish(self, views: Sequence[View], n: int, fetch: Fetch, geometry: Geometry) -> tuple[Tensor, Tensor | None]:
        P, S = deaugment_points(views, fetch(None, views), geometry, flip_pairs=self.flip_pairs)
        return merge_points(P, S, self.weights)


def policy_weights(policy: Policy) -> Tensor | None:
    """A policy's view weights as a tensor (``None``: equal weights)."""
    return None if policy.weights is None else torch.tensor(policy.weights, dtype=torch.float32)


def segment_head(policy: Policy, **options: Any) -> SegmentHead:
    """The segmentation head of ``policy`` (its view weights; options as :class:`SegmentHead`)."""
    return SegmentHead(policy_weights(policy), **options)


def keypoints_head(policy: Policy, **options: Any) -> KeypointsHead:
    """The keypoints head of ``policy`` (its view weights; options as :class:`KeypointsHead`)."""
    return KeypointsHead(policy_weights(policy), **options)


class SegmentGraph(GraphHead):
    """Segmentation's export head: each view's ``(N, K, h, w)`` map through a softmax, undone
    by the view's :meth:`~ttakit.views.View.graph_inverse_steps` (exact on any grid: flips and
    quarter turns), then the ``mean`` of :data:`DENSE_MERGES` (every view saw every pixel: the
    weighted mean) with the policy's view weights,
    as :class:`SegmentHead` merges them. ``merge`` is the dense merge's (``mean`` only).

    Raises:
        PolicyError: a view with an input stage or a transform with no exact graph inverse.

    Example:
        >>> head = SegmentGraph(create_policy("hflip*rot90(0,1)"))
        >>> y = torch.randn(1, 3, 4, 4)
        >>> views = create_policy("hflip*rot90(0,1)").views
        >>> torch.allclose(head([v.apply(y, Normalization()) for v in views]), torch.softmax(y, 1))
        True
    """

    task = "segment"
    output_rank = 4
    output = "(N, K, h, w) maps"
    returns = "(N, K, h, w) mean probabilities"
    summary = "flips and quarter turns undone, mean of softmax maps"

    def __init__(self, policy: Policy, merge: str | None = None) -> None:
        super().__init__("mean")
        undo = []
        for v in policy.views:
            try:
                undo.append(v.graph_inverse_steps())
            except PolicyError as e:
                raise PolicyError(f"segmentation export takes flips and quarter turns only (undone exactly in the "
                                  f"graph); view {v.name!r}: {e}") from e
        self.undo = nn.ModuleList(undo)
        self.register_buffer("weights", normalised_weights(policy))

    def forward(self, outs: list[Tensor]) -> Tensor:
        ys = torch.stack([undo(torch.softmax(y.float(), dim=1)) for y, undo in zip(outs, self.undo)])  # (V, N, K, h, w)
        # Every view saw every pixel, so the masked mean is the weighted mean (weights sum to 1),
        # written as one graph op rather than a loop of data-dependent steps.
        return (ys * self.weights.view(-1, 1, 1, 1, 1)).sum(0)
