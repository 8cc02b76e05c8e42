"""Detection TTA: exact box round trips for every geometric view, merges, adapters, COCO
evaluation with resume, and the command line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import ttakit
from ttakit import Normalization, PolicyError, RunConfig
from ttakit.cli import main
from ttakit.errors import ConfigError, ModelLoadError, ShapeError
from ttakit.evaluation.detect_eval import DetectScoring, evaluate_detection, load_coco_images
from ttakit.evaluation.evaluate import EvalOptions
from ttakit.runtime.loop import tree_cat as _tree_cat, tree_slice as _tree_slice
from ttakit.tasks import detect
from ttakit.tasks.boxes import NMSOptions, WBFOptions
from ttakit.tasks.detect import (
    DetectionTTA,
    LoadedDetector,
    function_adapter,
    load_detector,
    yolo_adapter,
)
from ttakit.stages import Input
from ttakit.transforms import Crop, HFlip, Resize, Rot90, Rotate, Scale, Shift, VFlip
from ttakit.views import View

RC = RunConfig(8, False)
RAW = Normalization((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # tensors are pixels in [0, 1]
DATA_CONFIG = {"input_size": (3, 96, 96), "interpolation": "bilinear", "mean": (0.0,) * 3, "std": (1.0,) * 3,
               "crop_pct": 1.0, "crop_mode": "center"}


class BrightBoxes(torch.nn.Module):
    """A detector with known answers: in each channel (its label), the bounding box of the
    pixels above 0.5, scored by their mean brightness; a channel with none gives no box."""

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        out = []
        for img in x.float():
            boxes, scores, labels = [], [], []
            for c, ch in enumerate(img):
                ys, xs = torch.nonzero(ch > 0.5, as_tuple=True)
                if len(xs):
                    boxes.append(torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float())
                    scores.append(ch[ys, xs].mean().clamp(0, 1))
                    labels.append(c)
            out.append({"boxes": torch.stack(boxes) if boxes else torch.zeros(0, 4),
                        "scores": torch.stack(scores) if scores else torch.zeros(0),
                        "labels": torch.tensor(labels, dtype=torch.long)})
        return out


# Rectangles (label, x1, y1, x2, y2) on a NON-SQUARE 60 x 84 image, inside every crop below.
RECTS = [(0, 30, 20, 50, 36), (1, 36, 26, 48, 44)]
H, W = 60, 84


def _images(rects=RECTS, b: int = 2, h: int = H, w: int = W) -> torch.Tensor:
    x = torch.zeros(b, 3, h, w)
    for label, x1, y1, x2, y2 in rects:
        x[:, label, y1:y2, x1:x2] = 1.0
    return x


def _tta(policy, merge="wbf", **kw) -> DetectionTTA:
    return DetectionTTA(BrightBoxes(), policy, merge, norm=RAW, run_config=RC, data_config=DATA_CONFIG, **kw)


def _by_label(rec: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
    """The best-scoring box of each label (detections come sorted by score)."""
    out: dict[int, torch.Tensor] = {}
    for b, lab in zip(rec["boxes"], rec["labels"]):
        out.setdefault(int(lab), b)
    return out


EXACT = [HFlip(), VFlip(), Rot90(1), Rot90(2), Rot90(3)]
RESAMPLED = [Scale(0.8), Scale(1.25), Resize(size=(50, 70)), Resize(factor=1.5), Resize(factor=0.83),
             Crop("center", fraction=0.75), Crop("tl", size=(46, 56)), Crop("br", size=(44, 62)),
             Crop("tr", fraction=0.8), Crop("bl", size=(48, 60)), Shift(5, -3), Shift(-7, 0)]
COMBOS = [View((HFlip(), Rot90(1))), View((Rot90(3), VFlip(), Scale(0.9))), View((Resize(factor=1.25), HFlip())),
          View((Crop("tl", size=(50, 64)), Rot90(1))), View((Shift(4, 6), VFlip()))]


# --------------------------------------------------------------------------- transforms
@pytest.mark.parametrize("t", EXACT + RESAMPLED, ids=str)
def test_transform_invert_boxes_undoes_the_geometry_of_a_drawn_box(t):
    """Draw a box, transform the image, read the box of the bright pixels, map it back."""
    x = _images([(0, 30, 20, 50, 36)], b=1)
    y = t.apply(x, RAW)
    found = BrightBoxes()(y)[0]["boxes"]
    back = t.invert_boxes(found, (H, W))
    expected = torch.tensor([[30.0, 20.0, 50.0, 36.0]])
    if t in EXACT:
        assert torch.equal(back, expected)
    else:
        assert float((back - expected).abs().max()) <= 1.0, (t, back)


@pytest.mark.parametrize("view", COMBOS, ids=str)
def test_view_invert_boxes_right_to_left(view):
    y = view.apply(_images(b=1), RAW)
    back = view.invert_boxes(BrightBoxes()(y)[0]["boxes"], (H, W))
    expected = torch.tensor([r[1:] for r in RECTS], dtype=torch.float32)
    assert float((back - expected).abs().max()) <= 1.0, (view, back)


def test_boxes_cut_by_a_view_are_clipped_to_what_it_showed():
    crop = Crop("tl", size=(30, 40))  # shows x < 40, y < 30 of the 60 x 84 image
    box = torch.tensor([[20.0, 10.0, 40.0, 30.0]])  # touches the crop's right and bottom edges
    assert torch.equal(crop.invert_boxes(box + torch.tensor([0, 0, 15, 9]), (H, W)), box)
    zoom_out = Scale(0.5)  # the image sits in the middle 42 x 30; a box in the padding comes back as a line
    back = zoom_out.invert_boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), (H, W))
    assert float(back[0, 2] - back[0, 0]) == 0.0 or float(back[0, 3] - back[0, 1]) == 0.0
    shift = Shift(10, 0)
    assert torch.equal(shift.invert_boxes(torch.tensor([[0.0, 5.0, 30.0, 9.0]]), (H, W)), torch.tensor([[0.0, 5.0, 20.0, 9.0]]))


def test_free_rotation_is_refused_naming_the_view():
    with pytest.raises(PolicyError, match="rotate=10.0"):
        View((HFlip(), Rotate(10.0))).invert_boxes(torch.zeros(1, 4), (H, W))
    with pytest.raises(PolicyError, match="view 'rotate=-5.0'"):
        _tta("hflip*rotate(0,-5)")  # at construction: no model time is spent first
    # A half turn is axis-aligned, whatever the aspect ratio.
    box = Rotate(180.0).invert_boxes(torch.tensor([[0.0, 0.0, 10.0, 6.0]]), (H, W))
    torch.testing.assert_close(box, torch.tensor([[74.0, 54.0, 84.0, 60.0]]))


def test_photometric_views_leave_boxes_alone():
    b = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    assert ttakit.Brightness(1.2).invert_boxes(b, (H, W)) is b


# --------------------------------------------------------------------------- DetectionTTA
def _plain() -> dict[int, torch.Tensor]:
    return _by_label(_tta("none")(_images())[0])


@pytest.mark.parametrize("t", EXACT, ids=str)
def test_exact_views_return_the_plain_boxes_exactly(t):
    res = _tta(View((t,))).predict(_images())
    plain = _plain()
    for rec in res.detections:
        assert _by_label(rec).keys() == plain.keys()
        for k, b in _by_label(rec).items():
            assert torch.equal(b, plain[k])


@pytest.mark.parametrize("view", [View((t,)) for t in RESAMPLED] + COMBOS, ids=str)
def test_resampled_views_return_the_plain_boxes_within_a_pixel(view):
    got = _by_label(_tta(view).predict(_images()).detections[1])
    plain = _plain()
    assert got.keys() == plain.keys()
    for k in plain:
        assert float((got[k] - plain[k]).abs().max()) <= 1.0, (view, k, got[k], plain[k])


def test_many_views_merged_give_the_plain_boxes():
    policy = "hflip*rot90(0,1,2,3)+scale(0.8,1.25)+resize(1.5)+five_crop(0.9)+shift(3:-2)"
    for merge in ("wbf", "nms", "soft_nms"):
        tta = _tta(policy, merge)
        assert len(tta.views) > 12
        res = tta.predict(_images(), keep_views=True)
        for rec in res.detections:
            got, plain = _by_label(rec), _plain()
            if merge != "soft_nms":  # soft-NMS keeps decayed duplicates, by design
                assert sorted(rec["labels"].tolist()) == [0, 1], merge  # one box per label after merging
            for k in plain:
                assert float((got[k] - plain[k]).abs().max()) <= 1.0
        assert len(res.views) == 2 and len(res.views[0]) == len(tta.views)


def test_boxes_on_the_border_under_flips():
    rects = [(0, 0, 0, 12, 9), (1, 70, 51, 84, 60)]  # touching the top-left and bottom-right corners
    x = _images(rects, b=1)
    for policy in ("hflip", "vflip", "flip", "d4"):
        res = _tta(policy, "nms").predict(x, keep_views=True)
        for per_view in res.views[0]:
            assert {k: b.tolist() for k, b in _by_label(per_view).items()} == {0: [0, 0, 12, 9], 1: [70, 51, 84, 60]}


def test_views_with_no_detections_and_images_without_any():
    x = _images([(0, 2, 2, 12, 10)], b=2)
    x[1] = 0.0  # the second image has nothing
    # the br crop does not see the rectangle at the top-left: that view finds nothing
    tta = _tta("identity + crop=br:40x50", "wbf")
    res = tta.predict(x, keep_views=True)
    assert len(res.views[0][1]["boxes"]) == 0 and res.views[0][1]["boxes"].shape == (0, 4)
    assert res.detections[0]["boxes"].tolist() == [[2.0, 2.0, 12.0, 10.0]]
    assert res.detections[0]["scores"].tolist() == [0.5]  # wbf: found by one of two views
    empty = res.detections[1]
    assert empty["boxes"].shape == (0, 4) and empty["scores"].shape == (0,) and empty["labels"].dtype == torch.long


def test_class_aware_merging_and_view_weights():
    overlap = [(0, 20, 20, 50, 40), (1, 22, 21, 50, 40)]  # IoU ~0.9 but different labels
    for merge in ("wbf", "nms", "soft_nms"):
        res = _tta("hflip", merge).predict(_images(overlap, b=1)).detections[0]
        assert sorted(res["labels"].tolist()) == [0, 1], merge
    # View weights come from the policy: NMS scales each view's scores by w / sum(w).
    policy = ttakit.Policy((View(), View((HFlip(),))), weights=(3.0, 1.0))
    res = DetectionTTA(BrightBoxes(), policy, "nms", norm=RAW, run_config=RC, data_config=DATA_CONFIG)(_images(overlap, b=1))
    torch.testing.assert_close(res[0]["scores"], torch.tensor([0.75, 0.75]))


def test_merge_options_are_checked_once_at_construction():
    with pytest.raises(ConfigError, match="^box merge 'nms' has no option 'sigma'; accepted keys: iou_threshold$"):
        _tta("hflip", "nms", merge_options={"sigma": 0.5})
    with pytest.raises(ConfigError, match="^box merge 'wbf': iou_threshold must be a number in \\[0, 1\\], got 2.0$"):
        _tta("hflip", "wbf", merge_options={"iou_threshold": 2.0})
    with pytest.raises(PolicyError, match="unknown box merge 'mean'"):
        _tta("hflip", "mean")
    assert _tta("hflip", "wbf", merge_options={"wbf.conf_type": "max"}).merge_options == WBFOptions(conf_type="max")
    assert _tta("hflip", "nms", merge_options=NMSOptions(0.7)).merge_options == NMSOptions(0.7)
    with pytest.raises(ConfigError, match="takes NMSOptions, got WBFOptions"):
        _tta("hflip", "nms", merge_options=WBFOptions())


class FixedBox(torch.nn.Module):
    """One box at a fixed place whatever the image: a view that moves the image moves the
    de-augmented box, so two views give two overlapping boxes with a known IoU."""

    def forward(self, x):
        box = torch.tensor([[8.0, 2.0, 20.0, 8.0]])
        return [{"boxes": box, "scores": torch.tensor([0.7]), "labels": torch.tensor([0])} for _ in x]


@pytest.mark.parametrize(("method", "sigma"), [("gaussian", 0.5), ("gaussian", 0.2), ("linear", 0.5)])
def test_soft_nms_options_reach_the_merge_and_decay_by_the_formula(method, sigma):
    # in a 30 px wide image, hflip maps [8, 20] to [10, 22]: IoU = 10 * 6 / (72 + 72 - 60) = 5 / 7
    tta = DetectionTTA(FixedBox(), "hflip", "soft_nms", merge_options={"sigma": sigma, "soft_nms.method": method},
                       norm=RAW, run_config=RC, data_config=DATA_CONFIG)
    res = tta.predict(torch.zeros(1, 3, 12, 30), keep_views=True)
    assert [v["boxes"].tolist() for v in res.views[0]] == [[[8.0, 2.0, 20.0, 8.0]], [[10.0, 2.0, 22.0, 8.0]]]
    iou = 5 / 7
    decay = math.exp(-iou ** 2 / sigma) if method == "gaussian" else 1 - iou  # linear: IoU 5/7 > 0.3
    assert res.detections[0]["scores"].tolist() == pytest.approx([0.7, 0.7 * decay], rel=1e-6)


def _photo(h: int = 100, w: int = 140, rects=((0, 50, 30, 80, 60), (1, 60, 40, 90, 75))) -> Image.Image:
    a = np.zeros((h, w, 3), np.uint8)
    for label, x1, y1, x2, y2 in rects:
        a[y1:y2, x1:x2, label] = 255
    return Image.fromarray(a)


def test_input_stages_and_photos_come_back_in_photo_pixels():
    """The plain input is the centre 100 x 100 of the 100 x 140 photo at 96 px: boxes come back
    in the photo's pixels, from every input stage and its transforms."""
    photo = _photo()
    truth = {0: torch.tensor([50.0, 30.0, 80.0, 60.0]), 1: torch.tensor([60.0, 40.0, 90.0, 75.0])}
    policy = "input(96:1.0,128:1.0,96:0.9,120:0.8)*hflip(0,1) + rot90=1 + input=112:1.0|scale=1.1"
    tta = _tta(policy, "wbf")
    res = tta.predict([photo, photo], keep_views=True)
    for per_view, view in zip(res.views[1], tta.views):
        got = _by_label(per_view)
        assert got.keys() == truth.keys(), view
        for k in truth:
            assert float((got[k] - truth[k]).abs().max()) <= 1.5, (view.name, k, got[k])  # <= 1 px of the stage
    for k, b in _by_label(res.detections[0]).items():
        assert float((b - truth[k]).abs().max()) <= 1.0
    # A stage's window is the source of truth: a corner window of a non-square photo.
    tl = Input(96, 1.0, "tl").window((100, 140))
    assert tl == pytest.approx((0.0, 0.0, 100.0, 100.0), abs=0.5)
    with pytest.raises(PolicyError, match="pass the photos"):
        _tta("input=128:1.0")(torch.zeros(1, 3, 96, 96))


