"""ttakit: test-time augmentation for timm and PyTorch image models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .adapt import AdaptOptions, create_adapter, list_adapters
from .data import example_image_path, load_image, preprocess
from .errors import (
    ArgumentError,
    BackendError,
    ConfigError,
    DatasetError,
    ImageLoadError,
    ModelLoadError,
    PolicyError,
    ShapeError,
    TTAKitError,
    UnknownNameError,
    WeightsError,
)
from .merge import get_merge, list_merges, merge_logits, register_merge
from .models import DEFAULT_MODEL, LoadedModel, load_class_names, load_model
from .policy import Policy, create_policy, list_presets, load_policy, parse_policy, product, register_preset, save_policy, union
from .registry import Registry
from .runtime.config import RunConfig, default_run_config
from .soup import greedy_soup, uniform_soup
from .stages import Input
from .tasks.classify import ClassificationResult, ClassificationTTA
from .tasks.dense import DenseResult, KeypointsTTA, SegmentationTTA
from .tasks.detect import DetectionResult, DetectionTTA, load_detector
from .tasks.plan import Plan
from .transforms import (
    Brightness,
    Contrast,
    Crop,
    HFlip,
    Normalization,
    Resize,
    Rot90,
    Rotate,
    Scale,
    Shift,
    Transform,
    VFlip,
)
from .views import View

if TYPE_CHECKING:
    from .evaluation.evaluate import evaluate
    from .tasks.export import export_tta

__version__ = "0.1.0"

# Imported on first use: the evaluation pipeline and the ONNX graph export pull in modules
# that `import ttakit` should not pay for (and evaluation reads this package's __version__).
_LAZY = {"evaluate": "ttakit.evaluation.evaluate", "export_tta": "ttakit.tasks.export"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib  # noqa: PLC0415

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # resolved once
        return value
    raise AttributeError(f"module 'ttakit' has no attribute {name!r}")


__all__ = [
    "AdaptOptions",
    "ArgumentError",
    "BackendError",
    "Brightness",
    "ClassificationResult",
    "ClassificationTTA",
    "ConfigError",
    "Contrast",
    "Crop",
    "DEFAULT_MODEL",
    "DatasetError",
    "DenseResult",
    "DetectionResult",
    "DetectionTTA",
    "HFlip",
    "ImageLoadError",
    "Input",
    "KeypointsTTA",
    "LoadedModel",
    "ModelLoadError",
    "Normalization",
    "Plan",
    "Policy",
    "PolicyError",
    "Registry",
    "Resize",
    "Rot90",
    "Rotate",
    "RunConfig",
    "Scale",
    "SegmentationTTA",
    "ShapeError",
    "Shift",
    "TTAKitError",
    "Transform",
    "UnknownNameError",
    "VFlip",
    "View",
    "WeightsError",
    "create_adapter",
    "create_policy",
    "default_run_config",
    "evaluate",
    "example_image_path",
    "export_tta",
    "get_merge",
    "greedy_soup",
    "list_adapters",
    "list_merges",
    "list_presets",
    "load_class_names",
    "load_detector",
    "load_image",
    "load_model",
    "load_policy",
    "merge_logits",
    "parse_policy",
    "preprocess",
    "product",
    "register_merge",
    "register_preset",
    "save_policy",
    "uniform_soup",
    "union",
]
