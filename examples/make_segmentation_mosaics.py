"""Large segmentation photos from the ImageNet sample: 1024 x 1024 mosaics of held-out photos with pasted objects and exact masks.

Each mosaic is a 4 x 4 grid of held-out photos (every fifth photo of ../shared/imagenet-sample,
as the test split of ``examples/make_segmentation.py``), each cut to a 256 x 256 square, with
6 to 14 objects (centres of other held-out photos inside rough rounded masks) pasted across
the grid at the sizes ``make_segmentation.py`` pastes them (56 to 176 px). So the objects and
backgrounds have the pixel scale the demo segmenter was trained at (256 px images), but the
photo is four times larger on a side: resizing it whole to the model's input shrinks every
object four times, while 256 px tiles see them at their own scale. Masks and classes are those
of ``make_segmentation.py`` (0 background, 1 bird, 2 dog, 3 other_animal, 4 object); every
mosaic is seeded by its file name.

Layout: ``OUT/images/mosaic_NNNNN.jpg`` (quality 92) and ``OUT/masks/mosaic_NNNNN.png``.

Run: ``python examples/make_segmentation_mosaics.py [OUT] [--n 40]``.
"""

from __future__ import annotations

import argparse
import tempfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

import ttakit
from detection_demo import object_crop, square_crop  # run as a script: its siblings are importable
from make_segmentation import SIZE, paste_objects, sample_photos

__all__ = ["GRID", "make_mosaics"]

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "runs" / "segmentation_mosaics"
GRID = 4  # photos per side: 4 x 256 = 1024 px
OBJECTS = (6, 15)  # objects per mosaic: [low, high)


def make_mosaics(out: Path = DEFAULT_OUT, n: int = 40, grid: int = GRID, photos: int | None = None) -> Path:
    """Write ``n`` mosaics of ``grid`` x ``grid`` held-out photos (from ``photos`` sample photos,
    default all) and their masks under ``out`` (existing ones are kept); returns ``out``."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    stems = [f"mosaic_{k:05d}" for k in range(n)]
    todo = [s for s in stems if not ((out / "images" / f"{s}.jpg").exists() and (out / "masks" / f"{s}.png").exists())]
    if not todo:
        return out
    photos, classes = sample_photos(photos)
    held_out = [i for i in range(len(photos)) if i % 5 == 4]  # the test split's photos only
    decoded = {i: ttakit.load_image(photos[i]) for i in held_out}
    squares = {i: square_crop(decoded[i], SIZE) for i in held_out}
    objects = [(i, classes[i], object_crop(decoded[i])) for i in held_out]
    side = grid * SIZE
    for stem in todo:
        rng = np.random.default_rng(zlib.crc32(stem.encode()))
        canvas = Image.new("RGB", (side, side))
        cells = rng.choice(held_out, grid * grid, replace=False)
        for c, i in enumerate(cells):
            canvas.paste(squares[int(i)], ((c % grid) * SIZE, (c // grid) * SIZE))
        labels = np.zeros((side, side), np.uint8)
        paste_objects(rng, canvas, labels, objects, int(rng.integers(*OBJECTS)), {int(i) for i in cells})
        canvas.save(out / "images" / f"{stem}.jpg", quality=92)
        Image.fromarray(labels).save(out / "masks" / f"{stem}.png")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=None, help="output folder")
    parser.add_argument("--n", type=int, default=40, help="mosaics (default 40)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: one 2 x 2 mosaic from 30 photos, in a temporary folder unless OUT is given")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or (Path(tmp) if args.quick else DEFAULT_OUT)
        folder = make_mosaics(out, 1, 2, 30) if args.quick else make_mosaics(out, args.n)
        print(f"wrote {len(list((folder / 'masks').glob('*.png')))} mosaics and masks to {folder}")


if __name__ == "__main__":
    main()
