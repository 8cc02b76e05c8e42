"""Segmentation TTA on real photos, end to end on a CPU: a small segmenter trained here, then evaluated.

1. The data: ``examples/make_segmentation.py`` pastes photo centres onto other photos of
   ../shared/imagenet-sample (5 classes: background and four super-classes; split by source photo).
2. The model: the embedded ImageNet backbone of ``ttakit.load_model()`` (tf_efficientnet_lite0,
   frozen) gives stride 8/16/32 features; a light all-MLP decoder (SegFormer's: each level
   projected to 48 channels, upsampled to stride 8, concatenated, fused and classified by 1x1
   convolutions) predicts the classes, upsampled to the input size. Only the decoder is trained,
   on features computed once; its weights go to ``OUT/segmenter.safetensors``.
3. The table: ``ttakit evaluate --task segment`` scores plain, hflip, multi-scale, hflip x
   multi-scale and an input stage on the held-out images, with mIoU, paired intervals and verdicts.

Run: ``python examples/segmentation_demo.py [OUT_DIR] [--threads N]`` (default ``runs/segmentation_demo``).
The model loads back with ``--model examples/segmentation_demo.py:load_segmenter``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

import ttakit
from ttakit.callables import import_callable
from ttakit.errors import WeightsError
from ttakit.models import LoadedModel

# The detection demo's frozen-backbone model and feature cache serve here too (examples/ is not
# a package: its sibling is loaded by path, however this file was loaded).
_SIBLING = Path(__file__).resolve().with_name("detection_demo.py")
CenterNet = import_callable(f"{_SIBLING}:CenterNet", "example")
backbone_features = import_callable(f"{_SIBLING}:backbone_features", "example")

__all__ = ["CLASSES", "DATA_CONFIG", "SegDecoder", "Segmenter", "load_segmenter", "plain_miou", "train"]

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "runs" / "segmentation_demo"
CLASSES = ["background", "bird", "dog", "other_animal", "object"]  # as make_segmentation.py writes them
# The model sees the whole 256 x 256 image, as the detection demo's (crop_pct 1.0: timm's eval transform is exact).
DATA_CONFIG = dict(sys.modules[CenterNet.__module__].DATA_CONFIG)


class SegDecoder(nn.Module):
    """SegFormer's all-MLP decoder on three feature levels: ``(N, K, h8, w8)`` class logits at stride 8."""

    def __init__(self, num_classes: int, chans: tuple[int, ...] = (40, 112, 320), width: int = 48) -> None:
        super().__init__()
        self.project = nn.ModuleList(nn.Conv2d(c, width, 1) for c in chans)
        self.fuse = nn.Sequential(nn.Conv2d(width * len(chans), width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.classify = nn.Conv2d(width, num_classes, 1)

    def forward(self, feats: list[Tensor]) -> Tensor:
        size = feats[0].shape[-2:]
        x = torch.cat([F.interpolate(p(f), size=size, mode="bilinear", align_corners=False) if i else p(f)
                       for i, (p, f) in enumerate(zip(self.project, feats))], 1)
        return self.classify(self.fuse(x))


class Segmenter(CenterNet):
    """Frozen ImageNet backbone (stride 8/16/32 features, as the detection demo's) + :class:`SegDecoder`:
    ``(B, 3, H, W)`` -> ``(B, K, H, W)`` class logits."""

    def forward(self, x: Tensor) -> Tensor:
        logits = self.head(self.features(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def load_segmenter(weights: str | Path | None = None) -> LoadedModel:
    """The demo segmenter with its trained decoder (default ``runs/segmentation_demo/segmenter.safetensors``).

    Example:
        >>> lm = load_segmenter()  # doctest: +SKIP
        >>> lm.model(torch.zeros(1, 3, 256, 256)).shape  # doctest: +SKIP
        torch.Size([1, 5, 256, 256])
    """
    path = Path(weights) if weights else DEFAULT_OUT / "segmenter.safetensors"
    if not path.is_file():
        raise WeightsError(f"{path}: no trained segmenter (run 'python examples/segmentation_demo.py' first)")
    decoder = SegDecoder(len(CLASSES))
    decoder.load_state_dict(load_file(str(path)))
    model = Segmenter(ttakit.load_model().model, decoder).eval()
    return LoadedModel(model, "segmentation_demo", str(path), dict(DATA_CONFIG), list(CLASSES))


# --------------------------------------------------------------------------- training
def _stems(folder: Path) -> list[str]:
    return sorted(p.stem for p in (folder / "images").glob("*.jpg"))


def _masks(folder: Path, stems: list[str]) -> Tensor:
    """``(N, H, W)`` class indices."""
    return torch.from_numpy(np.stack([np.asarray(Image.open(folder / "masks" / f"{s}.png")) for s in stems])).long()


def train(out: Path, data: Path, epochs: int = 12, batch: int = 32, lr: float = 4e-3, seed: int = 0) -> Path:
    """Train the decoder on frozen features of ``data/train``; save ``OUT/segmenter.safetensors``."""
    torch.manual_seed(seed)
    folder = data / "train"
    stems = _stems(folder)
    cache = out / "train_features.safetensors"  # the slow part, kept for reruns (under runs/, not in git)
    if cache.exists():
        stored = load_file(str(cache))
        feats = [stored[f"f{i}"] for i in range(len(stored))]
    else:
        backbone = ttakit.load_model().model.eval().to(memory_format=torch.channels_last)
        feats = backbone_features(backbone, folder / "images", [f"{s}.jpg" for s in stems])
        save_file({f"f{i}": f for i, f in enumerate(feats)}, str(cache))
    # Soft targets at stride 4: each cell's class shares (cheaper than a loss at full size, and
    # a cell on an object's edge says it is mixed).
    masks = _masks(folder, stems)  # (N, 256, 256)
    targets = F.avg_pool2d(F.one_hot(masks, len(CLASSES)).permute(0, 3, 1, 2).float(), 4).half()  # (N, K, 64, 64)
    del masks
    decoder = SegDecoder(len(CLASSES)).train()
    opt = torch.optim.AdamW(decoder.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(stems) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        total = 0.0
        for idx in torch.randperm(len(stems), generator=g).split(batch):
            logits = decoder([f[idx].float() for f in feats])
            logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
            loss = F.cross_entropy(logits, targets[idx].float())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        print(f"  epoch {epoch + 1:>2}/{epochs}  loss {total / len(stems):.4f}", file=sys.stderr)
    path = out / "segmenter.safetensors"
    save_file({k: v.contiguous() for k, v in decoder.state_dict().items()}, str(path))
    return path


@torch.inference_mode()
def plain_miou(lm: LoadedModel, folder: Path, batch: int = 16) -> float:
    """The plain model's mIoU over a split, by one confusion matrix in numpy (a check that needs no ttakit evaluation)."""
    tf, k = lm.transform(), len(lm.class_names)
    confusion = np.zeros((k, k), np.int64)
    stems = _stems(folder)
    for s in range(0, len(stems), batch):
        part = stems[s:s + batch]
        pred = lm.model(torch.stack([tf(ttakit.load_image(folder / "images" / f"{n}.jpg")) for n in part])).argmax(1)
        truth = _masks(folder, part)
        confusion += np.bincount((truth * k + pred).numpy().ravel(), minlength=k * k).reshape(k, k)
    inter = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - inter
    return float(np.mean(inter[union > 0] / union[union > 0]))


# --------------------------------------------------------------------------- the evaluation
# Flips, scales of the plain input (multiscale: resize 0.875, 1, 1.125), and input stages that
# re-sample the photo itself at 224, 256 and 320 px, with and without flips.
POLICIES = ("hflip", "multiscale", "hflip*multiscale", "input(224:1.0,256:1.0,320:1.0)",
            "hflip*input(224:1.0,256:1.0,320:1.0)")


def table(doc: dict[str, Any]) -> str:
    """The README's markdown table of a ``results.json``."""
    lines = ["| policy | views | mIoU | Δ mIoU (pt) [95% CI] | significant | pixel acc. | boundary IoU | ms / image |",
             "|---|---:|---:|---|---|---:|---:|---:|"]
    n = max(1, doc["n_images"] - len(doc["skipped"]))
    for key, r in doc["results"].items():
        gain = "–" if key == "plain" else (f"{100 * r['delta_miou']:+.2f} [{100 * r['ci_miou'][0]:+.2f}, "
                                            f"{100 * r['ci_miou'][1]:+.2f}]")
        sig = "–" if key == "plain" else ("yes" if r["significant"] else "no")
        lines.append(f"| `{key}` | {r['views']} | {100 * r['miou']:.2f} | {gain} | {sig} | {100 * r['pixel_acc']:.2f} | "
                     f"{100 * r['boundary_iou']:.2f} | {1000 * r['seconds'] / n:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=None, help="output folder (default: runs/segmentation_demo)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 4 training and 2 held-out images from 20 photos, 1 epoch, hflip; "
                        "in a temporary folder unless OUT is given")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        run(args.out or (Path(tmp) if args.quick else DEFAULT_OUT), args.threads, args.quick)


def run(out: Path, threads: int | None = None, quick: bool = False) -> None:
    """Make the data, train the decoder and print the table (see the module docstring)."""
    from make_segmentation import make_segmentation  # its sibling script (run as a script: importable)

    from ttakit.cli import main as ttakit_cli

    if threads:  # on a CPU shared with other jobs, one thread each runs faster than two fighting
        torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    folders = make_segmentation(out / "data", 4, 2, photos=20) if quick else make_segmentation(out / "data")
    t1 = time.perf_counter()
    weights = out / "segmenter.safetensors"
    if not weights.exists():
        train(out, out / "data", epochs=1 if quick else 12)
    t2 = time.perf_counter()
    print(f"plain held-out mIoU (numpy check): {plain_miou(load_segmenter(weights), folders['test']):.4f}")
    t3 = time.perf_counter()
    code = ttakit_cli([
        "evaluate", "--task", "segment", str(folders["test"] / "images"), "--masks", str(folders["test"] / "masks"),
        "--model", f"{Path(__file__).resolve()}:load_segmenter", "--weights", str(weights),
        "--num-classes", str(len(CLASSES)), *(a for p in POLICIES[:1 if quick else None] for a in ("--tta", p)),
        "--out", str(out / "eval"), "--workers", "0", "--quiet",
    ])
    t4 = time.perf_counter()
    if code:
        raise SystemExit(code)
    print(f"\n{table(json.loads((out / 'eval' / 'results.json').read_text()))}\n")
    print(f"data {t1 - t0:.0f} s, training {t2 - t1:.0f} s, check {t3 - t2:.0f} s, evaluation {t4 - t3:.0f} s")


if __name__ == "__main__":
    main()
