"""Write a deterministic corrupted copy of a folder of photos: one corruption per photo.

Usage: ``python examples/make_corrupted.py ../shared/imagenet-sample runs/imagenet-corrupt``

The photos are sorted by name and photo ``i`` gets corruption ``i % 6``: Gaussian blur, strong
JPEG compression, darkening, low contrast, Gaussian noise, or the object made small and moved
off-centre on a padded canvas (the case the model's 0.875 centre crop handles worst). Every
random choice comes from a generator seeded by the file name, so the copy is byte-identical on
every run and machine with the same Pillow and numpy. File names (and so ImageNet labels in
the ``<wnid>_<name>`` layout) are kept.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

Corruption = Callable[[Image.Image, np.random.Generator], Image.Image]


def blur(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(radius=max(img.size) / 160))


def jpeg(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=7)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def dark(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return ImageEnhance.Brightness(img).enhance(0.3)


def low_contrast(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return ImageEnhance.Contrast(img).enhance(0.3)


def noise(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0.0, 38.0, size=(img.height, img.width, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def small_off_centre(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The photo shrunk to 45-60% and pasted at a random spot of a canvas of the original size,
    filled with the photo's mean colour."""
    W, H = img.size
    f = float(rng.uniform(0.45, 0.6))
    small = img.resize((max(1, round(W * f)), max(1, round(H * f))), Image.Resampling.BICUBIC)
    mean = tuple(int(c) for c in np.asarray(img).reshape(-1, 3).mean(0))
    canvas = Image.new("RGB", (W, H), mean)
    x = int(rng.integers(0, W - small.width + 1))
    y = int(rng.integers(0, H - small.height + 1))
    canvas.paste(small, (x, y))
    return canvas


CORRUPTIONS: tuple[tuple[str, Corruption], ...] = (
    ("blur", blur), ("jpeg", jpeg), ("dark", dark), ("low_contrast", low_contrast), ("noise", noise),
    ("small_off_centre", small_off_centre),
)


def corrupt_folder(src: Path, dst: Path) -> dict[str, str]:
    """Write the corrupted copy of every ``*.JPEG``/``*.jpg``/``*.png`` in ``src`` to ``dst``;
    returns ``{file name: corruption}``."""
    dst.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in src.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    applied = {}
    for i, path in enumerate(files):
        name, fn = CORRUPTIONS[i % len(CORRUPTIONS)]
        seed = int.from_bytes(hashlib.sha256(path.name.encode()).digest()[:8], "little")
        with Image.open(path) as im:
            out = fn(im.convert("RGB"), np.random.default_rng(seed))
        out.save(dst / path.name, format="PNG" if path.suffix.lower() == ".png" else "JPEG", quality=95)
        applied[path.name] = name
    (dst / "corruptions.csv").write_text("file,corruption\n" + "".join(f"{k},{v}\n" for k, v in applied.items()))
    return applied


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path, nargs="?", help="folder of photos (e.g. ../shared/imagenet-sample)")
    p.add_argument("dst", type=Path, nargs="?", help="output folder")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: the first 4 photos of SRC (default ../shared/imagenet-sample), into a temporary "
                   "folder unless DST is given")
    args = p.parse_args(argv)
    if not args.quick and (args.src is None or args.dst is None):
        p.error("SRC and DST are required (but for --quick)")
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = args.src, args.dst or Path(tmp) / "corrupted"
        if args.quick:
            sample = src or Path(os.environ.get("TTAKIT_SAMPLE") or Path(__file__).resolve().parents[2] / "shared"
                                 / "imagenet-sample")
            src = Path(tmp) / "photos"
            src.mkdir()
            for f in sorted(sample.glob("*.JPEG"))[:4]:
                (src / f.name).write_bytes(f.read_bytes())
        applied = corrupt_folder(src, dst)
        counts = {name: sum(v == name for v in applied.values()) for name, _ in CORRUPTIONS}
        print(f"wrote {len(applied)} photos to {dst}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
