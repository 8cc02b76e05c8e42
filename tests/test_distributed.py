"""torchrun with 2 gloo processes on CPU gives exactly the single-process results."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from ttakit.cli import main

CLASSES = ["cat", "dog", "fox"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    data = root / "data"
    for c, name in enumerate(CLASSES):
        (data / name).mkdir(parents=True)
        for i in range(4 + c):  # 15 images + 1 broken: 16 files, 15 images, odd chunk counts
            arr = np.random.default_rng(10 * c + i).integers(0, 255, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(arr).save(data / name / f"{i}.png")
    (data / "dog" / "broken.png").write_bytes(b"\x89PNG nope")
    (root / "labels.txt").write_text("\n".join(CLASSES))
    torch.manual_seed(0)
    torch.save(timm.create_model("test_resnet", num_classes=3).state_dict(), root / "w.pth")
    return root


def _args(root, out, *extra):
    return ["evaluate", str(root / "data"), "--model", "test_resnet", "--weights", str(root / "w.pth"), "--labels",
            str(root / "labels.txt"), "--tta", "hflip", "--tta", "d4", "--merge", "mean", "--merge", "vote",
            "--batch-size", "3", "--workers", "0", "--quiet", "--out", str(out), *extra]


def _torchrun(args, nproc=2, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TTAKIT_DIST_BACKEND": "gloo"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "ttakit", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def _without_timing(path):
    doc = json.loads(path.read_text())
    for r in doc["results"].values():
        r.pop("seconds"), r.pop("images_per_s")
    return doc


def test_two_ranks_match_one_process(setup):
    root = setup
    assert main(_args(root, root / "single")) == 0
    res = _torchrun(_args(root, root / "multi"))
    assert res.returncode == 0, res.stderr[-3000:]
    single, multi = _without_timing(root / "single" / "results.json"), _without_timing(root / "multi" / "results.json")
    assert multi == single
    assert multi["n_images"] == 16 and len(multi["skipped"]) == 1
    assert (root / "multi" / "per_image.csv").read_text() == (root / "single" / "per_image.csv").read_text()
    from ttakit.evaluation.classify_logits import load_logits

    a, b = load_logits(root / "single"), load_logits(root / "multi")
    assert a[2] == b[2] and torch.equal(a[1], b[1]) and torch.equal(a[3], b[3])
    torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=1e-5)  # same images, other batch neighbours
    # Resume: a second distributed run over the finished folder computes nothing and agrees.
    again = _torchrun(_args(root, root / "multi"))
    assert again.returncode == 0 and _without_timing(root / "multi" / "results.json") == single


def test_a_failing_rank_stops_the_job_with_its_name(setup):
    root = setup
    # Chunks of 5: the broken file (index 9) is in chunk 1, which rank 1 computes.
    res = _torchrun(_args(root, root / "fail", "--strict", "--batch-size", "5"))
    assert res.returncode != 0
    assert "rank 1 of 2 failed" in res.stderr and "broken.png" in res.stderr
    assert "Traceback (most recent call last)" in res.stderr and "in compute_outputs" in res.stderr  # its traceback


def test_search_reuses_distributed_logits(setup):
    root = setup
    args = ["search", str(root / "data"), "--model", "test_resnet", "--weights", str(root / "w.pth"), "--labels",
            str(root / "labels.txt"), "--pool", "identity+hflip=1+scale(1.2)", "--budget", "2", "--folds", "2",
            "--batch-size", "4", "--workers", "0", "--quiet", "--out", str(root / "search")]
    res = _torchrun(args)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "chosen policy" in res.stdout and (root / "search" / "policy.json").exists()


# --------------------------------------------------------------------------- detection
def make_detector():  # tests/test_distributed.py:make_detector
    """test_detect's BrightBoxes: right on clean rectangles, off where the noise crosses 0.5."""
    from ttakit.callables import import_callable
    from ttakit.tasks.detect import LoadedDetector

    bright = import_callable(f"{os.path.dirname(__file__)}/test_detect.py:BrightBoxes")

    cfg = {"input_size": (3, 48, 48), "interpolation": "bilinear", "mean": (0.0,) * 3, "std": (1.0,) * 3,
           "crop_pct": 1.0, "crop_mode": "center"}
    return LoadedDetector(bright(), "bright", "none", cfg, ["red", "green", "blue"])


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    (root / "img").mkdir()
    g = np.random.default_rng(0)
    images, anns = [], []
    for i in range(10):
        a = g.integers(0, 150 if i % 3 else 40, (48, 48, 3)).astype(np.uint8)  # some photos noisy enough to fool it
        for label in (0, 1):
            x1, y1, bw, bh = (int(v) for v in g.integers(2, 24, 4))
            a[y1:y1 + bh // 2 + 4, x1:x1 + bw // 2 + 4, label] = 255
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": label + 1, "iscrowd": 0,
                         "bbox": [x1, y1, bw // 2 + 4, bh // 2 + 4], "area": (bw // 2 + 4) * (bh // 2 + 4)})
        Image.fromarray(a).save(root / "img" / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": 48, "width": 48})
    (root / "img" / "broken.png").write_bytes(b"\x89PNG nope")
    images.append({"id": 99, "file_name": "broken.png", "height": 48, "width": 48})
    doc = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "red"}, {"id": 2, "name": "green"}]}
    (root / "coco.json").write_text(json.dumps(doc))
    return root


