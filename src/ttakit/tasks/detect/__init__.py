"""Object-detection TTA: every view's boxes mapped back exactly, then merged by WBF, NMS or soft-NMS.

The parts: :mod:`.tta` (:class:`DetectionTTA`), :mod:`.format` (the per-image detection
dicts and :class:`ViewDetections`, every view's boxes as one table), :mod:`.adapters`
(:func:`yolo_adapter`, :func:`function_adapter`) and :mod:`.loading` (:func:`load_detector`,
:class:`LoadedDetector`). The box merges are in :mod:`ttakit.tasks.boxes`.

Example:
    >>> fn = lambda x: ([torch.tensor([[2., 2., 6., 6.]])] * len(x), [torch.ones(1)] * len(x),
    ...                 [torch.zeros(1, dtype=torch.long)] * len(x))
    >>> tta = DetectionTTA(function_adapter(fn), "vflip", merge="nms", merge_options={"iou_threshold": 0.6})
    >>> tta.merge_options
    NMSOptions(iou_threshold=0.6)
"""

from __future__ import annotations

from ...task_spec import Option, TaskColumns, TaskSpec, register_task
from ..boxes import list_box_merges
from .adapters import YoloDecode, decode_yolo, function_adapter, yolo_adapter
from .deaugment import detect_head
from .format import Detections, ViewDetections, as_detections, detection_record
from .loading import LoadedDetector, detector_for_task, load_detector
from .tta import DetectionResult, DetectionTTA

__all__ = [
    "DETECT_COLUMNS",
    "DetectionResult",
    "DetectionTTA",
    "Detections",
    "LoadedDetector",
    "ViewDetections",
    "YoloDecode",
    "as_detections",
    "decode_yolo",
    "detection_record",
    "function_adapter",
    "load_detector",
    "yolo_adapter",
]

# --------------------------------------------------------------------------- the task, registered once
DETECT_COLUMNS = TaskColumns("map", "mAP", (("map", "mAP@[.5:.95]"), ("map50", "mAP@.5"), ("map75", "mAP@.75")), "AP")
_ALL, _DET = ("predict", "views", "evaluate"), "detection (--task detect)"
register_task(TaskSpec(
    "detect", "object detection (with --annotations)", head=detect_head,
    evaluation="ttakit.evaluation.task_parts:detect_task", load_model=detector_for_task,
    load_data="ttakit.evaluation.task_parts:detect_data", report="ttakit.evaluation.detect_eval:page",
    columns=DETECT_COLUMNS, result=DetectionResult, merge_option="box_merge",
    commands={"predict": "ttakit.cli.detect:cmd_predict", "views": "ttakit.cli.detect:cmd_views",
              "evaluate": "ttakit.cli.detect:cmd_evaluate"},
    options=(
        Option("detector", "alias of --model for --task detect: MODULE:FUNCTION or path/file.py:FUNCTION returning a "
               "detection model, or a torchvision detection model name (e.g. fasterrcnn_mobilenet_v3_large_320_fpn; "
               "random weights unless --weights)", metavar="SPEC", commands=_ALL, group=_DET),
        Option("num_classes", "classes of the model (detect: a torchvision detector's, default 91)",
               type="positive_int", commands=_ALL, group=_DET),
        Option("annotations", "COCO annotations whose images[].file_name are paths in DATA", metavar="COCO_JSON",
               group=_DET),
        Option("box_merge", "box merge (evaluate: repeatable; default: wbf)", choices=tuple(list_box_merges()),
               commands=_ALL, many=("evaluate",), group=_DET),
        Option("label_map", "index: label i is the i-th category by id (default); id: labels are category ids",
               default="index", choices=("index", "id"), group=_DET, scoring=True),
        Option("score_threshold", "show boxes scoring at least this (default: 0.3)", type="float", default=0.3,
               commands=("predict", "views"), group=_DET),
        Option("box_option", "box-merge option, e.g. iou_threshold=0.6, wbf.conf_type=max (repeatable)",
               metavar="[MERGE.]KEY=VALUE", commands=_ALL, many=_ALL, group=_DET, scoring=True),
    ),
))
