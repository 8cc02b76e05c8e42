"""The report of segmentation and detection folders: galleries of the photos TTA changed most, seen in a browser."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

import ttakit
from report_page import Page, assert_whole_page, needs_chromium, one_thread, pixels, screenshots
from ttakit import RunConfig, create_policy
from ttakit.cli import main
from ttakit.datasets import find_masked_images
from ttakit.evaluation.evaluate import EvalOptions
from ttakit.evaluation.overlays import segmentation_panels
from ttakit.evaluation.report import render_page
from ttakit.evaluation.report_gallery import Gallery, detection_gallery, gallery_page, segmentation_gallery
from ttakit.evaluation.segment_eval import SegmentScoring, evaluate_segmentation


def _scene(seed: int, size: tuple[int, int] = (48, 64)) -> tuple[np.ndarray, np.ndarray]:
    """A photo with one bright rectangle (class 1 on background 0) and its mask."""
    rng = np.random.default_rng(seed)
    photo = rng.integers(0, 80, (*size, 3)).astype(np.uint8)
    mask = np.zeros(size, np.int64)
    top, left = int(rng.integers(4, 20)), int(rng.integers(20, 30))  # the object crosses x = 40
    mask[top:top + 20, left:left + 26] = 1
    photo[mask == 1] += 150
    return photo, mask


def _iou(pred: np.ndarray, truth: np.ndarray, k: int = 2) -> float:
    ious = [((pred == c) & (truth == c)).sum() / u for c in range(k) if (u := ((pred == c) | (truth == c)).sum())]
    return float(np.mean(ious))


def _segmentation_folder(root: Path) -> tuple[Path, dict, Gallery]:
    """A scored segmentation folder in memory: 6 photos, a plain model that misses the right
    part of each object and a TTA that finds it on even images and loses it on odd ones."""
    paths, truths, preds = [], [], {"plain": [], "hflip": []}
    for j in range(6):
        photo, mask = _scene(j)
        path = root / f"scene{j}.png"
        Image.fromarray(photo).save(path)
        plain = mask.copy()
        plain[:, 40:] = 0
        tta = mask.copy() if j % 2 == 0 else np.zeros_like(mask)
        paths.append(str(path))
        truths.append(mask)
        preds["plain"].append(plain)
        preds["hflip"].append(tta)
    scores = {k: [_iou(p, t) for p, t in zip(v, truths)] for k, v in preds.items()}
    results = {k: {"merge": "mean", "views": 1 if k == "plain" else 2, "view_names": ["identity", "hflip"][:1 if k == "plain" else 2],
                   "miou": float(np.mean(v)), "pixel_acc": 0.9, "seconds": 0.01,
                   "per_class_iou": [0.9, float(np.mean(v))]} for k, v in scores.items()}
    results["hflip"].update(delta_miou=results["hflip"]["miou"] - results["plain"]["miou"], ci_miou=[-0.1, 0.2],
                            significant=False, verdict="hflip: mIoU within noise")
    doc = {"task": "segment", "model": "toy", "weights": "none", "data": str(root), "n_images": 6, "skipped": [],
           "class_names": ["background", "box"], "results": results}
    gallery = segmentation_gallery(paths, scores, lambda j: truths[j], lambda k, j: preds[k][j], 2)
    return root, doc, gallery


def test_segmentation_gallery_shows_the_photos_tta_changed_most_with_changed_pixels_marked(tmp_path):
    root, doc, gallery = _segmentation_folder(tmp_path)
    context = gallery_page(root, doc, {"identity": 0.7, "hflip": 0.6}, None, 12, gallery)
    text = render_page(doc, context)
    page = Page(text)
    assert page.cells["hflip"]["miou"] == f"{doc['results']['hflip']['miou']:.2%}"
    assert page.cells["hflip"]["delta_miou"] == f"{100 * doc['results']['hflip']['delta_miou']:+.2f}"
    raised, lowered = page.with_class("figure", "raised"), page.with_class("figure", "lowered")
    assert len(raised) == 3 and len(lowered) == 3  # even images gained, odd ones lost
    assert len([a for t, a in page.tags if t == "img" and a.get("title") == "changed"]) == 6
    # The changed-pixels picture of the first raised photo: green where TTA found the object's right part.
    photo, mask = _scene(0)
    card = text.split('class="pcard raised"')[1]
    changed = pixels(Page(card).links[4][2]).astype(float)
    fixed = (mask == 1) & (np.arange(mask.shape[1]) >= 40)[None, :]
    assert changed[fixed].mean(0)[1] > changed[fixed].mean(0)[0] + 60  # green
    untouched = mask == 0
    assert changed[untouched].mean() < 90  # dimmed photo, no colour


def test_segmentation_panels_colour_each_change_by_its_effect():
    truth = np.zeros((40, 40), np.int64)
    truth[:, 20:] = 1
    plain, tta = truth.copy(), truth.copy()
    plain[:10, 20:] = 0  # TTA fixes these
    tta[30:, :20] = 1  # TTA breaks these
    panels = dict(segmentation_panels(np.full((40, 40, 3), 100, np.uint8), truth, plain, tta, 2, side=40))
    changed = pixels(panels["changed"])
    assert changed[2:8, 24:36].mean((0, 1)).argmax() == 1  # green
    assert changed[32:38, 4:16].mean((0, 1)).argmax() == 0  # red
    assert np.ptp(changed[14:26, 4:16].mean((0, 1))) < 10  # unchanged: grey


def _detection_page(root: Path) -> tuple[dict, Gallery]:
    paths, boxes = [], []
    for j in range(4):
        photo, mask = _scene(10 + j)
        Image.fromarray(photo).save(root / f"det{j}.png")
        paths.append(str(root / f"det{j}.png"))
        ys, xs = np.nonzero(mask)
        boxes.append(np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], float))

    def prediction(key: str, j: int) -> dict[str, np.ndarray]:
        shift = 0.0 if (key == "hflip") == (j % 2 == 0) else 12.0
        return {"boxes": boxes[j] + shift, "scores": np.array([0.9]), "labels": np.array([0])}

    scores = {"plain": [0.5 if j % 2 == 0 else 0.9 for j in range(4)], "hflip": [0.9 if j % 2 == 0 else 0.5 for j in range(4)]}
    results = {"plain": {"merge": "nms", "views": 1, "map": 0.7, "map50": 0.9, "map75": 0.6, "seconds": 0.02},
               "hflip@wbf": {"merge": "wbf", "views": 2, "map": 0.72, "map50": 0.91, "map75": 0.62, "seconds": 0.04,
                             "delta_map": 0.02, "ci_map": [0.01, 0.03], "significant": True,
                             "verdict": "hflip@wbf: mAP +2.0 pt: significant gain"}}
    doc = {"task": "detect", "model": "toy", "weights": "none", "data": str(root), "n_images": 4, "skipped": [],
           "class_names": ["box"], "results": results}
    gallery = detection_gallery(paths, {"plain": scores["plain"], "hflip@wbf": scores["hflip"]},
                                lambda j: (boxes[j], np.array([0])),
                                lambda k, j: prediction("hflip" if k != "plain" else k, j), 1)
    return doc, gallery


class BrightSegmenter(nn.Module):
    """Class 1 where the photo is bright, with a left-to-right bias: a flip moves the bias, so
    hflip TTA changes some pixels near the threshold (a fixed rule, no training)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(-0.25, 0.25, x.shape[-1]).view(1, 1, -1)
        bright = x.mean(1) - 0.45 + ramp  # (B, H, W)
        return torch.stack([-bright, bright], 1) * 8.0


