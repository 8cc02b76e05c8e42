"""``ttakit evaluate --task segment``: mIoU of the plain segmenter and every policy, paired with plain.

``ttakit evaluate IMAGES --task segment --masks MASKS --model MODULE:FUNCTION --num-classes K``
pairs each photo of IMAGES with the PNG of MASKS that has its file stem (pixel = class index;
``--ignore-index``, default 255, is not scored). The model is ``MODULE:FUNCTION`` or
``path/file.py:FUNCTION`` returning an ``nn.Module`` with ``(B, K, h, w)`` logits (or a
``LoadedModel`` with its data config), or a torchvision segmentation model name.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from ..datasets import find_masked_images
from ..errors import ConfigError
from ..evaluation.segment_eval import SegmentScoring, evaluate_segmentation
from ..models import load_class_names
from ..policy import create_policy
from ..runtime.distributed import DistContext
from ..tasks.dense import DENSE_MERGES
from ..tasks.segment import load_segmenter
from .common import eval_options, metric_table, positive_int, prepare_run, print_written, progress_bar

__all__ = ["add_segment_args", "cmd_evaluate_segment", "format_segment_table"]


def add_segment_args(p: argparse.ArgumentParser) -> None:
    """The segmentation options of ``ttakit evaluate`` (``--masks``, ``--ignore-index``, ...)."""
    g = p.add_argument_group("segmentation (--task segment; the classes are --num-classes)")
    g.add_argument("--masks", default=None, metavar="FOLDER",
                   help="one PNG per photo, same file stem, pixel = class index (palette or grey PNG)")
    g.add_argument("--ignore-index", type=int, default=255, help="mask value that is not scored (default: 255)")
    g.add_argument("--store-size", type=positive_int, default=128,
                   help="long side of the stored per-view probability maps: disk (N x views x K x side^2 x 2 bytes) "
                   "against edge detail (default: 128)")


def format_segment_table(results: dict[str, Any], per_view: dict[str, Any] | None = None) -> str:
    """The printed table of ``ttakit evaluate --task segment``."""
    columns = (("miou", "mIoU"), ("pixel_acc", "pix_acc"), ("mean_dice", "dice"), ("boundary_iou", "bIoU"))
    return metric_table(results, columns, per_view, "mIoU")


def cmd_evaluate_segment(args: argparse.Namespace) -> int:
    """``ttakit evaluate --task segment IMAGES --masks MASKS --model SPEC --num-classes K``."""
    if not args.masks:
        raise ConfigError("--task segment needs --masks FOLDER (one PNG per photo, pixel = class index)")
    if not args.model or not args.num_classes:
        raise ConfigError("--task segment needs --model MODULE:FUNCTION (or a torchvision segmentation name) "
                          "and --num-classes K")
    if args.adaptive is not None or args.annotations or args.box_merge or args.box_option:
        raise ConfigError("--adaptive, --annotations and --box-* are not for --task segment")
    for m in args.merge or ():
        DENSE_MERGES.get(m)  # mean or max: one error naming them
    options = eval_options(args)
    data = find_masked_images(args.data, args.masks)
    names = load_class_names(args.labels) if args.labels else None
    loaded = prepare_run(load_segmenter(args.model, args.num_classes, args.weights, names), args, kind="segmenter")
    if DistContext.current().is_main:
        print(f"data: {data.describe()}" + (f" (first {args.limit} used)" if args.limit else ""))
    lm = loaded.lm
    policies = [dataclasses.replace(create_policy(t, lm.data_config), name=t) for t in (args.tta or ["hflip"])]
    scoring = SegmentScoring(args.num_classes, args.ignore_index, args.store_size)
    backend = None if loaded.backend.label == "torch" else loaded.backend
    with progress_bar(len(data.head(options.limit)), "evaluate", options.quiet) as bar:
        res = evaluate_segmentation(lm, data, policies, out_dir=args.out, merges=args.merge,
                                    run_config=loaded.run_config, scoring=scoring, options=options,
                                    device=loaded.device, progress=bar, backend=backend)
    if not res:  # not rank 0
        return 0
    print(format_segment_table(res["results"], res["per_view"]))
    print_written(res, args.out)
    return 0
