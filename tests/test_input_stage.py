"""Input stages: views re-sampled from the source photo (the tutorial's view, whole image, FixRes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn
from torchvision import transforms as T

import ttakit
from conftest import SAMPLE_DIR
from ttakit import ClassificationTTA, Input, KeypointsTTA, PolicyError, RunConfig, SegmentationTTA
from ttakit.data import InputRenderer, input_transform
from ttakit.stages import input_matrix

RC = RunConfig(8, False)


def _photo(h: int = 300, w: int = 420, seed: int = 0) -> Image.Image:
    """A smooth colourful photo (resampling differences stay small on it)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 6, 8, generator=g)
    img = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)[0]
    return Image.fromarray((img.permute(1, 2, 0).numpy() * 255).astype(np.uint8))


def test_the_models_own_stage_is_the_identity_exactly(default_lm):
    cfg = default_lm.data_config
    plain = Input.of_model(cfg)
    assert plain == Input(224, 0.875) and plain.scale_size() == 256
    for img in (_photo(), _photo(500, 333, 1), Image.open(ttakit.example_image_path())):
        assert torch.equal(input_transform(plain, cfg)(img), default_lm.transform()(img))
    photos = [_photo(), _photo(500, 333, 1)]
    a = ClassificationTTA(default_lm.model, "identity", run_config=RC, data_config=cfg).forward_views(photos)
    b = ClassificationTTA(default_lm.model, "input=224:0.875", run_config=RC, data_config=cfg).forward_views(photos)
    assert torch.equal(a, b)


def test_tutorial_preset_matches_the_tutorials_pipeline(default_lm):
    """The tutorial: the model's own preprocessing plus Resize(256)+CenterCrop(256)+flip of the
    photo, logits summed; its own torchvision pipeline is the reference."""
    cfg = default_lm.data_config
    plain_tf = default_lm.transform()
    tutorial_tf = T.Compose([
        T.Resize(256, interpolation=T.InterpolationMode(cfg["interpolation"])),  # bicubic for this model
        T.CenterCrop(256),
        T.RandomHorizontalFlip(p=1.0),
        T.ToTensor(),
        T.Normalize(cfg["mean"], cfg["std"]),
    ])
    real = sorted(SAMPLE_DIR.glob("*.JPEG"))[::97][:4] if SAMPLE_DIR.is_dir() else []  # a few, when present
    paths = [ttakit.example_image_path(), *real]
    photos = [ttakit.load_image(p) for p in paths]
    with torch.inference_mode():
        model = default_lm.model.eval()
        logits = model(torch.stack([plain_tf(p) for p in photos])) + model(torch.stack([tutorial_tf(p) for p in photos]))
        expected = torch.softmax(logits, -1)
    tta = ClassificationTTA(model, "tutorial", run_config=RC, data_config=cfg)
    assert tta.merge_name == "sum" and tta.policy.view_names == ["identity", "input=256:1|hflip"]
    got = tta(paths)  # paths, decoded once each
    assert float((got - expected).abs().max()) <= 1e-5


def test_photos_as_paths_pil_or_uint8_tensors_agree(tiny_model, tmp_path):
    img = _photo(120, 200)
    path = tmp_path / "p.png"
    img.save(path)
    u8 = torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()
    tta = ClassificationTTA(tiny_model, "hflip*input(160:1.0,192:0.875)", run_config=RC)
    outs = [tta.forward_views(x) for x in ([str(path)], [img], [u8], u8, img)]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], atol=0, rtol=0)
    assert outs[0].shape == (1, 4, 10)


def test_a_tensor_input_with_an_input_stage_says_to_pass_photos(tiny_model):
    tta = ClassificationTTA(tiny_model, "identity + input=160:1.0", run_config=RC)
    with pytest.raises(PolicyError, match="pass the photos"):
        tta(torch.randn(2, 3, 160, 160))
    assert ClassificationTTA(tiny_model, "hflip", run_config=RC)(torch.randn(2, 3, 160, 160)).shape == (2, 10)