# --------------------------------------------------------------------------- loop and adapters
def test_the_view_loop_slices_and_joins_lists_of_per_image_dicts():
    recs = [{"boxes": torch.zeros(i, 4), "scores": torch.zeros(i), "labels": torch.zeros(i)} for i in range(5)]
    assert _tree_slice(recs, 1, 3) == recs[1:3]
    assert _tree_cat([recs[:2], recs[2:]]) == recs
    # tuples and lists of tensors still work as before
    parts = [(torch.ones(2, 3), [torch.zeros(2)]), (torch.ones(1, 3), [torch.zeros(1)])]
    joined = _tree_cat(parts)
    assert isinstance(joined, tuple) and joined[0].shape == (3, 3) and joined[1][0].shape == (3,)
    assert _tree_slice(joined, 1, 3)[1][0].shape == (2,)


def test_function_adapter_and_output_checks():
    # a box centred left-right, so the mirrored view finds it at the same place
    fn = lambda x: ([torch.tensor([[10.0, 2.0, 20.0, 8.0]])] * len(x), [torch.tensor([0.7])] * len(x),
                    [torch.tensor([2])] * len(x))
    out = DetectionTTA(function_adapter(fn), "hflip", "nms", norm=RAW, run_config=RC, data_config=DATA_CONFIG)(
        torch.zeros(3, 3, 20, 30))
    assert len(out) == 3 and out[0]["labels"].tolist() == [2]
    with pytest.raises(ShapeError, match="one dict per image"):
        DetectionTTA(function_adapter(lambda x: [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                                                  "labels": torch.zeros(0)}]), "none", run_config=RC)(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ShapeError, match="missing scores"):
        detect.as_detections([{"boxes": torch.zeros(1, 4), "labels": torch.zeros(1)}], 1)


