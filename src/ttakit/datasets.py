"""Labelled image sets: layout detection (ImageFolder, flat ImageNet files, CSV) and loading.

Decoding happens in a pool of threads (:class:`DecodeLoader`); a file that cannot be decoded becomes a *skip*
record (path and reason) instead of an exception, so one bad file never stops a long run.
"""

from __future__ import annotations

import csv
import itertools
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .data import load_image
from .errors import DatasetError, ImageLoadError
from .imagenet import imagenet_wnids

__all__ = [
    "DecodeLoader", "ImageList", "LabelledImages", "MaskedImages", "calibration_photos", "collate_decoded", "detect_dataset",
    "find_masked_images", "load_mask", "make_loader",
]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass(frozen=True)
class LabelledImages:
    """An ordered list of ``(path, class index)`` pairs and how it was found.

    Attributes:
        paths: image files, in a deterministic (sorted) order.
        labels: class index of each file in the model's class list.
        layout: ``imagefolder``, ``imagenet-flat`` or ``csv``.
        source: the DATA argument.
    """

    paths: tuple[str, ...]
    labels: tuple[int, ...]
    layout: str
    source: str

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def n_classes(self) -> int:
        return len(set(self.labels))

    def describe(self) -> str:
        return f"{self.source}: {self.layout} layout, {len(self)} images, {self.n_classes} classes"

    def head(self, n: int | None) -> LabelledImages:
        """The first ``n`` images (all when ``n`` is None)."""
        if n is None:
            return self
        return LabelledImages(self.paths[:n], self.labels[:n], self.layout, self.source)


class _LabelIndex:
    """Resolves a class given as a model class name, an ImageNet wnid or an integer index."""

    def __init__(self, class_names: Sequence[str]) -> None:
        self.n = len(class_names)
        self.by_name = {n: i for i, n in enumerate(class_names)}
        # Short names too: ImageNet descriptions look like "tabby, tabby cat".
        for i, n in enumerate(class_names):
            for part in n.split(","):
                self.by_name.setdefault(part.strip(), i)
        self.by_wnid: dict[str, int] = {}
        if self.n == 1000:
            self.by_wnid = {w: i for i, w in enumerate(imagenet_wnids())}

    def __call__(self, label: str, where: str) -> int:
        label = label.strip()
        for table in (self.by_wnid, self.by_name):
            if label in table:
                return table[label]
        if label.isdigit() and int(label) < self.n:
            return int(label)
        raise DatasetError(f"{where}: class {label!r} is not one of the model's {self.n} classes (names, wnids or indices)")


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def detect_dataset(data: str | Path, class_names: Sequence[str]) -> LabelledImages:
    """Find the images and labels of ``data``.

    * a ``.csv`` file with ``path,label`` columns (paths relative to the file's folder);
    * a folder of class folders (ImageFolder), named by class name or ImageNet wnid;
    * a flat folder of ``<wnid>_<anything>.<ext>`` files (as ``../shared/imagenet-sample``).

    Files with other suffixes are ignored; files that fail to decode are skipped later.

    Raises:
        DatasetError: missing path, unknown layout or class.
    """
    root = Path(data)
    labels = _LabelIndex(class_names)
    if not root.exists():
        raise DatasetError(f"{root}: no such file or folder")
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise DatasetError(f"{root}: a dataset is a folder or a .csv file with path,label columns")
        return _from_csv(root, labels)
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if subdirs:
        paths, ys = [], []
        for d in subdirs:
            y = labels(d.name, f"{root}/{d.name}")
            for p in _images_in(d):
                paths.append(str(p))
                ys.append(y)
        return LabelledImages(tuple(paths), tuple(ys), "imagefolder", str(root))
    files = _images_in(root)
    if not files:
        raise DatasetError(f"{root}: no images found (expected class folders, <wnid>_*.JPEG files or a CSV)")
    ys = [labels(p.name.split("_", 1)[0], str(p)) for p in files]
    return LabelledImages(tuple(str(p) for p in files), tuple(ys), "imagenet-flat", str(root))


def _from_csv(path: Path, labels: _LabelIndex) -> LabelledImages:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"path", "label"} <= set(reader.fieldnames):
            raise DatasetError(f"{path}: a dataset CSV needs 'path' and 'label' columns, found {reader.fieldnames}")
        rows = [(r["path"], r["label"]) for r in reader]
    paths, ys = [], []
    for line, (p, y) in enumerate(rows, start=2):
        full = Path(p) if Path(p).is_absolute() else path.parent / p
        paths.append(str(full))
        ys.append(labels(y, f"{path}:{line}"))
    return LabelledImages(tuple(paths), tuple(ys), "csv", str(path))