def _detect_args(root, out):
    return ["evaluate", "--task", "detect", str(root / "img"), "--annotations", str(root / "coco.json"), "--model",
            f"{__file__}:make_detector", "--tta", "hflip", "--tta", "rot90(0,1)", "--box-merge", "wbf",
            "--box-merge", "nms", "--batch-size", "3", "--workers", "0", "--quiet", "--out", str(out)]


def test_detection_two_ranks_match_one_process(coco):
    assert main(_detect_args(coco, coco / "single")) == 0
    res = _torchrun(_detect_args(coco, coco / "multi"))
    assert res.returncode == 0, res.stderr[-3000:]
    single, multi = _without_timing(coco / "single" / "results.json"), _without_timing(coco / "multi" / "results.json")
    assert multi == single
    assert multi["n_images"] == 11 and len(multi["skipped"]) == 1
    assert 0 < single["results"]["plain"]["map"] < 1  # not a trivial detector: the intervals mean something
    # The plain row against pycocotools on the detector's own boxes, computed here without ttakit.
    assert single["results"]["plain"]["map"] == pytest.approx(_plain_map_by_cocoeval(coco), abs=1e-9)
    assert "ci_map" in single["results"]["hflip@wbf"]
    assert (coco / "multi" / "per_image.csv").read_text() == (coco / "single" / "per_image.csv").read_text()


def _plain_map_by_cocoeval(root) -> float:
    """COCOeval's mAP@[.5:.95] of the detector run on each photo as it is (48 x 48: its input),
    label i reported as the i-th category id (1, 2; the blue channel's label 2 has none)."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    det = make_detector().model
    doc = json.loads((root / "coco.json").read_text())
    rows = []
    for im in doc["images"]:
        try:
            arr = np.asarray(Image.open(root / "img" / im["file_name"]).convert("RGB"), dtype=np.float32) / 255
        except OSError:
            continue  # broken.png
        out = det(torch.from_numpy(arr).permute(2, 0, 1)[None])[0]
        for (x1, y1, x2, y2), score, label in zip(out["boxes"].tolist(), out["scores"].tolist(), out["labels"].tolist()):
            if label < 2:
                rows.append([im["id"], x1, y1, x2 - x1, y2 - y1, score, label + 1])
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(root / "coco.json"))
        ev = COCOeval(gt, gt.loadRes(np.array(rows)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])