class RawYolo(torch.nn.Module):
    """YOLO-style raw output for bright channels: one anchor per channel, ``cx, cy, w, h, obj, classes``."""

    def forward(self, x):
        rows = []
        for rec in BrightBoxes()(x):
            r = torch.zeros(3, 8)  # 3 anchors, 3 classes
            for b, lab in zip(rec["boxes"], rec["labels"]):
                r[lab, :4] = torch.cat([(b[:2] + b[2:]) / 2, b[2:] - b[:2]])
                r[lab, 4] = 0.9
                r[lab, 5 + lab] = 1.0
            rows.append(r)
        return (torch.stack(rows), "features")  # as YOLOv5: the predictions first


def test_yolo_adapter_decodes_and_letterboxes_each_view():
    plain = _plain()
    for letterbox in (None, 64, (48, 96)):
        det = yolo_adapter(RawYolo(), conf_threshold=0.5, letterbox=letterbox)
        res = DetectionTTA(det, "hflip*rot90(0,1)", "wbf", norm=RAW, run_config=RC, data_config=DATA_CONFIG)(_images())
        got = _by_label(res[0])
        assert got.keys() == plain.keys()
        tol = 1e-4 if letterbox is None else 2.5  # letterboxing resamples at up to 1/0.57 px per pixel
        for k in plain:
            assert float((got[k] - plain[k]).abs().max()) <= tol, (letterbox, got[k], plain[k])
            assert float(res[0]["scores"][res[0]["labels"] == k][0]) == pytest.approx(0.9)


