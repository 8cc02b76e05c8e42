"""DetectionTTA: every view's boxes mapped back exactly, through the view and its input stage, then merged.

The model runs on the same view loop as every task (:func:`ttakit.runtime.loop.run_views`)
and returns per-image detections in torchvision's format (:mod:`.format`). Each view's boxes
are mapped back by the view's own ``invert_boxes`` (flips and quarter turns exactly, scale,
resize, crop and shift through their exact maps, boxes cut by the view clipped to what it
showed), then through the input stage's window of the photo, and merged per image by a
class-aware box merge of :mod:`ttakit.tasks.boxes` with the policy's view weights.

Boxes come back in the ORIGINAL photo's pixels when photos are given (paths, PIL images,
uint8 tensors), and in the input tensor's pixels when preprocessed ``(B, C, H, W)`` tensors
are. Free rotations are refused: a rotated box is no box.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ...policy import PolicyLike
from ...runtime.config import RunConfig
from ...runtime.loop import ViewInputs
from ...transforms import Normalization
from ..base import Images, TTABase
from ..boxes.options import BoxMergeOptions
from .deaugment import DetectHead, DetectionResult, check_box_views, deaugment_detections
from .format import Detections, ViewDetections

__all__ = ["DetectionResult", "DetectionTTA"]


class DetectionTTA(TTABase):
    """TTA for object detectors returning per-image detections in torchvision's format.

    Args:
        model: the detector: ``(N, C, H, W)`` images -> a list of ``N`` dicts with ``boxes``
            (xyxy pixels of the image given), ``scores`` and ``labels`` (see
            :func:`yolo_adapter` and :func:`function_adapter` for other formats).
        policy: preset name, policy text, JSON path or policy object; every geometric view
            must be axis-aligned (flips, quarter turns, scale, resize, crop, shift, input stages).
        merge: ``wbf`` (default), ``nms``, ``soft_nms`` or ``concat`` (see
            :mod:`ttakit.tasks.boxes`); a one-view policy returns the view's boxes unmerged.
        merge_options: the merge's options: its options object (e.g.
            :class:`~ttakit.tasks.boxes.WBFOptions`) or a mapping of ``KEY`` or ``MERGE.KEY``
            to values (``iou_threshold``, ``skip_threshold``, ``conf_type``, ``sigma``, ...).
        max_detections: keep at most this many merged boxes per image (``None``: all).
        norm: the model's input normalisation (photometric views need it).
        run_config: micro-batch, memory format and autocast.
        data_config: timm data config that turns photos into the plain model input (a square
            centre window of the photo; boxes are mapped back through it).

    Raises:
        PolicyError: a view that is not axis-aligned (a free rotation), or an unknown merge.
        ConfigError: a merge option the merge does not have (naming those it has), or a bad value.

    Example:
        >>> class Bright(torch.nn.Module):   # boxes the pixels brighter than 0.5, label 0
        ...     def forward(self, x):
        ...         out = []
        ...         for img in x:
        ...             ys, xs = torch.nonzero(img.mean(0) > 0.5, as_tuple=True)
        ...             box = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()[None]
        ...             out.append({"boxes": box, "scores": torch.ones(1), "labels": torch.zeros(1, dtype=torch.long)})
        ...         return out
        >>> images = torch.zeros(1, 3, 40, 60)
        >>> images[0, :, 5:15, 8:20] = 1.0
        >>> tta = DetectionTTA(Bright(), "hflip*rot90(0,1)", merge="wbf")
        >>> tta(images)[0]["boxes"]           # found in every view, mapped back, fused
        tensor([[ 8.,  5., 20., 15.]])
    """

    def __init__(
        self,
        model: nn.Module,
        policy: PolicyLike = "hflip",
        merge: str = "wbf",
        *,
        merge_options: BoxMergeOptions | Mapping[str, Any] | None = None,
        max_detections: int | None = None,
        norm: Normalization | None = None,
        run_config: RunConfig | None = None,
        data_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(model, policy, norm=norm, run_config=run_config, data_config=data_config)
        self.head = DetectHead(self.view_weights, merge=merge, merge_options=merge_options, max_detections=max_detections)
        self.merge_name, self.merge_options, self.max_detections = merge, self.head.merge_options, max_detections
        check_box_views(self.views, tuple(self.data_config["input_size"][-2:]))

    @torch.inference_mode()
    def detect_views(self, x: Images | ViewInputs) -> ViewDetections:
        """Run every view and map each view's boxes back to the original images (photo pixels
        for photos, input pixels for tensors), with no merging."""
        inputs = self.inputs(x)
        return self.deaugment(self.run(inputs), inputs)

    def deaugment(self, outs: Sequence[Any], inputs: Tensor | ViewInputs) -> ViewDetections:
        """Map each view's raw output (of :meth:`run`, in ``self.views`` order) back to the
        original images, as one table, with no merging (see
        :func:`ttakit.tasks.detect.deaugment.deaugment_detections`, which needs no model)."""
        return deaugment_detections(self.views, outs, self.geometry(inputs))

    def predict(self, x: Images, keep_views: bool = False) -> DetectionResult:
        """Merged detections per image (and, with ``keep_views``, each view's own)."""
        head = self.head if not keep_views else DetectHead(
            self.view_weights, merge=self.merge_name, merge_options=self.merge_options,
            max_detections=self.max_detections, keep_views=True)
        with torch.inference_mode():
            return self.execute(x, head)

    def forward(self, x: Images) -> Detections:
        """The merged detections, one dict per image."""
        return self.predict(x).detections


