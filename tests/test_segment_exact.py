"""Default segmentation evaluation scores the model's own output at full resolution: a noisy pixelwise model, checked in numpy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import ttakit
from ttakit.cli import main
from ttakit.datasets import find_masked_images
from ttakit.evaluation.evaluate import EvalOptions
from ttakit.evaluation.seg_stats import SegmentationStats, image_stats, photo_argmax
from ttakit.evaluation.segment_eval import SegmentScoring, evaluate_segmentation, row_masks
from ttakit.runtime.config import RunConfig
from ttakit.tasks.segment import load_segmenter

K, SIDE = 2, 96
RC = RunConfig(8, False)
OPTIONS = EvalOptions(batch_size=5, workers=0, quiet=True)
CONFIG = {"input_size": (3, SIDE, SIDE), "interpolation": "bilinear", "mean": (0.0,) * 3, "std": (1.0,) * 3,
          "crop_pct": 1.0, "crop_mode": "squash"}


def _evaluate(lm, data, policies, merges, out, run_config, scoring, options):
    return evaluate_segmentation(lm, data, policies, out_dir=out, merges=merges, run_config=run_config,
                                 scoring=scoring, options=options)


class NoisyRed(torch.nn.Module):
    """Class 1 where a pixel is red, plus fixed high-frequency noise tied to the input grid: any
    smoothing of its output (a reduced store, area means) changes its score."""

    def forward(self, x):
        h, w = x.shape[-2:]
        yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
        noise = 2.5 * torch.sin(1.7 * xx + 0.3 * yy * yy) * torch.cos(0.9 * yy + 0.05 * xx * xx)
        red = 6.0 * (x[:, 0] - 0.5 * (x[:, 1] + x[:, 2])) - 1.0
        return torch.stack([torch.zeros_like(red), red + noise], 1)


def make_segmenter() -> ttakit.LoadedModel:
    return ttakit.LoadedModel(NoisyRed(), "noisy_red", "none", CONFIG, ["bg", "red"])


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    root = tmp_path_factory.mktemp("noisy")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    g = np.random.default_rng(3)
    for i in range(8):
        h, w = (160, 160) if i % 2 else (120, 150)
        photo = g.integers(0, 120, (h, w, 3)).astype(np.uint8)
        mask = np.zeros((h, w), np.uint8)
        for _ in range(2):
            y, x = int(g.integers(0, h - 40)), int(g.integers(0, w - 40))
            bh, bw = int(g.integers(15, 40)), int(g.integers(15, 40))
            photo[y:y + bh, x:x + bw, 0] = g.integers(150, 255, (bh, bw))
            mask[y:y + bh, x:x + bw] = 1
        mask[:3] = 255
        Image.fromarray(photo).save(root / "images" / f"n{i}.png")
        Image.fromarray(mask, "L").save(root / "masks" / f"n{i}.png")
    return find_masked_images(root / "images", root / "masks")


def _reference(lm, data, flips: list[tuple[int, ...]], merge: str) -> float:
    """mIoU computed independently: the model on each photo resized to its input under each
    flip, flipped back, softmax, merged, bilinear onto the mask's own pixels, argmax, numpy counts."""
    inter, union = np.zeros(K), np.zeros(K)
    transform = lm.transform()
    for path, mpath in zip(data.paths, data.masks):
        photo = ttakit.data.load_image(path)
        x = transform(photo)[None]
        with torch.inference_mode():
            maps = [torch.softmax(lm.model(x.flip(d) if d else x), 1) for d in flips]
        maps = [m.flip(d) if d else m for m, d in zip(maps, flips)]
        probs = torch.stack(maps).mean(0) if merge == "mean" else torch.stack(maps).max(0).values
        pred = F.interpolate(probs, size=(photo.height, photo.width), mode="bilinear", align_corners=False)[0]
        pred, truth = pred.argmax(0).numpy(), np.asarray(Image.open(mpath)).astype(np.int64)
        ok = truth != 255
        for c in range(K):
            inter[c] += np.sum((pred == c) & (truth == c) & ok)
            union[c] += np.sum(((pred == c) | (truth == c)) & ok)
    return float(np.mean(inter[union > 0] / union[union > 0]))


