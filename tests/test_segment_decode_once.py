"""Windowed segmentation evaluation decodes each photo once: the pipeline's decode is the one the tiles are cut from."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

import ttakit
from ttakit.datasets import find_masked_images
from ttakit.evaluation import segment_eval
from ttakit.evaluation.evaluate import EvalOptions
from ttakit.evaluation.segment_eval import SegmentScoring, evaluate_segmentation
from ttakit.runtime.config import RunConfig
from ttakit.tasks.window import WindowConfig

CONFIG = {"input_size": (3, 48, 48), "interpolation": "bilinear", "mean": (0.0,) * 3, "std": (1.0,) * 3,
          "crop_pct": 1.0, "crop_mode": "squash"}


def _data(root):
    (root / "images").mkdir()
    (root / "masks").mkdir()
    g = np.random.default_rng(0)
    for i, (h, w) in enumerate([(40, 56), (64, 48), (50, 50)]):
        photo = g.integers(0, 255, (h, w, 3)).astype(np.uint8)
        Image.fromarray(photo).save(root / "images" / f"p{i}.png")
        Image.fromarray((photo[..., 0] > 128).astype(np.uint8), "L").save(root / "masks" / f"p{i}.png")
    return find_masked_images(root / "images", root / "masks")


@pytest.mark.parametrize("workers", [0, 2])
def test_windowed_evaluation_decodes_each_photo_once(tmp_path, monkeypatch, workers):
    """Every PIL.Image.open of a photo is counted (the real open runs): one per photo until the
    scores are written (the report then draws a few photos of its own), with views that need
    the photo re-rendered (an input stage) and re-sampled (a rotation); the scores equal those
    of SegmentationTTA on the decoded photo."""
    data = _data(tmp_path)
    torch.manual_seed(0)
    lm = ttakit.LoadedModel(torch.nn.Conv2d(3, 2, 3, padding=1).eval(), "conv", "random", CONFIG, ["a", "b"])
    real_open = Image.open
    opened: Counter[str] = Counter()

    def counting_open(fp, *args, **kwargs):
        opened[str(fp)] += 1
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    before_report: list[Counter[str]] = []
    real_report = segment_eval.write_report

    def report(out):  # the counts as the scores are done, then the real report
        before_report.append(Counter(opened))
        return real_report(out)

    monkeypatch.setattr(segment_eval, "write_report", report)
    policy = ttakit.create_policy("hflip+rotate(20)+input(40:1)")
    window = WindowConfig(32, 0.25)
    res = evaluate_segmentation(lm, data, [policy], out_dir=tmp_path / "out", run_config=RunConfig(8, False),
                                scoring=SegmentScoring(2), options=EvalOptions(batch_size=2, workers=workers, quiet=True),
                                window=window)
    assert {p: before_report[0][p] for p in data.paths} == {p: 1 for p in data.paths}
    assert res["n_images"] == 3 and res["n_skipped"] == 0
    # The same photos decoded here, segmented whole-photo by the library: the same pixel accuracy.
    monkeypatch.setattr(Image, "open", real_open)
    tta = ttakit.SegmentationTTA(lm.model, policy, window=window, norm=lm.normalization, data_config=lm.data_config)
    right = total = 0
    for path, mpath in zip(data.paths, data.masks):
        pred = tta(ttakit.load_image(path))[0].argmax(0).numpy()
        truth = np.asarray(Image.open(mpath)).astype(np.int64)
        right, total = right + int((pred == truth).sum()), total + truth.size
    assert res["results"][policy.name]["pixel_acc"] == pytest.approx(right / total, abs=1e-9)
