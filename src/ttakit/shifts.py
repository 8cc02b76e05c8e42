"""Shift families: label-free, seeded copies of the user's own photos as they might drift.

Each family is a function ``(image, severity, rng) -> image``: a PIL image or an ``(H, W, 3)``
uint8 array in, the same type, size and mode out; ``severity`` 1-5; ``rng`` a
``numpy.random.Generator`` (the only randomness, so a seed gives the same copy every time).
The severity tables follow Hendrycks & Dietterich's ImageNet-C ("Benchmarking Neural Network
Robustness to Common Corruptions and Perturbations", ICLR 2019), re-implemented with numpy, PIL
and torch (no ``imagenet-c`` package, no ImageMagick). ImageNet-C works on 224 x 224 crops;
here every spatial parameter (blur radii, pixel blocks, fog texture) is scaled by the photo's
short side / 224, so a photo at any size looks shifted as much once the model's input stage
has resized it. Render copies at a working size (:func:`working_copy`: short side 256, as
ImageNet-C) to keep them cheap.

Families (:data:`SHIFTS`), grouped as in the paper (:data:`SHIFT_GROUPS`)::

    noise     gaussian_noise  shot_noise  impulse_noise
    blur      defocus_blur    motion_blur gaussian_blur
    weather   fog             contrast    brightness    saturation
    digital   jpeg            pixelate
    geometry  crop            scale

Where they differ from the authors' code (``benchmarks/bench_shift_families.py`` measures it):
``saturation`` lowers the saturation step by step (ImageNet-C's extra ``saturate`` lowers it at
severities 1-2 and raises it at 3-5, which is not monotone); ``motion_blur`` is a one-sided
Gaussian line kernel in the spirit of ImageMagick's; ``fog`` draws its plasma texture from
``rng``; ``crop`` and ``scale`` are not in ImageNet-C (object scale and framing shifts).

Example:
    >>> from PIL import Image
    >>> photo = Image.new("RGB", (64, 48), (120, 80, 40))
    >>> copy = shift_image(photo, "contrast", 3, seed=0)
    >>> copy.size, copy.mode, copy.getpixel((0, 0)) == photo.getpixel((0, 0))
    ((64, 48), 'RGB', True)
    >>> SHIFTS.names()[:3]
    ['brightness', 'contrast', 'crop']
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from .errors import ConfigError
from .registry import Registry

__all__ = [
    "SHIFTS",
    "SHIFT_GROUPS",
    "ShiftFn",
    "expand_families",
    "shift_image",
    "working_copy",
]

ImageLike = Union[Image.Image, np.ndarray]
ShiftFn = Callable[[ImageLike, int, np.random.Generator], ImageLike]

SHIFTS: Registry[ShiftFn] = Registry("shift family")
# The paper's groups; a group name stands for its families wherever families are chosen.
SHIFT_GROUPS: dict[str, tuple[str, ...]] = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "motion_blur", "gaussian_blur"),
    "weather": ("fog", "contrast", "brightness", "saturation"),
    "digital": ("jpeg", "pixelate"),
    "geometry": ("crop", "scale"),
}
REFERENCE_SIDE = 224  # ImageNet-C's image size: spatial parameters are per 224 pixels


def _family(name: str, table: tuple) -> Callable[[Callable], ShiftFn]:
    """Register ``fn(x float HxWx3 in [0,1], param, rng, s) -> same`` as a family over ``table``
    (one parameter per severity); ``s`` is the photo's short side / 224. Type, size, mode kept."""

    def wrap(fn: Callable) -> ShiftFn:
        def shift(image: ImageLike, severity: int, rng: np.random.Generator) -> ImageLike:
            if severity not in (1, 2, 3, 4, 5):
                raise ConfigError(f"severity must be 1, 2, 3, 4 or 5, got {severity!r}")
            pil = isinstance(image, Image.Image)
            arr = np.asarray(image.convert("RGB") if pil else image)
            if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
                raise ConfigError(f"image must be a PIL image or an (H, W, 3) uint8 array, got "
                                  f"{arr.dtype} array of shape {arr.shape}")
            s = min(arr.shape[:2]) / REFERENCE_SIDE
            out = fn(arr, table[severity - 1], rng, s)
            if out.dtype != np.uint8:
                out = np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
            if not pil:
                return out
            res = Image.fromarray(out, "RGB")
            return res.convert(image.mode) if image.mode != "RGB" else res

        shift.__name__ = name
        shift.__doc__ = fn.__doc__
        shift.table = table  # type: ignore[attr-defined]
        return SHIFTS.add(name, shift)

    return wrap


