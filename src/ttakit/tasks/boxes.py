"""Merge object-detection boxes from several TTA views of one image.

One image's detections from ``V`` views (already mapped back to the original image) are
given concatenated: ``boxes (N, 4)`` xyxy in pixels, ``scores (N,)``, ``labels (N,)`` int64
and ``view_ids (N,)`` in ``[0, V)``. Every merge returns ``(boxes (M, 4), scores (M,),
labels (M,))`` sorted by descending score. All functions are pure torch (any device) and
class-aware: boxes of different labels never interact.

=============  =========================================================================
``wbf``        :func:`weighted_boxes_fusion`, the result of ``ensemble_boxes`` 1.0.9
``nms``        :func:`nms`, class-aware hard NMS (``torchvision.ops.batched_nms``)
``soft_nms``   :func:`soft_nms`, class-aware soft-NMS (linear or Gaussian decay)
``concat``     :func:`concat`, every box kept
=============  =========================================================================

Pass ``image_size=(H, W)`` to clip boxes to the image as ``ensemble_boxes`` clips to
``[0, 1]``; without it boxes are used as given. :func:`get_box_merge` resolves a name to a
function with the common signature ``(boxes, scores, labels, view_ids, n_views, weights,
**options)``; there, per-view weights scale the scores of ``nms``, ``soft_nms`` and
``concat`` by ``w[view] / w.sum()``, as ``ensemble_boxes`` does.

How WBF is batched: ``ensemble_boxes`` clusters the boxes of a label one by one, in score
order, each against the running fused boxes, so the result depends on that order. Here the
boxes are split into groups (one per NMS seed) that are clustered side by side, the ``k``-th
box of every group in one step. Afterwards every box is checked, with the same arithmetic,
against the fused boxes of the other groups as they were at its turn; groups where a box
would have joined another group's cluster are merged and clustered again. When no such box
is left, the result is, by induction over the order, exactly ``ensemble_boxes``'.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torchvision
from torch import Tensor

from ..errors import ConfigError, PolicyError, check_shape

__all__ = [
    "BOX_MERGES",
    "CONF_TYPES",
    "BoxMergeFn",
    "concat",
    "get_box_merge",
    "list_box_merges",
    "nms",
    "register_box_merge",
    "soft_nms",
    "weighted_boxes_fusion",
]

Merged = tuple[Tensor, Tensor, Tensor]  # boxes (M, 4), scores (M,), labels (M,)
# (boxes, scores, labels, view_ids, n_views, weights, **options) -> (boxes, scores, labels)
BoxMergeFn = Callable[..., Merged]
ConfType = Literal["avg", "max", "box_and_model_avg", "absent_model_aware_avg"]
CONF_TYPES: tuple[str, ...] = ("avg", "max", "box_and_model_avg", "absent_model_aware_avg")


# --------------------------------------------------------------------------- helpers
def _compute_dtype(device: torch.device) -> torch.dtype:
    # float64 wherever it exists, so that decisions match ensemble_boxes (numpy float64).
    return torch.float32 if device.type == "mps" else torch.float64


def _f32(x: Tensor) -> Tensor:
    """Round to float32 and back: ensemble_boxes keeps fused boxes in a float32 array."""
    return x.to(torch.float32).to(x.dtype)


def _check(boxes: Tensor, scores: Tensor, labels: Tensor, view_ids: Tensor | None = None) -> int:
    check_shape("boxes", boxes.shape, "(N, 4)")
    n = boxes.shape[0]
    check_shape("scores", scores.shape, f"({n})")
    check_shape("labels", labels.shape, f"({n})")
    if view_ids is not None:
        check_shape("view_ids", view_ids.shape, f"({n})")
    return n


def _check_threshold(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be in [0, 1], got {value}")


def _view_weights(weights: Tensor | Sequence[float] | None, n_views: int, dtype: torch.dtype,
                  device: torch.device) -> Tensor:
    if n_views < 1:
        raise ConfigError(f"n_views must be >= 1, got {n_views}")
    if weights is None:
        return torch.ones(n_views, dtype=dtype, device=device)
    w = torch.as_tensor(weights, dtype=dtype, device=device)
    check_shape("weights", w.shape, f"({n_views})")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or not float(w.sum()) > 0:
        raise ConfigError(f"weights must be finite, non-negative and not all zero, got {w.tolist()}")
    return w


def _check_view_ids(view_ids: Tensor, n_views: int) -> None:
    if view_ids.numel() and (int(view_ids.min()) < 0 or int(view_ids.max()) >= n_views):
        raise ConfigError(f"view_ids must be in [0, {n_views})")


def _prepare(boxes: Tensor, image_size: tuple[int, int] | None, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """Order each box's corners, clip to the image when its size is known, find zero areas.

    Returns the boxes in ``dtype`` (divided by the image size when given, as ensemble_boxes
    expects [0, 1] coordinates), the factor that maps them back, and the non-zero-area mask.
    """
    b = boxes.to(dtype)
    b = torch.stack([torch.minimum(b[:, 0], b[:, 2]), torch.minimum(b[:, 1], b[:, 3]),
                     torch.maximum(b[:, 0], b[:, 2]), torch.maximum(b[:, 1], b[:, 3])], 1)  # (N, 4)
    if image_size is not None:
        h, w = image_size
        scale = torch.tensor([w, h, w, h], dtype=dtype, device=b.device)
        b = (b / scale).clamp(0.0, 1.0)
    else:
        scale = torch.ones(4, dtype=dtype, device=b.device)
    nonzero = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) != 0  # (N,)
    return b, scale, nonzero


def _empty(boxes: Tensor, scores: Tensor) -> Merged:
    return (boxes.new_zeros((0, 4), dtype=_out_dtype(boxes)), scores.new_zeros((0,), dtype=_out_dtype(scores)),
            torch.zeros(0, dtype=torch.int64, device=boxes.device))


def _out_dtype(t: Tensor) -> torch.dtype:
    return t.dtype if t.is_floating_point() else torch.float32


def _finish(boxes: Tensor, scores: Tensor, labels: Tensor, like_boxes: Tensor, like_scores: Tensor) -> Merged:
    order = torch.argsort(scores, descending=True, stable=True)
    return (boxes[order].to(_out_dtype(like_boxes)), scores[order].to(_out_dtype(like_scores)),
            labels[order].to(torch.int64))


def _iou_pairs(a: Tensor, b: Tensor) -> Tensor:
    """IoU of matching rows ``a (..., 4)`` and ``b (..., 4)``, in ensemble_boxes' operation order."""
    w = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp_min(0)
    h = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp_min(0)
    inter = w * h
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return inter / (area_a + area_b - inter)


