"""torchrun with 2 gloo processes on CPU gives exactly the single-process results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from ttakit.cli import main

from dist_driver import evaluate_detection, make_detector, toy_photos  # beside this file
from toy_task_plugin import NAME, evaluate_toy, make_photos

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
    # Resume: the folder two ranks wrote, run again (here, in one process: one torchrun launch
    # costs three interpreter starts), computes nothing and agrees.
    before = {p.name: p.stat().st_mtime_ns for p in (root / "multi" / "logits").glob("chunk_*")}
    assert main(_args(root, root / "multi")) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (root / "multi" / "logits").glob("chunk_*")} == before
    assert _without_timing(root / "multi" / "results.json") == single


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


@pytest.fixture(scope="module")
def api_ranks(coco, tmp_path_factory):
    """One torchrun launch of tests/dist_driver.py: the detection set and the toy plug-in task,
    evaluated through the Python API by two ranks (``multi``) and by this process (``single``)."""
    toy = tmp_path_factory.mktemp("toy")
    make_photos(toy / "photos")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TTAKIT_DIST_BACKEND": "gloo",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(Path(__file__).parent / "dist_driver.py"), str(coco), str(coco / "multi"), str(toy / "photos"),
           str(toy / "multi")]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    evaluate_detection(coco, coco / "single")
    evaluate_toy(toy_photos(toy / "photos"), toy / "single")
    return {"detect": coco, "toy": toy}


def test_detection_two_ranks_match_one_process(api_ranks):
    coco = api_ranks["detect"]
    single, multi = _without_timing(coco / "single" / "results.json"), _without_timing(coco / "multi" / "results.json")
    assert multi == single
    assert multi["n_images"] == 11 and len(multi["skipped"]) == 1
    assert 0 < single["results"]["plain"]["map"] < 1  # not a trivial detector: the intervals mean something
    # The plain row against pycocotools on the detector's own boxes, computed here without ttakit.
    assert single["results"]["plain"]["map"] == pytest.approx(_plain_map_by_cocoeval(coco), abs=1e-9)
    assert "ci_map" in single["results"]["hflip@wbf"] and "ci_map" in single["results"]["rot90(0,1)@nms"]
    assert (coco / "multi" / "per_image.csv").read_text() == (coco / "single" / "per_image.csv").read_text()


def test_toy_plugin_task_two_ranks_match_one_process(api_ranks):
    toy = api_ranks["toy"]
    single, multi = _without_timing(toy / "single" / "results.json"), _without_timing(toy / "multi" / "results.json")
    assert multi == single and multi["task"] == NAME
    assert (toy / "multi" / "per_image.csv").read_text() == (toy / "single" / "per_image.csv").read_text()


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
