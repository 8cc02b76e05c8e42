"""The box merges themselves: weighted boxes fusion, hard NMS, soft-NMS and concat, on one image.

One image's detections from ``V`` views (already mapped back to the original image) are
given concatenated: ``boxes (N, 4)`` xyxy in pixels, ``scores (N,)``, ``labels (N,)`` int64
(and, for WBF, ``view_ids (N,)`` in ``[0, V)``). Every merge returns ``(boxes (M, 4), scores
(M,), labels (M,))`` sorted by descending score. All are pure torch (any device) and
class-aware: boxes of different labels never interact. Keyword options and their defaults
are those of the merge's options dataclass (:mod:`ttakit.tasks.boxes.options`), which checks
them.

Pass ``image_size=(H, W)`` to clip boxes to the image as ``ensemble_boxes`` clips to
``[0, 1]``; without it boxes are used as given.
"""

from __future__ import annotations

from typing import Literal

import torch
import torchvision
from torch import Tensor

from .engine import wbf_cluster
from .ops import (
    Merged,
    Weights,
    check_boxes,
    check_view_ids,
    compute_dtype,
    dense_rank,
    empty_result,
    finish,
    prepare,
    round_f32,
    view_weights,
)
from .options import ConfType, NMSOptions, SoftNMSOptions, WBFOptions

__all__ = ["concat", "nms", "soft_nms", "weighted_boxes_fusion"]


