"""Image decoding and preprocessing, including the input stage of every view.

Every image is decoded with PIL, EXIF orientation applied, and converted to 8-bit RGB whatever
its mode (grayscale, RGBA and palette with transparency composited on white, CMYK, 16-bit).
PIL's decompression-bomb guard stays on and truncated files are errors, not silently padded.

The plain model input is the model's own timm eval transform. A view's input stage
(:class:`~ttakit.stages.Input`) re-samples the same decoded photo with the model's
interpolation and normalisation; a view's photo corrections (:mod:`ttakit.corrections`) run on
the decoded photo first. :class:`InputRenderer` builds every stage a policy needs from one
decode, correcting the photo once per distinct list of corrections (in DataLoader workers too:
it pickles).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from .corrections import Corrected, Correction, correct
from .errors import ImageLoadError, ShapeError
from .stages import Input, window_corner

__all__ = [
    "InputRenderer",
    "PhotoLike",
    "example_image_path",
    "input_transform",
    "load_image",
    "preprocess",
    "source_key",
    "to_photo",
    "to_rgb",
]

PhotoLike = Union[str, Path, Image.Image, Tensor]  # a path, a PIL image, or a (C, H, W) uint8 tensor


def example_image_path() -> Path:
    """The small example photo shipped inside the package (an ImageNet 'tiger cat')."""
    return Path(__file__).parent / "assets" / "tiger_cat.jpg"


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; transparency is composited on white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit integer grey: rescale to 8 bits by the actual range of the type.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        img = Image.fromarray(((arr - lo) / (hi - lo or 1.0) * 255.0 + 0.5).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Decode an image file to RGB, honouring EXIF orientation.

    Raises:
        ImageLoadError: missing file, not an image, truncated or corrupt data, or an image
            larger than PIL's decompression-bomb limit. The message names the file.
    """
    p = Path(path)
    if not p.exists():
        raise ImageLoadError(f"{p}: no such file")
    if p.is_dir():
        raise ImageLoadError(f"{p}: is a directory, not an image")
    try:
        with Image.open(p) as img:
            img.load()  # decode now, so truncated data fails here
            img = ImageOps.exif_transpose(img) or img
            return to_rgb(img)
    except UnidentifiedImageError as e:
        raise ImageLoadError(f"{p}: not an image file PIL can read") from e
    except Image.DecompressionBombError as e:
        raise ImageLoadError(f"{p}: image too large (PIL's decompression-bomb guard: {e})") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageLoadError(f"{p}: corrupt or truncated image ({str(e) or type(e).__name__})") from e


def preprocess(paths: list[str | Path], transform: Callable[[Image.Image], Any]) -> Tensor:
    """Decode and transform several files into one ``(B, C, H, W)`` batch."""
    return torch.stack([transform(load_image(p)) for p in paths])


def to_photo(item: PhotoLike) -> Image.Image:
    """A decoded RGB photo from a path, a PIL image (any mode) or a ``(C, H, W)`` uint8 tensor.

    Raises:
        ImageLoadError: the file cannot be read (see :func:`load_image`).
        ShapeError: a tensor that is not ``(1|3, H, W)`` uint8.
    """
    if isinstance(item, Image.Image):
        return to_rgb(item)
    if isinstance(item, Tensor):
        if item.dtype != torch.uint8 or item.ndim != 3 or item.shape[0] not in (1, 3):
            raise ShapeError("photo tensor", "(1|3, H, W) uint8", item.shape)
        from torchvision.transforms.functional import to_pil_image  # noqa: PLC0415 - torchvision loads on first use

        return to_rgb(to_pil_image(item.cpu()))
    return load_image(item)


def source_key(source: Input | Corrected | None) -> str:
    """The name a rendered input stage is stored under (``identity`` for the model's own)."""
    return "identity" if source is None else source.name


