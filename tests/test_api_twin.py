"""Each ``ttakit evaluate`` example of README (classification, segmentation, detection) and its
Python twin (``ttakit.evaluate``) on tiny data: the same rows and metrics in results.json.

The models are the command-line loaders of other test files (``tests/test_cli.py:make_classifier``,
``tests/test_segment_eval.py:make_segmenter``, ``tests/test_detect.py:make_detector``), named
the same way on both sides; only timings may differ.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import ttakit
from ttakit.cli import main

HERE = Path(__file__).parent


def _classify_data(root: Path) -> dict[str, Any]:
    """README: ttakit evaluate DATA --tta hflip --tta d4 --tta five_crop --tta multiscale --out runs/eval"""
    g = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / "data" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(g.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / "data" / c / f"{i}.png")
    (root / "labels.txt").write_text("cat\ndog\nfox\nowl\n")  # make_classifier has 4 outputs
    model = f"{HERE / 'test_cli.py'}:make_classifier"
    policies = ["hflip", "d4", "five_crop", "multiscale"]
    argv = [str(root / "data"), *[a for p in policies for a in ("--tta", p)], "--model", model,
            "--labels", str(root / "labels.txt")]
    lm = ttakit.runtime.prepare.load_classifier(model, labels=str(root / "labels.txt"))
    return {"argv": argv, "model": lm, "data": str(root / "data"), "policies": policies, "kwargs": {}}


def _segment_data(root: Path) -> dict[str, Any]:
    """README: ttakit evaluate IMAGES --task segment --masks MASKS --model path/file.py:FUNCTION --num-classes K
    --tta hflip --tta "scale(1,1.25)" --merge mean --out runs/seg"""
    g = np.random.default_rng(1)
    (root / "images").mkdir()
    (root / "masks").mkdir()
    for i in range(4):
        photo = g.integers(0, 60, (40, 48, 3)).astype(np.uint8)
        mask = np.zeros((40, 48), np.uint8)
        photo[5:20, 8:30, 0], mask[5:20, 8:30] = 230, 1
        photo[22:35, 20 + i:40, 1], mask[22:35, 20 + i:40] = 230, 2
        Image.fromarray(photo).save(root / "images" / f"p{i}.png")
        Image.fromarray(mask, "L").save(root / "masks" / f"p{i}.png")
    model = f"{HERE / 'test_segment_eval.py'}:make_segmenter"
    argv = [str(root / "images"), "--task", "segment", "--masks", str(root / "masks"), "--model", model,
            "--num-classes", "3", "--tta", "hflip", "--tta", "scale(1,1.25)", "--merge", "mean"]
    return {"argv": argv, "model": model, "data": str(root / "images"), "policies": ["hflip", "scale(1,1.25)"],
            "kwargs": {"task": "segment", "masks": str(root / "masks"), "num_classes": 3, "merges": ["mean"]}}


def _detect_data(root: Path) -> dict[str, Any]:
    """README: ttakit evaluate --task detect DATA --annotations coco.json --detector MODULE:FUNCTION --tta hflip
    --tta multiscale --box-merge nms --box-merge wbf --box-option iou_threshold=0.6 --out runs/det"""
    (root / "img").mkdir()
    g = np.random.default_rng(2)
    images, anns = [], []
    for i in range(4):
        a = np.zeros((64, 64, 3), np.uint8)
        x, y = int(g.integers(0, 40)), int(g.integers(0, 40))
        a[y:y + 16, x:x + 12, i % 2] = 255
        Image.fromarray(a).save(root / "img" / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": 64, "width": 64})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": i % 2 + 1, "bbox": [x, y, 12, 16], "area": 192,
                     "iscrowd": 0})
    (root / "coco.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": [
        {"id": 1, "name": "red"}, {"id": 2, "name": "green"}]}))
    model = f"{HERE / 'test_detect.py'}:make_detector"
    argv = ["--task", "detect", str(root / "img"), "--annotations", str(root / "coco.json"), "--detector", model,
            "--tta", "hflip", "--tta", "multiscale", "--box-merge", "nms", "--box-merge", "wbf",
            "--box-option", "iou_threshold=0.6"]
    return {"argv": argv, "model": None, "data": str(root / "img"), "policies": ["hflip", "multiscale"],
            "kwargs": {"task": "detect", "annotations": str(root / "coco.json"), "detector": model,
                       "merges": ["nms", "wbf"], "box_option": {"iou_threshold": 0.6}}}


def _scores(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """results.json without timings and the run folder's own paths, and per_view.json."""
    doc = json.loads((folder / "results.json").read_text())
    for r in doc["results"].values():
        r.pop("seconds"), r.pop("images_per_s")
    return doc, json.loads((folder / "per_view.json").read_text())


@pytest.mark.parametrize("example", [_classify_data, _segment_data, _detect_data], ids=["classify", "segment", "detect"])
def test_readme_evaluate_example_and_its_python_twin_agree(example, tmp_path, capsys):
    case = example(tmp_path)
    run_flags = ["--device", "cpu", "--workers", "0", "--quiet", "--batch-size", "3"]
    assert main(["evaluate", *case["argv"], *run_flags, "--out", str(tmp_path / "cli")]) == 0, capsys.readouterr().err
    kwargs = dict(case["kwargs"])
    model = case["model"]
    if isinstance(model, ttakit.LoadedModel):
        model = ttakit.prepare_run(model, device="cpu")
    res = ttakit.evaluate(model, case["data"], case["policies"], out_dir=tmp_path / "py", device="cpu",
                          options=ttakit.EvalOptions(batch_size=3, workers=0, quiet=True), **kwargs)
    cli_doc, cli_views = _scores(tmp_path / "cli")
    py_doc, py_views = _scores(tmp_path / "py")
    assert list(py_doc["results"]) == list(cli_doc["results"]) and len(cli_doc["results"]) > 1
    assert py_doc == cli_doc and py_views == cli_views
    assert res.out == tmp_path / "py" and res.results.keys() == cli_doc["results"].keys()
    assert res.verdicts and all(r["key"] in cli_doc["results"] for r in res.rows)
    headline = res.columns.metrics[0][1]
    assert headline in res.table() and all(key[:34] in res.table() for key in cli_doc["results"])