def _dense_rank(labels: Tensor) -> Tensor:
    return torch.unique(labels, return_inverse=True)[1]


def _center_pairs(boxes: Tensor, lab: Tensor, rects: Tensor, rlab: Tensor, margin: Tensor) -> tuple[Tensor, Tensor]:
    """All pairs (box q, rect r) of the same label where q's centre lies in r grown by ``margin``.

    ``margin (2,)`` is added on x and y. Box centres are bucketed into horizontal bands about
    one rect high and sorted by (label, band, x); each rect binary-searches its x-range in
    every band it covers, so the work grows with the number of pairs, not boxes x rects.
    """
    dev = boxes.device
    empty = torch.zeros(0, dtype=torch.int64, device=dev)
    n = boxes.shape[0]
    if n == 0 or rects.shape[0] == 0:
        return empty, empty
    cx = (boxes[:, 0] + boxes[:, 2]) * 0.5  # (N,)
    cy = (boxes[:, 1] + boxes[:, 3]) * 0.5
    lo_x, hi_x = rects[:, 0] - margin[0], rects[:, 2] + margin[0]  # (R,)
    lo_y, hi_y = rects[:, 1] - margin[1], rects[:, 3] + margin[1]
    # x as exact integer ranks, so (label, band, x) packs into one int64 key without rounding
    cx_sorted, by_x = torch.sort(cx)
    rank = torch.empty_like(by_x)
    rank[by_x] = torch.arange(n, device=dev)
    x_lo = torch.searchsorted(cx_sorted, lo_x, side="left")  # (R,) first rank inside
    x_hi = torch.searchsorted(cx_sorted, hi_x, side="right")  # (R,) first rank past
    y0, span_y = cy.min(), cy.max() - cy.min()
    band_h = torch.maximum((hi_y - lo_y).median(), span_y * 1e-6 + 1e-12)
    n_bands = int(span_y / band_h) + 1

    def band(y: Tensor) -> Tensor:  # monotone in y, so a centre inside a rect is in one of its bands
        return ((y - y0) / band_h).floor().clamp(0, n_bands - 1).long()

    key = (lab * n_bands + band(cy)) * n + rank  # (N,)
    by_key = torch.argsort(key)
    key = key[by_key]
    b_lo, b_hi = band(lo_y), band(hi_y)  # (R,)
    per_rect = b_hi - b_lo + 1
    rr = torch.repeat_interleave(torch.arange(rects.shape[0], device=dev), per_rect)  # (RB,) one per (rect, band)
    bands = b_lo[rr] + torch.arange(rr.numel(), device=dev) - (torch.cumsum(per_rect, 0) - per_rect)[rr]
    base = (rlab[rr] * n_bands + bands) * n
    lo = torch.searchsorted(key, base + x_lo[rr], side="left")  # (RB,)
    counts = torch.searchsorted(key, base + x_hi[rr], side="left") - lo
    total = int(counts.sum())
    if total == 0:
        return empty, empty
    r = torch.repeat_interleave(rr, counts, output_size=total)  # (P,)
    shift = torch.repeat_interleave(lo - (torch.cumsum(counts, 0) - counts), counts, output_size=total)
    q = by_key[torch.arange(total, device=dev) + shift]  # (P,)
    ok = (cy[q] >= lo_y[r]) & (cy[q] <= hi_y[r])
    return q[ok], r[ok]


