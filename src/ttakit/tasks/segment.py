"""Segmenter loading: ``MODULE:FUNCTION``, ``path/file.py:FUNCTION`` or a torchvision segmentation name.

A segmenter is any ``nn.Module`` mapping ``(B, 3, H, W)`` images to ``(B, K, h, w)`` class
logits (any output stride). Unless its loader says otherwise (by returning a
:class:`~ttakit.models.LoadedModel` with its own data config), a segmenter's photos are
resized whole to its input size (timm's ``squash``: no centre crop, so the prediction covers
the whole photo and maps back onto its mask by a plain resize).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torchvision
from torch import Tensor, nn

from ..callables import is_callable_spec, load_module_spec
from ..errors import ConfigError, ModelLoadError
from ..models import LoadedModel, load_class_names
from ..task_spec import Option, TaskSpec, TaskColumns, register_task
from ..torchvision_models import torchvision_model
from .deaugment import DENSE_MERGES, DenseResult, SegmentGraph, segment_head

__all__ = ["SEGMENT_COLUMNS", "load_segmenter", "segmenter_for_task", "whole_photo_config"]

_IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def whole_photo_config(data_config: Mapping[str, Any]) -> dict[str, Any]:
    """``data_config`` changed to resize the whole photo to the input size (no crop).

    Example:
        >>> whole_photo_config({"input_size": (3, 224, 224), "crop_pct": 0.875, "crop_mode": "center"})
        {'input_size': (3, 224, 224), 'crop_pct': 1.0, 'crop_mode': 'squash'}
    """
    return {**data_config, "crop_pct": 1.0, "crop_mode": "squash"}


class _MainOutput(nn.Module):
    """A torchvision segmenter returning only its ``out`` map (not the dict)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)["out"]


def _torchvision_segmenter(name: str, weights: str | None, num_classes: int) -> LoadedModel:
    known = torchvision.models.list_models(module=torchvision.models.segmentation)
    if name not in known:
        raise ModelLoadError(f"unknown segmenter {name!r}: give MODULE:FUNCTION or a torchvision segmentation "
                             f"model ({', '.join(sorted(known))})")
    pretrained = weights in (None, "hub")
    # Pretrained segmenters come with their auxiliary head; only the main output is used.
    model, source, classes = torchvision_model(name, weights, num_classes, "segmenter",
                                               **({} if pretrained else {"aux_loss": False}))
    if getattr(model, "aux_classifier", None) is not None:
        model.aux_classifier = None
    config = {"input_size": (3, 320, 320), "interpolation": "bilinear", **_IMAGENET, "crop_pct": 1.0, "crop_mode": "squash"}
    return LoadedModel(_MainOutput(model), name, source, config, list(classes or [str(i) for i in range(num_classes)]))


def load_segmenter(spec: str, num_classes: int, weights: str | None = None,
                   class_names: list[str] | None = None) -> LoadedModel:
    """Resolve a segmenter of ``num_classes`` classes: ``MODULE:FUNCTION`` or
    ``path/file.py:FUNCTION`` (a callable returning an ``nn.Module`` or a
    :class:`~ttakit.models.LoadedModel`; given ``weights=`` when ``weights`` is), or a
    torchvision segmentation model name (``torchvision:NAME`` or ``NAME``). A torchvision
    name's ``weights``: ``None`` (default) for its pretrained weights (the ``DEFAULT`` of
    its torchvision weights enum, downloaded once; their classes fix ``num_classes``, 21 for
    the VOC ones), ``"random"`` for random weights, or a state dict file.

    Raises:
        ModelLoadError: nothing importable or known under that name, or not a module.
        WeightsError: the weights do not fit; pretrained weights offline (the message names
            the ways out) or of another ``num_classes``.

    Example:
        >>> seg = load_segmenter("lraspp_mobilenet_v3_large", 3, weights="random")
        >>> seg.weights, seg.data_config["crop_mode"], tuple(seg.model(torch.zeros(1, 3, 64, 64)).shape)
        ('random', 'squash', (1, 3, 64, 64))
    """
    if is_callable_spec(spec):
        lm = load_module_spec(spec, weights, "segmenter", LoadedModel, lambda m, config: LoadedModel(
            m, spec, weights or "(loader's)", whole_photo_config(config), [str(i) for i in range(num_classes)]))
    else:
        lm = _torchvision_segmenter(spec.removeprefix("torchvision:"), weights, num_classes)
    lm.model.eval()
    names = list(class_names) if class_names else list(lm.class_names)
    if len(names) != num_classes:
        names = [str(i) for i in range(num_classes)]
    return replace(lm, class_names=names)



