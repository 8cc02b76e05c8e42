"""The one masked merge: whole-image de-augmentation, window stitching and windowed evaluation agree, the pixels no view saw included."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ttakit.errors import ConfigError
from ttakit.policy import Policy, create_policy
from ttakit.runtime.config import RunConfig
from ttakit.tasks.dense import SegmentationTTA
from ttakit.tasks.masked_merge import MaskedMerge, merge_stack
from ttakit.tasks.window import WindowConfig

RC = RunConfig(64, False)
# Tensor-input views: flips, quarter turns, free rotations, zooms in and out, crops (no input stage).
VIEWS = ["identity", "hflip", "vflip", "rot90=1", "rot90=2", "hflip|rot90=3", "rotate=17", "rotate=-30",
         "scale=1.25", "scale=0.8", "crop=tl:0.75", "crop=center:0.6", "hflip|rotate=8"]


def _pixel_net(k: int = 3, seed: int = 0) -> torch.nn.Module:
    """A deterministic per-pixel model (1x1 conv): its answer at a pixel depends on that pixel alone."""
    torch.manual_seed(seed)
    return torch.nn.Conv2d(3, k, 1).eval()


def _conv_net(k: int = 3, seed: int = 0) -> torch.nn.Module:
    """A small conv model (3x3, zero padding): constant-0 padding of its input changes nothing it sees."""
    torch.manual_seed(seed)
    return torch.nn.Conv2d(3, k, 3, padding=1).eval()


def _images(b: int, h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.avg_pool2d(torch.randn(b, 3, h + 4, w + 4, generator=g), 5, 1)  # smooth


@settings(max_examples=30, deadline=None)
@given(
    views=st.lists(st.sampled_from(VIEWS), min_size=1, max_size=4, unique=True),
    weights=st.one_of(st.none(), st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0]), min_size=4, max_size=4)),
    size=st.tuples(st.integers(12, 28), st.integers(12, 28)),
    merge=st.sampled_from(["mean", "max"]),
    conv=st.booleans(),
    seed=st.integers(0, 3),
)
def test_one_tile_equals_whole_image(views, weights, size, merge, conv, seed):
    """A window whose one tile covers every view's frame gives the whole-image answer, pixel for
    pixel (the pixels no view saw too), with the same coverage."""
    w = None if weights is None else tuple(weights[:len(views)])
    if w is not None and not any(w):
        w = (1.0,) + w[1:]
    policy = Policy(tuple(create_policy(v).views[0] for v in views), weights=w)
    net = (_conv_net if conv else _pixel_net)(seed=seed)
    x = _images(2, *size, seed)
    whole = SegmentationTTA(net, policy, merge=merge, run_config=RC).predict(x)
    window = WindowConfig(max(size), 0.0, "constant", padding_mode="constant", padding_value=0.0)
    tiled = SegmentationTTA(net, policy, merge=merge, run_config=RC, window=window).predict(x)
    torch.testing.assert_close(tiled.output, whole.output, atol=2e-5, rtol=0)
    torch.testing.assert_close(tiled.coverage.expand_as(whole.coverage), whole.coverage)
    assert torch.isfinite(whole.output).all()
    if merge == "mean":  # probabilities everywhere, the pixels no view saw included
        torch.testing.assert_close(whole.output.sum(1), torch.ones(2, *size), atol=1e-5, rtol=0)


@settings(max_examples=25, deadline=None)
@given(
    views=st.lists(st.sampled_from(["identity", "hflip", "vflip", "rot90=1", "rot90=2", "hflip|rot90=1"]),
                   min_size=1, max_size=3, unique=True),
    size=st.tuples(st.integers(20, 44), st.integers(20, 44)),
    tile=st.integers(8, 16),
    overlap=st.sampled_from([0.25, 0.5]),
    blend=st.sampled_from(["constant", "gaussian"]),
    merge=st.sampled_from(["mean", "max"]),
)
def test_overlapping_tiles_per_pixel_model(views, size, tile, overlap, blend, merge):
    """With overlapping tiles a per-pixel model gives the same answer tiled or not."""
    policy = create_policy("+".join(views))
    net = _pixel_net()
    x = _images(1, *size, 7)
    whole = SegmentationTTA(net, policy, merge=merge, run_config=RC).predict(x)
    tiled = SegmentationTTA(net, policy, merge=merge, run_config=RC,
                            window=WindowConfig(tile, overlap, blend, batch=3)).predict(x)
    torch.testing.assert_close(tiled.output, whole.output, atol=2e-5, rtol=0)


@pytest.mark.parametrize("merge", ["mean", "max"])
def test_rotate30_corner_same_with_and_without_window(merge):
    """The issue's case: SegmentationTTA(m, "rotate(30)") on 32 x 32, with and without a
    32-pixel window. The corners no view saw got [0.66, 0.34] without and [0, 0] with the
    window; now both give the rotated view's map continued from its edge, summing to 1."""
    net = _conv_net(2)
    x = _images(1, 32, 32, 0)
    whole = SegmentationTTA(net, "rotate(30)", merge=merge, run_config=RC).predict(x)
    tiled = SegmentationTTA(net, "rotate(30)", merge=merge, run_config=RC, window=WindowConfig(32)).predict(x)
    assert float(whole.coverage[..., 0, 0]) == 0.0  # the corner: no view saw it
    torch.testing.assert_close(tiled.output, whole.output, atol=1e-5, rtol=0)
    torch.testing.assert_close(whole.output.sum(1), torch.ones(1, 32, 32), atol=1e-5, rtol=0)
    assert float(whole.output[0, :, 0, 0].min()) > 0.0