SEG_CONFIG = {"input_size": (3, 48, 64), "interpolation": "bilinear", "mean": (0.0,) * 3, "std": (1.0,) * 3,
              "crop_pct": 1.0, "crop_mode": "squash"}


def test_segmentation_evaluation_writes_a_report_with_its_gallery(tmp_path):
    """The real pipeline (evaluate_segmentation) writes report.html through its finish step,
    with a card for each photo whose IoU hflip changed; ``ttakit report`` re-renders it."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for j in range(6):
        photo, mask = _scene(20 + j)
        Image.fromarray(photo).save(tmp_path / "images" / f"s{j}.png")
        Image.fromarray(mask.astype(np.uint8)).save(tmp_path / "masks" / f"s{j}.png")
    lm = ttakit.LoadedModel(BrightSegmenter().eval(), "bright", "none", SEG_CONFIG, ["background", "box"])
    out = tmp_path / "run"
    with one_thread():
        res = evaluate_segmentation(lm, find_masked_images(tmp_path / "images", tmp_path / "masks"),
                                    [create_policy("hflip")], out_dir=out, run_config=RunConfig(16, False),
                                    scoring=SegmentScoring(2), options=EvalOptions(batch_size=4, workers=0, quiet=True))
    assert str(out / "report.html") in res["written"]
    with (out / "per_image.csv").open() as f:
        rows = list(csv.DictReader(f))
    changed = sum(r["plain_iou"] != r["hflip_iou"] for r in rows)
    assert changed > 0
    text = (out / "report.html").read_text()
    page = Page(text)
    assert len(page.with_class("figure", "pcard")) == changed  # every changed photo, at most 12 each way
    assert len([a for t, a in page.tags if t == "img" and a.get("title") == "TTA"]) == changed
    assert page.cells["hflip"]["miou"] == f"{res['results']['hflip']['miou']:.2%}"
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert " ".join((out / "report.html").read_text().split()) == " ".join(text.split())
    # Without the stored outputs the table stands and a note says why the gallery is missing.
    shutil.rmtree(out / "segmentation")
    assert main(["report", str(out)]) == 0
    bare = Page((out / "report.html").read_text())
    assert not bare.with_class("figure", "pcard") and "the gallery is left out" in (out / "report.html").read_text()
    assert bare.cells["hflip"] == page.cells["hflip"]


@needs_chromium
def test_segmentation_and_detection_pages_render_whole_in_chromium(tmp_path):
    pages = []
    for task in ("segment", "detect"):
        root = tmp_path / task
        root.mkdir()
        if task == "segment":
            _, doc, gallery = _segmentation_folder(root)
        else:
            doc, gallery = _detection_page(root)
        text = render_page(doc, gallery_page(root, doc, {}, None, 12, gallery))
        assert "<script" not in text and all(v.startswith(("data:image/", "#")) for _, _, v in Page(text).links)
        assert Page(text).with_class("figure", "pcard")  # the gallery is there
        pages.append(root / "report.html")
        pages[-1].write_text(text, encoding="utf-8")
    for img, console in screenshots(pages, tmp_path):
        assert console == []
        assert_whole_page(img)
