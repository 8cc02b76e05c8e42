"""Dense TTA: exact de-augmentation on equivariant models, odd and non-square sizes, output
strides, dict heads, keypoints with flip pairs, parity with ttach, and real (tiny) training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import ttach
from torch import nn

from transform_cases import EXACT, RESAMPLED, SHIFTS, smooth_images
from ttakit import KeypointsTTA, PolicyError, RunConfig, SegmentationTTA
from ttakit.views import View

RC = RunConfig(16, False)


class PerPixel(nn.Module):
    """An exactly equivariant segmentation model: a 1x1 convolution, optional output stride."""

    def __init__(self, k=4, stride=1):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, k, 1)
        self.stride = stride

    def forward(self, x):
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride)
        return self.conv(x)


def _policy(t):
    return [View(), View((t,))]


@pytest.mark.parametrize("size", [(48, 70), (37, 53)])
@pytest.mark.parametrize("t", EXACT, ids=[t.name for t in EXACT])
def test_exact_views_give_exactly_the_plain_map(t, size):
    x = torch.randn(2, 3, *size)
    model = PerPixel()
    plain = torch.softmax(model(x), 1).detach()
    res = SegmentationTTA(model, _policy(t), run_config=RC, uncertainty="variance").predict(x)
    torch.testing.assert_close(res.output, plain, atol=1e-6, rtol=1e-6)
    assert res.uncertainty.shape == (2, 1, *size) and float(res.uncertainty.max()) < 1e-10
    assert torch.equal(res.coverage, torch.full((1, 1, *size), 2.0))


@pytest.mark.parametrize("t", SHIFTS + RESAMPLED, ids=[t.name for t in SHIFTS + RESAMPLED])
def test_resampled_views_match_plain_where_seen(t):
    size = (48, 70)
    x = smooth_images(2, 3, *size)
    model = PerPixel()
    plain = torch.softmax(model(x), 1).detach()
    res = SegmentationTTA(model, _policy(t), run_config=RC).predict(x)
    assert res.output.shape == plain.shape  # exactly the input grid, whatever the scale
    err = (res.output - plain).abs()
    assert err.mean() < 0.01 and err.max() < 0.15


def test_identity_model_round_trip_under_every_scale_and_ttach_breaks():
    """ttach's Scale changes the grid at h=224, s=0.83 (224 -> 185 -> 222); ttakit does not."""
    x = smooth_images(1, 3, 224, 224)
    for policy in ("scale(0.83)", "resize(0.83)", "resize(1.37)", "scale(1.37)"):
        res = SegmentationTTA(nn.Identity(), policy, activation=None, run_config=RC).predict(x)
        assert res.output.shape == x.shape, policy
        # The identity model's map is the photo itself: undone, the view gives it back where it saw.
        seen = (res.coverage > 0).expand_as(x)
        err = (res.output - x).abs()
        assert seen.float().mean() > 0.5 and err[seen].mean() < 0.003, policy
        inner = seen[..., 1:-1, 1:-1]  # the outermost pixels of a zoom-out mix with its padding
        assert err[..., 1:-1, 1:-1][inner].max() < 0.02, policy
    # ttach: the 0.83 view comes back 222 wide and cannot even be merged with the identity view.
    wrapper = ttach.SegmentationTTAWrapper(nn.Identity(), ttach.Compose([ttach.Scale([0.83])]))
    with pytest.raises(RuntimeError, match="224.*222"):
        wrapper(x)


@pytest.mark.parametrize("policy", ["d4", "flip*scale(1,1.25)", "rotate(-10,10)+shift(4:0)"])
def test_output_stride_four(policy):
    x = smooth_images(2, 3, 64, 96)
    model = PerPixel(stride=4)
    plain = torch.softmax(model(x), 1).detach()
    out = SegmentationTTA(model, policy, run_config=RC)(x)
    assert out.shape == plain.shape == (2, 4, 16, 24)
    tol = 1e-6 if policy == "d4" else 0.03
    assert (out - plain).abs().mean() < tol


def test_odd_sizes_with_stride_and_crops():
    x = smooth_images(1, 3, 45, 67)
    model = PerPixel(stride=2)
    plain = torch.softmax(model(x), 1).detach()
    res = SegmentationTTA(model, "hflip+five_crop(0.75)", run_config=RC).predict(x)
    assert res.output.shape == plain.shape == (1, 4, 22, 33)
    # Every view undone onto the plain grid: the map of a per-pixel model, up to where the
    # stride groups other pixels (an odd width flipped pools other pairs).
    err = (res.output - plain).abs()
    assert err.mean() < 0.01 and err.max() < 0.06
    assert float(res.coverage.min()) >= 2  # the flips cover everything, the crops overlap