def _components(n: int, a: Tensor, b: Tensor) -> Tensor:
    """Connected components of an undirected graph on ``n`` nodes: smallest node id per node."""
    comp = torch.arange(n, device=a.device)
    while True:
        new = comp.clone()
        new.scatter_reduce_(0, a, comp[b], reduce="amin")
        new.scatter_reduce_(0, b, comp[a], reduce="amin")
        new = new[new]  # pointer jumping: halves the remaining chain lengths
        if torch.equal(new, comp):
            return comp
        comp = new


# --------------------------------------------------------------------------- WBF engine
def _seed_groups(b: Tensor, conf: Tensor, lab: Tensor, thr: float, margin: Tensor) -> Tensor:
    """A first guess at which boxes can interact: each box joins its best-overlapping NMS seed.

    Only a guess: :func:`_wbf_cluster` checks it and merges groups until it is safe.
    """
    n = b.shape[0]
    group = torch.arange(n, device=b.device)
    seeds = torchvision.ops.batched_nms(b, conf, lab, thr)  # (S,)
    sb, sl = b[seeds], lab[seeds]
    q, s = _center_pairs(b, lab, sb, sl, margin)
    if q.numel():
        iou = _iou_pairs(b[q], sb[s])  # (P,)
        best = torch.full((n,), -1.0, dtype=b.dtype, device=b.device).scatter_reduce(0, q, iou, reduce="amax")
        win = iou == best[q]
        group[q[win]] = seeds[s[win]]
    return group


