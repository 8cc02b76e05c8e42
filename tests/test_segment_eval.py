"""Segmentation evaluation: the one pipeline with the segmentation scorer, from Python and the command line."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import ttakit
from ttakit.cli import main
from ttakit.datasets import find_masked_images, load_mask
from ttakit.evaluation.evaluate import EvalOptions
from ttakit.evaluation.seg_stats import image_stats, stats_scores
from ttakit.evaluation.segment_eval import SegmentScoring, evaluate_segmentation, row_masks
from ttakit.runtime.config import RunConfig
from ttakit.tasks.segment import load_segmenter

from seg_reference import boundary_counts, boundary_iou, confusion, miou

K = 3
RC = RunConfig(16, False)
OPTIONS = EvalOptions(batch_size=3, workers=0, quiet=True)
SCORING = SegmentScoring(K, store_size=32)  # reduced maps (for reuse) at the model's own 32 x 32 grid


class ColourSegmenter(torch.nn.Module):
    """Class 1 where red, 2 where green, 0 elsewhere, at half resolution; counts the images it sees."""

    calls = 0

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Conv2d(3, K, 3, padding=1)
        torch.manual_seed(0)
        with torch.no_grad():  # a fixed, slightly blurry colour detector (not flip-symmetric noise)
            self.head.weight.normal_(0, 0.3)
            self.head.weight[1, 0, 1, 1] += 6.0
            self.head.weight[2, 1, 1, 1] += 6.0
            self.head.bias.copy_(torch.tensor([2.0, -1.0, -1.0]))

    def forward(self, x):
        ColourSegmenter.calls += len(x)
        return F.avg_pool2d(self.head(x), 2)


CONFIG = {"input_size": (3, 64, 64), "interpolation": "bilinear", "mean": (0.0,) * 3, "std": (1.0,) * 3,
          "crop_pct": 1.0, "crop_mode": "squash"}


def make_segmenter() -> ttakit.LoadedModel:  # for the command line: tests/test_segment_eval.py:make_segmenter
    return ttakit.LoadedModel(ColourSegmenter().eval(), "colour", "none", CONFIG, ["bg", "red", "green"])


def make_module() -> torch.nn.Module:
    return ColourSegmenter()


@pytest.fixture(scope="module")
def masked(tmp_path_factory):
    """7 photos of several sizes with red and green rectangles; masks with an ignored band."""
    root = tmp_path_factory.mktemp("seg")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    g = np.random.default_rng(0)
    for i in range(7):
        h, w = (40, 56) if i % 2 else (48, 48)
        photo = g.integers(0, 60, (h, w, 3)).astype(np.uint8)
        mask = np.zeros((h, w), np.uint8)
        for c in (1, 2):
            y, x = int(g.integers(0, h - 16)), int(g.integers(0, w - 16))
            bh, bw = int(g.integers(8, 16)), int(g.integers(8, 16))
            photo[y:y + bh, x:x + bw, c - 1] = 230
            mask[y:y + bh, x:x + bw] = c
        mask[:, :2] = 255  # an ignored band
        Image.fromarray(photo).save(root / "images" / f"p{i}.png")
        if i % 2:  # palette and grey masks are both read as indices
            pal = Image.fromarray(mask, "P")
            pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [9] * (3 * 253))
            pal.save(root / "masks" / f"p{i}.png")
        else:
            Image.fromarray(mask, "L").save(root / "masks" / f"p{i}.png")
    (root / "images" / "broken.png").write_bytes(b"\x89PNG nope")
    Image.new("L", (8, 8)).save(root / "masks" / "broken.png")
    return root


def _lm():
    return load_segmenter(f"{__file__}:make_segmenter", K)


def _reference_maps(lm, data, merge: str | None = None) -> dict[int, np.ndarray]:
    """Each readable photo's predicted class map, computed independently: the model's own output
    on the whole photo resized to its input, softmax, stored as float16; with ``merge`` (``mean``
    or ``max``) also on the mirrored input, mirrored back, and merged; bilinear back to the
    photo, argmax."""
    maps = {}
    transform = lm.transform()
    for i, path in enumerate(data.paths):
        try:
            photo = ttakit.data.load_image(path)
        except ttakit.TTAKitError:
            continue
        x = transform(photo)[None]
        with torch.inference_mode():
            probs = torch.softmax(lm.model(x), 1)  # scored at full precision
            if merge is not None:
                flipped = torch.softmax(lm.model(x.flip(-1)), 1).flip(-1)
                probs = (probs + flipped) / 2 if merge == "mean" else torch.maximum(probs, flipped)
        pred = F.interpolate(probs, size=(photo.height, photo.width), mode="bilinear", align_corners=False)[0].argmax(0)
        maps[i] = pred.numpy()
    return maps


def _reference_miou(lm, data, merge: str | None = None) -> float:
    """mIoU of :func:`_reference_maps` over the dataset: numpy intersection / union."""
    inter, union = np.zeros(K), np.zeros(K)
    for i, pred in _reference_maps(lm, data, merge).items():
        truth = np.asarray(Image.open(data.masks[i])).astype(np.int64)
        ok = truth != 255
        for c in range(K):
            inter[c] += np.sum((pred == c) & (truth == c) & ok)
            union[c] += np.sum(((pred == c) | (truth == c)) & ok)
    return float(np.mean(inter[union > 0] / union[union > 0]))


def test_segment_evaluate_matches_numpy_resumes_and_reuses(masked, tmp_path):
    data = find_masked_images(masked / "images", masked / "masks")
    lm = _lm()
    bare = load_segmenter(f"{__file__}:make_module", K)
    assert bare.data_config["crop_mode"] == "squash" and bare.data_config["crop_pct"] == 1.0  # the whole photo
    policies = [ttakit.create_policy("hflip"), ttakit.create_policy("scale(1,1.25)")]
    out = tmp_path / "run"
    ColourSegmenter.calls = 0
    res = evaluate_segmentation(lm, data, policies, out_dir=out, merges=["mean", "max"], run_config=RC,
                                scoring=SCORING, options=OPTIONS)
    assert ColourSegmenter.calls == 7 * 3  # 7 readable photos x 3 distinct views
    rows = res["results"]
    assert list(rows) == ["plain", "hflip@mean", "hflip@max", "scale(1,1.25)@mean", "scale(1,1.25)@max"]
    assert rows["plain"]["miou"] == pytest.approx(_reference_miou(lm, data), abs=1e-6)
    assert rows["plain"]["miou"] > 0.5  # the colour detector works
    for merge in ("mean", "max"):  # the TTA rows too, each against its own reference
        assert rows[f"hflip@{merge}"]["miou"] == pytest.approx(_reference_miou(lm, data, merge), abs=1e-6), merge
    assert rows["hflip@mean"]["miou"] != rows["plain"]["miou"]  # the flip changes the maps: the check bites
    for key, row in rows.items():
        assert {"miou", "pixel_acc", "mean_dice", "boundary_iou", "per_class_iou", "seconds"} <= set(row)
        assert len(row["per_class_iou"]) == K and row["miou"] == pytest.approx(np.mean(row["per_class_iou"]))
        if key != "plain":
            lo, hi = row["ci_miou"]
            assert lo <= row["delta_miou"] <= hi and row["significant"] == (lo > 0 or hi < 0)
            assert row["verdict"].startswith(f"{key}: mIoU ")
    assert [s["path"].endswith("broken.png") for s in res["skipped"]] == [True]
    doc = json.loads((out / "results.json").read_text())
    assert doc["task"] == "segment" and doc["scoring"]["num_classes"] == K
    header = (out / "per_image.csv").read_text().splitlines()[0].split(",")
    assert header[:5] == ["index", "path", "mask", "plain_iou", "plain_acc"] and "hflip@mean_iou" in header
    # the report's predictions: the stored maps merged again are the reference maps, and the
    # per-image CSV scores them
    lines = {r["path"]: r for r in csv.DictReader((out / "per_image.csv").open())}
    for key, merge in (("plain", None), ("hflip@mean", "mean"), ("hflip@max", "max")):
        want = _reference_maps(lm, data, merge)
        for i, pred in zip((1, 4), row_masks(out, key, [1, 4])):  # 0 is broken.png
            assert (pred == want[i]).mean() > 0.999, key  # float16 ties may flip a pixel
            truth = torch.from_numpy(load_mask(data.masks[i]))
            conf = confusion(truth, torch.from_numpy(pred), truth != 255, K)
            assert float(lines[data.paths[i]][f"{key}_iou"]) == pytest.approx(float(miou(conf.numpy())), abs=1e-6)
    # resume after a lost chunk, then reuse: a policy of stored views costs no model time
    chunks = sorted((out / "segmentation").glob("chunk_*.safetensors"))
    assert len(chunks) == 3
    chunks[1].unlink()
    ColourSegmenter.calls = 0
    again = evaluate_segmentation(lm, data, policies, out_dir=out, merges=["mean", "max"], run_config=RC,
                                  scoring=SCORING, options=OPTIONS)
    assert ColourSegmenter.calls == 3 * 3
    assert {k: r["miou"] for k, r in again["results"].items()} == {k: r["miou"] for k, r in rows.items()}
    ColourSegmenter.calls = 0
    only = evaluate_segmentation(lm, data, [ttakit.create_policy("hflip")], out_dir=out, run_config=RC,
                                 scoring=SCORING, options=OPTIONS)
    assert ColourSegmenter.calls == 0 and only["results"]["hflip"]["miou"] == rows["hflip@mean"]["miou"]


def test_boundary_iou_sees_edges_that_miou_hardly_does():
    truth = torch.zeros(64, 64, dtype=torch.long)
    truth[8:56, 8:56] = 1
    shifted = torch.roll(truth, 2, 1)  # the same square, 2 px to the right
    valid = torch.ones(64, 64, dtype=torch.bool)
    ok = stats_scores(image_stats(truth, truth, valid, 2).numpy())
    off = stats_scores(image_stats(truth, shifted, valid, 2).numpy())
    assert ok["boundary_iou"] == 1.0 and ok["miou"] == 1.0
    assert off["miou"] == pytest.approx(float(miou(confusion(truth, shifted, valid, 2).numpy())))
    assert off["boundary_iou"] == pytest.approx(float(boundary_iou(boundary_counts(truth, shifted, valid, 2).numpy())))
    assert off["boundary_iou"] < off["miou"] - 0.2  # edges off by 2 px: boundary IoU drops far more


def test_segment_command_line_and_refusals(masked, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["evaluate", str(masked / "images"), "--task", "segment", "--masks", str(masked / "masks"), "--model",
            f"{__file__}:make_segmenter", "--num-classes", str(K), "--tta", "hflip", "--out", str(out),
            "--workers", "0", "--batch-size", "4", "--quiet"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "mIoU" in text and "against plain" in text and "hflip: mIoU" in text
    doc = json.loads((out / "results.json").read_text())
    assert doc["results"]["hflip"]["ci_miou"] is not None and len(doc["results"]["plain"]["per_class_iou"]) == K
    for extra, needle in ((["--merge", "vote"], "dense merge"), (["--adaptive", "0.5"], "--adaptive"),
                          (["--micro-batch", "auto", "--backend", "openvino", "--amp", "bf16"], "--amp")):
        assert main(argv + extra) == 2
        err = capsys.readouterr().err
        assert err.startswith("ttakit: error:") and needle in err and len(err.strip().splitlines()) == 1, err
    assert main(argv[:4] + argv[6:]) == 2  # no --masks
    assert "--masks" in capsys.readouterr().err


def test_segment_runs_on_an_onnx_backend(masked, tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("TTAKIT_CACHE", str(tmp_path / "cache"))  # a fresh export every time
    base = ["evaluate", str(masked / "images"), "--task", "segment", "--masks", str(masked / "masks"), "--model",
            f"{__file__}:make_segmenter", "--num-classes", str(K), "--tta", "hflip", "--workers", "0", "--quiet",
            "--limit", "4"]
    assert main(base + ["--out", str(tmp_path / "torch")]) == 0
    assert main(base + ["--out", str(tmp_path / "export"), "--backend", "onnxruntime"]) == 0  # exports once
    ColourSegmenter.calls = 0
    assert main(base + ["--out", str(tmp_path / "ort"), "--backend", "onnxruntime"]) == 0
    assert ColourSegmenter.calls == 0  # every view ran in onnxruntime (the export is cached)
    fp = json.loads((tmp_path / "ort" / "segmentation" / "run.json").read_text())
    assert fp["backend"].startswith("onnxruntime")
    a, b = (json.loads((tmp_path / d / "results.json").read_text())["results"] for d in ("torch", "ort"))
    assert b["hflip"]["miou"] == pytest.approx(a["hflip"]["miou"], abs=1e-3)


@pytest.mark.parametrize("d", [1, 2, 5])
def test_boundary_erosion_equals_scipy(d):
    ndimage = pytest.importorskip("scipy.ndimage")
    from seg_reference import _erode

    g = np.random.default_rng(d)
    maps = g.uniform(size=(3, 23, 31)) > 0.15
    maps[1] = False
    maps[1, 3:20, 4:29] = True  # a region touching nothing, and noisy ones touching the border
    ours = _erode(torch.from_numpy(maps).float(), d).bool().numpy()
    for c in range(3):
        ref = ndimage.binary_erosion(maps[c], structure=np.ones((2 * d + 1, 2 * d + 1)), border_value=0)
        assert (ours[c] == ref).all()
