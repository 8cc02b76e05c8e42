"""Photo corrections: each is PIL's own function on the source photo, names read back, no pixel moves."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw
from scipy import ndimage
from torch import nn

import ttakit
from ttakit import ClassificationTTA, KeypointsTTA, PolicyError, RunConfig, SegmentationTTA
from ttakit.corrections import CORRECTIONS, AutoContrast, Corrected, Equalize, Gamma, Median, Unsharp
from ttakit.data import InputRenderer, input_transform
from ttakit.errors import UnknownNameError
from ttakit.policy import create_policy, load_policy, parse_policy, parse_view, save_policy
from ttakit.stages import Input
from ttakit.tasks.detect import DetectionTTA
from ttakit.transforms import HFlip, Rot90, Scale
from ttakit.views import View

RC = RunConfig(8, False)
CFG_64 = {"input_size": (3, 64, 64), "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3,
          "crop_pct": 0.875, "crop_mode": "center"}


def _gamma_numpy(g: float):
    def f(img: Image.Image) -> Image.Image:
        a = np.asarray(img, dtype=np.float64)
        return Image.fromarray(np.minimum(255, np.floor(255.0 * (a / 255.0) ** g + 0.5)).astype(np.uint8))
    return f


# Reference implementations written from each algorithm's definition (numpy/scipy), not by
# calling the PIL function the correction calls: a wrong function, option or channel order fails.
def _lut_apply(img, luts):
    a = np.asarray(img)
    return Image.fromarray(np.stack([luts[c][a[..., c]] for c in range(3)], -1).astype(np.uint8))


def autocontrast_numpy(cutoff=0):
    """ImageOps.autocontrast's documented algorithm, per channel from its histogram."""
    def f(img):
        a = np.asarray(img)
        luts = []
        for c in range(3):
            h = np.bincount(a[..., c].ravel(), minlength=256).astype(np.int64)
            if cutoff:
                for order in (range(256), range(255, -1, -1)):
                    cut = int(h.sum()) * cutoff // 100
                    for i in order:
                        take = min(cut, int(h[i]))
                        h[i] -= take
                        cut -= take
                        if cut <= 0:
                            break
            nz = np.nonzero(h)[0]
            lo, hi = (nz[0], nz[-1]) if len(nz) else (0, 0)
            if hi <= lo:
                luts.append(np.arange(256))
                continue
            scale = 255.0 / (hi - lo)
            ix = np.arange(256) * scale - lo * scale
            luts.append(np.clip(ix.astype(np.int64), 0, 255))
        return _lut_apply(img, luts)
    return f


