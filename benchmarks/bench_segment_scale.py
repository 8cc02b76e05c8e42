"""Segmentation at scale: peak RSS, disk and seconds per photo of `evaluate --task segment`, and a 4096 px photo tiled.

Part 1 (the issue's scale goal): a random convolutional segmenter with 150 classes (output at
stride 8, as DeepLab's), ``--photos`` photos of 512 x 512 px with random block masks, 6 views
(``hflip*(identity+rot90=2+vflip)``), scored with the default options
(exact counts at full resolution, reduced maps within the default store budget). Goal: peak
RSS <= 3 GB and disk <= 1 GB at 1,000 photos, and peak RSS that does not grow with photos.

Part 2: one 4096 x 4096 photo segmented by ``SegmentationTTA(..., window=WindowConfig(512))``
with ``hflip``, the model's logits upsampled to its input (8 classes: the merged map alone is
8 x 4096^2 floats, 0.5 GB). Goal: peak RSS < 2 GB.

Part 3: the same photo (as a JPEG, with a mask) through windowed evaluation
(``evaluate_segmentation(..., window=WindowConfig(512))``, ``hflip``): the pipeline decodes the
photo once and the tiles are cut from that decode. Goal: peak RSS < 2 GB.

Each part runs in its own process, so its peak RSS (``ru_maxrss``) is its own.

Run: ``flock /tmp/heavy.lock python benchmarks/bench_segment_scale.py [--photos 1000] [--data DIR]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import ttakit

K = 150
SIDE = 512
POLICY = "hflip*(identity+rot90=2+vflip)"  # 6 views, the identity among them


class RandomSegmenter(torch.nn.Module):
    """A fixed random conv net: ``(B, 3, H, W)`` -> ``(B, 150, H/8, W/8)`` logits."""

    def __init__(self, k: int = K, full: bool = False) -> None:
        super().__init__()
        self.full = full  # logits upsampled to the input size (as the demo segmenter's)
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 24, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(24, 48, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(48, 64, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv2d(64, k, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x) * 4.0
        return torch.nn.functional.interpolate(y, size=x.shape[-2:], mode="bilinear") if self.full else y


def load(k: int = K, full: bool = False) -> ttakit.LoadedModel:
    config = {"input_size": (3, SIDE, SIDE), "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.25,) * 3,
              "crop_pct": 1.0, "crop_mode": "squash"}
    return ttakit.LoadedModel(RandomSegmenter(k, full).eval(), "random150", "random", config, [str(i) for i in range(k)])


def make_data(root: Path, n: int) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        if (root / "masks" / f"p{i:05d}.png").exists():
            continue
        g = np.random.default_rng(i)
        blocks = g.integers(0, K, (8, 8))
        mask = np.kron(blocks, np.ones((SIDE // 8, SIDE // 8), np.int64)).astype(np.uint8)
        colour = g.integers(0, 255, (K, 3)).astype(np.uint8)
        photo = colour[mask] // 2 + g.integers(0, 128, (SIDE, SIDE, 3)).astype(np.uint8)
        Image.fromarray(photo).save(root / "images" / f"p{i:05d}.jpg", quality=85)
        Image.fromarray(mask).save(root / "masks" / f"p{i:05d}.png")


def part_scale(data: Path, out: Path, n: int) -> dict:
    from ttakit.datasets import find_masked_images
    from ttakit.evaluation.evaluate import EvalOptions
    from ttakit.evaluation.segment_eval import SegmentScoring, evaluate_segmentation
    from ttakit.runtime.config import RunConfig

    torch.set_num_threads(2)
    shutil.rmtree(out, ignore_errors=True)
    ds = find_masked_images(data / "images", data / "masks").head(n)
    t0 = time.perf_counter()
    res = evaluate_segmentation(load(), ds, [ttakit.create_policy(POLICY)], out_dir=out, run_config=RunConfig(),
                                scoring=SegmentScoring(K), options=EvalOptions(workers=0, quiet=True))
    dt = time.perf_counter() - t0
    disk = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"photos": n, "views": res["results"][POLICY]["views"], "seconds_per_photo": dt / n, "disk_bytes": disk,
            "store": res["store"], "miou_plain": res["results"]["plain"]["miou"],
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def part_large() -> dict:
    from ttakit.tasks.dense import SegmentationTTA
    from ttakit.tasks.window import WindowConfig

    torch.set_num_threads(2)
    lm = load(8, full=True)  # an (8, 4096, 4096) stitched map
    g = torch.Generator().manual_seed(0)
    photo = torch.randint(0, 256, (3, 4096, 4096), dtype=torch.uint8, generator=g)
    seg = SegmentationTTA(lm.model, "hflip", window=WindowConfig(512, 0.25, "gaussian", batch=4, stitch_device="cpu"),
                          norm=lm.normalization, data_config=lm.data_config)
    t0 = time.perf_counter()
    with torch.inference_mode():
        res = seg.predict(photo)
    dt = time.perf_counter() - t0
    return {"output": list(res.output.shape), "seconds": dt,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def make_large(root: Path) -> None:
    """One 4096 x 4096 JPEG of the part-2 pixels and a block mask of 8 classes."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    if (root / "masks" / "big.png").exists():
        return
    g = torch.Generator().manual_seed(0)
    photo = torch.randint(0, 256, (3, 4096, 4096), dtype=torch.uint8, generator=g)
    Image.fromarray(photo.permute(1, 2, 0).numpy()).save(root / "images" / "big.jpg", quality=90)
    blocks = np.random.default_rng(0).integers(0, 8, (16, 16))
    Image.fromarray(np.kron(blocks, np.ones((256, 256), np.int64)).astype(np.uint8)).save(root / "masks" / "big.png")


