"""Image decoding and preprocessing.

Every image is decoded with PIL, EXIF orientation applied, and converted to 8-bit RGB whatever
its mode (grayscale, RGBA and palette with transparency composited on white, CMYK, 16-bit).
PIL's decompression-bomb guard stays on and truncated files are errors, not silently padded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from .errors import ImageLoadError

__all__ = ["example_image_path", "load_image", "preprocess", "to_rgb"]


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
