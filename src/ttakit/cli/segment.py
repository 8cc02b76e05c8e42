"""``ttakit evaluate --task segment``: mIoU of the plain segmenter and every policy, paired with plain.

``ttakit evaluate IMAGES --task segment --masks MASKS --model MODULE:FUNCTION --num-classes K``
pairs each photo of IMAGES with the PNG of MASKS that has its file stem (pixel = class index;
``--ignore-index``, default 255, is not scored). The model is ``MODULE:FUNCTION`` or
``path/file.py:FUNCTION`` returning an ``nn.Module`` with ``(B, K, h, w)`` logits (or a
``LoadedModel`` with its data config), or a torchvision segmentation model name.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..datasets import find_masked_images
from ..errors import ConfigError
from ..evaluation.api import evaluate
from ..models import load_class_names
from ..runtime.distributed import DistContext
from ..tasks.segment import load_segmenter
from .common import eval_options, metric_table, prepare_run, print_written, progress_bar

__all__ = ["byte_size", "cmd_evaluate_segment", "format_segment_table", "store_line"]


def format_segment_table(results: dict[str, Any], per_view: dict[str, Any] | None = None) -> str:
    """The printed table of ``ttakit evaluate --task segment``."""
    columns = (("miou", "mIoU"), ("pixel_acc", "pix_acc"), ("mean_dice", "dice"), ("boundary_iou", "bIoU"))
    marked = {(k if r.get("exact", True) else f"{k} *"): r for k, r in results.items()}  # * : from reduced maps
    return metric_table(marked, columns, per_view, "mIoU")


def byte_size(text: str) -> int:
    """``2GB``, ``300MB``, ``512KB``, ``0`` or a number of bytes (decimal units; ``GiB`` etc. binary).

    Example:
        >>> byte_size("2GB"), byte_size("1.5MiB"), byte_size("0")
        (2000000000, 1572864, 0)
    """
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    t = text.strip().upper()
    number = t.rstrip("KMGTIB")
    try:
        value = float(number) * units[t[len(number):]]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 2GB, 300MB, 0)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a size must be >= 0, got {text!r}")
    return int(value)


def store_line(res: dict[str, Any]) -> str:
    """What was stored for reuse, and which rows are not exact."""
    st = res.get("store") or {}
    grid = st.get("map_grid")
    maps = "no maps" if not grid or 0 in grid else f"maps of {grid[0]}x{grid[1]} {st.get('dtype')} per view"
    inexact = [k for k, r in res["results"].items() if not r.get("exact", True)]
    line = (f"stored for reuse: {maps}, {st.get('disk_bytes', 0) / 1e6:.1f} MB on disk "
            f"(budget {st.get('budget_bytes', 0) / 1e6:.0f} MB); every row scored at full resolution")
    if inexact:
        line = line.replace("every row scored at full resolution",
                            f"* not exact (scored from the stored maps): {', '.join(inexact)}")
    return line


def cmd_evaluate_segment(args: argparse.Namespace) -> int:
    """``ttakit evaluate --task segment IMAGES --masks MASKS --model SPEC --num-classes K``:
    :func:`ttakit.evaluate` of the flags, the table printed."""
    if not args.masks:
        raise ConfigError("--task segment needs --masks FOLDER (one PNG per photo, pixel = class index)")
    if not args.model or not args.num_classes:
        raise ConfigError("--task segment needs --model MODULE:FUNCTION (or a torchvision segmentation name) "
                          "and --num-classes K")
    options = eval_options(args)
    data = find_masked_images(args.data, args.masks)
    names = load_class_names(args.labels) if args.labels else None
    run = prepare_run(load_segmenter(args.model, args.num_classes, args.weights, names), args, kind="segmenter")
    if DistContext.current().is_main:
        print(f"data: {data.describe()}" + (f" (first {args.limit} used)" if args.limit else ""))
    with progress_bar(len(data.head(options.limit)), "evaluate", options.quiet) as bar:
        res = evaluate(run, data, args.tta, task=args.task, out_dir=args.out, options=options, progress=bar,
                       **args.given_options)
    if not res:  # not rank 0
        return 0
    print(format_segment_table(res.results, res.per_view))
    print(store_line(dict(res.doc)))
    print_written(dict(res.doc), args.out)
    return 0
