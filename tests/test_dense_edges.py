"""Dense de-augmentation at the image's edges: a per-pixel model's de-augmented map equals the model on
the plain image wherever the coverage says a view saw the pixel, the outermost rows included."""

from __future__ import annotations

import torch

import ttakit

H, W = 45, 67  # odd sizes: every rounding of a zoom or crop shows


def _smooth_photo() -> torch.Tensor:
    """(1, 3, H, W) ramps: resampling a smooth image moves values by little, so a large error is a bug."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, W), indexing="ij")
    return torch.stack([yy, xx, yy * xx]).unsqueeze(0)


def _per_pixel_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Conv2d(3, 2, 1).eval()  # each output pixel sees its own input pixel only


def test_zoom_out_edges_read_the_shrunk_image_not_its_padding():
    net, x = _per_pixel_net(), _smooth_photo()
    with torch.no_grad():
        res = ttakit.SegmentationTTA(net, "scale(0.83)", activation=None).predict(x)
        err = (res.output - net(x)).abs() * (res.coverage > 0)
    assert (res.coverage > 0).all()  # the shrunk image holds the whole photo
    interior = float(err[..., 2:-2, 2:-2].max())
    assert interior < 0.01
    assert float(err.max()) < 0.03, f"outermost pixels off by {float(err.max()):.3f} (interior {interior:.4f})"


def test_five_crops_alone_map_back_exactly_on_odd_sizes():
    # Crops are whole-pixel windows: undone, a per-pixel model's map is the plain one wherever a crop saw it,
    # with or without a plain-size view in the policy to give the output grid.
    net, x = _per_pixel_net(), torch.randn(2, 3, H, W, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = net(x)
        for policy in ("five_crop(0.75)", "hflip+five_crop(0.75)"):
            res = ttakit.SegmentationTTA(net, policy, activation=None).predict(x)
            seen = res.coverage > 0
            assert res.output.shape == ref.shape and seen.float().mean() > 0.99, policy
            assert float(((res.output - ref).abs() * seen).max()) < 1e-4, policy