def _cluster_groups(b: Tensor, conf: Tensor, thr: float, idx: Tensor, group: Tensor,
                    out: dict[str, Tensor]) -> None:
    """Run ensemble_boxes' sequential clustering on the boxes ``idx``, all groups at once.

    Step ``k`` takes the ``k``-th box of every group still running and compares it with that
    group's clusters. For the boxes ``idx``, writes into ``out``: ``cluster`` (position of the
    cluster's first box), ``traj`` (the fused box and its area right after the box's update);
    at each cluster's first position: ``fused``, ``csum`` (sum of weighted scores) and
    ``lo``/``hi``, the corner-wise range of every fused box the cluster has been through.
    """
    dev, dt = b.device, b.dtype
    _, inv, counts = torch.unique(group[idx], return_inverse=True, return_counts=True)
    by_size = torch.argsort(counts, descending=True, stable=True)
    rank = torch.empty_like(by_size)
    rank[by_size] = torch.arange(by_size.numel(), device=dev)
    g = rank[inv]  # (n,) group of each box, 0 = biggest
    by_group = torch.argsort(g, stable=True)
    layout, g = idx[by_group], g[by_group]  # (n,) group by group, each in processing order
    sizes = counts[by_size]  # (G,) descending
    start = torch.cumsum(sizes, 0) - sizes  # (G,) first layout position of each group
    n, n_groups, n_steps = layout.numel(), sizes.numel(), int(sizes[0])
    # Step-major order: step k holds the k-th box of groups 0..active[k]-1 (a prefix, as
    # groups are sorted by size), contiguous, so each step reads plain slices.
    step_order = torch.argsort(torch.arange(n, device=dev) - start[g], stable=True)  # (n,) layout positions
    active = torch.searchsorted(-sizes, -torch.arange(n_steps, device=dev), side="left").tolist()

    bl = b[layout][step_order]  # (n, 4) step-major
    cl = conf[layout][step_order, None]  # (n, 1)
    # This step's inputs, pre-split so the loop does no slicing: corners, areas, weighted terms.
    b_lo, b_hi = (t.split(active) for t in bl.view(n, 1, 2, 2).unbind(2))  # (A, 1, 2) each
    b_area = (bl[:, 2:] - bl[:, :2]).prod(1, keepdim=True).split(active)  # (A, 1)
    b_box, t_box, t_conf = bl.split(active), (cl * bl).split(active), cl.split(active)

    # Per cluster (row g * cap + cluster number): fused box, its area, sum of score * box and
    # sum of scores. Clusters not created yet hold a zero box, whose IoU with any box is 0:
    # never a match above the threshold, so every step can compare with all cap columns.
    cap, rows_n = 8, n_groups
    fused, area = torch.zeros(rows_n * cap, 4, dtype=dt, device=dev), torch.zeros(rows_n * cap, 1, dtype=dt, device=dev)
    acc, accs = torch.zeros_like(fused), torch.zeros_like(area)
    ncl = torch.zeros(n_groups, 1, dtype=torch.int64, device=dev)  # clusters per group
    views: dict[int, tuple[Tensor, ...]] = {}
    locals_, boxes_out, areas_out, sums_out = [], [], [], []
    bound = 0  # >= clusters of any running group, known without reading the device
    for k in range(n_steps):
        a = active[k]
        if bound >= cap:  # a group may need cluster number cap: read the true count
            bound = int(ncl[:a].max())
            if 2 * bound >= cap:  # grow (running groups only), leaving room for as many again
                new_cap = 2 * cap
                grown = [torch.zeros(a, new_cap, t.shape[1], dtype=dt, device=dev) for t in (fused, area, acc, accs)]
                for g_new, old in zip(grown, (fused, area, acc, accs)):
                    g_new[:, :cap] = old.view(rows_n, cap, -1)[:a]
                fused, area, acc, accs = (t.view(a * new_cap, -1) for t in grown)
                cap, rows_n = new_cap, a
                views.clear()
        if a not in views:  # views of the first a groups, made once per distinct a
            f3 = fused.view(rows_n, cap, 4)[:a]
            views[a] = (ncl[:a], f3[..., :2], f3[..., 2:], area.view(rows_n, cap)[:a],
                        torch.arange(a, device=dev)[:, None] * cap)
        nc, f_lo, f_hi, f_area, base = views[a]
        wh = (torch.minimum(f_hi, b_hi[k]) - torch.maximum(f_lo, b_lo[k])).clamp_min_(0)
        inter = wh.prod(2)  # (A, cap) w * h
        iou = inter / (f_area + b_area[k] - inter)  # same operations as ensemble_boxes
        arg = iou.argmax(1, keepdim=True)  # (A, 1) first maximum, like numpy.argmax
        new = iou.gather(1, arg) <= thr  # joins only when strictly greater, like ensemble_boxes
        local = torch.where(new, nc, arg)  # (A, 1) cluster number in the group
        row = (base + local).view(-1)  # (A,)
        # A new cluster still holds zeros, so one formula serves joins and new clusters; the
        # box sum is rounded to float32 after every addition, as in get_weighted_box.
        s_box = _f32(acc.index_select(0, row).add_(t_box[k]))  # (A, 4)
        acc.index_copy_(0, row, s_box)
        s_conf = accs.index_select(0, row).add_(t_conf[k])  # (A, 1)
        accs.index_copy_(0, row, s_conf)
        # A cluster of one box keeps that box exactly; larger ones are rounded to float32.
        fb = torch.where(new, b_box[k], _f32(s_box / s_conf))  # (A, 4)
        fa = (fb[:, 2:] - fb[:, :2]).prod(1, keepdim=True)  # (A, 1) (x2 - x1) * (y2 - y1)
        fused.index_copy_(0, row, fb)
        area.index_copy_(0, row, fa)
        nc += new
        bound += 1
        locals_.append(local)
        boxes_out.append(fb)
        areas_out.append(fa)
        sums_out.append(s_conf)

    # Back to layout order; a cluster is named by the global position of its first box.
    slot = torch.empty(n, dtype=torch.int64, device=dev)
    slot[step_order] = torch.cat(locals_).view(-1)
    slot += start[g]  # (n,) unique per (group, cluster number)
    traj = torch.empty(n, 5, dtype=dt, device=dev)
    traj[step_order] = torch.cat([torch.cat(boxes_out), torch.cat(areas_out)], 1)
    csum = torch.empty(n, dtype=dt, device=dev)
    csum[step_order] = torch.cat(sums_out).view(-1)
    pos = torch.arange(n, device=dev)
    first = torch.full((n,), n, dtype=torch.int64, device=dev).scatter_reduce_(0, slot, pos, reduce="amin")
    last = torch.full((n,), -1, dtype=torch.int64, device=dev).scatter_reduce_(0, slot, pos, reduce="amax")
    used = first < n
    cluster = layout[first[slot]]  # (n,)
    seed, final = layout[first[used]], last[used]
    out["cluster"][layout] = cluster
    out["traj"][layout] = traj
    out["fused"][seed] = traj[final, :4]
    out["csum"][seed] = csum[final]
    out["lo"][seed] = traj[final, :4]
    out["hi"][seed] = traj[final, :4]
    out["lo"].scatter_reduce_(0, cluster[:, None].expand(-1, 4), traj[:, :4], reduce="amin")
    out["hi"].scatter_reduce_(0, cluster[:, None].expand(-1, 4), traj[:, :4], reduce="amax")


