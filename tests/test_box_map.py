"""COCO mAP of weighted images equals pycocotools' COCOeval, on all images and on each image alone."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO  # a dependency of ttakit: never skipped

from ttakit.evaluation.box_map import coco_map, match_table, per_image_map, weighted_map


def _random_set(n: int, n_cat: int, seed: int):
    """Ground truth and noisy detections (near misses, wrong classes, false alarms, crowds)."""
    g = np.random.default_rng(seed)
    anns, rows = [], []
    for i in range(1, n + 1):
        for _ in range(int(g.integers(0, 5))):
            x, y = g.uniform(0, 80, 2)
            w, h = g.uniform(5, 40, 2)
            c = int(g.integers(1, n_cat + 1))
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c, "bbox": [x, y, w, h], "area": w * h,
                         "iscrowd": int(g.uniform() < 0.1)})
            for _ in range(int(g.integers(0, 3))):
                j = g.normal(0, 4, 4)
                rows.append([i, x + j[0], y + j[1], w + abs(j[2]), h + abs(j[3]), g.uniform(),
                             c if g.uniform() < 0.8 else int(g.integers(1, n_cat + 1))])
        for _ in range(int(g.integers(0, 4))):
            rows.append([i, *g.uniform(0, 80, 2), *g.uniform(5, 30, 2), g.uniform(), int(g.integers(1, n_cat + 1))])
    gt = COCO()
    gt.dataset = {"images": [{"id": i} for i in range(1, n + 1)], "categories": [{"id": c} for c in range(1, n_cat + 1)],
                  "annotations": anns}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt, np.array(rows), list(range(1, n + 1))


@pytest.mark.parametrize("seed", [0, 1])
def test_weighted_map_equals_cocoeval(seed):
    gt, rows, ids = _random_set(40, 3, seed)
    table = match_table(gt, rows, ids)
    ref = coco_map(gt, rows, ids)
    ones = np.ones((1, len(ids)))
    assert weighted_map(table, ones)[0] == pytest.approx(ref["map"], abs=1e-12)
    assert weighted_map(table, ones, 0.5)[0] == pytest.approx(ref["map50"], abs=1e-12)
    per_image = weighted_map(table, np.eye(len(ids)))
    np.testing.assert_allclose(per_image_map(table), per_image, atol=1e-12)  # the one-pass version agrees
    for k in (0, 3, 7, 11):  # an image alone: COCOeval on that image's detections
        mine = rows[rows[:, 0] == ids[k]]
        alone = coco_map(gt, mine, [ids[k]])["map"]
        assert (np.isnan(per_image[k]) and alone is None) or per_image[k] == pytest.approx(alone, abs=1e-12)
    # an image drawn twice counts twice: COCOeval on a set holding a copy of it agrees
    k, copy = 5, len(ids) + 1
    anns = gt.dataset["annotations"] + [{**a, "id": 10_000 + a["id"], "image_id": copy}
                                        for a in gt.dataset["annotations"] if a["image_id"] == ids[k]]
    doubled = COCO()
    doubled.dataset = {**gt.dataset, "images": gt.dataset["images"] + [{"id": copy}], "annotations": anns}
    with contextlib.redirect_stdout(io.StringIO()):
        doubled.createIndex()
    extra = rows[rows[:, 0] == ids[k]].copy()
    extra[:, 0] = copy
    twice = np.ones((1, len(ids)))
    twice[0, k] = 2
    expected = coco_map(doubled, np.concatenate([rows, extra]), ids + [copy])["map"]
    assert weighted_map(table, twice)[0] == pytest.approx(expected, abs=1e-12)
