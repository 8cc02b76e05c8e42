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
from ..errors import ModelLoadError
from ..models import LoadedModel
from ..torchvision_models import torchvision_model

__all__ = ["load_segmenter", "whole_photo_config"]

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