def _violations(b: Tensor, lab: Tensor, group: Tensor, out: dict[str, Tensor], thr: float,
                margin: Tensor) -> tuple[Tensor, Tensor]:
    """Pairs of groups that interacted; empty when clustering them apart was exact.

    For every box and every cluster of another group of the same label that existed when the
    box was taken, recompute the IoU of the box with that cluster's fused box at that moment
    (the same arithmetic as the clustering). If none exceeds the threshold, no box would have
    joined another group's cluster, so by induction over the processing order, clustering the
    groups apart gave exactly what clustering them together gives.
    """
    n, dev = b.shape[0], b.device
    cluster, traj = out["cluster"], out["traj"]
    seeds = torch.nonzero(torch.bincount(cluster, minlength=n)).squeeze(1)  # (K,)
    outer = torch.cat([out["lo"][seeds, :2], out["hi"][seeds, 2:]], 1)  # (K, 4) holds every fused box
    q, r = _center_pairs(b, lab, outer, lab[seeds], margin)
    c = seeds[r]
    keep = (c < q) & (group[q] != group[c])
    q, c = q[keep], c[keep]
    if q.numel() == 0:
        return q, c
    # the cluster's last member before q holds its fused box at q's turn
    key = cluster * n + torch.arange(n, device=dev)
    by_key = torch.argsort(key)
    last = by_key[torch.searchsorted(key[by_key], c * n + q) - 1]  # (P,)
    f, bq = traj[last], b[q]  # (P, 5), (P, 4)
    w = (torch.minimum(f[:, 2], bq[:, 2]) - torch.maximum(f[:, 0], bq[:, 0])).clamp_min_(0)
    h = (torch.minimum(f[:, 3], bq[:, 3]) - torch.maximum(f[:, 1], bq[:, 1])).clamp_min_(0)
    inter = w.mul_(h)
    iou = inter / (f[:, 4] + (bq[:, 2] - bq[:, 0]) * (bq[:, 3] - bq[:, 1]) - inter)
    # slack: merging more is always safe; NaN (a cluster of zero scores) joins, as in numpy
    bad = ~(iou <= thr - (1e-9 if b.dtype == torch.float64 else 1e-5))
    return group[q[bad]], group[c[bad]]


