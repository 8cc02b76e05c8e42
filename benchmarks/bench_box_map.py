"""Time the paired mAP interval of detection: pycocotools matching once, then COCO mAP re-accumulated per resample.

Synthetic COCO-like set: 500 images, 80 categories, 1-13 boxes of truth per image, DETS
detections per image for each of two rows (near misses, wrong classes, false alarms).

    flock /tmp/ttakit-heavy.lock .venv/bin/python benchmarks/bench_box_map.py --dets 20 --resamples 1000
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

from ttakit.evaluation.box_map import coco_map, match_table, per_image_map, weighted_map
from ttakit.evaluation.stats import compare_statistic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import provenance  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--dets", type=int, default=20, help="detections per image and row")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--quick", action="store_true", help="smoke run: 20 images, 50 resamples")
    args = ap.parse_args(argv)
    print(provenance(__file__, argv))
    if args.quick:
        args.images, args.resamples = 20, 50
    g = np.random.default_rng(0)
    n, n_cat = args.images, 80
    anns: list[dict] = []
    rows_a: list[list[float]] = []
    rows_b: list[list[float]] = []
    for i in range(1, n + 1):
        truth = []
        for _ in range(int(g.integers(1, 14))):
            x, y = g.uniform(0, 500, 2)
            w, h = g.uniform(10, 150, 2)
            truth.append({"id": len(anns) + 1, "image_id": i, "category_id": int(g.integers(1, n_cat + 1)),
                          "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            anns.append(truth[-1])
        for rows in (rows_a, rows_b):
            for k in range(args.dets):
                if k < 2 * len(truth) and g.uniform() < 0.7:
                    a, j = truth[k % len(truth)], g.normal(0, 8, 4)
                    x, y, w, h = a["bbox"]
                    rows.append([i, x + j[0], y + j[1], w + abs(j[2]), h + abs(j[3]), g.uniform(0.3, 1), a["category_id"]])
                else:
                    rows.append([i, *g.uniform(0, 500, 2), *g.uniform(10, 150, 2), g.uniform(0, 0.6),
                                 int(g.integers(1, n_cat + 1))])
    gt = COCO()
    gt.dataset = {"images": [{"id": i} for i in range(1, n + 1)],
                  "categories": [{"id": c} for c in range(1, n_cat + 1)], "annotations": anns}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    ids = list(range(1, n + 1))
    a, b = np.array(rows_a), np.array(rows_b)
    t0 = time.perf_counter()
    ta, tb = match_table(gt, a, ids), match_table(gt, b, ids)
    t1 = time.perf_counter()
    assert abs(weighted_map(ta, np.ones((1, n)))[0] - coco_map(gt, a, ids)["map"]) < 1e-12
    t2 = time.perf_counter()
    cmp = compare_statistic(lambda w: weighted_map(tb, w) - weighted_map(ta, w), n, "map", args.resamples)
    t3 = time.perf_counter()
    per_image_map(ta)
    t4 = time.perf_counter()
    print(f"{len(a)} + {len(b)} detections, {len(anns)} boxes of truth, {n} images")
    print(f"matching (pycocotools, 2 rows): {t1 - t0:.1f} s; paired bootstrap, {args.resamples} resamples: "
          f"{t3 - t2:.1f} s; per-image AP of a row: {t4 - t3:.1f} s")
    print(cmp.verdict("b", "mAP"))


if __name__ == "__main__":
    main()