def test_a_torchvision_detector_with_random_weights_end_to_end():
    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=3).eval()
    x = torch.rand(2, 3, 120, 160)
    tta = DetectionTTA(model, "hflip", "wbf", norm=RAW, run_config=RunConfig(4, True), data_config=DATA_CONFIG,
                       max_detections=50)
    res = tta.predict(x, keep_views=True)
    assert len(res.detections) == 2 and len(res.views[0]) == 2
    for rec in res.detections:
        b = rec["boxes"]
        assert b.dtype == torch.float32 and b.shape[1] == 4 and 0 < len(b) <= 50
        assert bool((b[:, 0] >= 0).all() and (b[:, 2] <= 160).all() and (b[:, 3] <= 120).all())
        assert set(rec["labels"].tolist()) <= {1, 2}  # never the background
    # each view's boxes are the model's own on that view, mapped back
    with torch.inference_mode():
        mirrored = model(x.flip(-1))[0]["boxes"]
    back = HFlip().invert_boxes(mirrored, (120, 160))
    torch.testing.assert_close(res.views[0][1]["boxes"], back[(back[:, 2] > back[:, 0]) & (back[:, 3] > back[:, 1])])


# --------------------------------------------------------------------------- evaluation
def _coco_set(root, n: int = 6):
    """PNG images with bright rectangles and their COCO annotations (category ids 1, 2 = labels 0, 1).
    The photos are squares (the plain input shows all of them) at 1x and 2x the model's 64 px."""
    (root / "img").mkdir(parents=True)
    g = np.random.default_rng(0)
    images, anns = [], []
    for i in range(n):
        f = 2 if i % 2 else 1
        h = w = 64 * f
        a = np.zeros((h, w, 3), np.uint8)
        for label in range(2 if i % 3 else 1):
            x1, y1 = f * int(g.integers(0, 44)), f * int(g.integers(0, 44))
            bw, bh = f * int(g.integers(8, 20)), f * int(g.integers(8, 20))
            a[y1:y1 + bh, x1:x1 + bw, label] = 255
            anns.append({"id": len(anns) + 1, "image_id": 100 + i, "category_id": label + 1,
                         "bbox": [x1, y1, bw, bh], "area": bw * bh, "iscrowd": 0})
        Image.fromarray(a).save(root / "img" / f"{i}.png")
        images.append({"id": 100 + i, "file_name": f"{i}.png", "height": h, "width": w})
    images.append({"id": 999, "file_name": "missing.png", "height": 10, "width": 10})  # a skipped file
    doc = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "red"}, {"id": 2, "name": "green"}]}
    (root / "coco.json").write_text(json.dumps(doc))
    return root / "img", root / "coco.json"