def test_default_evaluate_scores_the_models_own_output(noisy, tmp_path):
    lm = load_segmenter(f"{__file__}:make_segmenter", K)
    policies = [ttakit.create_policy("hflip"), ttakit.create_policy("vflip")]
    res = _evaluate(lm, noisy, policies, ["mean", "max"], tmp_path / "run", RC, SegmentScoring(K), OPTIONS)
    rows = res["results"]
    refs = {"plain": _reference(lm, noisy, [()], "mean")}
    for name, d in (("hflip", (-1,)), ("vflip", (-2,))):
        for merge in ("mean", "max"):
            refs[f"{name}@{merge}"] = _reference(lm, noisy, [(), d], merge)
    for key, ref in refs.items():
        assert rows[key]["miou"] == pytest.approx(ref, abs=1e-9), key
        assert rows[key]["exact"] is True
    assert 0.3 < refs["plain"] < 0.9  # the noise costs the model: a smoothed copy would score higher
    # The old default (area means onto a 32 px store) scores a different, smoother model.
    smooth = _evaluate(lm, noisy, [], None, tmp_path / "smooth", RC,
                                   SegmentScoring(K, store_size=32), OPTIONS)  # exact: unaffected by the store
    assert smooth["results"]["plain"]["miou"] == pytest.approx(refs["plain"], abs=1e-9)