@pytest.mark.parametrize("merge", ["mean", "max"])
def test_unseen_pixels_fall_back_to_the_unmasked_merge(merge):
    """The rule, by hand: seen pixels merge over the views that saw them, unseen ones merge every
    view unmasked, weight 0 drops a view everywhere, the order of views does not matter."""
    ys = torch.tensor([[0.1, 0.9, 0.3], [0.7, 0.2, 0.5], [5.0, 5.0, 5.0]]).view(3, 1, 1, 1, 3)  # (V, B, K, H, W)
    masks = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]).view(3, 1, 1, 1, 3)
    weights = [1.0, 3.0, 0.0]  # the third view (all 5s, saw everything) does not count at all
    if merge == "mean":
        want = [(0.1 + 3 * 0.7) / 4, 0.2, (0.3 + 3 * 0.5) / 4]
    else:
        want = [0.7, 0.2, 0.5]
    got = merge_stack(ys, masks, weights, merge)
    torch.testing.assert_close(got.flatten(), torch.tensor(want))
    order = [2, 1, 0]
    torch.testing.assert_close(merge_stack(ys[order], masks[order], [weights[i] for i in order], merge), got)
    acc = MaskedMerge(merge)
    for y, m, w in zip(ys, masks, weights):
        acc.add(y, m, w)
    assert acc.coverage.flatten().tolist() == [2.0, 1.0, 0.0]


def test_parts_of_a_view_and_misuse():
    """A view added in parts (tiles) equals the view added whole; misuse says what to do."""
    y = torch.rand(1, 2, 4, 6)
    seen = torch.zeros(1, 1, 4, 6)
    seen[..., :2, :] = 1
    whole, parts = MaskedMerge(), MaskedMerge()
    for acc in (whole, parts):
        acc.add(torch.rand(1, 2, 4, 6, generator=torch.Generator().manual_seed(1)), seen, 2.0)
    whole.add(y, None, 0.5)
    parts.open_view(y.shape, 0.5)
    parts.add_part(y[..., :, :3], slice(0, 4), slice(0, 3))
    parts.add_part(y[..., :, 3:], slice(0, 4), slice(3, 6))
    with pytest.raises(ConfigError, match="still open"):
        parts.result()
    parts.close_view()
    torch.testing.assert_close(parts.result(), whole.result())
    with pytest.raises(ConfigError, match="linear"):
        MaskedMerge("max").open_view(y.shape, 1.0)
    with pytest.raises(ConfigError, match="no view was added"):
        MaskedMerge().result()
    with pytest.raises(ConfigError, match="weight"):
        MaskedMerge().add(y, None, -1.0)