def equalize_numpy(img):
    """Histogram equalisation as PIL documents it: a cumulative histogram in 255 steps."""
    a = np.asarray(img)
    luts = []
    for c in range(3):
        h = np.bincount(a[..., c].ravel(), minlength=256).astype(np.int64)
        nz = h[h > 0]
        step = (int(nz.sum()) - int(nz[-1])) // 255 if len(nz) > 1 else 0
        if not step:
            luts.append(np.arange(256))
            continue
        cum = np.concatenate([[0], np.cumsum(h)[:-1]])
        luts.append(np.minimum((step // 2 + cum) // step, 255))
    return _lut_apply(img, luts)


def median_numpy(size):
    """A size x size median with the edge pixels repeated (scipy's mode 'nearest')."""
    def f(img):
        a = np.asarray(img)
        return Image.fromarray(ndimage.median_filter(a, size=(size, size, 1), mode="nearest"))
    return f


def unsharp_numpy(radius, percent, threshold):
    """Unsharp mask with scipy's Gaussian (PIL blurs with three box passes: close, not equal)."""
    def f(img):
        a = np.asarray(img).astype(np.float64)
        blur = ndimage.gaussian_filter(a, sigma=(radius, radius, 0), mode="nearest")
        diff = a - blur
        out = np.where(np.abs(diff) >= threshold, a + diff * percent / 100.0, a)
        return Image.fromarray(np.clip(np.round(out), 0, 255).astype(np.uint8))
    return f


# Each correction beside its reference; unsharp's is close, not equal (PIL blurs with box passes).
CASES = [
    (AutoContrast(), autocontrast_numpy(0)),
    (AutoContrast(1.0), autocontrast_numpy(1)),
    (Equalize(), equalize_numpy),
    (Gamma(0.7), _gamma_numpy(0.7)),
    (Gamma(1.4), _gamma_numpy(1.4)),
    (Unsharp(2.0), unsharp_numpy(2, 150, 3)),
    (Median(3), median_numpy(3)),
]
EXACT = ("autocontrast", "equalize", "gamma", "median")


@pytest.fixture(scope="module")
def real_photos(sample_dir) -> list[Image.Image]:
    """Three real photos, one of them darkened and flattened (what the corrections repair)."""
    photos = [ttakit.load_image(p) for p in sorted(sample_dir.glob("*.JPEG"))[::170][:3]]
    photos[0] = Image.eval(photos[0], lambda v: 40 + v // 4)
    return photos


@pytest.mark.parametrize(("correction", "pil"), CASES, ids=[c.name for c, _ in CASES])
def test_each_correction_is_pils_own_function_on_real_photos(correction, pil, real_photos, default_lm):
    cfg = default_lm.data_config
    for img in real_photos:
        expected = np.asarray(pil(img)).astype(np.int64)
        got = correction(img)
        assert got.size == img.size and got.mode == "RGB"
        diff = np.abs(np.asarray(got).astype(np.int64) - expected)
        if correction.name.split("=")[0] in EXACT:
            assert diff.max() == 0
        else:  # within a grey level on average, 5 levels on 99% of the pixels
            assert diff.mean() < 0.5 and np.percentile(diff, 99) <= 5
    assert not np.array_equal(np.asarray(correction(real_photos[0])), np.asarray(real_photos[0]))
    # Rendered on the source photo, before the resize, for the plain and a re-sampled stage alike.
    views = [View(corrections=(correction,)), View(source=Input(256, 1.0), corrections=(correction,))]
    for img in real_photos[1::-1]:
        out = InputRenderer({v.stage for v in views}, cfg)(img)
        assert torch.equal(out[correction.name], default_lm.transform()(expected := correction(img)))
        assert torch.equal(out[f"input=256:1|{correction.name}"], input_transform(Input(256, 1.0), cfg)(expected))
    assert not torch.equal(out[correction.name], out["identity"])  # the dim photo did change


def test_views_differing_only_in_corrections_render_and_score_apart(default_lm, real_photos):
    policy = "identity + autocontrast + autocontrast=1 + equalize + input=256:1.0 + input=256:1.0|autocontrast"
    tta = ClassificationTTA(default_lm.model, policy, run_config=RC, data_config=default_lm.data_config)
    rendered = tta.inputs(real_photos[:1]).batches
    assert sorted(rendered) == sorted(["identity", "autocontrast", "autocontrast=1", "equalize", "input=256:1",
                                       "input=256:1|autocontrast"])
    assert len({r.sum().item() for r in rendered.values()}) == len(rendered)  # six different renderings
    logits = tta.forward_views(real_photos[:1])  # (1, 6, C)
    assert len({round(float(v), 4) for v in logits[0].max(-1).values}) == 6


def test_evaluate_stores_each_corrected_view_under_its_own_name(real_photos, tmp_path):
    from ttakit.datasets import detect_dataset
    from ttakit.evaluation.evaluate import EvalOptions, evaluate
    from ttakit.evaluation.classify_logits import load_logits

    classes = ["a", "b", "c"]
    (tmp_path / "labels.txt").write_text("\n".join(classes))
    for name, photo in zip(classes, real_photos):
        (tmp_path / "data" / name).mkdir(parents=True)
        photo.save(tmp_path / "data" / name / "0.png")
    torch.manual_seed(0)
    lm = ttakit.load_model("test_resnet", weights="random", num_classes=3, labels=tmp_path / "labels.txt")
    data = detect_dataset(tmp_path / "data", classes)
    policies = [create_policy("autocontrast=1 + equalize"), create_policy("identity + gamma=0.7|hflip")]
    evaluate(lm, data, policies, out_dir=tmp_path / "out", run_config=RC,
             options=EvalOptions(batch_size=3, workers=1, quiet=True))
    logits, labels, names, _ = load_logits(tmp_path / "out")
    assert names == ["identity", "autocontrast=1", "equalize", "gamma=0.7|hflip"]
    # Rendered in the DataLoader worker exactly as in process, each view apart from the others.
    tta = ClassificationTTA(lm.model, [parse_view(n) for n in names], run_config=RC, data_config=lm.data_config)
    expected = tta.forward_views(data.paths)  # (3, 4, 3)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(expected[0, 0], expected[0, 1]) and not torch.allclose(expected[0, 1], expected[0, 2])


@st.composite
def views(draw) -> View:
    pool = [AutoContrast(), AutoContrast(0.5), Equalize(), Gamma(0.7), Gamma(1.25), Unsharp(2.0),
            Unsharp(1.5, 200, 0), Median(3), Median(5)]
    corrections = tuple(draw(st.lists(st.sampled_from(pool), max_size=3)))
    source = draw(st.sampled_from([None, Input(256, 1.0), Input(224, 0.875, "tl")]))
    transforms = tuple(draw(st.lists(st.sampled_from([HFlip(), Rot90(1), Scale(1.1)]), max_size=2)))
    return View(transforms, source, corrections)


@settings(max_examples=60, deadline=None)
@given(views())
def test_view_names_with_corrections_read_back(view):
    assert parse_view(view.name) == view
    if view.corrections:  # (a lone `hflip` in policy text is the preset: identity + flip)
        assert [v.name for v in parse_policy(view.name)] == [view.name]
    assert (view.stage is None) == (view.source is None and not view.corrections)


def test_policy_text_and_json(tmp_path):
    assert [v.name for v in parse_policy("gamma(0.7,1,1.4)")] == ["gamma=0.7", "identity", "gamma=1.4"]
    assert [v.name for v in parse_policy("hflip|autocontrast")] == ["autocontrast|hflip"]
    assert [v.name for v in parse_policy("autocontrast*hflip")] == ["autocontrast", "autocontrast|hflip"]
    assert [v.name for v in parse_policy("input=256:1.0|median=3|unsharp=2")] == ["input=256:1|median=3|unsharp=2"]
    assert parse_view("median=1").is_identity and not parse_view("equalize").is_identity
    policy = create_policy("identity + autocontrast=1|input=288:1.0 + unsharp=2:200:0|hflip")
    loaded = load_policy(save_policy(policy, tmp_path / "p.json"))
    assert loaded.views == policy.views
    assert loaded.view_names == ["identity", "input=288:1|autocontrast=1", "unsharp=2:200:0|hflip"]


@pytest.mark.parametrize(("text", "said"), [
    ("gamma", r"gamma needs a value, e\.g\. gamma=0\.7"),
    ("gamma=0", "gamma must be positive, got 0"),
    ("median=4", "median size must be odd and at least 3, got 4"),
    ("autocontrast=60", r"autocontrast cutoff is a percent in \[0, 50\), got 60"),
    ("equalize=2", "equalize takes no value, got equalize=2"),
    ("unsharp=2:3", r"unsharp expects RADIUS\[:PERCENT:THRESHOLD\].*got '2:3'"),
])
def test_malformed_corrections_say_what_is_expected(text, said):
    with pytest.raises(PolicyError, match=said):
        parse_policy(text)


def test_corrections_are_a_registry():
    assert CORRECTIONS.names() == ["autocontrast", "equalize", "gamma", "median", "unsharp"]
    with pytest.raises(UnknownNameError, match="equalize"):
        CORRECTIONS.get("equalise")


def test_a_tensor_input_with_a_correction_says_to_pass_photos(tiny_model):
    with pytest.raises(PolicyError, match="pass the photos"):
        ClassificationTTA(tiny_model, "identity + autocontrast", run_config=RC)(torch.randn(1, 3, 64, 64))


# --------------------------------------------------------------------------- no pixel moves
def _scene() -> Image.Image:
    """A dim, low-contrast photo with one bright disc off the centre (corrections keep it in place)."""
    img = Image.new("RGB", (300, 240), (40, 40, 40))
    ImageDraw.Draw(img).ellipse((160, 90, 190, 120), fill=(120, 120, 120))
    return img


CORRECTED_VIEWS = "identity + autocontrast + equalize|hflip + gamma=0.7 + median=3|rot90=1 + input=96:1.0|unsharp=2"


class PerPixel(nn.Module):
    def forward(self, x):
        return x[:, :1] - x[:, :1].mean((2, 3), keepdim=True)  # brighter than the image's mean: the disc


def test_segmentation_of_corrected_views_lands_on_the_plain_grid():
    seg = SegmentationTTA(PerPixel(), CORRECTED_VIEWS, data_config=CFG_64, run_config=RC)
    res = seg.predict([_scene()])
    plain = SegmentationTTA(PerPixel(), "identity", data_config=CFG_64, run_config=RC).predict([_scene()]).output
    assert float(res.coverage.min()) == len(seg.views)  # no view lost a pixel: the inverses are the identity
    assert torch.equal(res.output > 0.2, plain > 0.2) or float(((res.output > 0.2) != (plain > 0.2)).float().mean()) < 0.01
    for view in seg.views[1:5]:  # each corrected view alone: the disc in the same place
        alone = SegmentationTTA(PerPixel(), view, data_config=CFG_64, run_config=RC).predict([_scene()]).output
        assert float(((alone > 0.2) != (plain > 0.2)).float().mean()) < 0.01, view.name


class Brightest(nn.Module):
    """The centre of the bright pixels, as one keypoint."""

    def forward(self, x):
        m = x.mean(1)  # (B, H, W)
        w = (m > (m.amax((1, 2), keepdim=True) + m.mean((1, 2), keepdim=True)) / 2).float()
        ys, xs = torch.meshgrid(torch.arange(x.shape[-2]) + 0.5, torch.arange(x.shape[-1]) + 0.5, indexing="ij")
        pts = torch.stack([(w * xs).sum((1, 2)), (w * ys).sum((1, 2))], -1) / w.sum((1, 2))[:, None]
        return pts[:, None]  # (B, 1, 2) pixel (x, y)


def test_keypoints_of_corrected_views_land_on_the_plain_point():
    kp = KeypointsTTA(Brightest(), CORRECTED_VIEWS, data_config=CFG_64, run_config=RC)
    plain = KeypointsTTA(Brightest(), "identity", data_config=CFG_64, run_config=RC).predict([_scene()])[0]
    for view in kp.views[1:]:
        alone = KeypointsTTA(Brightest(), view, data_config=CFG_64, run_config=RC).predict([_scene()])[0]
        assert float((alone - plain).abs().max()) <= 1.0, view.name


class BrightBox(nn.Module):
    def forward(self, x):
        out = []
        for img in x:
            m = img.mean(0)
            ys, xs = torch.nonzero(m > (m.max() + m.mean()) / 2, as_tuple=True)
            box = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()[None]
            out.append({"boxes": box, "scores": torch.ones(1), "labels": torch.zeros(1, dtype=torch.long)})
        return out


def test_boxes_of_corrected_views_come_back_where_the_plain_box_is():
    policy = create_policy(CORRECTED_VIEWS.replace("|rot90=1", ""))
    res = DetectionTTA(BrightBox(), policy, data_config=CFG_64, run_config=RC).predict([_scene()], keep_views=True)
    boxes = {v.name: d["boxes"] for v, d in zip(policy.views, res.views[0])}
    for name, b in boxes.items():
        assert b.shape == (1, 4)
        torch.testing.assert_close(b, boxes["identity"], atol=5.0, rtol=0, msg=name)  # photo pixels, 64 px grid
    assert torch.allclose(res.detections[0]["boxes"], boxes["identity"], atol=5.0)
    assert isinstance(policy.views[1].stage, Corrected)


def test_export_refuses_a_correction_with_one_line():
    from ttakit.runtime.export import view_steps
    from ttakit.transforms import Normalization

    with pytest.raises(PolicyError, match="autocontrast=1"):
        view_steps(parse_view("autocontrast=1|hflip"), (64, 64), Normalization())


def test_kfold_per_image_rows_average_to_the_estimate():
    """bench_corrections' paired intervals come from these rows: they must be the estimate's photos."""
    from ttakit.evaluation.search import kfold_estimate

    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (60,), generator=g)
    logits = torch.randn(60, 4, 5, generator=g) + 2.0 * torch.nn.functional.one_hot(labels, 5)[:, None]
    est = kfold_estimate(logits, labels, budget=3, folds=3, per_image=True)
    rows = est.pop("per_image")  # (N, 4): policy correct, NLL, plain correct, NLL
    assert est == kfold_estimate(logits, labels, budget=3, folds=3)
    means = rows.mean(0).tolist()
    assert means == pytest.approx([est["top1"], est["nll"], est["plain_top1"], est["plain_nll"]], abs=1e-6)


def test_the_corrections_preset_joins_a_pool():
    cfg = {"input_size": (3, 224, 224)}
    names = [v.name for v in parse_policy("search_pool + corrections", cfg)]
    assert len(names) == 29 and names[-4:] == ["autocontrast=1", "unsharp=2:250:0", "input=256:1|autocontrast=1",
                                               "input=256:1|unsharp=2:250:0"]
