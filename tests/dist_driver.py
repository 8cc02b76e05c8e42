"""A torchrun rank for tests/test_distributed.py: joins the process group once, then evaluates
through the Python API a detection set and the toy plug-in task (tests/toy_task_plugin.py), so
that both tasks cost one torchrun launch (three interpreter starts) instead of two.

Usage: ``torchrun --nproc-per-node=2 tests/dist_driver.py COCO_ROOT DETECT_OUT TOY_PHOTOS TOY_OUT``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

import ttakit
from ttakit.evaluation.scoring import EvalOptions
from ttakit.runtime.distributed import DistContext

from toy_task_plugin import Photos, evaluate_toy


def make_detector() -> ttakit.LoadedModel:
    """test_detect's BrightBoxes: right on clean rectangles, off where the noise crosses 0.5."""
    from ttakit.callables import import_callable
    from ttakit.tasks.detect import LoadedDetector

    bright = import_callable(f"{Path(__file__).parent}/test_detect.py:BrightBoxes")
    cfg = {"input_size": (3, 48, 48), "interpolation": "bilinear", "mean": (0.0,) * 3, "std": (1.0,) * 3,
           "crop_pct": 1.0, "crop_mode": "center"}
    return LoadedDetector(bright(), "bright", "none", cfg, ["red", "green", "blue"])


def evaluate_detection(root: Path, out: Path) -> Any:
    """The detector on ``root/img`` (``root/coco.json``): hflip and rot90(0,1), each box-merged by wbf and nms."""
    return ttakit.evaluate(make_detector(), root / "img", ["hflip", "rot90(0,1)"], task="detect", out_dir=out,
                           annotations=root / "coco.json", box_merge=["wbf", "nms"], device="cpu",
                           options=EvalOptions(batch_size=3, workers=0, quiet=True))


def toy_photos(folder: Path) -> Photos:
    return Photos(tuple(str(p) for p in sorted(folder.glob("*.png"))), str(folder))


if __name__ == "__main__":
    DistContext.init()
    try:
        coco, det_out, toy, toy_out = (Path(a) for a in sys.argv[1:5])
        evaluate_detection(coco, det_out)
        evaluate_toy(toy_photos(toy), toy_out)
    finally:
        torch.distributed.destroy_process_group()