def _float(arr: np.ndarray) -> np.ndarray:
    return arr.astype(np.float32) / 255.0


def _pil(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(arr, "RGB")


def _conv(arr: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Each channel of uint8 ``arr`` convolved with ``kernel`` (reflected edges), floats in [0, 1]."""
    x = torch.from_numpy(_float(arr)).permute(2, 0, 1)[None]  # (1, 3, H, W)
    k = torch.from_numpy((kernel / kernel.sum()).astype(np.float32))
    kh, kw = k.shape
    ph, pw = kh // 2, kw // 2
    mode = "reflect" if ph < x.shape[2] and pw < x.shape[3] else "replicate"
    x = F.pad(x, (pw, kw - 1 - pw, ph, kh - 1 - ph), mode=mode)
    y = F.conv2d(x, k.expand(3, 1, kh, kw).contiguous(), groups=3)
    return y[0].permute(1, 2, 0).numpy()


# --------------------------------------------------------------------------- noise
@_family("gaussian_noise", (0.08, 0.12, 0.18, 0.26, 0.38))
def _gaussian_noise(arr, sigma, rng, s):
    """Additive Gaussian noise of standard deviation ``sigma`` (in [0, 1] units)."""
    return _float(arr) + rng.normal(0.0, sigma, arr.shape).astype(np.float32)


@_family("shot_noise", (60, 25, 12, 5, 3))
def _shot_noise(arr, photons, rng, s):
    """Poisson (photon) noise: ``photons`` expected counts at full intensity."""
    return rng.poisson(_float(arr) * photons).astype(np.float32) / photons


@_family("impulse_noise", (0.03, 0.06, 0.09, 0.17, 0.27))
def _impulse_noise(arr, amount, rng, s):
    """Salt and pepper: a share ``amount`` of the values (per channel) set to 0 or 1, half each."""
    x = _float(arr)
    hit = rng.random(arr.shape) < amount
    salt = rng.random(arr.shape) < 0.5
    x[hit & salt] = 1.0
    x[hit & ~salt] = 0.0
    return x


# --------------------------------------------------------------------------- blur
def _disk(radius: float, alias_blur: float) -> np.ndarray:
    """A flat disk of ``radius`` pixels, anti-aliased by a small Gaussian (``alias_blur`` pixels)."""
    r = max(radius, 0.5)
    half = int(math.ceil(r + 3 * alias_blur)) + 1
    L = np.arange(-half, half + 1)
    X, Y = np.meshgrid(L, L)
    disk = (X ** 2 + Y ** 2 <= r ** 2).astype(np.float64)
    if alias_blur > 0:
        g = np.exp(-(L ** 2) / (2 * max(alias_blur, 1e-3) ** 2))
        disk = np.apply_along_axis(lambda v: np.convolve(v, g, "same"), 0, disk)
        disk = np.apply_along_axis(lambda v: np.convolve(v, g, "same"), 1, disk)
    return disk


@_family("defocus_blur", ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)))
def _defocus_blur(arr, p, rng, s):
    """An out-of-focus lens: convolution with a disk of radius ``p[0]`` (anti-aliased by ``p[1]``)."""
    return _conv(arr, _disk(p[0] * s, p[1] * s))


@_family("motion_blur", ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)))
def _motion_blur(arr, p, rng, s):
    """Camera shake along one direction (angle drawn in +-45 degrees): a one-sided line kernel
    ``p[0]`` pixels long with Gaussian weights of standard deviation ``p[1]``."""
    radius, sigma = p[0] * s, p[1] * s
    angle = math.radians(rng.uniform(-45, 45))
    n = int(math.ceil(radius))
    kernel = np.zeros((2 * n + 1, 2 * n + 1))
    for t in np.linspace(0, radius, 4 * n + 1):
        kernel[n + int(round(t * math.sin(angle))), n + int(round(t * math.cos(angle)))] += math.exp(-t * t / (2 * sigma * sigma))
    return _conv(arr, kernel)


@_family("gaussian_blur", (1, 2, 3, 4, 6))
def _gaussian_blur(arr, sigma, rng, s):
    """A Gaussian blur of standard deviation ``sigma`` pixels."""
    return np.asarray(_pil(arr).filter(ImageFilter.GaussianBlur(sigma * s)))


# --------------------------------------------------------------------------- weather-like
def _plasma(size: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """A ``size`` x ``size`` diamond-square fractal in [0, 1] (``size`` a power of two);
    ``decay`` is how fast the roughness falls from coarse to fine scales."""
    m = np.zeros((size, size))
    step, wibble = size, 100.0
    while step >= 2:
        h = step // 2
        corners = m[0:size:step, 0:size:step]
        square = corners + np.roll(corners, -1, 0)
        square = square + np.roll(square, -1, 1)
        m[h:size:step, h:size:step] = square / 4 + wibble * rng.uniform(-wibble, wibble, square.shape)
        centre = m[h:size:step, h:size:step]
        top = m[0:size:step, 0:size:step]
        a = centre + np.roll(centre, 1, 0) + top + np.roll(top, -1, 1)
        m[0:size:step, h:size:step] = a / 4 + wibble * rng.uniform(-wibble, wibble, a.shape)
        b = centre + np.roll(centre, 1, 1) + top + np.roll(top, -1, 0)
        m[h:size:step, 0:size:step] = b / 4 + wibble * rng.uniform(-wibble, wibble, b.shape)
        step //= 2
        wibble /= decay
    m -= m.min()
    return m / max(m.max(), 1e-12)


@_family("fog", ((1.5, 2.0), (2.0, 2.0), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)))
def _fog(arr, p, rng, s):
    """A fractal haze of strength ``p[0]`` and roughness ``p[1]``, then the range restored."""
    x = _float(arr)
    h, w = arr.shape[:2]
    tile = 256  # the texture at ImageNet-C's scale, stretched over the photo
    side = max(h, w) / s
    plasma = _plasma(tile, p[1], rng)
    cut = max(2, min(tile, int(round(side))))
    haze = Image.fromarray(plasma[:cut, :cut].astype(np.float32), "F").resize((w, h), Image.BILINEAR)
    top = x.max()
    return (x + p[0] * np.asarray(haze)[..., None]) * top / (top + p[0])


@_family("contrast", (0.4, 0.3, 0.2, 0.1, 0.05))
def _contrast(arr, c, rng, s):
    """Contrast scaled by ``c`` around each channel's mean."""
    x = _float(arr)
    mean = x.mean(axis=(0, 1), keepdims=True)
    return (x - mean) * c + mean


@_family("brightness", (0.1, 0.2, 0.3, 0.4, 0.5))
def _brightness(arr, c, rng, s):
    """HSV value raised by ``c`` (hue and saturation kept: each pixel's channels scale together;
    black pixels become grey ``c``)."""
    x = _float(arr)
    v = x.max(axis=2, keepdims=True)
    target = np.minimum(v + c, 1.0)
    return np.where(v > 0, x * target / np.maximum(v, 1e-6), target)


@_family("saturation", (0.6, 0.4, 0.25, 0.1, 0.0))
def _saturation(arr, c, rng, s):
    """Colour saturation scaled by ``c`` in HSV (0: greys): each channel moves towards the
    pixel's value (its largest channel)."""
    x = _float(arr)
    v = x.max(axis=2, keepdims=True)
    return v - (v - x) * c


# --------------------------------------------------------------------------- digital
@_family("jpeg", (25, 18, 15, 10, 7))
def _jpeg(arr, quality, rng, s):
    """JPEG compression at ``quality``."""
    buf = io.BytesIO()
    _pil(arr).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


@_family("pixelate", (0.6, 0.5, 0.4, 0.3, 0.25))
def _pixelate(arr, c, rng, s):
    """Blocks of ``1 / c`` pixels (at 224 px): a box down-sampling and box up-sampling."""
    h, w = arr.shape[:2]
    small = (max(1, round(w * c / s)), max(1, round(h * c / s)))
    return np.asarray(_pil(arr).resize(small, Image.BOX).resize((w, h), Image.BOX))


# --------------------------------------------------------------------------- geometry
@_family("crop", (0.85, 0.7, 0.6, 0.5, 0.4))
def _crop(arr, c, rng, s):
    """A share ``c`` of each side kept (the window placed at random), enlarged back: the
    object appears larger and off-centre."""
    h, w = arr.shape[:2]
    ch, cw = max(1, round(h * c)), max(1, round(w * c))
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return np.asarray(_pil(arr).resize((w, h), Image.BILINEAR, box=(left, top, left + cw, top + ch)))


@_family("scale", (0.8, 0.65, 0.5, 0.4, 0.3))
def _scale(arr, c, rng, s):
    """The photo shrunk to a share ``c`` of each side, placed at random on its mean colour:
    the object appears smaller."""
    h, w = arr.shape[:2]
    sh, sw = max(1, round(h * c)), max(1, round(w * c))
    out = np.empty_like(arr)
    out[:] = arr.reshape(-1, 3).mean(0).round().astype(np.uint8)
    top, left = int(rng.integers(0, h - sh + 1)), int(rng.integers(0, w - sw + 1))
    out[top:top + sh, left:left + sw] = np.asarray(_pil(arr).resize((sw, sh), Image.BILINEAR))
    return out


# --------------------------------------------------------------------------- entry points
def expand_families(names: str | list[str] | tuple[str, ...]) -> list[str]:
    """Family names from a comma list or a sequence; a group name (``noise``, ``blur``, ...)
    stands for its families, ``all`` for every family. Order kept, repeats dropped.

    Example:
        >>> expand_families("digital,fog")
        ['jpeg', 'pixelate', 'fog']
    """
    items = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    if not items:
        raise ConfigError("families must name at least one shift family or group")
    out: list[str] = []
    for n in items:
        if n == "all":
            out += [f for g in SHIFT_GROUPS.values() for f in g]
        elif n in SHIFT_GROUPS:
            out += SHIFT_GROUPS[n]
        else:
            SHIFTS.get(n)  # an unknown name raises, listing the families
            out.append(n)
    return list(dict.fromkeys(out))


def working_copy(image: Image.Image, side: int = 256) -> Image.Image:
    """``image`` in RGB with its short side reduced to ``side`` (never enlarged): the size
    at which ImageNet-C's parameters apply, and cheap to shift and to store."""
    image = image.convert("RGB")
    w, h = image.size
    f = side / min(w, h)
    if f >= 1:
        return image
    return image.resize((max(1, round(w * f)), max(1, round(h * f))), Image.BILINEAR)


def shift_image(image: ImageLike, family: str, severity: int, seed: int = 0) -> ImageLike:
    """One shifted copy: family ``family`` at ``severity`` (1-5), drawn with ``seed``.

    Raises:
        UnknownNameError: ``family`` is not in :data:`SHIFTS` (the message lists them).
        ConfigError: ``severity`` is not 1-5, or the array is not ``(H, W, 3)`` uint8.
    """
    return SHIFTS.get(family)(image, severity, np.random.default_rng(seed))
