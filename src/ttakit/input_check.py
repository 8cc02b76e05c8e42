"""Photos already cropped to the model's input: the one-line note that says so.

ImageNet-C and many exported datasets store photos already resized and centre-cropped to
224 x 224. A model whose data config crops (``crop_pct`` < 1) then enlarges them and cuts the
border off a second time, losing 1 - crop_pct of each side's pixels for nothing; ``input=SIZE:1``
(the whole photo at the model's size) avoids it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

__all__ = ["precropped_note"]


def precropped_note(paths: Sequence[str | Path], data_config: Mapping[str, Any], sample: int = 8) -> str | None:
    """One line when the first ``sample`` readable photos are all exactly the model's input
    size and ``data_config`` would centre-crop them again; else ``None``.

    Example:
        >>> cfg = {"input_size": (3, 224, 224), "crop_pct": 0.875}
        >>> Image.new("RGB", (224, 224)).save("/tmp/_precropped.png")
        >>> precropped_note(["/tmp/_precropped.png"], cfg)[:60]
        'note: the photos are already 224x224, and the model crops th'
    """
    crop = float(data_config.get("crop_pct") or 1.0)
    h, w = data_config["input_size"][-2:]
    if crop >= 1.0 or not paths:
        return None
    seen = 0
    for p in list(paths)[:sample]:
        try:
            with Image.open(p) as img:  # reads the header only
                size = img.size
        except OSError:
            continue
        if size != (w, h):
            return None
        seen += 1
    if not seen:
        return None
    return (f"note: the photos are already {w}x{h}, and the model crops them again (crop_pct {crop:g}: enlarge, "
            f"then cut the border); try --tta 'input={h}:1' to show the model each whole photo")
