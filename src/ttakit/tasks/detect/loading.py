"""Detector loading: ``MODULE:FUNCTION``, ``path/file.py:FUNCTION`` or a torchvision detection model name.

A :class:`LoadedDetector` is a :class:`~ttakit.models.LoadedModel` whose model returns
torchvision-format detections; :func:`load_detector` resolves a spec to one, as the command
line's ``--detector`` does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from dataclasses import dataclass, replace

import torchvision

from ...callables import is_callable_spec, load_module_spec
from ...errors import ModelLoadError
from ...models import LoadedModel, load_class_names
from ...torchvision_models import torchvision_model

__all__ = ["LoadedDetector", "detector_for_task", "load_detector"]


@dataclass(frozen=True)
class LoadedDetector(LoadedModel):
    """A detector ready for :class:`DetectionTTA`: a :class:`~ttakit.models.LoadedModel` whose
    ``model`` returns torchvision-format detections, ``name`` is what it was loaded from
    (``MODULE:FUNCTION`` or a torchvision model name), ``data_config`` says how photos become
    its input and ``class_names`` name its labels."""

    def label_name(self, label: int) -> str:
        return self.class_names[label] if 0 <= label < len(self.class_names) else str(label)


# torchvision detectors take [0, 1] images of any size and normalise and resize them inside.
_TORCHVISION_DATA = {"input_size": (3, 320, 320), "interpolation": "bilinear", "mean": (0.0, 0.0, 0.0),
                     "std": (1.0, 1.0, 1.0), "crop_pct": 1.0, "crop_mode": "center"}


def _torchvision_detector(name: str, weights: str | None, num_classes: int | None) -> LoadedDetector:
    known = torchvision.models.list_models(module=torchvision.models.detection)
    if name not in known:
        raise ModelLoadError(f"unknown torchvision detection model {name!r}; known: {', '.join(sorted(known))}")
    pretrained = weights in (None, "hub")
    model, source, classes = torchvision_model(name, weights, num_classes if pretrained else num_classes or 91, "detector")
    if classes is None:
        classes = [str(i) for i in range(num_classes or 91)]
        if num_classes in (None, 91):  # the COCO label ids torchvision uses, named
            meta = torchvision.models.get_model_weights(name).DEFAULT.meta.get("categories")  # type: ignore[union-attr]
            classes = list(meta) if meta else classes
    return LoadedDetector(model.eval(), name, source, dict(_TORCHVISION_DATA), list(classes))


def load_detector(spec: str, weights: str | None = None, num_classes: int | None = None,
                  class_names: Sequence[str] | None = None) -> LoadedDetector:
    """Resolve a detector: ``MODULE:FUNCTION`` or ``path/file.py:FUNCTION`` (a callable
    returning an ``nn.Module`` in torchvision's output format or a :class:`LoadedDetector`;
    called with ``weights=`` when ``weights`` is given), or a torchvision detection model
    name (``torchvision:NAME`` or ``NAME``). A torchvision name's ``weights``: ``None``
    (default) for its pretrained weights (the ``DEFAULT`` of its torchvision weights enum,
    downloaded once; COCO's 91 classes, so ``num_classes`` must be ``None`` or 91),
    ``"random"`` for random weights, or a state dict file (``num_classes`` defaults to 91).

    Raises:
        ModelLoadError: nothing importable or known under that name.
        WeightsError: the weights do not fit; pretrained weights offline (the message names
            the ways out) or of another ``num_classes``.

    Example:
        >>> det = load_detector("fasterrcnn_mobilenet_v3_large_320_fpn", weights="random", num_classes=3)
        >>> det.weights, det.class_names
        ('random', ['0', '1', '2'])
    """
    if not spec:
        raise ModelLoadError("no detector given: name MODULE:FUNCTION or a torchvision detection model")
    if is_callable_spec(spec):
        det = load_module_spec(spec, weights, "detector", LoadedDetector, lambda m, config: LoadedDetector(
            m, spec, weights or "(loader's)", config, [str(i) for i in range(num_classes or 0)]))
    else:
        det = _torchvision_detector(spec.removeprefix("torchvision:"), weights, num_classes)
    det.model.eval()
    return det if class_names is None else replace(det, class_names=list(class_names))


def detector_for_task(spec: str | None, weights: str | None, labels: str | None,
                      options: Mapping[str, Any]) -> LoadedDetector:
    """The task's model loader: :func:`load_detector` of the task's ``detector`` option, else
    ``spec``, with its ``num_classes`` (``labels``: a file of class names).

    Raises:
        ModelLoadError: no detector named.
    """
    name = options.get("detector") or spec
    if not name:
        raise ModelLoadError("task 'detect' needs a `model` (or `detector`): MODULE:FUNCTION or a torchvision "
                             "detection model name (e.g. fasterrcnn_mobilenet_v3_large_320_fpn)")
    return load_detector(name, weights, options.get("num_classes"), load_class_names(labels) if labels else None)
