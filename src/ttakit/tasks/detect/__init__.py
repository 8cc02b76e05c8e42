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

from .adapters import YoloDecode, decode_yolo, function_adapter, yolo_adapter
from .format import Detections, ViewDetections, as_detections, detection_record
from .loading import LoadedDetector, load_detector
from .tta import DetectionResult, DetectionTTA

__all__ = [
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
