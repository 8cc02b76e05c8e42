"""Box-merge benchmark: ttakit's weighted boxes fusion vs ``ensemble_boxes`` 1.0.9.

Run: ``python benchmarks/bench_boxes.py`` (``--quick`` for a smoke run). Each case is one
image with 10,000 boxes: ~100 objects, each seen by 10 views as 10 jittered boxes (scores
vary, 10% of the boxes carry a wrong label), with 20 classes and with 1 class. Before
timing, both implementations must agree (same clusters; boxes, scores and labels within
1e-5 after sorting by score). The contenders are interleaved and repeated; medians are
reported, with the ratio ``ensemble_boxes time / ttakit time``.

``--threads`` sets torch's intra-op threads (default 1, as numpy in ensemble_boxes runs on
one core; on tiny per-step tensors extra threads only add synchronisation, which on a busy
machine can cost milliseconds per operation).
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from ensemble_boxes import weighted_boxes_fusion as eb_wbf

from ttakit.tasks.boxes import weighted_boxes_fusion

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import provenance  # noqa: E402


def realistic_detections(n_objects: int = 100, n_views: int = 10, per_view: int = 10, n_classes: int = 20,
                         size: tuple[int, int] = (768, 1024), seed: int = 0):
    """Detections of ``n_objects`` objects by ``n_views`` views, ``per_view`` jittered boxes each.

    Returns ``boxes (N, 4)`` in pixels, ``scores``, ``labels``, ``view_ids`` (``N = n_objects
    * n_views * per_view``).
    """
    g = torch.Generator().manual_seed(seed)
    h, w = size

    def u(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    side = torch.exp(math.log(24) + u(n_objects) * math.log(256 / 24))  # 24..256 px
    aspect = torch.exp(u(n_objects) - 0.5)
    ow, oh = side * aspect.sqrt(), side / aspect.sqrt()
    cx, cy = u(n_objects) * w, u(n_objects) * h
    objects = torch.stack([cx - ow / 2, cy - oh / 2, cx + ow / 2, cy + oh / 2], 1)  # (O, 4)
    classes = torch.randint(n_classes, (n_objects,), generator=g)
    confidence = 0.3 + 0.65 * u(n_objects)
    scale = torch.stack([ow, oh, ow, oh], 1)[:, None]  # (O, 1, 4)
    out = []
    for v in range(n_views):
        shift = (u(n_objects, 1, 4) - 0.5) * 0.04  # the view's own small bias
        jitter = torch.randn(n_objects, per_view, 4, generator=g, dtype=torch.float64) * 0.07 + shift
        b = (objects[:, None] + jitter * scale).reshape(-1, 4)
        b = torch.stack([b[:, [0, 2]].amin(1).clamp(0, w), b[:, [1, 3]].amin(1).clamp(0, h),
                         b[:, [0, 2]].amax(1).clamp(0, w), b[:, [1, 3]].amax(1).clamp(0, h)], 1)
        s = (confidence[:, None] * (0.4 + 0.6 * u(n_objects, per_view))).reshape(-1)
        lab = classes[:, None].expand(-1, per_view).reshape(-1).clone()
        wrong = u(lab.numel()) < 0.1
        lab[wrong] = torch.randint(n_classes, (int(wrong.sum()),), generator=g)
        out.append((b, s, lab, torch.full_like(lab, v)))
    boxes, scores, labels, views = (torch.cat(x) for x in zip(*out))
    return boxes.float(), scores.float(), labels, views


def to_ensemble_boxes(boxes, scores, labels, view_ids, n_views, size):
    """Per-view lists of numpy arrays in [0, 1] coordinates, as ensemble_boxes expects."""
    h, w = size
    scale = torch.tensor([w, h, w, h], dtype=torch.float64)
    sel = [view_ids == v for v in range(n_views)]
    return ([(boxes[m].double() / scale).numpy() for m in sel], [scores[m].double().numpy() for m in sel],
            [labels[m].numpy() for m in sel])


def agree(ours, theirs, size) -> float:
    """Largest difference after sorting both by descending score; raises if they disagree."""
    h, w = size
    ob = ours[0].double() / torch.tensor([w, h, w, h], dtype=torch.float64)
    os_, ol = ours[1].double().numpy(), ours[2].numpy()
    tb, ts, tl = theirs
    if len(tb) != len(ob):
        raise AssertionError(f"{len(ob)} boxes from ttakit, {len(tb)} from ensemble_boxes")
    o, t = np.lexsort((ob[:, 0].numpy(), -os_)), np.lexsort((tb[:, 0], -ts))
    diff = max(np.abs(ob.numpy()[o] - tb[t]).max(), np.abs(os_[o] - ts[t]).max(), np.abs(ol[o] - tl[t]).max())
    if diff > 1e-5:
        raise AssertionError(f"ttakit and ensemble_boxes differ by {diff}")
    return float(diff)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each contender")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--quick", action="store_true", help="1,000 boxes, 2 repeats")
    args = parser.parse_args(argv)
    print(provenance(__file__, argv))
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")  # ensemble_boxes warns about every clipped box
    per_view, repeats = (1, 2) if args.quick else (10, args.repeats)
    size = (768, 1024)
    n_views = 10
    print(f"torch {torch.__version__}, {args.threads} thread(s), {platform.processor() or platform.machine()}, "
          f"{repeats} repeats, median seconds\n")
    print("| case | boxes | fused | ensemble_boxes s | ttakit s | ratio | max diff |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for n_classes in (20, 1):
        boxes, scores, labels, views = realistic_detections(per_view=per_view, n_classes=n_classes, size=size)
        eb_in = to_ensemble_boxes(boxes, scores, labels, views, n_views, size)

        def run_ours():
            return weighted_boxes_fusion(boxes, scores, labels, views, n_views, image_size=size)

        def run_theirs():
            return eb_wbf(*eb_in, iou_thr=0.55)

        diff = agree(run_ours(), run_theirs(), size)
        t_ours, t_theirs = [], []
        for _ in range(repeats):  # interleaved, so both see the same machine load
            for fn, times in ((run_theirs, t_theirs), (run_ours, t_ours)):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
        m_ours, m_theirs = statistics.median(t_ours), statistics.median(t_theirs)
        print(f"| {n_classes} class{'es' if n_classes > 1 else ''} | {len(boxes)} | {len(run_ours()[0])} | "
              f"{m_theirs:.3f} | {m_ours:.4f} | {m_theirs / m_ours:.1f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