def part_large_eval(data: Path, out: Path) -> dict:
    from ttakit.datasets import find_masked_images
    from ttakit.evaluation.evaluate import EvalOptions
    from ttakit.evaluation.segment_eval import SegmentScoring, evaluate_segmentation
    from ttakit.runtime.config import RunConfig
    from ttakit.tasks.window import WindowConfig

    torch.set_num_threads(2)
    shutil.rmtree(out, ignore_errors=True)
    ds = find_masked_images(data / "images", data / "masks")
    t0 = time.perf_counter()
    res = evaluate_segmentation(load(8, full=True), ds, [ttakit.create_policy("hflip")], out_dir=out,
                                run_config=RunConfig(), scoring=SegmentScoring(8),
                                options=EvalOptions(batch_size=1, workers=0, quiet=True),
                                window=WindowConfig(512, 0.25, "gaussian", batch=4, stitch_device="cpu"))
    dt = time.perf_counter() - t0
    return {"miou_hflip": res["results"]["hflip"]["miou"], "seconds": dt,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=1000, help="photos of part 1 (default 1000)")
    parser.add_argument("--data", type=Path, default=Path("/tmp/ttakit_bench_segment_scale"), help="data folder")
    parser.add_argument("--part", choices=["scale", "large", "large-eval"], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part == "scale":
        print(json.dumps(part_scale(args.data / "data", args.data / "eval", args.photos)))
        return
    if args.part == "large":
        print(json.dumps(part_large()))
        return
    if args.part == "large-eval":
        make_large(args.data / "large")
        print(json.dumps(part_large_eval(args.data / "large", args.data / "large_eval")))
        return
    make_data(args.data / "data", args.photos)
    print(f"load: {Path('/proc/loadavg').read_text().split()[:3]}")
    for part in ("scale", "large", "large-eval"):
        cmd = [sys.executable, __file__, "--part", part, "--photos", str(args.photos), "--data", str(args.data)]
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        if part == "scale":
            print(f"part 1: {r['photos']} photos of {SIDE} px, {K} classes, {r['views']} views: "
                  f"peak RSS {r['peak_rss_bytes'] / 1e9:.2f} GB (goal <= 3), disk {r['disk_bytes'] / 1e9:.3f} GB "
                  f"(goal <= 1; maps {r['store']['map_grid']} {r['store']['dtype']}), {r['seconds_per_photo']:.2f} s/photo")
        elif part == "large":
            print(f"part 2: one 4096 x 4096 photo, 512 px tiles x hflip -> {r['output']}: "
                  f"peak RSS {r['peak_rss_bytes'] / 1e9:.2f} GB (goal < 2), {r['seconds']:.1f} s")
        else:
            print(f"part 3: that photo through windowed evaluation, decoded once: "
                  f"peak RSS {r['peak_rss_bytes'] / 1e9:.2f} GB (goal < 2), {r['seconds']:.1f} s")


if __name__ == "__main__":
    main()