def _scores(results: dict) -> dict:
    """Results without the timings (a recomputed chunk takes another time)."""
    return {k: {m: v for m, v in r.items() if m not in ("seconds", "images_per_s")} for k, r in results.items()}


class Counting(BrightBoxes):
    calls = 0

    def forward(self, x):
        Counting.calls += len(x)
        return super().forward(x)


def _detector() -> LoadedDetector:
    cfg = {**DATA_CONFIG, "input_size": (3, 64, 64), "interpolation": "bicubic"}
    return LoadedDetector(Counting(), "bright", "none", cfg, ["red", "green", "blue"])


def make_detector() -> LoadedDetector:  # for the command line: tests/test_detect.py:make_detector
    return _detector()


def test_load_detector_from_a_file_spec():
    det = load_detector(f"{__file__}:make_detector", class_names=["a", "b"])
    assert isinstance(det.model, Counting) and not det.model.training
    assert det.class_names == ["a", "b"] and det.label_name(1) == "b" and det.label_name(7) == "7"
    with pytest.raises(ModelLoadError, match="detector '.*make_detector' takes no weights argument"):
        load_detector(f"{__file__}:make_detector", weights="w.safetensors")
    with pytest.raises(ModelLoadError, match="has no callable 'nothing_here'"):
        load_detector(f"{__file__}:nothing_here")


