"""Pure, batched tensor operations behind the view transforms.

Images are ``(B, C, H, W)`` tensors. Geometry is described in *normalised coordinates*, the
convention of :func:`torch.nn.functional.affine_grid` with ``align_corners=False``: ``x`` runs
from -1 (left edge of the left pixel) to +1 (right edge of the right pixel), ``y`` likewise
from top to bottom. A geometric view is then a 3x3 matrix ``M`` that maps a point of the
original image to the same point in the augmented one; its inverse undoes the view on any
output grid (a stride-4 segmentation map, keypoint pixels, ...).

Keypoints are pixel coordinates ``(x, y)`` with pixel ``i``'s centre at ``i`` (the index
convention), so ``x`` in ``[-0.5, W - 0.5]``.

Nothing here keeps state: every parameter is an argument.

Example:
    >>> x = torch.arange(6.).view(1, 1, 2, 3)
    >>> torch.equal(rot90(rot90(x, 1), -1), x), crop_box((10, 20), (4, 4), "br")
    (True, (6, 16))
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import ShapeError

__all__ = [
    "Size",
    "adjust_brightness",
    "adjust_contrast",
    "affine_matrix",
    "crop",
    "crop_box",
    "hflip",
    "is_axis_aligned",
    "map_boxes",
    "normalized_to_pixels",
    "pixels_to_normalized",
    "resize",
    "rot90",
    "rot90_matrix",
    "rotation_matrix",
    "scale_matrix",
    "scale_resize_size",
    "shift",
    "transform_points",
    "valid_mask",
    "vflip",
    "warp",
    "zoom",
]

Size = tuple[int, int]  # (H, W)


# --------------------------------------------------------------------------- exact ops
def hflip(x: Tensor) -> Tensor:
    """Mirror left-right. ``(..., H, W) -> (..., H, W)``."""
    return x.flip(-1)


def vflip(x: Tensor) -> Tensor:
    """Mirror top-bottom. ``(..., H, W) -> (..., H, W)``."""
    return x.flip(-2)


def rot90(x: Tensor, k: int) -> Tensor:
    """Rotate by ``k`` quarter turns (``torch.rot90`` on the last two dims, the same direction
    as ttach's ``Rotate90``). ``(..., H, W) -> (..., W, H)`` for odd ``k``."""
    return torch.rot90(x, k % 4, dims=(-2, -1))


def crop_box(size: Size, crop_size: Size, position: str) -> tuple[int, int]:
    """Top-left corner ``(top, left)`` of a ``crop_size`` crop at a named position.

    Args:
        size: ``(H, W)`` of the image.
        crop_size: ``(h, w)`` of the crop; must fit in the image.
        position: one of ``center``, ``tl``, ``tr``, ``bl``, ``br``.
    """
    (H, W), (h, w) = size, crop_size
    if h > H or w > W:
        raise ShapeError("crop", f"at most ({H}, {W}): a crop {h}x{w} does not fit", (h, w))
    tops = {"center": (H - h) // 2, "tl": 0, "tr": 0, "bl": H - h, "br": H - h}
    lefts = {"center": (W - w) // 2, "tl": 0, "tr": W - w, "bl": 0, "br": W - w}
    return tops[position], lefts[position]


def crop(x: Tensor, top: int, left: int, height: int, width: int) -> Tensor:
    """Cut ``x[..., top:top+height, left:left+width]`` (a view, no copy)."""
    return x[..., top : top + height, left : left + width]


def shift(x: Tensor, dx: int, dy: int) -> Tensor:
    """Translate by whole pixels (``dx`` right, ``dy`` down); uncovered pixels become 0
    (the mean colour in normalised space). Exact: no resampling."""
    H, W = x.shape[-2:]
    out = torch.zeros_like(x)
    if abs(dx) >= W or abs(dy) >= H:
        return out
    src_y, dst_y = slice(max(0, -dy), H - max(0, dy)), slice(max(0, dy), H - max(0, -dy))
    src_x, dst_x = slice(max(0, -dx), W - max(0, dx)), slice(max(0, dx), W - max(0, -dx))
    out[..., dst_y, dst_x] = x[..., src_y, src_x]
    return out


# --------------------------------------------------------------------------- resampling
def resize(x: Tensor, size: Size, mode: str = "bilinear") -> Tensor:
    """Resize to ``size`` with edges aligned (``align_corners=False``), antialiased when
    shrinking so that a zoomed-out view does not alias."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    antialias = mode in ("bilinear", "bicubic") and (size[0] < x.shape[-2] or size[1] < x.shape[-1])
    align = False if mode in ("bilinear", "bicubic") else None
    return F.interpolate(x, size=size, mode=mode, align_corners=align, antialias=antialias)


def scale_resize_size(size: Size, factor: float) -> Size:
    """Size to which :func:`zoom` resizes an image of ``size`` before cropping or padding."""
    return max(1, round(size[0] * factor)), max(1, round(size[1] * factor))


def zoom(x: Tensor, factor: float, mode: str = "bilinear") -> Tensor:
    """Zoom in (``factor > 1``) or out (``factor < 1``) about the centre, keeping the size.

    The image is resized to ``round(size * factor)`` and then centre-cropped (zoom in) or
    zero-padded (zoom out) back to ``size``; :func:`scale_matrix` gives the exact geometry.
    """
    H, W = x.shape[-2:]
    sh, sw = scale_resize_size((H, W), factor)
    y = resize(x, (sh, sw), mode)
    # Crop where the resized image is larger, pad where it is smaller; axes independently.
    top, left = (sh - H) // 2, (sw - W) // 2
    if sh >= H and sw >= W:
        return crop(y, top, left, H, W)
    out = x.new_zeros((*x.shape[:-2], H, W))
    src = y[..., max(0, top) : max(0, top) + min(H, sh), max(0, left) : max(0, left) + min(W, sw)]
    out[..., max(0, -top) : max(0, -top) + src.shape[-2], max(0, -left) : max(0, -left) + src.shape[-1]] = src
    return out


def warp(
    x: Tensor,
    matrix: Tensor,
    size: Size,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
    bounds: tuple[float, float, float, float] | None = None,
) -> Tensor:
    """Resample ``x`` onto a grid of ``size``: output point ``p`` reads ``x`` at ``matrix @ p``.

    Args:
        x: ``(B, C, h, w)`` source.
        matrix: ``(3, 3)`` map from output to source normalised coordinates, or ``(B, 3, 3)``
            one per image.
        size: ``(H, W)`` of the output grid.
        bounds: ``(x0, y0, x1, y1)`` normalised box of ``x`` the reads are clamped to (the
            shrunk image inside a zoom-out's padding: its edge, not the padding, is read).
    """
    B, C = x.shape[:2]
    theta = matrix[..., :2, :].to(dtype=x.dtype if x.is_floating_point() else torch.float32, device=x.device)
    grid = F.affine_grid(theta.expand(B, 2, 3), [B, C, *size], align_corners=False)  # (B, H, W, 2)
    if bounds is not None:
        grid = torch.maximum(torch.minimum(grid, grid.new_tensor(bounds[2:])), grid.new_tensor(bounds[:2]))
    src = x if x.is_floating_point() else x.float()
    return F.grid_sample(src, grid, mode=mode, padding_mode=padding_mode, align_corners=False)


def valid_mask(matrix: Tensor, size: Size, device: torch.device | str = "cpu") -> Tensor:
    """``(1, 1, H, W)`` float mask (``(B, 1, H, W)`` for ``(B, 3, 3)`` matrices): 1 where
    :func:`warp` with ``matrix`` reads inside the source (up to a hundredth of a pixel of
    rounding), 0 where it reads padding."""
    theta = matrix[..., :2, :].to(dtype=torch.float32, device=device).reshape(-1, 2, 3)
    grid = F.affine_grid(theta, [theta.shape[0], 1, *size], align_corners=False)
    inside = (grid.abs() <= 1.0 + 1e-4).all(dim=-1)  # (B, H, W)
    return inside.unsqueeze(1).float()


# --------------------------------------------------------------------------- geometry
def affine_matrix(a: Tensor | list[list[float]]) -> Tensor:
    """A float64 3x3 matrix from a 2x2 or 2x3 block (bottom row ``[0, 0, 1]``)."""
    m = torch.eye(3, dtype=torch.float64)
    a = torch.as_tensor(a, dtype=torch.float64)
    m[: a.shape[0], : a.shape[1]] = a
    return m


def rot90_matrix(k: int) -> Tensor:
    """Normalised-coordinate map of :func:`rot90`: one quarter turn sends ``(x, y)`` to
    ``(y, -x)``."""
    one = affine_matrix([[0.0, 1.0], [-1.0, 0.0]])
    return torch.linalg.matrix_power(one, k % 4)


def rotation_matrix(degrees: float, size: Size) -> Tensor:
    """Normalised-coordinate map of a rotation by ``degrees`` (counter-clockwise as seen on
    screen) about the image centre, in square pixels (correct for non-square images)."""
    H, W = size
    t = math.radians(degrees)
    # Screen y points down, so counter-clockwise on screen is clockwise in (x, y).
    rot = affine_matrix([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])
    to_px = affine_matrix([[W / 2, 0.0], [0.0, H / 2]])
    return torch.linalg.inv(to_px) @ rot @ to_px


def scale_matrix(size: Size, factor: float) -> Tensor:
    """Normalised-coordinate map of :func:`zoom`, exact for the rounded resize and the
    integer crop/pad offset."""
    rows = []
    for axis, n in enumerate(size):
        s = scale_resize_size(size, factor)[axis]
        off = (s - n) // 2
        rows.append((s / n, (s - n - 2 * off) / n))
    (ay, ty), (ax, tx) = rows
    return affine_matrix([[ax, 0.0, tx], [0.0, ay, ty]])


def pixels_to_normalized(points: Tensor, size: Size) -> Tensor:
    """``(..., 2)`` pixel ``(x, y)`` (centres at integers) to normalised coordinates."""
    H, W = size
    scale = points.new_tensor([2.0 / W, 2.0 / H])
    return (points + 0.5) * scale - 1.0


def normalized_to_pixels(points: Tensor, size: Size) -> Tensor:
    """Inverse of :func:`pixels_to_normalized`."""
    H, W = size
    scale = points.new_tensor([W / 2.0, H / 2.0])
    return (points + 1.0) * scale - 0.5


def transform_points(points: Tensor, matrix: Tensor) -> Tensor:
    """Apply a 3x3 affine ``matrix`` to ``(..., 2)`` points, or ``(B, 3, 3)`` matrices to
    ``(B, N, 2)`` points, one per image."""
    m = matrix.to(dtype=points.dtype, device=points.device)
    if m.ndim == 3:
        return points @ m[:, :2, :2].transpose(1, 2) + m[:, None, :2, 2]
    return points @ m[:2, :2].T + m[:2, 2]


def is_axis_aligned(m: Tensor) -> bool:
    """Whether a 3x3 map keeps boxes boxes: no shear or rotation other than quarter turns."""
    a = m[:2, :2].abs()
    tol = 1e-9 * float(a.sum())
    return bool(a[0, 1] + a[1, 0] <= tol or a[0, 0] + a[1, 1] <= tol)


def map_boxes(boxes: Tensor, m: Tensor, size: Size, target: Size) -> Tensor:
    """Clip ``(..., 4)`` xyxy pixel boxes (pixel edges at 0 and ``W``) to an image of ``size``,
    send their corners through the normalised map ``m`` onto an image of ``target``, re-sort
    and clip (float64 inside)."""
    (h, w), (H, W) = size, target
    b = boxes.to(torch.float64)
    b = torch.minimum(b.clamp_min(0.0), b.new_tensor([w, h, w, h]))
    corners = b.unflatten(-1, (2, 2)) * b.new_tensor([2.0 / w, 2.0 / h]) - 1.0  # (..., 2, 2) normalised
    p = (transform_points(corners, m) + 1.0) * b.new_tensor([W / 2.0, H / 2.0])
    out = torch.cat([p.amin(-2), p.amax(-2)], -1)  # (..., 4) xyxy again
    out = torch.minimum(out.clamp_min(0.0), out.new_tensor([W, H, W, H]))
    return out.to(boxes.dtype if boxes.is_floating_point() else torch.float32)

# --------------------------------------------------------------------------- photometric
def _to_pixels(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    return x * std + mean


def _stats(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[Tensor, Tensor]:
    shape = (1, -1, 1, 1)
    return x.new_tensor(mean).view(shape), x.new_tensor(std).view(shape)


def adjust_brightness(x: Tensor, factor: float, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """Multiply pixel intensities by ``factor`` in ``[0, 1]`` pixel space (normalisation
    undone first, pixels clipped to ``[0, 1]``, then normalised again)."""
    m, s = _stats(x, mean, std)
    return ((_to_pixels(x, m, s) * factor).clamp(0.0, 1.0) - m) / s


def adjust_contrast(x: Tensor, factor: float, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """Blend each image with its mean grey level (ITU-R 601 luma, as torchvision does) in
    pixel space: ``factor`` 0 gives flat grey, 1 the image, above 1 more contrast."""
    m, s = _stats(x, mean, std)
    px = _to_pixels(x, m, s)
    if px.shape[1] == 3:
        luma = px.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        grey = (px * luma).sum(dim=1, keepdim=True).mean(dim=(-2, -1), keepdim=True)  # (B, 1, 1, 1)
    else:
        grey = px.mean(dim=(-3, -2, -1), keepdim=True)
    return ((grey + factor * (px - grey)).clamp(0.0, 1.0) - m) / s
