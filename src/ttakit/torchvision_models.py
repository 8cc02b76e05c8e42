"""torchvision models by name, with the weights rule of :func:`~ttakit.models.load_model`.

No weights named: the pretrained ones (the ``DEFAULT`` of the model's torchvision weights
enum, downloaded once into ``TORCH_HOME``; offline and not cached, one error naming the ways
out). ``"random"``: random weights, only when asked for. A path: a state dict file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

import torchvision
from torch import nn

from .errors import WeightsError
from .models import load_state_dict
from .pretrained import fetch_to_torch_hub, hub_reachable, no_weights_message, torch_hub_cached

__all__ = ["torchvision_model"]


def torchvision_model(name: str, weights: str | None, num_classes: int | None, kind: str,
                      **kwargs: Any) -> tuple[nn.Module, str, Sequence[str] | None]:
    """A torchvision model by name: its pretrained weights (``weights`` ``None`` or ``"hub"``:
    the ``DEFAULT`` of its weights enum, downloaded once), random ones (``"random"``), or a
    state dict file. ``kind`` names the model in errors. Returns the model, where its weights
    came from and the class names the pretrained weights carry (``None`` otherwise).

    Raises:
        WeightsError: no pretrained weights to be had (the hub cannot be reached and nothing
            is cached), ``num_classes`` differs from the pretrained weights' classes, or the
            file does not fit.

    Example:
        >>> model, source, classes = torchvision_model("lraspp_mobilenet_v3_large", "random", 3, "segmenter")
        >>> source, classes, model.classifier.low_classifier.out_channels
        ('random', None, 3)
    """
    if weights not in (None, "hub"):
        model = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=num_classes,
                                             **kwargs)
        if weights == "random":
            return model, "random", None
        try:
            model.load_state_dict(load_state_dict(weights))
        except RuntimeError as e:
            raise WeightsError(f"{weights}: does not fit {name} ({str(e).splitlines()[0]})") from e
        return model, str(weights), None
    enum = torchvision.models.get_model_weights(name).DEFAULT  # type: ignore[union-attr]
    classes = list(enum.meta.get("categories") or [])
    if num_classes not in (None, len(classes)):
        raise WeightsError(f"{name}: its pretrained weights ({enum}) have {len(classes)} classes, not "
                           f"`num_classes={num_classes}`; a {kind} with other classes needs a weights file "
                           "(`weights=FILE`) or `weights='random'`")
    if torch_hub_cached(enum.url) is None and not hub_reachable(enum.url):
        raise WeightsError(no_weights_message(name, f"its pretrained weights ({enum}) are not cached and "
                                              f"{urlparse(enum.url).hostname} cannot be reached", cache="TORCH_HOME"))
    try:
        fetch_to_torch_hub(enum.url)  # where torchvision reads it from
    except Exception as e:  # noqa: BLE001 - network and download errors come in many types (URLError, ...)
        raise WeightsError(no_weights_message(
            name, f"its pretrained weights ({enum}) cannot be downloaded ({type(e).__name__})", cache="TORCH_HOME")) from e
    return torchvision.models.get_model(name, weights=enum, **kwargs), f"hub:{enum}", classes