def segmenter_for_task(spec: str | None, weights: str | None, labels: str | None,
                       options: Mapping[str, Any]) -> LoadedModel:
    """The task's model loader: :func:`load_segmenter` of ``spec`` with the task's ``num_classes``
    (``labels``: a file of class names).

    Raises:
        ConfigError: no model or no ``num_classes``.
    """
    if not spec or not options.get("num_classes"):
        raise ConfigError("task 'segment' needs a `model` (MODULE:FUNCTION or a torchvision segmentation name) "
                          "and `num_classes`")
    return load_segmenter(spec, options["num_classes"], weights, load_class_names(labels) if labels else None)


# --------------------------------------------------------------------------- the task, registered once
SEGMENT_COLUMNS = TaskColumns("miou", "mIoU", (("miou", "mIoU"), ("pixel_acc", "pixel acc."), ("mean_dice", "mean Dice"),
                                               ("boundary", "boundary F1"), ("boundary_iou", "boundary IoU")), "IoU",
                              background=0, changes=True)
_SEG, _WIN = "segmentation (--task segment; the classes are --num-classes)", "sliding windows (--task segment)"
register_task(TaskSpec(
    "segment", "per-pixel classes (with --masks)", head=segment_head, graph_head=SegmentGraph,
    evaluation="ttakit.evaluation.task_parts:segment_task", load_model=segmenter_for_task,
    load_data="ttakit.evaluation.task_parts:segment_data", report="ttakit.evaluation.segment_eval:page",
    columns=SEGMENT_COLUMNS, result=DenseResult, commands={"evaluate": "ttakit.cli.segment:cmd_evaluate_segment"},
    options=(
        Option("merge", "dense merge (repeatable; default: the policy's, else mean)", choices=tuple(DENSE_MERGES.names()),
               many=("evaluate",), group="test-time augmentation"),
        Option("masks", "one PNG per photo, same file stem, pixel = class index (palette or grey PNG)",
               metavar="FOLDER", group=_SEG),
        Option("num_classes", "classes of the model (segment: required; detect: a torchvision detector's, default 91)",
               type="positive_int", group=_SEG),
        Option("ignore_index", "mask value that is not scored (default: 255)", type="int", default=255, group=_SEG,
               scoring=True),
        Option("store_budget", "disk for reduced per-view maps, kept only for reuse (the report's gallery, a policy "
               "added on a resumed run; rows from them are marked not exact); e.g. 2GB, 300MB, 0 for none (default: "
               "512MB). Every row asked for is scored exactly, at full resolution, in the one pass", type="byte_size",
               default=512 * 2**20, metavar="SIZE", group=_SEG, scoring=True),
        Option("store_size", "a cap on the long side of the stored maps (default: what the budget allows)",
               type="positive_int", group=_SEG, scoring=True),
        Option("tile", "tile side in photo pixels; each view of the photo is tiled and stitched (default: no tiles, "
               "the whole photo resized to the model's input)", type="positive_int", metavar="PX", group=_WIN),
        Option("overlap", "share of a tile overlapping the next (default: 0.25)", type="float", default=0.25,
               requires=("tile",), group=_WIN),
        Option("blend", "tile weights: constant or gaussian (default: constant)", default="constant",
               requires=("tile",), group=_WIN),
        Option("stitch_device", "where stitched maps are kept, e.g. cpu (default: the model's device)",
               metavar="DEVICE", requires=("tile",), group=_WIN),
        Option("window_batch", "tiles per step; forwards mix tiles and views (default: 4)", type="positive_int",
               default=4, metavar="N", requires=("tile",), group=_WIN),
    ),
))
