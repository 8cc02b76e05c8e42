"""ttakit's shift families (ttakit.shifts) against the authors' ImageNet-C code, family by family.

Both sides start from the same clean photo, prepared the way ImageNet-C was built (resize the
short side to 256, centre crop 224) and both copies are saved as JPEG quality 85, as
``../shared/tools/make_imagenet_c.py`` saves the authors' (``imagenet-c`` 0.0.3, run in its own
virtual environment, ``--imagenet-c-python``; see that file's header to build it). At one
severity (``--severity``, default 3) it prints, per family:

- the mean absolute pixel change from the clean crop (0-255), authors' code and ttakit;
- the plain model's top-1 on the clean crops and its drop on each side's copies
  (``tf_efficientnet_lite0``, its own preprocessing), and the difference of the drops.

Families without a counterpart in the authors' code (``crop``, ``scale``) show ttakit's side only;
``saturation`` is compared with the authors' extra ``saturate`` (which raises saturation at
severities 3-5 where ttakit lowers it: a deliberate difference). Where the authors' code is
missing, one line says so and ttakit's own statistics are still printed.

    python benchmarks/bench_shift_families.py --quick          # 6 photos, a minute
    python benchmarks/bench_shift_families.py --photos 100     # the published table
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import ttakit
from ttakit.datasets import detect_dataset
from ttakit.shifts import SHIFTS, shift_image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import load_bench_model, provenance  # noqa: E402

def _beside(*parts: str) -> Path:
    """``parts`` under the first folder above the checkout that holds them (../ or ../../)."""
    above = Path(__file__).resolve().parents
    return next((a.joinpath(*parts) for a in above[1:4] if a.joinpath(*parts).exists()), above[2].joinpath(*parts))


SAMPLE = _beside("shared", "imagenet-sample")
MAKE_C = _beside("shared", "tools", "make_imagenet_c.py")
VENV = _beside("wt", "venvs", "imagenetc", "bin", "python") if not _beside("venvs").exists() else \
    _beside("venvs", "imagenetc", "bin", "python")
# ttakit family -> the authors' corruption (None: not in ImageNet-C)
AUTHORS = {"gaussian_noise": "gaussian_noise", "shot_noise": "shot_noise", "impulse_noise": "impulse_noise",
           "defocus_blur": "defocus_blur", "motion_blur": "motion_blur", "gaussian_blur": "gaussian_blur",
           "fog": "fog", "contrast": "contrast", "brightness": "brightness", "saturation": "saturate",
           "jpeg": "jpeg_compression", "pixelate": "pixelate", "crop": None, "scale": None}


def imagenet_c_crop(path: Path) -> Image.Image:
    """Resize the short side to 256, centre crop 224 (as make_imagenet_c.py)."""
    im = Image.open(path).convert("RGB")
    w, h = im.size
    s = 256 / min(w, h)
    im = im.resize((max(224, round(w * s)), max(224, round(h * s))), Image.BILINEAR)
    w, h = im.size
    return im.crop(((w - 224) // 2, (h - 224) // 2, (w - 224) // 2 + 224, (h - 224) // 2 + 224))


def jpeg85(im: Image.Image, path: Path) -> Image.Image:
    im.save(path, quality=85)
    return Image.open(path).convert("RGB")


def change(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).mean())


def top1(lm: ttakit.LoadedModel, images: list[Image.Image], labels: torch.Tensor) -> float:
    tf = lm.transform()
    with torch.inference_mode():
        logits = torch.cat([lm.model(torch.stack([tf(im) for im in images[i:i + 16]])) for i in range(0, len(images), 16)])
    return float((logits.argmax(-1) == labels).float().mean())


def authors_copies(src: Path, dst: Path, corruption: str, severity: int, python: Path) -> list[Image.Image] | None:
    """The authors' copies of every photo in ``src`` (sorted), or None where their code failed."""
    run = subprocess.run([str(python), str(MAKE_C), str(src), str(dst), str(severity), corruption],
                         capture_output=True, text=True)
    files = sorted(dst.glob("*.JPEG"))
    if run.returncode != 0 or not files:
        print(f"  authors' {corruption}: failed ({run.stderr.strip().splitlines()[-1:] or run.returncode})")
        return None
    return [Image.open(f).convert("RGB") for f in files]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", type=int, default=100, help="first N sample photos, every k-th (default 100)")
    ap.add_argument("--severity", type=int, default=3, choices=range(1, 6))
    ap.add_argument("--families", default=",".join(SHIFTS.names()), help="comma list (default: all 14)")
    ap.add_argument("--quick", action="store_true", help="6 photos, ttakit's statistics only (no authors' code)")
    ap.add_argument("--imagenet-c-python", default=str(VENV), help="python of the venv with imagenet-c 0.0.3")
    ap.add_argument("--data", default=str(SAMPLE))
    args = ap.parse_args(argv)
    print(provenance(__file__, argv))
    n = 6 if args.quick else args.photos
    lm = load_bench_model(args.quick)  # quick: timm's tiny test model (the code runs, the figures mean nothing)
    ds = detect_dataset(args.data, lm.class_names)
    step = max(1, len(ds.paths) // n)
    picks = list(range(0, len(ds.paths), step))[:n]
    python = Path(args.imagenet_c_python)
    have_authors = python.exists() and MAKE_C.exists() and not args.quick
    if args.quick:
        print("quick run: ttakit's statistics only (the authors' code runs without --quick)")
    elif not have_authors:
        print(f"authors' code missing ({python} or {MAKE_C} not found): ttakit's statistics only")
    labels = torch.tensor([ds.labels[i] for i in picks])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src = root / "src"
        src.mkdir()
        for i in picks:  # the authors' script reads a folder; it numbers photos by sorted name
            (src / Path(ds.paths[i]).name).symlink_to(Path(ds.paths[i]).resolve())
        paths = sorted(src.glob("*.JPEG"))
        order = {p.name: k for k, p in enumerate(paths)}
        labels = labels[torch.tensor([order[Path(ds.paths[i]).name] for i in picks]).argsort()]
        clean = [imagenet_c_crop(p) for p in paths]
        clean_top1 = top1(lm, clean, labels)
        print(f"{len(paths)} photos, severity {args.severity}, plain top-1 on the clean crops {clean_top1:.1%}")
        head = f"{'family':<15} {'change authors':>14} {'ttakit':>7} {'drop authors':>12} {'ttakit':>7} {'diff':>6}"
        print(head + "\n" + "-" * len(head))
        for family in args.families.split(","):
            ours = [jpeg85(shift_image(im, family, args.severity, seed=k), root / "x.jpg") for k, im in enumerate(clean)]
            ours_change = np.mean([change(a, b) for a, b in zip(ours, clean)])
            ours_drop = clean_top1 - top1(lm, ours, labels)
            theirs = None
            if have_authors and AUTHORS[family]:
                theirs = authors_copies(src, root / family, AUTHORS[family], args.severity, python)
            if theirs is None:
                print(f"{family:<15} {'-':>14} {ours_change:7.1f} {'-':>12} {ours_drop:7.1%} {'-':>6}")
                continue
            their_change = np.mean([change(a, b) for a, b in zip(theirs, clean)])
            their_drop = clean_top1 - top1(lm, theirs, labels)
            print(f"{family:<15} {their_change:14.1f} {ours_change:7.1f} {their_drop:12.1%} {ours_drop:7.1%} "
                  f"{ours_drop - their_drop:+6.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
