"""The evaluation parts of the segment and detect task specs: each task's data loader and its EvalTask built from the task's options.

:class:`~ttakit.task_spec.TaskSpec` names these by ``"module:attribute"`` (``tasks/`` never
imports ``evaluation/``); :func:`ttakit.evaluate <ttakit.evaluation.api.evaluate>` calls them
with the options it was given, checked against the spec.

Example:
    >>> lm = LoadedModel(torch.nn.Identity(), "seg", "none", {"input_size": (3, 8, 8)}, ["a", "b", "c"])
    >>> task = segment_task(lm, None, RunConfig(), None, {"num_classes": 3, "tile": 64, "blend": "gaussian"})
    >>> task.scoring.num_classes, task.window.blend
    (3, 'gaussian')
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..datasets import MaskedImages, find_masked_images
from ..errors import ConfigError
from ..models import LoadedModel
from ..runtime.config import RunConfig
from ..tasks.boxes.options import parse_box_options
from ..tasks.detect import LoadedDetector
from ..tasks.window import WindowConfig
from .detect_eval import CocoImages, DetectScoring, DetectTask, load_coco_images
from .segment_eval import SegmentScoring, SegmentTask

__all__ = ["detect_data", "detect_task", "segment_data", "segment_task"]


def segment_data(source: str | Path, lm: LoadedModel, options: Mapping[str, Any]) -> MaskedImages:
    """The task's data loader: the photos of ``source`` paired with the ``masks`` option's PNGs.

    Raises:
        ConfigError: no ``masks`` folder.
    """
    if not options.get("masks"):
        raise ConfigError("task 'segment' needs `masks` (a folder of one PNG per photo, pixel = class index)")
    return find_masked_images(source, options["masks"])


def segment_task(lm: LoadedModel, data: MaskedImages, run_config: RunConfig, scoring: SegmentScoring | None,
                 options: Mapping[str, Any]) -> SegmentTask:
    """The task's evaluation: ``scoring`` (default: from the ``num_classes``, ``ignore_index``,
    ``store_budget`` and ``store_size`` options) and, with ``tile``, sliding windows
    (``overlap``, ``blend``, ``window_batch``, ``stitch_device``)."""
    if scoring is None:
        scoring = SegmentScoring(options.get("num_classes") or len(lm.class_names), options.get("ignore_index", 255),
                                 options.get("store_budget", 512 * 2**20), options.get("store_size"))
    window = options.get("window")
    if window is None and options.get("tile") is not None:
        window = WindowConfig(options["tile"], options.get("overlap", 0.25), options.get("blend", "constant"),
                              batch=options.get("window_batch", 4), stitch_device=options.get("stitch_device"))
    return SegmentTask(lm, scoring, run_config, window=window)


def detect_data(source: str | Path, det: LoadedModel, options: Mapping[str, Any]) -> CocoImages:
    """The task's data loader: the images of ``source`` named by the ``annotations`` option's COCO file.

    Raises:
        ConfigError: no ``annotations``.
    """
    if not options.get("annotations"):
        raise ConfigError("task 'detect' needs `annotations` (a COCO JSON naming the images of the data)")
    return load_coco_images(source, options["annotations"])


def detect_task(det: LoadedDetector, data: CocoImages, run_config: RunConfig, scoring: DetectScoring | None,
                options: Mapping[str, Any]) -> DetectTask:
    """The task's evaluation: ``scoring`` (default: from the ``box_option`` and ``label_map`` options)."""
    if scoring is None:
        scoring = DetectScoring(parse_box_options(options.get("box_option")), options.get("label_map") or "index")
    return DetectTask(det, data, scoring, run_config)