def test_window_geometry_and_stage_maps():
    # A 300x420 photo, 224 at crop 0.875: short side -> 256, long -> int(256 * 420 / 300) = 358.
    top, left, h, w = Input(224, 0.875).window((300, 420))
    assert (h, w) == pytest.approx((224 * 300 / 256, 224 * 420 / 358))
    assert top == pytest.approx(16 * 300 / 256) and left == pytest.approx(67 * 420 / 358)
    whole = Input(256, 1.0).window((300, 420))  # the whole centre square
    assert whole[2] == pytest.approx(300) and whole[0] == pytest.approx(0)
    # The map from the plain window to a stage's, applied to the plain window's corners, lands
    # on the same photo points.
    plain, stage, photo = Input(224, 0.875), Input(288, 1.0, "tl"), (300, 420)
    m = input_matrix(stage, plain, photo)
    (_, l0, _, w0), (_, l1, _, w1) = plain.window(photo), stage.window(photo)
    for u in (-1.0, 0.3, 1.0):
        x_photo = l0 + (u + 1) / 2 * w0
        u1 = float(m[0, 0] * u + m[0, 2])
        assert l1 + (u1 + 1) / 2 * w1 == pytest.approx(x_photo)
    assert torch.equal(input_matrix(None, plain, photo), torch.eye(3, dtype=torch.float64))


def test_renderer_builds_every_stage_from_one_decode():
    cfg = {"input_size": (3, 64, 64), "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3,
           "crop_pct": 0.875, "crop_mode": "center"}
    views = ttakit.parse_policy("hflip*input(64:1.0,80:0.9:br)")
    out = InputRenderer({v.source for v in views}, cfg)(_photo())
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "identity": (3, 64, 64), "input=64:1": (3, 64, 64), "input=80:0.9:br": (3, 80, 80)}


class PerPixel(nn.Module):
    """An exactly equivariant segmentation model: a 1x1 convolution."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return self.conv(x)


CFG_64 = {"input_size": (3, 64, 64), "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3,
          "crop_pct": 0.875, "crop_mode": "center"}


@pytest.mark.parametrize("policy", ["input=64:1.0", "input=96:0.875", "input=80:1.0|hflip", "input=64:0.875:tl"])
def test_segmentation_maps_input_stages_back_onto_the_plain_grid(policy):
    photos = [_photo(), _photo(260, 200, 2)]
    model = PerPixel()
    seg = SegmentationTTA(model, f"identity + {policy}", data_config=CFG_64, run_config=RC)
    res = seg.predict(photos)
    plain = SegmentationTTA(model, "identity", data_config=CFG_64, run_config=RC).predict(photos).output
    assert res.output.shape == plain.shape == (2, 4, 64, 64)
    seen = res.coverage[:, 0] == 2  # (B, H, W) pixels the stage saw too
    if policy.endswith(":tl"):  # a corner window covers part of the plain window only
        assert 0.2 < float(seen.float().mean()) < 0.9 and bool(seen[:, 0, 0].all()) and not bool(seen[:, -1, -1].any())
    else:  # the stage's window contains the plain one
        assert float(seen.float().mean()) > 0.97
    # Where both saw the pixel, the stage's prediction (resampled twice) agrees with the plain one.
    err = (res.output - plain).abs().amax(1)[seen]
    assert float(err.mean()) < 0.01 and float(err.max()) < 0.08


def test_keypoints_from_input_stages_land_on_the_plain_point():
    class Brightest(nn.Module):
        def forward(self, x):
            i = x.sum(1).flatten(1).argmax(1)
            return torch.stack([i % x.shape[-1], i // x.shape[-1]], -1)[:, None].float()

    img = Image.new("RGB", (300, 240), (0, 0, 0))
    ImageDraw.Draw(img).ellipse((150, 95, 162, 107), fill=(255, 255, 255))  # a bright dot near the centre
    kp = KeypointsTTA(Brightest(), "identity + input=64:1.0 + input=128:1.0|hflip", data_config=CFG_64, run_config=RC)
    pts = kp.predict([img])[0]
    plain = KeypointsTTA(Brightest(), "identity", data_config=CFG_64, run_config=RC).predict([img])[0]
    assert float((pts - plain).abs().max()) < 1.0  # within a pixel of the plain input's 64 px grid


def test_dense_refuses_stages_it_cannot_map_back(tiny_model):
    squash = {**CFG_64, "crop_mode": "squash"}
    with pytest.raises(PolicyError, match="centre-cropped"):
        SegmentationTTA(PerPixel(), "identity + input=64:1.0", data_config=squash, run_config=RC).predict([_photo()])
