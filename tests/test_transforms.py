"""Every transform x parameter: augment then de-augment returns the input, keypoints follow
the pixels, names read back, photometric ops match torchvision."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from transform_cases import EXACT, RESAMPLED, SHIFTS, smooth_images
from ttakit import functional as Fn
from ttakit.policy import parse_policy, parse_view
from ttakit.transforms import (
    Brightness, Contrast, Crop, HFlip, Normalization, Rot90, Rotate, Scale,
)
from ttakit.views import View

NORM = Normalization((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
GEOMETRIC = EXACT + SHIFTS + RESAMPLED
ALL = GEOMETRIC + [Brightness(1.2), Contrast(0.7)]
SIZES = [(48, 70), (37, 53)]  # non-square, one odd


def ids(ts):
    return [t.name for t in ts]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("t", EXACT, ids=ids(EXACT))
def test_exact_round_trip(t, size):
    x = torch.randn(2, 3, *size)
    y = t.apply(x, NORM)
    assert tuple(y.shape[-2:]) == t.output_size(size)
    back, mask = t.invert_dense(y, torch.ones(1, 1, *y.shape[-2:]), size, size)
    assert torch.equal(back, x)
    assert torch.equal(mask, torch.ones(1, 1, *size))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("t", SHIFTS, ids=ids(SHIFTS))
def test_shift_round_trip_exact_on_seen_pixels(t, size):
    x = torch.randn(2, 3, *size)
    back, mask = t.invert_dense(t.apply(x, NORM), torch.ones(1, 1, *size), size, size)
    seen = mask[0, 0].bool()
    H, W = size
    assert int(seen.sum()) == (H - abs(t.dy)) * (W - abs(t.dx))  # exactly the pixels that stayed in view
    torch.testing.assert_close(back[..., seen], x[..., seen], atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("t", RESAMPLED, ids=ids(RESAMPLED))
def test_resampled_round_trip(t, size):
    x = smooth_images(2, 3, *size)
    y = t.apply(x, NORM)
    assert tuple(y.shape[-2:]) == t.output_size(size)
    back, mask = t.invert_dense(y, torch.ones(1, 1, *y.shape[-2:]), size, size)
    assert tuple(back.shape[-2:]) == size and tuple(mask.shape[-2:]) == size
    seen = mask[0, 0].bool()
    assert seen.float().mean() > 0.1
    # Stay one pixel away from the view's border, where zero padding blends in on augment.
    inner = _erode(mask)
    err = (back - x)[..., inner].abs()
    assert err.mean() < 0.03 * x.std() and err.max() < 0.25 * x.std()


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("t", GEOMETRIC, ids=ids(GEOMETRIC))
def test_keypoints_follow_the_pixels(t, size):
    """A blob drawn at a point is found, after augmenting, where invert_points says."""
    H, W = size
    out_h, out_w = t.output_size(size)
    tested = 0
    for fx in (0.15, 0.5, 0.8):
        for fy in (0.25, 0.5, 0.75):
            px, py = W * fx, H * fy
            # Where the matrix says the point lands; skip points the view cuts off.
            u = Fn.pixels_to_normalized(torch.tensor([[px, py]], dtype=torch.float64), size)
            ax0, ay0 = Fn.normalized_to_pixels(Fn.transform_points(u, t.matrix(size)), (out_h, out_w))[0].tolist()
            if not (7 <= ax0 <= out_w - 8 and 7 <= ay0 <= out_h - 8):
                continue
            yy, xx = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
            blob = torch.exp(-((xx - px) ** 2 + (yy - py) ** 2) / (2 * 2.0**2))[None, None]
            aug = t.apply(blob, NORM)[0, 0].clamp(min=0)
            ay, ax = torch.meshgrid(torch.arange(out_h).float(), torch.arange(out_w).float(), indexing="ij")
            found = torch.stack([(aug * ax).sum() / aug.sum(), (aug * ay).sum() / aug.sum()])
            back = t.invert_points(found[None], size)[0]
            assert torch.dist(back, torch.tensor([px, py])) < 0.35, (t.name, back, (px, py))
            tested += 1
    assert tested >= 1


@pytest.mark.parametrize("t", ALL, ids=ids(ALL))
def test_name_reads_back(t):
    assert parse_view(t.name) == View((t,))


def test_identity_values_give_identity_views():
    assert [v.name for v in parse_policy("scale(1,1.0)+rot90(0,4)+hflip(0)+shift(0:0)+brightness(1)")] == ["identity"]


def test_rotate_90_equals_rot90_on_square():
    x = smooth_images(1, 3, 40, 40)
    torch.testing.assert_close(Rotate(90.0).apply(x, NORM), Rot90(1).apply(x, NORM), atol=1e-4, rtol=0)
    torch.testing.assert_close(Rotate(90.0).matrix((40, 40)), Rot90(1).matrix((40, 40)), atol=1e-12, rtol=0)


def test_view_composition_round_trip():
    view = View((HFlip(), Rot90(1), Scale(1.2), Crop("tl", fraction=0.8)))
    size = (40, 56)
    x = smooth_images(1, 3, *size)
    back, mask = view.invert_dense(view.apply(x, NORM), size, size)
    inner = _erode(mask)
    assert inner.any()
    assert (back - x)[..., inner].abs().mean() < 0.03 * x.std()
    pts = torch.tensor([[20.0, 15.0], [30.0, 22.0]])
    fwd = Fn.normalized_to_pixels(
        Fn.transform_points(Fn.pixels_to_normalized(pts, size), _view_matrix(view, size)), view.output_size(size)
    )
    torch.testing.assert_close(view.invert_points(fwd, size), pts, atol=1e-4, rtol=0)


def _erode(mask, r=2):
    """Pixels whose whole (2r+1)^2 neighbourhood is valid and inside the image (resampling
    blends padding into the last pixel of a view, and the augment pads with zeros)."""
    padded = torch.nn.functional.pad(mask, (r, r, r, r), value=0.0)
    return (-torch.nn.functional.max_pool2d(-padded, 2 * r + 1, stride=1))[0, 0] > 0.5


def _view_matrix(view, size):
    m = torch.eye(3, dtype=torch.float64)
    for t, s in zip(view.transforms, view.sizes(size)):
        m = t.matrix(s) @ m
    return m


@pytest.mark.parametrize("factor", [0.6, 1.0, 1.4])
def test_brightness_and_contrast_match_torchvision_in_pixel_space(factor):
    px = torch.rand(2, 3, 20, 30)
    mean, std = torch.tensor(NORM.mean).view(1, 3, 1, 1), torch.tensor(NORM.std).view(1, 3, 1, 1)
    x = (px - mean) / std
    for ours, theirs in ((Brightness, TF.adjust_brightness), (Contrast, TF.adjust_contrast)):
        got = ours(factor).apply(x, NORM) * std + mean  # factor 1 must be the identity, as in torchvision
        torch.testing.assert_close(got, theirs(px, factor), atol=1e-4, rtol=0)


def test_crop_that_does_not_fit_is_a_policy_error():
    from ttakit import PolicyError

    with pytest.raises(PolicyError, match="does not fit"):
        Crop("center", size=(100, 100)).apply(torch.zeros(1, 3, 50, 50), NORM)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("t", ALL, ids=ids(ALL))
def test_graph_form_computes_what_apply_computes(t, size):
    """Each transform's static graph steps (what the ONNX export runs) agree with its eager form."""
    x = torch.randn(2, 3, *size)
    graph = torch.nn.Sequential(*t.graph_steps(size, NORM))
    torch.testing.assert_close(graph(x), t.apply(x, NORM), atol=1e-5, rtol=1e-5)
    if t.geometric and t.key in ("hflip", "vflip", "rot90"):  # exact inverses, for exported segmentation
        undo = torch.nn.Sequential(*t.graph_inverse_steps())
        assert torch.equal(undo(t.apply(x, NORM)), x)


def test_a_transform_without_a_graph_form_says_so():
    from dataclasses import dataclass

    from ttakit import PolicyError, Transform

    @dataclass(frozen=True)
    class Negate(Transform):
        key = "negate"

        @classmethod
        def from_arg(cls, arg):
            return cls()

        def apply(self, x, norm):
            return -x

    with pytest.raises(PolicyError, match="'negate' has no graph form, so it cannot be exported"):
        Negate().graph_steps((8, 8), NORM)
    with pytest.raises(PolicyError, match="'negate' has no exact inverse"):
        Negate().graph_inverse_steps()
    with pytest.raises(PolicyError, match="'scale=1.1' has no exact inverse"):
        Scale(1.1).graph_inverse_steps()
