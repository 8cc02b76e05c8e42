"""Static graph steps: exportable modules that rebuild a view's transforms at one fixed image size.

Each :class:`~ttakit.transforms.Transform` gives its own steps through ``graph_steps(size,
norm)``; these modules hold only constants computed at build time, so an ONNX export of them
depends on no shape at run time:

* flips and quarter turns are slices and transposes (``rot90`` has no ONNX op);
* crops, shifts and the crop/pad of a zoom are one padded window;
* resizes are two matrix products holding the exact interpolation weights PyTorch uses
  (antialiased when shrinking);
* free rotations are a constant sampling grid; photometric steps are the eager arithmetic.

Example:
    >>> Window((4, 4), 1, 1, (2, 2))(torch.arange(16.).view(1, 1, 4, 4)).flatten().tolist()
    [5.0, 6.0, 9.0, 10.0]
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .functional import Size
from .transform_base import Normalization

__all__ = ["Flip", "Pixelwise", "QuarterTurn", "Resample", "Warp", "Window"]


class Flip(nn.Module):
    """``x.flip(dims)``: a mirror along the given axes."""

    def __init__(self, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: Tensor) -> Tensor:
        return x.flip(self.dims)


class QuarterTurn(nn.Module):
    """``torch.rot90(x, k, (-2, -1))`` as transposes and flips (``rot90`` has no ONNX op)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k % 4

    def forward(self, x: Tensor) -> Tensor:
        if self.k == 1:
            return x.flip(-1).transpose(-2, -1)
        if self.k == 2:
            return x.flip((-2, -1))
        if self.k == 3:
            return x.transpose(-2, -1).flip(-1)
        return x


class Window(nn.Module):
    """``out[i, j] = x[i + top, j + left]`` on an ``(h, w)`` grid, 0 outside ``x``: a crop, a
    whole-pixel shift, or the crop/pad of a zoom, all as one padding and one slice."""

    def __init__(self, in_size: Size, top: int, left: int, out_size: Size) -> None:
        super().__init__()
        (H, W), (h, w) = in_size, out_size
        self.pad = (max(0, -left), max(0, left + w - W), max(0, -top), max(0, top + h - H))
        self.box = (top + self.pad[2], left + self.pad[0], h, w)

    def forward(self, x: Tensor) -> Tensor:
        if any(self.pad):
            x = F.pad(x, self.pad)
        t, left, h, w = self.box
        return x[..., t : t + h, left : left + w]


def _axis_weights(n_in: int, n_out: int, mode: str, antialias: bool) -> Tensor:
    """``(n_out, n_in)`` interpolation weights of one axis, read off ``F.interpolate`` itself
    (a basis image per input pixel; 4 columns wide since PyTorch special-cases width 1)."""
    basis = torch.eye(n_in).reshape(n_in, 1, n_in, 1).expand(n_in, 1, n_in, 4)
    y = F.interpolate(basis, size=(n_out, 4), mode=mode, align_corners=False, antialias=antialias)
    return y[:, 0, :, 0].T.contiguous()


class Resample(nn.Module):
    """:func:`ttakit.functional.resize` as ``A_h @ x @ A_w^T``: both are separable, so the
    matrices hold exactly its weights (antialiasing included), and MatMul exports anywhere."""

    def __init__(self, in_size: Size, out_size: Size, mode: str) -> None:
        super().__init__()
        (H, W), (h, w) = in_size, out_size
        aa = mode in ("bilinear", "bicubic") and (h < H or w < W)
        self.register_buffer("a_h", _axis_weights(H, h, mode, aa))
        self.register_buffer("a_wt", _axis_weights(W, w, mode, aa).T.contiguous())

    def forward(self, x: Tensor) -> Tensor:
        return torch.matmul(torch.matmul(self.a_h, x), self.a_wt)


class Warp(nn.Module):
    """:func:`ttakit.functional.warp` with its sampling grid computed once (batch expanded)."""

    def __init__(self, matrix: Tensor, size: Size) -> None:
        super().__init__()
        theta = matrix[:2].to(torch.float32).unsqueeze(0)
        self.register_buffer("grid", F.affine_grid(theta, [1, 1, *size], align_corners=False))

    def forward(self, x: Tensor) -> Tensor:
        grid = self.grid.expand(x.shape[0], -1, -1, -1)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class Pixelwise(nn.Module):
    """``op(x, factor, mean, std)``: a photometric change by the same arithmetic as the eager view
    (e.g. :func:`ttakit.functional.adjust_brightness`), the same on any shape."""

    def __init__(self, op: Callable[..., Tensor], factor: float, norm: Normalization) -> None:
        super().__init__()
        self.op, self.factor, self.norm = op, factor, norm

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x, self.factor, self.norm.mean, self.norm.std)