def _new_out(b: Tensor, conf: Tensor) -> dict[str, Tensor]:
    n = b.shape[0]
    return {"cluster": torch.empty(n, dtype=torch.int64, device=b.device), "traj": b.new_empty(n, 5),
            "fused": torch.empty_like(b), "csum": torch.empty_like(conf), "lo": torch.empty_like(b),
            "hi": torch.empty_like(b)}


def _merge(group: Tensor, ga: Tensor, gb: Tensor) -> tuple[Tensor, Tensor]:
    """Merge the groups linked by (ga, gb); also returns which boxes' groups changed."""
    n = group.numel()
    comp = _components(n, ga, gb)
    merged = torch.zeros(n, dtype=torch.bool, device=group.device)
    merged[comp[ga]] = True
    group = comp[group]
    return group, merged[group]


def _wbf_cluster(b: Tensor, conf: Tensor, lab: Tensor, thr: float) -> dict[str, Tensor]:
    """Cluster boxes sorted by (label, descending weighted score) exactly as ensemble_boxes does.

    The clustering is sequential within a label, but boxes far apart never meet. Boxes are
    split into groups (one per NMS seed) and groups are clustered in parallel; groups that
    interacted are merged and clustered again until none did.
    """
    n, dev = b.shape[0], b.device
    if thr >= 0.5:  # IoU > 1/2 needs the box's centre inside the other box (+ rounding slack)
        margin = b.abs().max().expand(2) * (8 * torch.finfo(b.dtype).eps)
    else:
        margin = torch.stack([(b[:, 2] - b[:, 0]).max(), (b[:, 3] - b[:, 1]).max()]) * 0.5
    group = _seed_groups(b, conf, lab, thr, margin)
    pos = torch.arange(n, device=dev)
    out = _new_out(b, conf)
    todo = pos
    while True:
        _cluster_groups(b, conf, thr, todo, group, out)
        ga, gb = _violations(b, lab, group, out, thr, margin)
        if ga.numel() == 0:
            return out
        group, changed = _merge(group, ga, gb)
        todo = torch.nonzero(changed).squeeze(1)  # ascending: still in processing order


