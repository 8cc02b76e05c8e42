"""Sliding-window TTA: parity with MONAI's sliding_window_inference (a reference that is not ours), views undone per tile."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ttakit
from ttakit.errors import ConfigError
from ttakit.policy import Policy, create_policy
from ttakit.transforms import Rot90, VFlip
from ttakit.tasks.dense import SegmentationTTA
from ttakit.tasks.window import WindowConfig, plan_windows, sliding_window_tta, tile_starts
from ttakit.views import View

TILE = 16


def _net(stride: int = 1, seed: int = 0) -> torch.nn.Module:
    """A position-blind net whose tiles disagree near their edges (zero padding), as real nets do."""
    torch.manual_seed(seed)
    layers = [torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(6, 4, 5, padding=2, stride=stride)]
    return torch.nn.Sequential(*layers).eval()


def _softmax(net):
    return lambda t: torch.softmax(net(t), 1)


def _monai(net, x, cfg: WindowConfig):
    monai_inferers = pytest.importorskip("monai.inferers")  # the reference: only the tests comparing with it skip
    return monai_inferers.sliding_window_inference(
        x, list(cfg.size), 3, _softmax(net), overlap=cfg.overlap, mode=cfg.blend, sigma_scale=cfg.sigma_scale,
        padding_mode=cfg.padding_mode, cval=cfg.padding_value)


def _ours(net, x, cfg: WindowConfig, views, merge="mean"):
    return sliding_window_tta(net, x, views, cfg, activation=lambda y: torch.softmax(y, 1), merge=merge)


SIZES = [(37, 53), (16, 45), (11, 13), (9, 40)]  # odd sizes; a side equal to the tile; smaller than a tile


@pytest.mark.parametrize("blend", ["constant", "gaussian"])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
@pytest.mark.parametrize("size", SIZES)
def test_identity_equals_monai(blend, overlap, size):
    net, x = _net(), torch.randn(2, 3, *size)
    cfg = WindowConfig(TILE, overlap, blend, batch=3)
    with torch.inference_mode():
        ours, seen = _ours(net, x, cfg, [View()])
        ref = _monai(net, x, cfg)
    assert ours.shape == ref.shape == (2, 4, *size)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0), float((ours - ref).abs().max())
    assert bool((seen == 1).all())


@pytest.mark.parametrize("blend", ["constant", "gaussian"])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
@pytest.mark.parametrize("size", SIZES)
def test_hflip_equals_monai_on_the_flipped_photo(blend, overlap, size):
    net, x = _net(seed=1), torch.randn(1, 3, *size)
    cfg = WindowConfig(TILE, overlap, blend, batch=4)
    with torch.inference_mode():
        ours, _ = _ours(net, x, cfg, create_policy("hflip").views)
        ref = (_monai(net, x, cfg) + _monai(net, x.flip(-1), cfg).flip(-1)) / 2
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0), float((ours - ref).abs().max())


@pytest.mark.parametrize("size", [(37, 53), (11, 20)])
def test_quarter_turns_and_weights_equal_monai_on_each_view(size):
    net, x = _net(seed=2), torch.randn(1, 3, *size)
    cfg = WindowConfig(TILE, 0.25, "gaussian")
    policy = Policy((View(), View((Rot90(1),)), View((VFlip(),))), weights=(1.0, 2.0, 1.0))
    with torch.inference_mode():
        ours, _ = sliding_window_tta(net, x, policy.views, cfg, weights=torch.tensor(policy.weights),
                                     activation=lambda y: torch.softmax(y, 1))
        ref = (_monai(net, x, cfg) + 2 * torch.rot90(_monai(net, torch.rot90(x, 1, (-2, -1)), cfg), -1, (-2, -1))
               + _monai(net, x.flip(-2), cfg).flip(-2)) / 4
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0), float((ours - ref).abs().max())


def test_a_strided_model_equals_monai():
    net, x = _net(stride=2), torch.randn(1, 3, 40, 56)
    cfg = WindowConfig(TILE, 0.5, "gaussian")
    with torch.inference_mode():
        ours, _ = _ours(net, x, cfg, create_policy("hflip").views)
        ref = (_monai(net, x, cfg) + _monai(net, x.flip(-1), cfg).flip(-1)) / 2
    assert ours.shape == ref.shape == (1, 4, 20, 28)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0)


def test_resampling_views_and_max_are_stitched_whole_then_undone():
    net, x = _net(seed=3), torch.randn(1, 3, 30, 34)
    cfg = WindowConfig(TILE, 0.25, "gaussian")
    policy = create_policy("scale(1,1.25)")
    with torch.inference_mode():
        mean, seen = _ours(net, x, cfg, policy.views)
        top, _ = _ours(net, x, cfg, policy.views, merge="max")
        maps, masks = [], []
        for v in policy.views:  # MONAI on each view's photo, mapped back by the view's own inverse
            y, m = v.invert_dense(_monai(net, v.apply(x, ttakit.Normalization()), cfg), (30, 34), (30, 34))
            maps.append(y)
            masks.append(m)
    m = masks[1]
    ref_mean = (maps[0] + m * maps[1]) / (1 + m)
    ref_max = torch.where(m > 0, torch.maximum(maps[0], maps[1]), maps[0])
    assert torch.allclose(mean, ref_mean, atol=1e-5) and torch.allclose(top, ref_max, atol=1e-5)
    assert torch.equal(seen, 1 + (m > 0).float())


def test_whole_photo_view_and_stitch_device():
    net, x = _net(seed=4), torch.randn(1, 3, 40, 24)
    cfg = WindowConfig(TILE, 0.25, whole_photo=True, stitch_device="cpu")
    with torch.inference_mode():
        ours, seen = _ours(net, x, cfg, [View()])
        small = torch.softmax(net(ttakit.functional.resize(x, (TILE, TILE))), 1)
        ref = (_monai(net, x, cfg) + F.interpolate(small, size=(40, 24), mode="bilinear", align_corners=False)) / 2
    assert torch.allclose(ours, ref, atol=1e-5) and bool((seen == 2).all())


def test_tiles_and_views_share_forwards():
    sizes = []

    class Spy(torch.nn.Module):
        def forward(self, t):
            sizes.append(len(t))
            return t[:, :2]

    x = torch.randn(1, 3, 16, 16)  # one tile: the 4 views of it go into one forward
    sliding_window_tta(Spy(), x, create_policy("flip").views, WindowConfig(TILE, batch=4),
                       run_config=ttakit.RunConfig(micro_batch=8))
    assert sizes == [4]


def test_segmentation_tta_windows_photos_and_refuses_what_it_cannot_do():
    net, x = _net(seed=5), torch.randn(1, 3, 37, 41)
    cfg = WindowConfig(TILE, 0.25, "gaussian")
    seg = SegmentationTTA(net, "hflip", window=cfg, norm=ttakit.Normalization((0.0,) * 3, (1.0,) * 3),
                          data_config={"input_size": (3, TILE, TILE), "mean": (0.0,) * 3, "std": (1.0,) * 3})
    with torch.inference_mode():
        res = seg.predict(x)
        ref = (_monai(net, x, cfg) + _monai(net, x.flip(-1), cfg).flip(-1)) / 2
    assert torch.allclose(res.output, ref, atol=1e-5) and res.coverage.shape == (1, 1, 37, 41)
    photo = (torch.rand(3, 37, 41) * 255).to(torch.uint8)  # a photo: normalised at its own size, then tiled
    with torch.inference_mode():
        ref = seg.predict(photo.float()[None] / 255).output
        assert torch.allclose(seg.predict(photo).output, ref, atol=1e-5)
    with pytest.raises(ConfigError, match="variance"):
        SegmentationTTA(net, "hflip", window=cfg, uncertainty="variance",
                        data_config={"input_size": (3, TILE, TILE), "mean": (0.0,) * 3, "std": (1.0,) * 3})


def test_plans():
    assert tile_starts(150, 64, 0.25) == [0, 48, 86]
    plan = plan_windows((9, 40), (16, 16), 0.5)
    assert plan.pad == (3, 4, 0, 0) and plan.padded == (16, 40) and plan.starts == ((0,), (0, 8, 16, 24))
    with pytest.raises(ConfigError, match="blend"):
        WindowConfig(blend="cosine")


def test_input_stages_and_corrections_resample_the_photo_then_tile():
    """A view with an input stage re-renders the photo (48 px here), is tiled and stitched in that
    frame, then mapped back onto the photo; corrections change the photo's pixels, then it is tiled."""
    from PIL import Image

    from ttakit.corrections import correct
    from ttakit.data import input_transform
    from ttakit.stages import Input

    net, cfg = _net(seed=6), WindowConfig(TILE, 0.25, "gaussian")
    norm = ttakit.Normalization((0.5,) * 3, (0.25,) * 3)
    data_config = {"input_size": (3, TILE, TILE), "interpolation": "bilinear", "mean": norm.mean, "std": norm.std,
                   "crop_pct": 1.0, "crop_mode": "squash"}
    photo = Image.fromarray((torch.rand(40, 40, 3) * 255).to(torch.uint8).numpy())
    stage = Input(48, 1.0)
    auto = create_policy("autocontrast").views[-1]
    assert auto.corrections and auto.source is None
    policy = Policy((View(), View(source=stage), auto))
    seg = SegmentationTTA(net, policy, window=cfg, norm=norm, data_config=data_config)

    def normalised(img):
        x = torch.from_numpy(__import__("numpy").array(img)).permute(2, 0, 1)[None].float() / 255
        return (x - 0.5) / 0.25

    with torch.inference_mode():
        ours = seg.predict(photo).output
        rendered = input_transform(stage, data_config)(photo)[None]  # (1, 3, 48, 48): the whole square photo
        back = F.interpolate(_monai(net, rendered, cfg), size=(40, 40), mode="bilinear", align_corners=False)
        fixed = _monai(net, normalised(correct(photo, auto.corrections)), cfg)
        ref = (_monai(net, normalised(photo), cfg) + back + fixed) / 3
    assert torch.allclose(ours, ref, atol=1e-5), float((ours - ref).abs().max())
