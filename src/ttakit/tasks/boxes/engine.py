"""The WBF clustering engine: ensemble_boxes' sequential clustering, batched over independent groups.

``ensemble_boxes`` clusters the boxes of a label one by one, in score order, each against the
running fused boxes, so the result depends on that order. Here the boxes are split into
groups (one per NMS seed) that are clustered side by side, the ``k``-th box of every group in
one step. Afterwards every box is checked, with the same arithmetic, against the fused boxes
of the other groups as they were at its turn; groups where a box would have joined another
group's cluster are merged and clustered again. When no such box is left, the result is, by
induction over the order, exactly ``ensemble_boxes``'.

:func:`wbf_cluster` is the entry point; :func:`ttakit.tasks.boxes.weighted_boxes_fusion`
turns its clusters into scored boxes.
"""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor

from .ops import iou_pairs, round_f32

__all__ = ["wbf_cluster"]


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


def _seed_groups(b: Tensor, conf: Tensor, lab: Tensor, thr: float, margin: Tensor) -> Tensor:
    """A first guess at which boxes can interact: each box joins its best-overlapping NMS seed.

    Only a guess: :func:`wbf_cluster` checks it and merges groups until it is safe.
    """
    n = b.shape[0]
    group = torch.arange(n, device=b.device)
    seeds = torchvision.ops.batched_nms(b, conf, lab, thr)  # (S,)
    sb, sl = b[seeds], lab[seeds]
    q, s = _center_pairs(b, lab, sb, sl, margin)
    if q.numel():
        iou = iou_pairs(b[q], sb[s])  # (P,)
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
        s_box = round_f32(acc.index_select(0, row).add_(t_box[k]))  # (A, 4)
        acc.index_copy_(0, row, s_box)
        s_conf = accs.index_select(0, row).add_(t_conf[k])  # (A, 1)
        accs.index_copy_(0, row, s_conf)
        # A cluster of one box keeps that box exactly; larger ones are rounded to float32.
        fb = torch.where(new, b_box[k], round_f32(s_box / s_conf))  # (A, 4)
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


def wbf_cluster(b: Tensor, conf: Tensor, lab: Tensor, thr: float) -> dict[str, Tensor]:
    """Cluster boxes sorted by (label, descending weighted score) exactly as ensemble_boxes does.

    The clustering is sequential within a label, but boxes far apart never meet. Boxes are
    split into groups (one per NMS seed) and groups are clustered in parallel; groups that
    interacted are merged and clustered again until none did.

    Args:
        b: ``(n, 4)`` boxes, in processing order.
        conf: ``(n,)`` weighted scores.
        lab: ``(n,)`` labels ``0..L-1``, non-decreasing.
        thr: a box joins a cluster when its IoU with the fused box is above this.

    Returns:
        ``cluster (n,)``: position of the first box of each box's cluster; at each cluster's
        first position, ``fused (n, 4)``, its fused box, and ``csum (n,)``, the sum of its
        weighted scores (other positions hold nothing meaningful); and the engine's own
        bookkeeping (``traj``, ``lo``, ``hi``).
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

