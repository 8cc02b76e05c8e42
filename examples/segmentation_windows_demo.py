"""Large photos, three ways: the whole photo resized to the model, sliding windows, sliding windows x hflip (and input stages).

The demo segmenter of ``examples/segmentation_demo.py`` (trained on 256 x 256 images) is scored
on the 1024 x 1024 mosaics of ``examples/make_segmentation_mosaics.py`` (held-out photos and
objects at the training pixel scale) by ``evaluate_segmentation``, exact at full resolution:

1. ``whole``: the photo resized whole to the model's 256 px input (plain), with ``hflip``, the
   photo fed whole at its own 1024 px (``input(1024:1.0)``: the network is fully convolutional)
   and the input stages 256/512/1024 px merged;
2. ``window``: 256 px tiles, overlap 0.25, Gaussian blending (plain), and with ``hflip``.

Every row is compared with the whole-photo resize on the same mosaics by a paired bootstrap of
mIoU over photos (from each run's ``per_image_counts.npz``). Each mode runs in its own process,
so its peak RSS is its own.

Run: ``python examples/segmentation_windows_demo.py [OUT] --weights SEGMENTER [--n 40] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ttakit.callables import import_callable
from ttakit.datasets import find_masked_images
from ttakit.evaluation.evaluate import EvalOptions
from ttakit.evaluation.seg_stats import stats_miou
from ttakit.evaluation.segment_eval import SegmentScoring, evaluate_segmentation
from ttakit.evaluation.stats import compare_statistic
from ttakit.policy import create_policy
from ttakit.runtime.config import RunConfig
from ttakit.tasks.window import WindowConfig

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "runs" / "segmentation_windows"
WINDOW = WindowConfig(256, 0.25, "gaussian", batch=4)
MODES: dict[str, tuple[tuple[str, ...], WindowConfig | None]] = {
    "whole": (("hflip", "input(1024:1.0)", "input(256:1.0,512:1.0,1024:1.0)"), None),
    "window": (("hflip",), WINDOW),
}


def run_mode(mode: str, out: Path, weights: Path, quick: bool = False) -> dict[str, Any]:
    """One evaluation (in this process): its results.json, seconds and peak RSS (``quick``: the
    first policy of the mode only)."""
    load = import_callable(f"{Path(__file__).resolve().with_name('segmentation_demo.py')}:load_segmenter", "example")
    lm = load(weights)
    names, window = MODES[mode]
    names = names[:1] if quick else names
    policies = [dataclasses.replace(create_policy(t, lm.data_config), name=t) for t in names]
    data = find_masked_images(out / "mosaics" / "images", out / "mosaics" / "masks")
    t0 = time.perf_counter()
    res = evaluate_segmentation(lm, data, policies, out_dir=out / mode, run_config=RunConfig(4, True),
                                scoring=SegmentScoring(5), options=EvalOptions(batch_size=8, workers=0, quiet=True),
                                window=window)
    return {"seconds": time.perf_counter() - t0, "n": res["n_images"],
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def _counts(folder: Path) -> dict[str, np.ndarray]:
    names = json.loads((folder / "per_image_counts.json").read_text())
    with np.load(folder / "per_image_counts.npz") as z:
        return {key: z[row].astype(np.float64) for row, key in names.items()}


def table(out: Path, runs: dict[str, dict[str, Any]]) -> str:
    """The README's table: every row of both modes against the whole-photo resize, paired."""
    base = _counts(out / "whole")["plain"]  # (N, 5, K)
    lines = ["| how | views | mIoU | boundary IoU | Δ mIoU vs whole-photo resize (pt) [95% CI] | s / photo | peak RSS |",
             "|---|---:|---:|---:|---|---:|---:|"]
    for mode, run in runs.items():
        doc = json.loads((out / mode / "results.json").read_text())
        counts = _counts(out / mode)
        for key, r in doc["results"].items():
            if mode == "whole":
                label = "whole photo resized to 256 px" if key == "plain" else f"whole photo, `{key}`"
            else:
                label = "256 px tiles (overlap 0.25, gaussian)" + ("" if key == "plain" else f" x `{key}`")
            if mode == "whole" and key == "plain":
                gain = "–"
            else:
                c = counts[key]
                cmp = compare_statistic(lambda w: stats_miou((w @ c.reshape(len(c), -1)).reshape(-1, *c.shape[1:]))
                                        - stats_miou((w @ base.reshape(len(base), -1)).reshape(-1, *base.shape[1:])),
                                        len(c), "miou", 2000)
                gain = (f"{100 * cmp.delta:+.2f} [{100 * cmp.ci[0]:+.2f}, {100 * cmp.ci[1]:+.2f}]"
                        + (" significant" if cmp.significant else ""))
            per_photo = r["seconds"] / max(1, doc["n_images"] - len(doc["skipped"]))
            lines.append(f"| {label} | {r['views']} | {100 * r['miou']:.2f} | {100 * r['boundary_iou']:.2f} | {gain} | "
                         f"{per_photo:.2f} | {run['peak_rss_bytes'] / 1e9:.2f} GB (mode) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=None, help="output folder")
    parser.add_argument("--weights", type=Path, default=None,
                        help="the demo segmenter's decoder weights (required, but for --quick)")
    parser.add_argument("--n", type=int, default=40, help="mosaics (default 40)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--mode", choices=list(MODES), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run in this process: one 512 px mosaic, the first policy of each mode, a decoder "
                        "with random weights unless --weights; in a temporary folder unless OUT is given")
    args = parser.parse_args(argv)
    if args.weights is None and not args.quick:
        parser.error("--weights is required (the decoder weights examples/segmentation_demo.py writes)")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.mode:
        print(json.dumps(run_mode(args.mode, args.out or DEFAULT_OUT, args.weights)))
        return
    from make_segmentation_mosaics import make_mosaics  # its sibling script (run as a script: importable)

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or (Path(tmp) if args.quick else DEFAULT_OUT)
        if args.quick:
            make_mosaics(out / "mosaics", 1, 2, 30)
            args.weights = args.weights or random_decoder(out / "random_decoder.safetensors")
        else:
            make_mosaics(out / "mosaics", args.n)
        runs = {}
        for mode in MODES:
            if args.quick:
                runs[mode] = run_mode(mode, out, args.weights, quick=True)
            else:
                cmd = [sys.executable, __file__, str(out), "--weights", str(args.weights), "--mode", mode]
                cmd += ["--threads", str(args.threads)] if args.threads else []
                done = subprocess.run(cmd, check=True, capture_output=True, text=True)
                runs[mode] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{mode}: {runs[mode]['seconds']:.0f} s, peak RSS {runs[mode]['peak_rss_bytes'] / 1e9:.2f} GB",
                  flush=True)
        print(table(out, runs))


def random_decoder(path: Path) -> Path:
    """The demo segmenter's decoder with random weights, saved at ``path`` (a quick run's stand-in)."""
    from safetensors.torch import save_file
    from segmentation_demo import CLASSES, SegDecoder  # its sibling script (run as a script: importable)

    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in SegDecoder(len(CLASSES)).state_dict().items()}, str(path))
    return path


if __name__ == "__main__":
    main()