def weighted_boxes_fusion(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    view_ids: Tensor,
    n_views: int,
    weights: Weights = None,
    iou_threshold: float = WBFOptions.iou_threshold,
    skip_threshold: float = WBFOptions.skip_threshold,
    conf_type: ConfType = WBFOptions.conf_type,
    allows_overflow: bool = WBFOptions.allows_overflow,
    image_size: tuple[int, int] | None = None,
) -> Merged:
    """Weighted boxes fusion (Solovyev et al.), identical to ``ensemble_boxes`` 1.0.9.

    Within each label, boxes are taken by descending ``score * weight``; each joins the
    existing cluster whose running fused box overlaps it most if that IoU is strictly above
    ``iou_threshold``, else starts a cluster. A fused box is the mean of its members weighted
    by their weighted scores. Its score (``n`` members, ``V`` views, weights ``w``):

    - ``avg``: mean weighted score * min(V, n) / w.sum() (* n / w.sum() if ``allows_overflow``)
    - ``max``: max weighted score / w.max()
    - ``box_and_model_avg``: mean * n / (sum of members' weights) * (sum of the weights of
      the views present) / w.sum()
    - ``absent_model_aware_avg``: mean * n / (sum of members' weights + weights of absent views)

    Like ``ensemble_boxes``, fused boxes of two or more members are rounded to float32 after
    every update, boxes with a score below ``skip_threshold`` or zero area are dropped, and
    corners are swapped where ``x2 < x1``. Ties in score (unordered in ``ensemble_boxes``) are
    taken in input order. A box whose weighted score is 0 adds nothing to a fused box, and a
    cluster of such boxes only is NaN, as in ``ensemble_boxes``: set ``skip_threshold`` above 0
    to drop them.

    Args:
        boxes: ``(N, 4)`` xyxy boxes of all views, in pixels.
        scores: ``(N,)`` confidences.
        labels: ``(N,)`` integer class labels.
        view_ids: ``(N,)`` view of each box, in ``[0, n_views)``.
        n_views: number of views ``V`` (views without boxes count).
        weights: optional ``(V,)`` non-negative view weights (default all 1).
        iou_threshold: a box joins a cluster when its IoU with the fused box is above this.
        skip_threshold: boxes with a lower score are ignored.
        conf_type: how a cluster's score is computed, one of
            :data:`~ttakit.tasks.boxes.options.CONF_TYPES`.
        allows_overflow: with ``avg``, let scores of clusters with more than ``V`` boxes exceed 1.
        image_size: optional ``(H, W)``; boxes are clipped to the image (and computed in
            ``[0, 1]`` coordinates, bit for bit as ``ensemble_boxes`` does).

    Returns:
        ``(boxes (M, 4), scores (M,), labels (M,))`` by descending score.

    Example:
        >>> boxes = torch.tensor([[10., 10., 50., 50.], [12., 10., 52., 50.], [100., 100., 140., 150.]])
        >>> fused, conf, cls = weighted_boxes_fusion(
        ...     boxes, torch.tensor([0.9, 0.6, 0.8]), torch.tensor([0, 0, 0]), torch.tensor([0, 1, 0]), n_views=2)
        >>> fused
        tensor([[ 10.8000,  10.0000,  50.8000,  50.0000],
                [100.0000, 100.0000, 140.0000, 150.0000]])
        >>> conf, cls
        (tensor([0.7500, 0.4000]), tensor([0, 0]))
    """
    n = check_boxes(boxes, scores, labels, view_ids)
    boxes, scores = boxes.detach(), scores.detach()
    opts = WBFOptions(iou_threshold, skip_threshold, conf_type, allows_overflow)  # checks the values
    dev = boxes.device
    dt = compute_dtype(dev)
    w = view_weights(weights, n_views, dt, dev)  # (V,)
    check_view_ids(view_ids, n_views)
    if n == 0:
        return empty_result(boxes, scores)
    view_ids = view_ids.long()
    b, scale, keep = prepare(boxes, image_size, dt)
    keep &= scores.to(dt) >= opts.skip_threshold
    idx = torch.nonzero(keep).squeeze(1)
    if idx.numel() == 0:
        return empty_result(boxes, scores)
    conf = scores.to(dt)[idx] * w[view_ids[idx]]  # (n,) weighted scores
    lab = dense_rank(labels[idx])
    # processing order: by label, then by descending weighted score (ties: input order)
    order = torch.argsort(conf, descending=True, stable=True)
    order = order[torch.argsort(lab[order], stable=True)]
    idx, conf, lab = idx[order], conf[order], lab[order]
    b, view, wb = b[idx], view_ids[idx], w[view_ids[idx]]  # (n, 4), (n,), (n,)

    out = wbf_cluster(b, conf, lab, opts.iou_threshold)
    cluster_of, fused, csum = out["cluster"], out["fused"], out["csum"]
    n = idx.numel()
    cnt = torch.bincount(cluster_of, minlength=n)
    seeds = torch.nonzero(cnt).squeeze(1)  # (K,) creation order within each label
    k_n = cnt[seeds].to(dt)
    multi = k_n > 1  # single-box clusters keep their float64 values; others were stored as float32
    csum = csum[seeds]
    if opts.conf_type == "max":
        cmax = torch.full((n,), -1.0, dtype=dt, device=dev).scatter_reduce(0, cluster_of, conf, "amax")[seeds]
        score = torch.where(multi, round_f32(cmax), cmax) / w.max()
    else:
        mean = torch.where(multi, round_f32(csum / k_n), csum)  # (K,)
        wsum = torch.zeros(n, dtype=dt, device=dev).index_add_(0, cluster_of, wb)[seeds]
        wsum = torch.where(multi, round_f32(wsum), wsum)  # sum of the members' view weights
        present = torch.zeros(n, n_views, dtype=torch.bool, device=dev)
        present[cluster_of, view] = True
        present = present[seeds]  # (K, V) views with a box in the cluster
        if opts.conf_type == "box_and_model_avg":
            score = mean * k_n / wsum * (present.to(dt) * w).sum(1) / w.sum()
        elif opts.conf_type == "absent_model_aware_avg":
            score = mean * k_n / (wsum + ((~present).to(dt) * w).sum(1))
        elif opts.allows_overflow:
            score = mean * k_n / w.sum()
        else:
            score = mean * torch.clamp(k_n, max=n_views) / w.sum()
    out_boxes = fused[seeds] * scale  # (K, 4) back to pixels
    return finish(out_boxes, score, labels[idx[seeds]], boxes, scores)


