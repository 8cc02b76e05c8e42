"""Detection TTA on real photos, end to end on a CPU, without a model hub.

1. A detection set is made, deterministically, from the 500 photos of ../shared/imagenet-sample:
   the centre of a photo (its object, ImageNet photos being object-centred) is cut out with a
   rough rounded mask and pasted, 1 to 4 times per image at random positions and sizes, onto
   other photos used as 256 x 256 backgrounds; the boxes are known. Four super-classes come
   from the ImageNet class index (bird, dog, other animal, object). The split is by source
   photo: the held-out images are made only of held-out photos (objects and backgrounds).
   Written as JPEG folders with COCO annotation files.
2. A small CenterNet-style detector is trained on it: the embedded ImageNet backbone of
   ``ttakit.load_model()`` (tf_efficientnet_lite0, frozen) gives stride 8/16/32 features, a
   light FPN head predicts class heatmaps, box sizes and centre offsets at stride 8. Only the
   head is trained, on features computed once. Its weights go to ``OUT/detector.safetensors``.
3. ``ttakit evaluate --task detect`` scores plain vs hflip vs multi-scale vs both, each with
   NMS and WBF, by COCO mAP@[.5:.95] and mAP@.5 on the held-out images.

Run: ``python examples/detection_demo.py [OUT_DIR] [--threads N]`` (default ``runs/detection_demo``;
on a CPU shared with other jobs ``--threads 1`` is faster).
The detector loads back with ``--detector examples/detection_demo.py:load_detector``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

import ttakit
from ttakit.data import input_transform
from ttakit.errors import WeightsError
from ttakit.tasks.detect import Detections, LoadedDetector

__all__ = ["CLASSES", "CenterNet", "DATA_CONFIG", "SIZE", "backbone_features", "load_detector", "make_dataset", "object_crop", "rough_mask",
           "sample_files", "square_crop", "super_class", "train"]

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = Path(os.environ.get("TTAKIT_SAMPLE") or ROOT.parent / "shared" / "imagenet-sample")
DEFAULT_OUT = ROOT / "runs" / "detection_demo"
CLASSES = ["bird", "dog", "other_animal", "object"]
SIZE = 256  # the detector's input side
STRIDE = 8  # of its output grid
# The model sees the whole 256 x 256 image: timm's eval transform at crop_pct 1.0 is then exact.
DATA_CONFIG = {"input_size": (3, SIZE, SIZE), "interpolation": "bicubic", "mean": (0.5, 0.5, 0.5),
               "std": (0.5, 0.5, 0.5), "crop_pct": 1.0, "crop_mode": "center"}


def super_class(index: int) -> int:
    """Coarse class of an ImageNet class index: bird, dog, other animal (< 398) or object."""
    if 7 <= index <= 24 or 80 <= index <= 100 or 127 <= index <= 146:
        return 0
    if 151 <= index <= 268:
        return 1
    return 2 if index <= 397 else 3


# --------------------------------------------------------------------------- 1. the data
def square_crop(img: Image.Image, side: int) -> Image.Image:
    s = side / min(img.size)
    img = img.resize((max(side, round(img.width * s)), max(side, round(img.height * s))), Image.BICUBIC)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    return img.crop((left, top, left + side, top + side))


def object_crop(img: Image.Image) -> Image.Image:
    """The centre 70% of a photo (its object), at most 192 px on its long side."""
    w, h = img.size
    crop = img.crop((round(0.15 * w), round(0.15 * h), round(0.85 * w), round(0.85 * h)))
    s = min(1.0, 192 / max(crop.size))
    return crop.resize((max(1, round(crop.width * s)), max(1, round(crop.height * s))), Image.BICUBIC)


def rough_mask(w: int, h: int, rng: np.random.Generator) -> Image.Image:
    """A rough rounded mask that touches the four sides of its box (so the box is exact)."""
    yy, xx = np.mgrid[0:h, 0:w]
    u, v = (xx + 0.5) / w * 2 - 1, (yy + 0.5) / h * 2 - 1
    p = rng.uniform(2.5, 5.0)  # superellipse: 2 is an ellipse, large is a rectangle
    inside = (np.abs(u) ** p + np.abs(v) ** p) <= 1.0
    inside[h // 2, :] = True  # the extremes reach the box edges
    inside[:, w // 2] = True
    return Image.fromarray((inside * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.8))


def _iou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _compose(rng: np.random.Generator, backgrounds: list[tuple[int, Image.Image]],
             objects: list[tuple[int, int, Image.Image]]) -> tuple[Image.Image, list[tuple[list[float], int]]]:
    """One image: a background photo with 1-4 pasted objects of other photos, and their boxes."""
    bg_photo, bg = backgrounds[int(rng.integers(len(backgrounds)))]
    canvas = bg.copy()
    placed: list[tuple[list[float], int]] = []
    for _ in range(int(rng.integers(1, 5))):
        photo, label, obj = objects[int(rng.integers(len(objects)))]
        if photo == bg_photo:
            continue
        long_side = math.exp(rng.uniform(math.log(40), math.log(150)))
        aspect = obj.width / obj.height * math.exp(rng.uniform(-0.2, 0.2))
        w, h = (long_side, long_side / aspect) if aspect >= 1 else (long_side * aspect, long_side)
        w, h = max(16, min(SIZE - 2, round(w))), max(16, min(SIZE - 2, round(h)))
        for _ in range(30):  # a place that hides no earlier object much
            x, y = int(rng.integers(0, SIZE - w + 1)), int(rng.integers(0, SIZE - h + 1))
            box = [float(x), float(y), float(x + w), float(y + h)]
            if all(_iou(box, b) < 0.1 for b, _ in placed):
                canvas.paste(obj.resize((w, h), Image.BICUBIC), (x, y), rough_mask(w, h, rng))
                placed.append((box, label))
                break
    return canvas, placed


def sample_files(n: int | None = None) -> list[Path]:
    """The sample's photos, sorted (``n`` of them spread over the sorted list, when given)."""
    photos = sorted(SAMPLE.glob("*.JPEG"))
    if len(photos) < min(n or 100, 100):
        raise SystemExit(f"needs the photos of {SAMPLE}")
    return photos if n is None else photos[:: max(1, len(photos) // n)][:n]


def make_dataset(out: Path, n_train: int = 1200, n_test: int = 250, seed: int = 0,
                 photos: int | None = None) -> dict[str, Path]:
    """Write ``OUT/data/{train,test}/*.jpg`` and ``OUT/data/{train,test}.json`` (COCO; category
    ids 1-4 in :data:`CLASSES` order) from ``photos`` sample photos (default all); nothing is
    redone when they exist."""
    data = out / "data"
    files = {s: data / f"{s}.json" for s in ("train", "test")}
    if all(p.exists() for p in files.values()):
        return files
    wnids = timm.data.ImageNetInfo().label_names()
    index = {w: i for i, w in enumerate(wnids)}
    photos = sample_files(photos)
    decoded = [ttakit.load_image(p) for p in photos]
    labels = [super_class(index[p.name.split("_", 1)[0]]) for p in photos]
    for split, n, offset in (("train", n_train, 0), ("test", n_test, 10_000_000)):
        mine = [i for i in range(len(photos)) if (i % 5 == 4) == (split == "test")]  # split by source photo
        backgrounds = [(i, square_crop(decoded[i], SIZE)) for i in mine]
        objects = [(i, labels[i], object_crop(decoded[i])) for i in mine]
        folder = data / split
        folder.mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for k in range(n):
            img, boxes = _compose(np.random.default_rng(seed + offset + k), backgrounds, objects)
            name = f"{split}_{k:05d}.jpg"
            img.save(folder / name, quality=92)
            images.append({"id": k + 1, "file_name": name, "width": SIZE, "height": SIZE})
            for (x1, y1, x2, y2), label in boxes:
                anns.append({"id": len(anns) + 1, "image_id": k + 1, "category_id": label + 1,
                             "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
        cats = [{"id": i + 1, "name": c} for i, c in enumerate(CLASSES)]
        files[split].write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return files


# --------------------------------------------------------------------------- 2. the detector
class CenterHead(nn.Module):
    """Light FPN (stride 32 -> 16 -> 8) and CenterNet outputs at stride 8: ``K`` class
    heatmap logits and 4 regressions (log width, log height in grid cells, centre offset)."""

    def __init__(self, num_classes: int, chans: tuple[int, ...] = (40, 112, 320), width: int = 48) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in chans)
        self.trunk = nn.Sequential(*(m for _ in range(2) for m in (
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())))
        self.heat = nn.Conv2d(width, num_classes, 1)
        self.box = nn.Conv2d(width, 4, 1)
        nn.init.constant_(self.heat.bias, -2.19)  # prior 0.1: a stable start for the focal loss

    def forward(self, feats: list[Tensor]) -> tuple[Tensor, Tensor]:
        x = self.lateral[-1](feats[-1])
        for f, lat in zip(reversed(feats[:-1]), reversed(self.lateral[:-1])):  # top-down
            x = F.interpolate(x, size=f.shape[-2:], mode="nearest") + lat(f)
        x = self.trunk(x)
        return self.heat(x), self.box(x)  # (N, K, h, w), (N, 4, h, w)


def decode(heat: Tensor, box: Tensor, size: tuple[int, int], k: int = 100, threshold: float = 0.01) -> Detections:
    """Heatmap peaks (3x3 local maxima) to per-image boxes in input pixels."""
    n, n_cls, gh, gw = heat.shape
    sy, sx = size[0] / gh, size[1] / gw  # the stride, for any input size
    p = heat.sigmoid()
    p = p * (F.max_pool2d(p, 3, 1, 1) == p)
    scores, idx = p.flatten(1).topk(min(k, p[0].numel()))  # (N, k)
    label, cell = idx // (gh * gw), idx % (gh * gw)
    reg = box.flatten(2).gather(2, cell[:, None].expand(-1, 4, -1))  # (N, 4, k)
    cx = (cell % gw + reg[:, 2]) * sx
    cy = (cell // gw + reg[:, 3]) * sy
    w, h = reg[:, 0].exp() * sx, reg[:, 1].exp() * sy
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)  # (N, k, 4)
    limit = boxes.new_tensor([size[1], size[0], size[1], size[0]])
    boxes = torch.minimum(boxes.clamp_min(0), limit)
    keep = scores > threshold
    return [{"boxes": boxes[i][keep[i]], "scores": scores[i][keep[i]], "labels": label[i][keep[i]]} for i in range(n)]


class CenterNet(nn.Module):
    """Frozen ImageNet backbone + :class:`CenterHead`; returns torchvision-style detections."""

    def __init__(self, backbone: nn.Module, head: CenterHead) -> None:
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.head = head

    def features(self, x: Tensor) -> list[Tensor]:
        return self.backbone.forward_intermediates(x, indices=[2, 3, 4], intermediates_only=True, stop_early=True)

    def forward(self, x: Tensor) -> Detections:
        heat, box = self.head(self.features(x))
        return decode(heat.float(), box.float(), tuple(x.shape[-2:]))


def load_detector(weights: str | Path | None = None) -> LoadedDetector:
    """The demo detector with its trained head (default ``runs/detection_demo/detector.safetensors``)."""
    path = Path(weights) if weights else DEFAULT_OUT / "detector.safetensors"
    if not path.is_file():
        raise WeightsError(f"{path}: no trained detector (run 'python examples/detection_demo.py' first)")
    head = CenterHead(len(CLASSES))
    head.load_state_dict(load_file(str(path)))
    model = CenterNet(ttakit.load_model().model, head).eval()
    return LoadedDetector(model, "detection_demo", str(path), dict(DATA_CONFIG), list(CLASSES))


def _targets(boxes: list[tuple[list[float], int]], grid: int) -> tuple[Tensor, Tensor, Tensor]:
    """CenterNet targets on a ``grid`` x ``grid`` map: heatmap (K, g, g) with an elliptical
    Gaussian per object (TTFNet's, alpha 0.54), regression (4, g, g) and its mask (g, g)."""
    heat = torch.zeros(len(CLASSES), grid, grid)
    reg = torch.zeros(4, grid, grid)
    mask = torch.zeros(grid, grid)
    ys, xs = torch.meshgrid(torch.arange(grid).float(), torch.arange(grid).float(), indexing="ij")
    for (x1, y1, x2, y2), label in boxes:
        cx, cy = (x1 + x2) / 2 / STRIDE, (y1 + y2) / 2 / STRIDE
        w, h = (x2 - x1) / STRIDE, (y2 - y1) / STRIDE
        i, j = min(grid - 1, int(cy)), min(grid - 1, int(cx))
        sx, sy = max(0.54 * w / 6, 0.3), max(0.54 * h / 6, 0.3)
        g = torch.exp(-((xs - j) ** 2 / (2 * sx**2) + (ys - i) ** 2 / (2 * sy**2)))
        heat[label] = torch.maximum(heat[label], g)
        reg[:, i, j] = torch.tensor([math.log(w), math.log(h), cx - j, cy - i])
        mask[i, j] = 1.0
    return heat, reg, mask


def _loss(heat: Tensor, box: Tensor, t_heat: Tensor, t_reg: Tensor, mask: Tensor) -> Tensor:
    """CenterNet's focal loss on the heatmap plus L1 on sizes and offsets at object centres."""
    p = heat.float().sigmoid().clamp(1e-4, 1 - 1e-4)
    pos = t_heat.eq(1).float()
    focal = -(pos * (1 - p) ** 2 * p.log() + (1 - pos) * (1 - t_heat) ** 4 * p**2 * (1 - p).log()).sum()
    n = mask.sum().clamp_min(1)
    l1 = ((box.float() - t_reg).abs() * mask[:, None]).sum()
    return (focal + l1) / n


@torch.inference_mode()
def backbone_features(backbone: nn.Module, folder: Path, names: list[str], batch: int = 16) -> list[Tensor]:
    """Stride 8/16/32 features of every image, computed once (float16 to halve the memory)."""
    tf = input_transform(None, DATA_CONFIG)  # exactly what the evaluation feeds the model
    parts: list[list[Tensor]] = [[], [], []]
    for s in range(0, len(names), batch):
        x = torch.stack([tf(ttakit.load_image(folder / n)) for n in names[s:s + batch]])
        x = x.contiguous(memory_format=torch.channels_last)
        for part, f in zip(parts, backbone.forward_intermediates(x, indices=[2, 3, 4], intermediates_only=True,
                                                                  stop_early=True)):
            part.append(f.half().contiguous())
        print(f"\r  features {min(s + batch, len(names))}/{len(names)}", end="", file=sys.stderr)
    print(file=sys.stderr)
    return [torch.cat(p) for p in parts]


def train(out: Path, annotations: Path, epochs: int = 20, batch: int = 32, lr: float = 3e-3, seed: int = 0) -> Path:
    """Train the head on frozen features; save ``OUT/detector.safetensors`` (the head only)."""
    torch.manual_seed(seed)
    doc = json.loads(annotations.read_text())
    by_image: dict[int, list[tuple[list[float], int]]] = {im["id"]: [] for im in doc["images"]}
    for a in doc["annotations"]:
        x, y, w, h = a["bbox"]
        by_image[a["image_id"]].append(([x, y, x + w, y + h], a["category_id"] - 1))
    names = [im["file_name"] for im in doc["images"]]
    cache = out / "train_features.safetensors"  # the slow part, kept for reruns (under runs/, not in git)
    if cache.exists():
        stored = load_file(str(cache))
        feats = [stored[f"f{i}"] for i in range(3)]
    else:
        backbone = ttakit.load_model().model.eval().to(memory_format=torch.channels_last)
        feats = backbone_features(backbone, annotations.parent / "train", names)
        save_file({f"f{i}": f for i, f in enumerate(feats)}, str(cache))
    grid = SIZE // STRIDE
    targets = [_targets(by_image[im["id"]], grid) for im in doc["images"]]
    t_heat, t_reg, t_mask = (torch.stack(t) for t in zip(*targets))
    head = CenterHead(len(CLASSES)).train()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(names) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        total = 0.0
        for idx in torch.randperm(len(names), generator=g).split(batch):
            heat, box = head([f[idx].float() for f in feats])
            loss = _loss(heat, box, t_heat[idx], t_reg[idx], t_mask[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        print(f"  epoch {epoch + 1:>2}/{epochs}  loss {total / len(names):.3f}", file=sys.stderr)
    path = out / "detector.safetensors"
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(path))
    return path


# --------------------------------------------------------------------------- 3. the table
def _table(results: dict[str, Any]) -> str:
    plain = results["plain"]["map"]
    lines = ["| policy | views | merge | mAP@[.5:.95] | mAP@.5 | vs plain |", "|---|---:|---|---:|---:|---:|"]
    for key, r in results.items():
        name = key.split("@")[0]
        lines.append(f"| {name} | {r['views']} | {r['merge']} | {100 * r['map']:.2f} | {100 * r['map50']:.2f} | "
                     f"{100 * (r['map'] - plain):+.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=None, help="output folder (default: runs/detection_demo)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 20 sample photos, 8 training and 4 held-out images, 1 epoch, hflip with NMS; "
                        "in a temporary folder unless OUT is given")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        run(args.out or (Path(tmp) if args.quick else DEFAULT_OUT), args.threads, args.quick)


def run(out: Path, threads: int | None = None, quick: bool = False) -> None:
    """Make the data, train the head and print the table (see the module docstring)."""
    from ttakit.cli import main as ttakit_cli

    if threads:  # on a CPU shared with other jobs, one thread each runs faster than two fighting
        torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    files = make_dataset(out, 8, 4, photos=20) if quick else make_dataset(out)
    t1 = time.perf_counter()
    weights = out / "detector.safetensors"
    if not weights.exists():
        train(out, files["train"], epochs=1 if quick else 20)
    t2 = time.perf_counter()
    policies = ["hflip"] if quick else ["hflip", "multiscale", "hflip*multiscale"]
    code = ttakit_cli([
        "evaluate", "--task", "detect", str(out / "data" / "test"), "--annotations", str(files["test"]),
        "--detector", f"{Path(__file__).resolve()}:load_detector", "--weights", str(weights),
        *(a for p in policies for a in ("--tta", p)), "--box-merge", "nms", *([] if quick else ["--box-merge", "wbf"]),
        "--out", str(out / "eval"), "--workers", "0", "--quiet",
    ])
    if code:
        raise SystemExit(code)
    t3 = time.perf_counter()
    results = json.loads((out / "eval" / "results.json").read_text())["results"]
    print(f"\n{_table(results)}\n")
    print(f"data {t1 - t0:.0f} s, training {t2 - t1:.0f} s, evaluation {t3 - t2:.0f} s (this run)")


if __name__ == "__main__":
    main()