# --------------------------------------------------------------------------- public merges
def weighted_boxes_fusion(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    view_ids: Tensor,
    n_views: int,
    weights: Tensor | Sequence[float] | None = None,
    iou_threshold: float = 0.55,
    skip_threshold: float = 0.0,
    conf_type: ConfType = "avg",
    allows_overflow: bool = False,
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
        conf_type: how a cluster's score is computed, one of :data:`CONF_TYPES`.
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
    n = _check(boxes, scores, labels, view_ids)
    boxes, scores = boxes.detach(), scores.detach()
    if conf_type not in CONF_TYPES:
        raise PolicyError(f"unknown conf_type {conf_type!r}; choose one of {', '.join(CONF_TYPES)}")
    _check_threshold("iou_threshold", iou_threshold)
    dev = boxes.device
    dt = _compute_dtype(dev)
    w = _view_weights(weights, n_views, dt, dev)  # (V,)
    _check_view_ids(view_ids, n_views)
    if n == 0:
        return _empty(boxes, scores)
    view_ids = view_ids.long()
    b, scale, keep = _prepare(boxes, image_size, dt)
    keep &= scores.to(dt) >= skip_threshold
    idx = torch.nonzero(keep).squeeze(1)
    if idx.numel() == 0:
        return _empty(boxes, scores)
    conf = scores.to(dt)[idx] * w[view_ids[idx]]  # (n,) weighted scores
    lab = _dense_rank(labels[idx])
    # processing order: by label, then by descending weighted score (ties: input order)
    order = torch.argsort(conf, descending=True, stable=True)
    order = order[torch.argsort(lab[order], stable=True)]
    idx, conf, lab = idx[order], conf[order], lab[order]
    b, view, wb = b[idx], view_ids[idx], w[view_ids[idx]]  # (n, 4), (n,), (n,)

    out = _wbf_cluster(b, conf, lab, iou_threshold)
    cluster_of, fused, csum = out["cluster"], out["fused"], out["csum"]
    n = idx.numel()
    cnt = torch.bincount(cluster_of, minlength=n)
    seeds = torch.nonzero(cnt).squeeze(1)  # (K,) creation order within each label
    k_n = cnt[seeds].to(dt)
    multi = k_n > 1  # single-box clusters keep their float64 values; others were stored as float32
    csum = csum[seeds]
    if conf_type == "max":
        cmax = torch.full((n,), -1.0, dtype=dt, device=dev).scatter_reduce(0, cluster_of, conf, "amax")[seeds]
        score = torch.where(multi, _f32(cmax), cmax) / w.max()
    else:
        mean = torch.where(multi, _f32(csum / k_n), csum)  # (K,)
        wsum = torch.zeros(n, dtype=dt, device=dev).index_add_(0, cluster_of, wb)[seeds]
        wsum = torch.where(multi, _f32(wsum), wsum)  # sum of the members' view weights
        present = torch.zeros(n, n_views, dtype=torch.bool, device=dev)
        present[cluster_of, view] = True
        present = present[seeds]  # (K, V) views with a box in the cluster
        if conf_type == "box_and_model_avg":
            score = mean * k_n / wsum * (present.to(dt) * w).sum(1) / w.sum()
        elif conf_type == "absent_model_aware_avg":
            score = mean * k_n / (wsum + ((~present).to(dt) * w).sum(1))
        elif allows_overflow:
            score = mean * k_n / w.sum()
        else:
            score = mean * torch.clamp(k_n, max=n_views) / w.sum()
    out_boxes = fused[seeds] * scale  # (K, 4) back to pixels
    return _finish(out_boxes, score, labels[idx[seeds]], boxes, scores)


def nms(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    iou_threshold: float = 0.5,
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
    _check(boxes, scores, labels)
    _check_threshold("iou_threshold", iou_threshold)
    boxes, scores = boxes.detach(), scores.detach()
    b, scale, keep = _prepare(boxes, image_size, _compute_dtype(boxes.device))
    idx = torch.nonzero(keep).squeeze(1)
    s = scores.to(b.dtype)[idx]
    kept = idx[torchvision.ops.batched_nms(b[idx], s, labels[idx], iou_threshold)]
    return _finish(b[kept] * scale, scores.to(b.dtype)[kept], labels[kept], boxes, scores)


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    iou_threshold: float = 0.3,
    sigma: float = 0.5,
    method: Literal["linear", "gaussian"] = "linear",
    score_threshold: float = 0.001,
    rescore: bool = True,
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
    _check(boxes, scores, labels)
    if method not in ("linear", "gaussian"):
        raise PolicyError(f"unknown soft-NMS method {method!r}; choose one of linear, gaussian")
    _check_threshold("iou_threshold", iou_threshold)
    if not sigma > 0:
        raise ConfigError(f"sigma must be > 0, got {sigma}")
    boxes, scores = boxes.detach(), scores.detach()
    dev = boxes.device
    b, scale, keep = _prepare(boxes, image_size, _compute_dtype(dev))
    idx = torch.nonzero(keep).squeeze(1)
    if idx.numel() == 0:
        return _empty(boxes, scores)
    dt = b.dtype
    lab = _dense_rank(labels[idx])
    idx = idx[torch.argsort(lab, stable=True)]  # by label, input order within a label
    lab = _dense_rank(labels[idx])
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
            if method == "linear":
                decay = torch.where(iou > iou_threshold, 1.0 - iou, torch.ones_like(iou))
            else:
                # expm1 + 1, not exp: same value to an ulp, and on CPU torch.exp may start a
                # thread team even for tiny tensors, which costs milliseconds on a busy machine
                decay = torch.expm1(-(iou * iou) / sigma) + 1.0
            rest_t[..., 0] = decay * rest_t[..., 0]
    final = table[..., 0]
    kept = valid & (final > score_threshold)  # (L, W)
    rows_kept = table[kept]  # (M, 7)
    orig = rows_kept[:, 6].long()
    out_scores = rows_kept[:, 0] if rescore else scores.to(dt)[orig]
    return _finish(rows_kept[:, 1:5] * scale, out_scores, labels[orig], boxes, scores)


def concat(boxes: Tensor, scores: Tensor, labels: Tensor) -> Merged:
    """Keep every box of every view, sorted by descending score.

    Example:
        >>> concat(torch.tensor([[0., 0., 1., 1.], [0., 0., 2., 2.]]), torch.tensor([0.2, 0.7]), torch.tensor([3, 3]))
        (tensor([[0., 0., 2., 2.],
                [0., 0., 1., 1.]]), tensor([0.7000, 0.2000]), tensor([3, 3]))
    """
    _check(boxes, scores, labels)
    return _finish(boxes.detach(), scores.detach(), labels, boxes, scores)


# --------------------------------------------------------------------------- registry
BOX_MERGES: dict[str, BoxMergeFn] = {}


def register_box_merge(name: str) -> Callable[[BoxMergeFn], BoxMergeFn]:
    """Decorator that registers a box merge with the common signature under ``name``."""

    def deco(fn: BoxMergeFn) -> BoxMergeFn:
        BOX_MERGES[name] = fn
        return fn

    return deco


def list_box_merges() -> list[str]:
    """Names of the registered box merges."""
    return list(BOX_MERGES)


def get_box_merge(name: str) -> BoxMergeFn:
    """Resolve a box-merge name to a function ``(boxes, scores, labels, view_ids, n_views,
    weights, **options) -> (boxes, scores, labels)``.

    Raises:
        PolicyError: unknown name (the message lists the known ones).

    Example:
        >>> merge = get_box_merge("nms")
        >>> merge(torch.tensor([[0., 0., 4., 4.], [0., 0., 4., 4.]]), torch.tensor([0.5, 0.9]),
        ...       torch.tensor([1, 1]), torch.tensor([0, 1]), 2, [3.0, 1.0])
        (tensor([[0., 0., 4., 4.]]), tensor([0.3750]), tensor([1]))
    """
    try:
        return BOX_MERGES[name]
    except KeyError as e:
        raise PolicyError(f"unknown box merge {name!r}; choose one of {', '.join(BOX_MERGES)}") from e


def _weighted_scores(scores: Tensor, view_ids: Tensor, n_views: int,
                     weights: Tensor | Sequence[float] | None) -> Tensor:
    """``score * w[view] / w.sum()`` (ensemble_boxes' NMS convention); unchanged without weights."""
    if weights is None:
        return scores
    check_shape("view_ids", view_ids.shape, f"({scores.shape[0]})")
    w = _view_weights(weights, n_views, _compute_dtype(scores.device), scores.device)
    _check_view_ids(view_ids, n_views)
    return (scores.to(w.dtype) * w[view_ids.long()] / w.sum()).to(_out_dtype(scores))


register_box_merge("wbf")(weighted_boxes_fusion)


@register_box_merge("nms")
def _nms_merge(boxes: Tensor, scores: Tensor, labels: Tensor, view_ids: Tensor, n_views: int,
               weights: Tensor | Sequence[float] | None = None, **options: object) -> Merged:
    return nms(boxes, _weighted_scores(scores, view_ids, n_views, weights), labels, **options)  # type: ignore[arg-type]


@register_box_merge("soft_nms")
def _soft_nms_merge(boxes: Tensor, scores: Tensor, labels: Tensor, view_ids: Tensor, n_views: int,
                    weights: Tensor | Sequence[float] | None = None, **options: object) -> Merged:
    scores = _weighted_scores(scores, view_ids, n_views, weights)
    return soft_nms(boxes, scores, labels, **options)  # type: ignore[arg-type]


@register_box_merge("concat")
def _concat_merge(boxes: Tensor, scores: Tensor, labels: Tensor, view_ids: Tensor, n_views: int,
                  weights: Tensor | Sequence[float] | None = None, **options: object) -> Merged:
    if options:
        raise PolicyError(f"concat takes no options, got {', '.join(options)}")
    return concat(boxes, _weighted_scores(scores, view_ids, n_views, weights), labels)