def test_budget_resume_and_rows_from_reduced_maps(noisy, tmp_path, capsys):
    lm = load_segmenter(f"{__file__}:make_segmenter", K)
    out = tmp_path / "run"
    scoring = SegmentScoring(K, store_budget=60_000)  # 8 photos x 3 views x 3 maps: about 25 px uint8
    first = _evaluate(lm, noisy, [ttakit.create_policy("flip")], None, out, RC, scoring, OPTIONS)
    store = first["store"]
    assert store["dtype"] == "uint8" and max(store["map_grid"]) < 32 and store["disk_bytes"] < 200_000
    # hflip alone was not asked for: its views are stored, so it is scored, from the reduced maps
    again = _evaluate(lm, noisy, [ttakit.create_policy("flip"), ttakit.create_policy("hflip")], None,
                                  out, RC, scoring, OPTIONS)
    assert again["results"]["flip"]["exact"] is True and again["results"]["hflip"]["exact"] is False
    assert again["results"]["flip"]["miou"] == first["results"]["flip"]["miou"]
    assert row_masks(out, "hflip", [2])[0].shape == (120, 150)  # the gallery's maps, from the store
    # no budget: nothing stored, still exact; a row added later is refused with what to do
    none = SegmentScoring(K, store_budget=0)
    bare = _evaluate(lm, noisy, [ttakit.create_policy("flip")], None, tmp_path / "bare", RC, none, OPTIONS)
    assert bare["results"]["flip"]["miou"] == first["results"]["flip"]["miou"] and bare["store"]["map_grid"] == [0, 0]
    with pytest.raises(ttakit.TTAKitError, match="new --out"):
        _evaluate(lm, noisy, [ttakit.create_policy("hflip")], None, tmp_path / "bare", RC, none, OPTIONS)
    # the command line marks the rows that are not exact
    argv = ["evaluate", str(noisy.paths[0].rsplit("/", 1)[0]), "--task", "segment", "--masks", noisy.mask_source,
            "--model", f"{__file__}:make_segmenter", "--num-classes", str(K), "--tta", "flip", "--tta", "hflip",
            "--out", str(out), "--workers", "0", "--quiet", "--store-budget", "60KB", "--batch-size", "5"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "hflip *" in text and "not exact" in text and "uint8" in text
    doc = json.loads((out / "results.json").read_text())
    assert doc["results"]["hflip"]["exact"] is False and doc["scoring"]["exact"] is False
    assert "not exact: scored from the reduced stored maps" in (out / "report.html").read_text()


def test_stats_metric_and_chunked_argmax():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(7, 9, 11, generator=g)
    ref = F.interpolate(probs[None], size=(40, 50), mode="bilinear", align_corners=False)[0].argmax(0)
    import ttakit.evaluation.seg_stats as S

    old, S._GROUP_ELEMENTS = S._GROUP_ELEMENTS, 3 * 40 * 50  # three channels at a time
    try:
        assert torch.equal(photo_argmax(probs, (40, 50)), ref)
    finally:
        S._GROUP_ELEMENTS = old
    t = torch.randint(0, 3, (20, 20), generator=g)
    p = torch.randint(0, 3, (20, 20), generator=g)
    m = SegmentationStats(3)
    m.update(image_stats(t, p, torch.ones(20, 20, dtype=torch.bool), 3))
    m.synchronize()  # one process: nothing to gather
    cm = np.zeros((3, 3))
    np.add.at(cm, (t.numpy().ravel(), p.numpy().ravel()), 1)
    iou = np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
    assert m.compute()["miou"] == pytest.approx(iou.mean()) and m.compute()["pixel_acc"] == pytest.approx(np.trace(cm) / 400)


def test_windowed_evaluate_equals_monai_scored_in_numpy(noisy, tmp_path, capsys):
    """--tile: each photo segmented at its own size by tiles; plain and hflip rows equal MONAI's
    sliding_window_inference (on the photo, and on the flipped photo flipped back), scored in numpy."""
    inferers = pytest.importorskip("monai.inferers")
    out = tmp_path / "tiles"
    argv = ["evaluate", str(noisy.paths[0].rsplit("/", 1)[0]), "--task", "segment", "--masks", noisy.mask_source,
            "--model", f"{__file__}:make_segmenter", "--num-classes", str(K), "--tta", "hflip", "--out", str(out),
            "--workers", "0", "--quiet", "--tile", "64", "--overlap", "0.25", "--blend", "gaussian",
            "--stitch-device", "cpu", "--limit", "4"]
    assert main(argv) == 0
    doc = json.loads((out / "results.json").read_text())
    lm = make_segmenter()

    def monai(x):
        return inferers.sliding_window_inference(x, [64, 64], 4, lambda t: torch.softmax(lm.model(t), 1),
                                                 overlap=0.25, mode="gaussian")

    for key in ("plain", "hflip"):
        inter, union = np.zeros(K), np.zeros(K)
        for path, mpath in zip(noisy.paths[:4], noisy.masks[:4]):
            x = torch.from_numpy(np.array(ttakit.data.load_image(path))).permute(2, 0, 1)[None].float() / 255
            with torch.inference_mode():
                probs = monai(x) if key == "plain" else (monai(x) + monai(x.flip(-1)).flip(-1)) / 2
            pred, truth = probs[0].argmax(0).numpy(), np.asarray(Image.open(mpath)).astype(np.int64)
            ok = truth != 255
            for c in range(K):
                inter[c] += np.sum((pred == c) & (truth == c) & ok)
                union[c] += np.sum(((pred == c) | (truth == c)) & ok)
        assert doc["results"][key]["miou"] == pytest.approx(float(np.mean(inter / union)), abs=1e-9), key
        assert doc["results"][key]["exact"] is True
    assert json.loads((out / "segmentation" / "run.json").read_text())["window"]["tile"] == [64, 64]
    assert row_masks(out, "hflip", [1])[0].shape == (160, 160)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_boundary_counts_equal_the_per_class_erosion(seed):
    """image_stats' one-band boundary counts equal the reference per-class erosion bands (checked against scipy)."""
    from seg_reference import boundary_counts

    g = torch.Generator().manual_seed(seed)
    k = 5
    target = F.interpolate(torch.randint(0, k, (1, 1, 6, 7), generator=g).float(), size=(45, 61), mode="nearest")[0, 0].long()
    pred = torch.where(torch.rand(45, 61, generator=g) < 0.1, torch.randint(0, k, (45, 61), generator=g), target)
    pred = torch.roll(pred, (1, 2), (0, 1))
    target[:2] = 255  # ignored pixels form a region of their own
    valid = target != 255
    ours = image_stats(target, pred, valid, k, 0.03)[3:].T
    assert torch.equal(ours, boundary_counts(target, pred, valid, k, 0.03))