@dataclass(frozen=True)
class MaskedImages:
    """Photos with a segmentation mask each: ``masks[i]`` labels every pixel of ``paths[i]``.

    Attributes:
        paths: photo files, sorted by file stem.
        masks: the mask PNG of each photo (same stem), pixel value = class index.
        source: the photo folder.
        mask_source: the mask folder.
    """

    paths: tuple[str, ...]
    masks: tuple[str, ...]
    source: str
    mask_source: str

    def __len__(self) -> int:
        return len(self.paths)

    def describe(self) -> str:
        return f"{self.source}: {len(self)} photos with masks in {self.mask_source}"

    def head(self, n: int | None) -> MaskedImages:
        """The first ``n`` photos (all when ``n`` is None)."""
        if n is None:
            return self
        return MaskedImages(self.paths[:n], self.masks[:n], self.source, self.mask_source)


def find_masked_images(images: str | Path, masks: str | Path) -> MaskedImages:
    """Pair the photos of ``images`` with the PNG masks of ``masks`` by file stem
    (``a/x.jpg`` with ``m/x.png``). Photos without a mask are an error (naming a few), masks
    without a photo are ignored.

    Raises:
        DatasetError: a missing folder, no photos, or photos without masks.
    """
    root, mroot = Path(images), Path(masks)
    for folder, what in ((root, "photos"), (mroot, "masks")):
        if not folder.is_dir():
            raise DatasetError(f"{folder}: not a folder of {what}")
    photos = _images_in(root)
    if not photos:
        raise DatasetError(f"{root}: no photos found")
    by_stem = {p.stem: p for p in mroot.iterdir() if p.suffix.lower() == ".png"}
    missing = [p.name for p in photos if p.stem not in by_stem]
    if missing:
        raise DatasetError(f"{mroot}: no mask <stem>.png for {len(missing)} photo(s) of {root} "
                           f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
    return MaskedImages(tuple(str(p) for p in photos), tuple(str(by_stem[p.stem]) for p in photos), str(root), str(mroot))


def load_mask(path: str | Path) -> np.ndarray:
    """A mask PNG as ``(H, W)`` int64 class indices: a palette PNG's indices or a grey PNG's
    values (an RGB PNG whose three channels agree is read as grey).

    Raises:
        DatasetError: unreadable file, or a colour PNG (class colours are not indices).
    """
    try:
        with Image.open(path) as img:
            img.load()
            mode, arr = img.mode, np.asarray(img)
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: cannot read the mask ({e})") from e
    if arr.ndim == 3:
        if mode in ("RGB", "RGBA") and (arr[..., :3] == arr[..., :1]).all():
            arr = arr[..., 0]
        else:
            raise DatasetError(f"{path}: a {mode} mask; save class indices as a grey (L) or palette (P) PNG")
    return arr.astype(np.int64)


class ImageList(Dataset):
    """Decodes ``paths[i]`` and applies ``transform`` (to a tensor, or to a dict of tensors such
    as every input stage :class:`~ttakit.data.InputRenderer` renders); a file that cannot be
    decoded becomes a skip record, and any other failure propagates."""

    def __init__(self, paths: Sequence[str], transform: Callable[[Any], Any]) -> None:
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, Any, str | None]:
        try:
            photo = load_image(self.paths[i])
        except ImageLoadError as e:  # only a file that cannot be decoded is a skip
            return i, None, str(e).removeprefix(f"{self.paths[i]}: ")
        # A transform that fails on a decoded photo is a bug: it crashes with its traceback.
        return i, self.transform(photo), None