def test_evaluate_detect_perfect_detector_resume_and_reuse(tmp_path):
    folder, ann = _coco_set(tmp_path)
    data = load_coco_images(folder, ann)
    policies = [ttakit.create_policy("hflip"), ttakit.create_policy("rot90(0,1)")]
    out = tmp_path / "run"
    options = EvalOptions(batch_size=3, workers=0)
    Counting.calls = 0
    res = evaluate_detection(_detector(), data, policies, out_dir=out, merges=["nms", "wbf"], run_config=RC,
                             options=options, scoring=DetectScoring())
    assert Counting.calls == 6 * 3  # 6 readable images x 3 distinct views (identity, hflip, rot90=1)
    rows = res["results"]
    assert list(rows) == ["plain", "hflip@nms", "hflip@wbf", "rot90(0,1)@nms", "rot90(0,1)@wbf"]
    # the images are square windows of the photos at 64 px: boxes mapped back to the photo score perfectly
    for key, row in rows.items():
        assert row["map"] == pytest.approx(1.0) and row["map50"] == pytest.approx(1.0), key
        assert row["views"] == (1 if key == "plain" else 2) and row["seconds"] > 0
    assert [s["path"].endswith("missing.png") for s in res["skipped"]] == [True]
    assert set(res["per_view"]) == {"identity", "hflip", "rot90=1"}
    # resume: a lost chunk is recomputed, nothing else; results are the same
    chunks = sorted((out / "detections").glob("chunk_*.safetensors"))
    assert len(chunks) == 3
    chunks[1].unlink()
    Counting.calls = 0
    again = evaluate_detection(_detector(), data, policies, out_dir=out, merges=["nms", "wbf"], run_config=RC,
                               options=options, scoring=DetectScoring())
    assert Counting.calls == 3 * 3 and _scores(again["results"]) == _scores(rows)
    # a policy of stored views costs no model time; another label map is only scoring
    Counting.calls = 0
    only = evaluate_detection(_detector(), data, [ttakit.create_policy("hflip")], out_dir=out, merges=["soft_nms"],
                              run_config=RC, options=options, scoring=DetectScoring({"sigma": 0.3}, label_map="id"))
    assert Counting.calls == 0
    assert only["results"]["plain"]["map"] < 0.6  # labels 0/1 read as ids: red boxes unscored, green called red
    typos = {"iou_treshold": "no box merge of this run \\(soft_nms, wbf\\) has an option 'iou_treshold'; accepted keys",
             "wbf.sigma": "box merge 'wbf' has no option 'sigma'; accepted keys",
             "nms.iou_threshold": "is for 'nms', which this run does not use"}  # nms is not run
    for typo, message in typos.items():
        with pytest.raises(ConfigError, match=message):
            evaluate_detection(_detector(), data, policies, out_dir=out, merges=["soft_nms", "wbf"], run_config=RC,
                               options=options, scoring=DetectScoring({typo: 0.5}))