def test_dict_outputs_and_uncertainty():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.seg = PerPixel(k=3)
            self.edge = PerPixel(k=1)

        def forward(self, x):
            return {"seg": self.seg(x), "edge": self.edge(x), "score": x.mean(dim=(1, 2, 3))[:, None]}

    x = torch.randn(2, 3, 32, 40)
    m = TwoHeads()
    res = SegmentationTTA(m, "flip", activation="sigmoid", uncertainty="entropy", run_config=RC).predict(x)
    assert set(res.output) == {"seg", "edge", "score"}
    torch.testing.assert_close(res.output["seg"], torch.sigmoid(m.seg(x)).detach(), atol=1e-6, rtol=1e-6)
    assert res.output["score"].shape == (2, 1)
    torch.testing.assert_close(res.output["score"], x.mean(dim=(1, 2, 3))[:, None])  # flips keep the mean
    assert set(res.uncertainty) == {"seg", "edge"} and res.uncertainty["edge"].shape == (2, 1, 32, 40)
    only_seg = SegmentationTTA(m, "hflip", dense_keys=["seg"], run_config=RC)(x)
    as_is = ((m.edge(x) + m.edge(x.flip(-1))) / 2).detach()  # each view's map averaged as the model gave it
    torch.testing.assert_close(only_seg["edge"], as_is)
    assert not torch.allclose(only_seg["edge"], m.edge(x), atol=1e-3)  # de-augmented, it would be the plain map
    with pytest.raises(PolicyError, match="unknown dense merge 'median'"):
        SegmentationTTA(m, "hflip", merge="median")


def test_max_merge_and_unseen_pixels():
    x = smooth_images(1, 3, 40, 40)
    model = PerPixel()
    plain = torch.softmax(model(x), 1).detach()
    out = SegmentationTTA(model, "crop=tl:20", merge="max", run_config=RC).predict(x)
    assert out.output.shape == (1, 4, 40, 40)
    assert float(out.coverage[..., :20, :20].min()) == 1.0 and float(out.coverage[..., 25:, 25:].max()) == 0.0
    # Where the crop saw, the per-pixel model's own map; where no view saw, the same merge over
    # every view unmasked (MaskedMerge's rule): here the crop's map continued from its corner,
    # still probabilities (never zero).
    torch.testing.assert_close(out.output[..., :20, :20], plain[..., :20, :20], atol=1e-6, rtol=0)
    torch.testing.assert_close(out.output[..., 25:, 25:], plain[..., 19:20, 19:20].expand(-1, -1, 15, 15),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(out.output.sum(1), torch.ones(1, 40, 40))
    # With the identity view too, max over the views that saw each pixel is the plain map everywhere.
    both = SegmentationTTA(model, "identity+crop=tl:20", merge="max", run_config=RC)(x)
    torch.testing.assert_close(both, plain, atol=1e-6, rtol=0)


@pytest.mark.parametrize("make", [lambda: ttach.aliases.hflip_transform(), lambda: ttach.aliases.d4_transform(),
                                  lambda: ttach.aliases.flip_transform()])
def test_parity_with_ttach_segmentation(make):
    x = torch.randn(2, 3, 32, 32)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 5, 3, padding=1)).eval()
    expected = ttach.SegmentationTTAWrapper(model, make(), merge_mode="mean")(x).detach()
    policy = {2: "hflip", 8: "d4", 4: "flip"}[len(list(make()))]
    got = SegmentationTTA(model, policy, activation=None, run_config=RC)(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- keypoints
def _blobs(points, size, sigma=2.0):
    """One image per row of points: channel k has a Gaussian blob at point k (3 points)."""
    H, W = size
    yy, xx = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    img = torch.stack([torch.exp(-((xx - px) ** 2 + (yy - py) ** 2) / (2 * sigma**2)) for px, py in points])
    return img[None]


class SoftArgmax(nn.Module):
    """Keypoint k = centroid of channel k; with ``left_right`` the first two keypoints are
    named by position (0 = the one further left), like 'left eye' and 'right eye'."""

    def __init__(self, left_right=False):
        super().__init__()
        self.left_right = left_right

    def forward(self, x):
        B, C, H, W = x.shape
        w = x.clamp(min=0)
        yy, xx = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
        s = w.sum((2, 3))
        pts = torch.stack([(w * xx).sum((2, 3)) / s, (w * yy).sum((2, 3)) / s], -1)  # (B, C, 2)
        if self.left_right:
            swap = pts[:, 0, 0] > pts[:, 1, 0]
            pts[swap, :2] = pts[swap][:, [1, 0]]
        return pts, s


@pytest.mark.parametrize("policy", ["d4", "hflip*scale(1,1.2)", "vflip*rot90(0,1)", "shift(3:-2)+rotate(12)+crop=tl:0.8"])
def test_keypoint_round_trips_return_the_original_coordinates(policy):
    size = (40, 56)
    points = [(18.0, 15.0), (35.0, 22.0), (27.5, 19.0)]
    x = _blobs(points, size)
    model = SoftArgmax()
    tta = KeypointsTTA(model, policy, run_config=RC)
    out, scores = tta.predict(x)
    torch.testing.assert_close(out[0], torch.tensor(points), atol=0.3, rtol=0)
    # Scores are the mean of the views' own scores (each view's blob mass), not re-weighted or mapped.
    per_view = torch.stack([model(v.apply(x, tta.norm))[1] for v in tta.views])  # (V, 1, 3)
    torch.testing.assert_close(scores, per_view.mean(0))


def test_flip_pairs_swap_left_and_right():
    size = (40, 56)
    points = [(18.0, 15.0), (35.0, 22.0), (27.5, 19.0)]
    x = _blobs(points, size)
    model = SoftArgmax(left_right=True)
    good = KeypointsTTA(model, "hflip(1)", flip_pairs=[(0, 1)], run_config=RC)(x)
    torch.testing.assert_close(good[0], torch.tensor(points), atol=0.3, rtol=0)
    bad = KeypointsTTA(model, "hflip(1)", run_config=RC)(x)  # without the pairs, left and right swap
    assert torch.dist(bad[0, 0], torch.tensor(points[1])) < 0.3


# --------------------------------------------------------------------------- real (tiny) training
def _shapes(n, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g) * 0.3
    y = torch.zeros(n, size, size, dtype=torch.long)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for i in range(n):
        cx, cy, r = (torch.randint(8, size - 8, (2,), generator=g)).tolist() + [int(torch.randint(4, 8, (1,), generator=g))]
        if i % 2:
            m = ((xx - cx) ** 2 + (yy - cy) ** 2) <= r * r
            cls = 1
        else:
            m = ((xx - cx).abs() <= r) & ((yy - cy).abs() <= r)
            cls = 2
        y[i][m] = cls
        x[i, :, m] += torch.tensor([1.0, -0.5, 0.5])[:, None] * (1.0 if cls == 1 else -1.0) + 0.8
    return x, y


def _miou(pred, y, k=3):
    ious = []
    for c in range(k):
        inter = ((pred == c) & (y == c)).sum().item()
        union = ((pred == c) | (y == c)).sum().item()
        if union:
            ious.append(inter / union)
    return sum(ious) / len(ious)


def test_flip_tta_does_not_lower_miou_of_a_trained_segmenter():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=2, dilation=2), nn.ReLU(),
                        nn.Conv2d(16, 3, 3, padding=1))
    x, y = _shapes(256)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(120):
        idx = torch.randint(0, len(x), (32,))
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    xt, yt = _shapes(64, seed=1)
    with torch.no_grad():
        plain = _miou(net(xt).argmax(1), yt)
    tta = _miou(SegmentationTTA(net, "flip", run_config=RC)(xt).argmax(1), yt)
    assert plain > 0.5  # it learned something
    assert tta >= plain - 0.005