class _InputStage:
    """PIL photo -> normalised ``(C, S, S)``: resize the short side, cut the window, normalise."""

    def __init__(self, source: Input, data_config: Mapping[str, Any]) -> None:
        from torchvision.transforms import InterpolationMode  # noqa: PLC0415 - torchvision loads on first use

        self.source = source
        self.interpolation = InterpolationMode(data_config.get("interpolation", "bicubic"))
        self.mean, self.std = list(data_config["mean"]), list(data_config["std"])

    def __call__(self, img: Image.Image) -> Tensor:
        from torchvision.transforms import functional as TF  # noqa: PLC0415 - torchvision loads on first use

        s = self.source
        img = TF.resize(img, s.scale_size(), interpolation=self.interpolation)  # short side >= s.size
        top, left = window_corner((img.height, img.width), s.size, s.position)
        x = TF.pil_to_tensor(img.crop((left, top, left + s.size, top + s.size))).float().div_(255.0)
        return TF.normalize(x, self.mean, self.std)


class _CorrectedStage:
    """PIL photo -> its corrections -> the input stage's model input."""

    def __init__(self, corrections: tuple[Correction, ...], stage: Callable[[Image.Image], Tensor]) -> None:
        self.corrections, self.stage = corrections, stage

    def __call__(self, img: Image.Image) -> Tensor:
        return self.stage(correct(img, self.corrections))


def _split(source: Input | Corrected | None) -> tuple[tuple[Correction, ...], Input | None]:
    """A rendered stage as (corrections of the photo, geometric input stage)."""
    return (source.corrections, source.source) if isinstance(source, Corrected) else ((), source)


def input_transform(source: Input | Corrected | None, data_config: Mapping[str, Any]) -> Callable[[Image.Image], Tensor]:
    """PIL photo -> normalised ``(C, H, W)`` model input for one input stage (``None``: timm's
    own eval transform for ``data_config``; a :class:`~ttakit.corrections.Corrected` stage
    corrects the photo first).

    Example:
        >>> cfg = {"input_size": (3, 224, 224), "interpolation": "bicubic", "mean": (0.5,) * 3,
        ...        "std": (0.5,) * 3, "crop_pct": 0.875, "crop_mode": "center"}
        >>> img = Image.new("RGB", (320, 240), (200, 30, 30))
        >>> tuple(input_transform(Input(256, 1.0), cfg)(img).shape)
        (3, 256, 256)
    """
    if isinstance(source, Corrected):
        return _CorrectedStage(source.corrections, input_transform(source.source, data_config))
    if source is None:
        import timm.data  # noqa: PLC0415 - timm loads on first use

        return timm.data.create_transform(**data_config, is_training=False)
    return _InputStage(source, data_config)


class InputRenderer:
    """Renders every input stage of a set of views from one decoded photo.

    Calling it on a PIL image returns ``{source_key: (C, h, w) tensor}``; :meth:`batch` does it
    for several photos and stacks each stage into a ``(B, C, h, w)`` batch.
    """

    def __init__(self, sources: Iterable[Input | Corrected | None], data_config: Mapping[str, Any]) -> None:
        unique = {source_key(s): _split(s) for s in [None, *sources]}  # the plain input is always there
        self.stages = {k: (corr, input_transform(geo, data_config)) for k, (corr, geo) in unique.items()}

    def __call__(self, img: Image.Image) -> dict[str, Tensor]:
        photos = {(): img}  # the photo after each distinct list of corrections, made once
        out = {}
        for k, (corrections, stage) in self.stages.items():
            if corrections not in photos:
                photos[corrections] = correct(img, corrections)
            out[k] = stage(photos[corrections])
        return out

    def batch(self, photos: Sequence[PhotoLike]) -> dict[str, Tensor]:
        rendered = [self(to_photo(p)) for p in photos]
        return {k: torch.stack([r[k] for r in rendered]) for k in self.stages}  # each (B, C, h, w)