def test_evaluate_detect_command_line(tmp_path, capsys):
    folder, ann = _coco_set(tmp_path)
    out = tmp_path / "cli"
    argv = ["evaluate", "--task", "detect", str(folder), "--annotations", str(ann), "--detector",
            f"{__file__}:make_detector", "--tta", "hflip", "--box-merge", "wbf", "--box-merge", "nms",
            "--box-merge", "concat", "--box-option", "iou_threshold=0.6", "--out", str(out), "--workers", "0", "--batch-size", "4", "--quiet"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "hflip@wbf" in text and "hflip@nms" in text and "hflip@concat" in text and "mAP50" in text
    doc = json.loads((out / "results.json").read_text())
    assert doc["task"] == "detect" and doc["results"]["hflip@wbf"]["map"] == pytest.approx(1.0)
    assert main(argv) == 0  # resumed from the stored detections: the same table
    assert json.loads((out / "results.json").read_text())["results"] == doc["results"]
    capsys.readouterr()
    assert main(argv[:6] + argv[8:]) == 2  # no --detector
    err = capsys.readouterr().err
    assert err.startswith("ttakit: error:") and "--detector" in err and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- command line
def test_predict_and_views_task_detect(tmp_path, capsys):
    photo = tmp_path / "p.png"
    _photo().save(photo)
    common = ["--task", "detect", "--detector", f"{__file__}:make_detector", "--tta", "hflip*rot90(0,1)"]
    assert main(["predict", str(photo), *common, "--json", "--box-merge", "nms"]) == 0
    doc = json.loads(capsys.readouterr().out)
    img = doc["images"][0]
    assert doc["merge"] == "nms" and len(img["views"]) == 4
    boxes = {d["name"]: d["box"] for d in img["detections"]}
    # the photo is seen at 64/100 of its size: within a model pixel of the truth
    assert boxes == {"red": pytest.approx([50.0, 30.0, 80.0, 60.0], abs=1.6),
                     "green": pytest.approx([60.0, 40.0, 90.0, 75.0], abs=1.6)}
    assert main(["predict", str(photo), *common]) == 0
    text = capsys.readouterr().out
    assert "red" in text and "views:" in text and "hflip|rot90=1" in text
    png = tmp_path / "views.png"
    assert main(["views", str(photo), *common, "--out", str(png)]) == 0
    assert "4 views" in capsys.readouterr().out and Image.open(png).size[0] > 600
    # a torchvision model by name, random weights (asked for)
    assert main(["predict", str(photo), "--task", "detect", "--detector", "fasterrcnn_mobilenet_v3_large_320_fpn",
                 "--weights", "random", "--num-classes", "3", "--tta", "hflip", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "fasterrcnn_mobilenet_v3_large_320_fpn"
    mine = ["--detector", f"{__file__}:make_detector"]
    for bad, says in ((["--detector", "no_such_module_xyz:f"], "cannot import 'no_such_module_xyz'"),
                      (["--detector", "not_a_torchvision_model"], "unknown torchvision detection model"),
                      ([], "--detector"), ([*mine, "--merge", "mean"], "--box-merge"),
                      ([*mine, "--box-merge", "concat", "--box-option", "iou_threshold=0.6"],
                       "box merge 'concat' has no option 'iou_threshold'; concat takes no options")):
        assert main(["predict", str(photo), "--task", "detect", *bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("ttakit: error:") and says in err and len(err.strip().splitlines()) == 1, err