def test_flip_tta_does_not_hurt_a_trained_keypoint_regressor():
    torch.manual_seed(0)
    size = (32, 32)

    def make(n, seed):
        g = torch.Generator().manual_seed(seed)
        pts = torch.rand(n, 1, 2, generator=g) * 20 + 6
        imgs = torch.cat([_blobs([tuple(p[0].tolist())] * 3, size, sigma=2.5) for p in pts]) + torch.randn(n, 3, *size, generator=g) * 0.2
        return imgs, pts

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1))
            yy, xx = torch.meshgrid(torch.arange(32).float(), torch.arange(32).float(), indexing="ij")
            self.register_buffer("grid", torch.stack([xx, yy], -1).view(1, -1, 2))

        def forward(self, x):
            h = torch.softmax(self.body(x).flatten(1) * 5.0, 1)  # (B, H*W)
            return (h[:, :, None] * self.grid).sum(1)[:, None]  # (B, 1, 2)

    net = Net()
    x, p = make(256, 0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(100):
        idx = torch.randint(0, len(x), (32,))
        loss = (net(x[idx]) - p[idx]).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    xt, pt = make(64, 1)
    with torch.no_grad():
        plain = (net(xt) - pt).norm(dim=-1).mean().item()
    tta = (KeypointsTTA(net, "flip", run_config=RC)(xt) - pt).norm(dim=-1).mean().item()
    assert plain < 3.0  # it learned something (pixels)
    assert tta <= plain * 1.02 + 0.01


def test_unknown_activation_or_uncertainty_is_a_config_error():
    from ttakit import ConfigError

    with pytest.raises(ConfigError, match="unknown activation 'tanh'"):
        SegmentationTTA(PerPixel(), "hflip", activation="tanh")
    with pytest.raises(ConfigError, match="unknown uncertainty 'std'"):
        SegmentationTTA(PerPixel(), "hflip", uncertainty="std")