def nms(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    iou_threshold: float = NMSOptions.iou_threshold,
    image_size: tuple[int, int] | None = None,
) -> Merged:
    """Class-aware hard NMS: a box is dropped when a higher-scoring box of its label overlaps
    it with IoU above ``iou_threshold`` (``torchvision.ops.batched_nms``).

    Zero-area boxes are dropped and, with ``image_size=(H, W)``, boxes are clipped first, as
    in ``ensemble_boxes.nms``.

    Example:
        >>> boxes = torch.tensor([[0., 0., 10., 10.], [1., 0., 11., 10.], [1., 0., 11., 10.]])
        >>> nms(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 0, 1]))
        (tensor([[ 0.,  0., 10., 10.],
                [ 1.,  0., 11., 10.]]), tensor([0.9000, 0.7000]), tensor([0, 1]))
    """
    check_boxes(boxes, scores, labels)
    iou_threshold = NMSOptions(iou_threshold).iou_threshold  # checked
    boxes, scores = boxes.detach(), scores.detach()
    b, scale, keep = prepare(boxes, image_size, compute_dtype(boxes.device))
    idx = torch.nonzero(keep).squeeze(1)
    s = scores.to(b.dtype)[idx]
    kept = idx[torchvision.ops.batched_nms(b[idx], s, labels[idx], iou_threshold)]
    return finish(b[kept] * scale, scores.to(b.dtype)[kept], labels[kept], boxes, scores)


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    iou_threshold: float = SoftNMSOptions.iou_threshold,
    sigma: float = SoftNMSOptions.sigma,
    method: Literal["linear", "gaussian"] = SoftNMSOptions.method,
    score_threshold: float = SoftNMSOptions.score_threshold,
    rescore: bool = SoftNMSOptions.rescore,
    image_size: tuple[int, int] | None = None,
) -> Merged:
    """Class-aware soft-NMS (Bodla et al.), with ``ensemble_boxes.soft_nms``'s semantics.

    Within each label, the box with the highest current score is taken and every box not yet
    taken is decayed by its IoU with it: ``linear``: ``score *= 1 - iou`` where
    ``iou > iou_threshold``; ``gaussian``: ``score *= exp(-iou ** 2 / sigma)``. Boxes whose
    final score is above ``score_threshold`` are kept. Every box takes its turn, even one
    already decayed below the threshold (as in ``ensemble_boxes``).

    Args:
        boxes: ``(N, 4)`` xyxy boxes.
        scores: ``(N,)`` confidences.
        labels: ``(N,)`` integer class labels.
        iou_threshold: linear decay applies above this IoU.
        sigma: width of the Gaussian decay.
        method: ``"linear"`` or ``"gaussian"``.
        score_threshold: boxes whose decayed score is not above this are dropped.
        rescore: return the decayed scores (default); ``False`` returns the kept boxes'
            original scores, which is what ``ensemble_boxes.soft_nms`` returns.
        image_size: optional ``(H, W)`` to clip boxes to; zero-area boxes are always dropped.

    Returns:
        ``(boxes (M, 4), scores (M,), labels (M,))`` by descending score.

    Example:
        >>> boxes = torch.tensor([[0., 0., 10., 10.], [0., 0., 10., 8.], [20., 20., 30., 30.]])
        >>> soft_nms(boxes, torch.tensor([0.9, 0.8, 0.3]), torch.tensor([0, 0, 0]))
        (tensor([[ 0.,  0., 10., 10.],
                [20., 20., 30., 30.],
                [ 0.,  0., 10.,  8.]]), tensor([0.9000, 0.3000, 0.1600]), tensor([0, 0, 0]))
    """
    check_boxes(boxes, scores, labels)
    opts = SoftNMSOptions(iou_threshold, sigma, method, score_threshold, rescore)  # checks the values
    boxes, scores = boxes.detach(), scores.detach()
    dev = boxes.device
    b, scale, keep = prepare(boxes, image_size, compute_dtype(dev))
    idx = torch.nonzero(keep).squeeze(1)
    if idx.numel() == 0:
        return empty_result(boxes, scores)
    dt = b.dtype
    lab = dense_rank(labels[idx])
    idx = idx[torch.argsort(lab, stable=True)]  # by label, input order within a label
    lab = dense_rank(labels[idx])
    counts = torch.bincount(lab)
    by_size = torch.argsort(counts, descending=True, stable=True)
    row_of = torch.empty_like(by_size)
    row_of[by_size] = torch.arange(by_size.numel(), device=dev)
    col = torch.arange(idx.numel(), device=dev) - (torch.cumsum(counts, 0) - counts)[lab]
    sizes = counts[by_size]
    n_rows, width = sizes.numel(), int(sizes[0])
    # One row per label, biggest first: score, box, area, original index (exact in float).
    table = torch.zeros(n_rows, width, 7, dtype=dt, device=dev)
    bi = b[idx]
    table[row_of[lab], col] = torch.cat(
        [scores.to(dt)[idx, None], bi, ((bi[:, 2] - bi[:, 0]) * (bi[:, 3] - bi[:, 1]))[:, None],
         idx.to(dt)[:, None]], 1)
    valid = torch.arange(width, device=dev) < sizes[:, None]  # (L, W)
    active = torch.searchsorted(-sizes, -torch.arange(width, device=dev), side="left").tolist()
    for i in range(width):
        a = active[i]
        rows = torch.arange(a, device=dev)
        t = table[:a]  # (A, W, 7) view
        if i + 1 < width:
            # Bring the best remaining box to position i, swapping only for a strictly higher
            # score: ensemble_boxes' exact order, ties included.
            rest = t[:, i + 1:, 0].masked_fill(~valid[:a, i + 1:], -torch.inf)
            arg = rest.argmax(1, keepdim=True)  # (A, 1) first maximum, like numpy.argmax
            swap = t[:, i, :1] < rest.gather(1, arg)  # (A, 1)
            m = arg.view(-1) + i + 1
            cur, other = t[rows, i], t[rows, m]  # (A, 7)
            t[rows, i] = torch.where(swap, other, cur)
            t[rows, m] = torch.where(swap, cur, other)
            pick = t[:, i]  # (A, 7)
            rest_t = t[:, i + 1:]  # (A, R, 7)
            p = pick[:, None]  # (A, 1, 7)
            w = (torch.minimum(p[..., 3], rest_t[..., 3]) - torch.maximum(p[..., 1], rest_t[..., 1])).clamp_min(0)
            h = (torch.minimum(p[..., 4], rest_t[..., 4]) - torch.maximum(p[..., 2], rest_t[..., 2])).clamp_min(0)
            inter = w * h
            iou = inter / (p[..., 5] + rest_t[..., 5] - inter)  # (A, R)
            if opts.method == "linear":
                decay = torch.where(iou > opts.iou_threshold, 1.0 - iou, torch.ones_like(iou))
            else:
                # expm1 + 1, not exp: same value to an ulp, and on CPU torch.exp may start a
                # thread team even for tiny tensors, which costs milliseconds on a busy machine
                decay = torch.expm1(-(iou * iou) / opts.sigma) + 1.0
            rest_t[..., 0] = decay * rest_t[..., 0]
    final = table[..., 0]
    kept = valid & (final > opts.score_threshold)  # (L, W)
    rows_kept = table[kept]  # (M, 7)
    orig = rows_kept[:, 6].long()
    out_scores = rows_kept[:, 0] if opts.rescore else scores.to(dt)[orig]
    return finish(rows_kept[:, 1:5] * scale, out_scores, labels[orig], boxes, scores)


def concat(boxes: Tensor, scores: Tensor, labels: Tensor) -> Merged:
    """Keep every box of every view, sorted by descending score.

    Example:
        >>> concat(torch.tensor([[0., 0., 1., 1.], [0., 0., 2., 2.]]), torch.tensor([0.2, 0.7]), torch.tensor([3, 3]))
        (tensor([[0., 0., 2., 2.],
                [0., 0., 1., 1.]]), tensor([0.7000, 0.2000]), tensor([3, 3]))
    """
    check_boxes(boxes, scores, labels)
    return finish(boxes.detach(), scores.detach(), labels, boxes, scores)
