"""Small pictures for the report: photos and views (as the model saw them) as base64 JPEG data URIs.

Example:
    >>> from PIL import Image
    >>> jpeg_uri(Image.new("RGB", (300, 200), "red"), 64).startswith("data:image/jpeg;base64,")
    True
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from ..data import input_transform, load_image, source_key
from ..errors import TTAKitError
from ..transforms import Normalization
from ..views import View
from ..viz import denormalize

__all__ = ["PHOTO_PX", "VIEW_PX", "Thumbnails", "jpeg_uri"]

PHOTO_PX = 128  # long side of a gallery photo thumbnail
VIEW_PX = 48  # long side of a view thumbnail (shown at 36 CSS px: sharp on 1.3x screens)


def jpeg_uri(img: Image.Image, side: int, quality: int = 78) -> str:
    """``img`` shrunk to ``side`` px on its long side, as a base64 JPEG data URI."""
    if max(img.size) > side:
        img = img.copy()
        img.thumbnail((side, side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, optimize=True)  # optimised Huffman tables: a third smaller at 48 px
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class Thumbnails:
    """Photo and view thumbnails of gallery images, each photo decoded once and each
    (photo, view) rendered once however many policies show it."""

    def __init__(self, data_config: Mapping[str, Any] | None) -> None:
        self.cfg = data_config
        self.norm = Normalization(tuple(data_config["mean"]), tuple(data_config["std"])) if data_config else None
        self.stages: dict[str, Any] = {}
        self.cache: dict[str, tuple[str | None, dict[str, str], str]] = {}

    def _stage(self, view: View) -> Any:
        key = source_key(view.stage)
        if key not in self.stages:
            self.stages[key] = input_transform(view.stage, self.cfg)  # type: ignore[arg-type]
        return self.stages[key]

    def render_all(self, wanted: Mapping[str, Sequence[View]]) -> None:
        """:meth:`render` every photo, a few at a time (decoding, resizing and encoding release
        the GIL)."""
        if self.norm is not None:
            for views in wanted.values():
                for v in views:
                    self._stage(v)  # built once, before the threads share them
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            list(pool.map(lambda item: self.render(*item), wanted.items()))

    def render(self, path: str, views: Sequence[View]) -> None:
        """Decode ``path`` once and render its photo thumbnail and every view in ``views``."""
        try:
            photo = load_image(path)
        except TTAKitError as e:
            self.cache[path] = (None, {}, str(e))
            return
        thumbs: dict[str, str] = {}
        note = ""
        if self.norm is not None:
            inputs: dict[str, Tensor] = {}
            with torch.inference_mode():
                for v in views:
                    try:
                        stage = self._stage(v)
                        src = source_key(v.stage)
                        if src not in inputs:
                            inputs[src] = stage(photo)
                        x = v.apply(inputs[src][None], self.norm)[0]
                    except TTAKitError as e:  # e.g. an input window larger than this photo
                        note = str(e)
                        continue
                    thumbs[v.name] = jpeg_uri(self._small(x), VIEW_PX, 70)
        self.cache[path] = (jpeg_uri(photo, PHOTO_PX), thumbs, note)

    def _small(self, x: Tensor) -> Image.Image:
        """A normalised ``(C, H, W)`` view as a small PIL image: area-shrunk while still a
        tensor, so denormalising and converting touch a few thousand pixels, not 50k."""
        factor = VIEW_PX / max(x.shape[-2:])
        if factor < 1:
            x = torch.nn.functional.interpolate(x[None].float(), scale_factor=factor, mode="area")[0]
        pixels = (denormalize(x.float(), self.norm) * 255 + 0.5).to(torch.uint8)  # type: ignore[arg-type]
        return Image.fromarray(pixels.contiguous().numpy())
