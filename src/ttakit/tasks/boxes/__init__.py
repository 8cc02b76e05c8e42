"""Merge object-detection boxes from several TTA views of one image (class-aware, pure torch).

=============  ==========================================================================
``wbf``        :func:`weighted_boxes_fusion`, the result of ``ensemble_boxes`` 1.0.9
``nms``        :func:`nms`, class-aware hard NMS (``torchvision.ops.batched_nms``)
``soft_nms``   :func:`soft_nms`, class-aware soft-NMS (linear or Gaussian decay)
``concat``     :func:`concat`, every box kept
=============  ==========================================================================

The parts: :mod:`.merges` (the four merges), :mod:`.engine` (WBF's clustering, batched),
:mod:`.options` (one frozen options dataclass per merge), :mod:`.registry` (merges by name,
options from a mapping), :mod:`.ops` (shared tensor helpers).

Example:
    >>> merge = get_box_merge("wbf")
    >>> boxes = torch.tensor([[0., 0., 10., 10.], [1., 0., 11., 10.]])
    >>> merge(boxes, torch.tensor([0.8, 0.8]), torch.tensor([0, 0]), torch.tensor([0, 1]), 2,
    ...       options=box_merge_options("wbf", {"iou_threshold": 0.6}))
    (tensor([[ 0.5000,  0.0000, 10.5000, 10.0000]]), tensor([0.8000]), tensor([0]))
"""

from __future__ import annotations

from .merges import concat, nms, soft_nms, weighted_boxes_fusion
from .options import (
    CONF_TYPES,
    SOFT_NMS_METHODS,
    BoxMergeOptions,
    ConcatOptions,
    NMSOptions,
    SoftNMSOptions,
    WBFOptions,
)
from .registry import (
    BOX_MERGES,
    BoxMerge,
    box_merge_options,
    box_options_for_run,
    get_box_merge,
    list_box_merges,
    register_box_merge,
)

__all__ = [
    "BOX_MERGES",
    "CONF_TYPES",
    "SOFT_NMS_METHODS",
    "BoxMerge",
    "BoxMergeOptions",
    "ConcatOptions",
    "NMSOptions",
    "SoftNMSOptions",
    "WBFOptions",
    "box_merge_options",
    "box_options_for_run",
    "concat",
    "get_box_merge",
    "list_box_merges",
    "nms",
    "register_box_merge",
    "soft_nms",
    "weighted_boxes_fusion",
]
