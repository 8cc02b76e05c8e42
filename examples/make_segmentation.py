"""A deterministic segmentation set made from the ImageNet sample: photo centres pasted onto other photos.

Each image is one photo of ../shared/imagenet-sample, cut to a 256 x 256 background, with 1 to 3
objects pasted at random positions and sizes. An object is the centre of another photo (its
object: ImageNet photos are object-centred) inside a rough rounded mask (a superellipse,
between an ellipse and a rectangle, edges slightly blurred); its pixels take the object's
super-class from the ImageNet class index, the rest is background:

    0 background, 1 bird, 2 dog, 3 other_animal, 4 object

(the super-classes of ``examples/detection_demo.py``, whose cut-and-paste helpers are reused).
A pixel belongs to the topmost object whose mask covers at least half of it, so the label map
is exactly what was pasted. The split is by source photo: a test image is made only of test
photos (every fifth), objects and background alike.

Every image is seeded by its own file name, so a rerun writes byte-identical files and one
image can be remade alone. Layout (what ``ttakit evaluate --task segment`` reads):

    OUT/{train,test}/images/{split}_NNNNN.jpg   photos (JPEG, quality 92)
    OUT/{train,test}/masks/{split}_NNNNN.png    grey PNG, each pixel a class index
    OUT/classes.txt                             the class names, one a line

Run: ``python examples/make_segmentation.py [OUT] [--train N] [--test N]``
(default ``runs/segmentation_demo/data``, 1000 train and 250 test images, about a minute).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import zlib
from pathlib import Path

import numpy as np
import timm
from PIL import Image

import ttakit
from detection_demo import CLASSES as OBJECT_CLASSES  # run as a script: its sibling is importable
from detection_demo import SIZE, object_crop, rough_mask, sample_files, square_crop, super_class

__all__ = ["CLASSES", "make_segmentation", "paste_objects", "sample_photos"]

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "runs" / "segmentation_demo" / "data"
CLASSES = ["background", *OBJECT_CLASSES]
MAX_OBJECTS = 3
SIDE_RANGE = (56.0, 176.0)  # an object's long side in pixels (log-uniform)


def _rng(name: str) -> np.random.Generator:
    """The generator of one image, seeded by its file name (crc32: stable across runs and Pythons)."""
    return np.random.default_rng(zlib.crc32(name.encode()))


def paste_objects(rng: np.random.Generator, canvas: Image.Image, labels: np.ndarray, objects: list[tuple[int, int, Image.Image]],
                  count: int, avoid: set[int]) -> None:
    """Paste ``count`` objects (not of the photos in ``avoid``) at random places and sizes onto
    ``canvas``, writing their classes into ``labels`` (in place; later objects cover earlier ones)."""
    height, width = labels.shape
    for _ in range(count):
        photo, cls, obj = objects[int(rng.integers(len(objects)))]
        if photo in avoid:  # an object on its own background would have no edge to find
            continue
        long_side = math.exp(rng.uniform(*map(math.log, SIDE_RANGE)))
        aspect = obj.width / obj.height * math.exp(rng.uniform(-0.2, 0.2))
        w, h = (long_side, long_side / aspect) if aspect >= 1 else (long_side * aspect, long_side)
        w, h = max(16, min(width, round(w))), max(16, min(height, round(h)))
        x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        alpha = rough_mask(w, h, rng)
        canvas.paste(obj.resize((w, h), Image.BICUBIC), (x, y), alpha)
        covered = np.asarray(alpha) >= 128  # the pixel is at least half object
        labels[y:y + h, x:x + w][covered] = 1 + cls


def _compose(rng: np.random.Generator, backgrounds: list[tuple[int, Image.Image]],
             objects: list[tuple[int, int, Image.Image]]) -> tuple[Image.Image, np.ndarray]:
    """One image and its label map ``(SIZE, SIZE)`` uint8: a background with pasted objects."""
    bg_photo, bg = backgrounds[int(rng.integers(len(backgrounds)))]
    canvas = bg.copy()
    labels = np.zeros((SIZE, SIZE), np.uint8)
    paste_objects(rng, canvas, labels, objects, int(rng.integers(1, MAX_OBJECTS + 1)), {bg_photo})
    return canvas, labels


def sample_photos(n: int | None = None) -> tuple[list[Path], list[int]]:
    """The sample's photos (sorted; ``n`` of them spread over the list, when given) and each one's super-class."""
    photos = sample_files(n)
    index = {w: i for i, w in enumerate(timm.data.ImageNetInfo().label_names())}
    return photos, [super_class(index[p.name.split("_", 1)[0]]) for p in photos]


def make_segmentation(out: Path = DEFAULT_OUT, n_train: int = 1000, n_test: int = 250,
                      photos: int | None = None) -> dict[str, Path]:
    """Write the train and test splits under ``out`` from ``photos`` sample photos (default all;
    see the module docstring); an image whose photo and mask both exist is not redone.
    Returns ``{split: folder}``."""
    photos, labels = sample_photos(photos)
    out.mkdir(parents=True, exist_ok=True)
    (out / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    folders = {}
    for split, n in (("train", n_train), ("test", n_test)):
        mine = [i for i in range(len(photos)) if (i % 5 == 4) == (split == "test")]  # split by source photo
        folder = folders[split] = out / split
        (folder / "images").mkdir(parents=True, exist_ok=True)
        (folder / "masks").mkdir(parents=True, exist_ok=True)
        names = [f"{split}_{k:05d}" for k in range(n)]
        todo = [s for s in names if not ((folder / "images" / f"{s}.jpg").exists()
                                         and (folder / "masks" / f"{s}.png").exists())]
        if not todo:
            continue
        decoded = {i: ttakit.load_image(photos[i]) for i in mine}
        backgrounds = [(i, square_crop(decoded[i], SIZE)) for i in mine]
        objects = [(i, labels[i], object_crop(decoded[i])) for i in mine]
        for stem in todo:
            img, label_map = _compose(_rng(stem), backgrounds, objects)
            img.save(folder / "images" / f"{stem}.jpg", quality=92)
            Image.fromarray(label_map).save(folder / "masks" / f"{stem}.png")
    return folders


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=None, help="output folder")
    parser.add_argument("--train", type=int, default=1000, help="training images (default 1000)")
    parser.add_argument("--test", type=int, default=250, help="held-out images (default 250)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 4 + 2 images from 20 photos, in a temporary folder unless OUT is given")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            args.train, args.test = 4, 2
        out = args.out or (Path(tmp) if args.quick else DEFAULT_OUT)
        folders = make_segmentation(out, args.train, args.test, 20 if args.quick else None)
        for split, folder in folders.items():
            print(f"{split}: wrote {len(list((folder / 'masks').glob('*.png')))} images and masks to {folder}")


if __name__ == "__main__":
    main()