def collate_decoded(items: list[tuple[int, Any, str | None]]) -> tuple[list[int], Any, list[tuple[int, str]]]:
    """Collate :class:`ImageList` items into ``(indices, batch, skipped)``.

    ``batch`` is one stacked tensor, or one per input stage when the items are dicts;
    ``skipped`` holds ``(index, reason)`` of photos that could not be decoded. The collate
    function of :func:`make_loader` (and of a torch ``DataLoader`` over an ``ImageList``).

    Example:
        >>> import torch
        >>> idx, x, bad = collate_decoded([(0, torch.zeros(3, 2, 2), None), (1, None, "truncated")])
        >>> idx, tuple(x.shape), bad
        ([0], (1, 3, 2, 2), [(1, 'truncated')])
    """
    ok = [(i, x) for i, x, _ in items if x is not None]
    bad = [(i, r) for i, x, r in items if x is None]
    if not ok:
        return [], None, bad  # type: ignore[return-value]
    first = ok[0][1]
    if isinstance(first, dict):  # one (B, C, h, w) batch per input stage; other values (photos) as a list
        x = {k: torch.stack([x[k] for _, x in ok]) if isinstance(first[k], torch.Tensor) else [x[k] for _, x in ok]
             for k in first}
    else:
        x = torch.stack([x for _, x in ok])
    return [i for i, _ in ok], x, bad  # type: ignore[return-value]


def calibration_photos(folder: str | Path, n: int = 64) -> list[Path]:
    """Up to ``n`` image files under ``folder`` (recursively), spread evenly over its sorted
    list, so that every class of an ImageFolder tree is seen (int8 calibration photos).

    Raises:
        DatasetError: ``folder`` holds no images.
    """
    root = Path(folder)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) if root.is_dir() else []
    if not files:
        raise DatasetError(f"{root}: no images to calibrate int8 on; give a folder of your photos")
    step = len(files) / min(n, len(files))
    return [files[int(i * step)] for i in range(min(n, len(files)))]


class DecodeLoader:
    """Decodes batches of ``dataset`` in a pool of threads, in order, a few batches ahead.

    Threads, not worker processes: JPEG/PNG decoding and PIL resampling release the GIL, so
    threads decode about as fast as forked DataLoader workers (``benchmarks/bench_decode.py``),
    and they need no fork. Forking a process that already holds OpenVINO,
    ONNX Runtime or CUDA threads copies their locks in whatever state they are in (workers
    crashed or hung), and torch's DataLoader installs a SIGCHLD handler that stays after it is
    done (a later ``subprocess.run`` crashed). A thread pool changes no process state and
    lives only while it is iterated.

    Args:
        dataset: ``dataset[i]`` is one item for ``collate``.
        batches: the indices of each batch, in the order they are yielded.
        collate: makes a batch from its items.
        workers: decoding threads (0: decode in the calling thread, one batch at a time).
        prefetch: batches in flight per thread (bounds memory).

    Example:
        >>> loader = DecodeLoader(list(range(10)), [[0, 1], [2, 3, 4]], sum, workers=2)
        >>> list(loader), len(loader)
        ([1, 9], 2)
    """

    def __init__(self, dataset: Any, batches: Sequence[Sequence[int]], collate: Callable[[list[Any]], Any],
                 workers: int, prefetch: int = 2) -> None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.dataset, self.collate, self.workers, self.prefetch = dataset, collate, workers, prefetch
        self.batches = [list(b) for b in batches]

    def __len__(self) -> int:
        return len(self.batches)

    def _batch(self, indices: list[int]) -> Any:
        return self.collate([self.dataset[i] for i in indices])

    def __iter__(self) -> Iterator[Any]:
        if self.workers == 0:
            yield from map(self._batch, self.batches)
            return
        # One batch per task, as DataLoader workers do; at most workers * prefetch in flight.
        # Leaving the loop early (an error, a break) cancels what is queued and joins the threads.
        with ThreadPoolExecutor(self.workers, thread_name_prefix="ttakit-decode") as pool:
            pending: deque[Future[Any]] = deque()
            todo = iter(self.batches)
            try:
                for b in itertools.islice(todo, self.workers * self.prefetch):
                    pending.append(pool.submit(self._batch, b))
                while pending:
                    out = pending.popleft().result()
                    for b in itertools.islice(todo, 1):
                        pending.append(pool.submit(self._batch, b))
                    yield out
            finally:
                for f in pending:
                    f.cancel()


def make_loader(
    paths: Sequence[str], transform: Callable[[Any], Any], batches: Sequence[Sequence[int]], workers: int
) -> DecodeLoader:
    """A loader over ``paths`` yielding, for each list of indices in ``batches``,
    ``(indices, images (B, C, H, W) or a dict of such batches, or None, skipped [(index, reason)])``,
    decoded by ``workers`` threads (:class:`DecodeLoader`)."""
    return DecodeLoader(ImageList(paths, transform), batches, collate_decoded, workers)
