"""ttakit: test-time augmentation for timm and PyTorch image models.

``import ttakit`` is cheap: the public names below load their module on first use (PEP 562), so
timm, torchvision, ONNX, OpenVINO, matplotlib and Jinja2 load only when a feature needs them.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:  # what the lazy names below are, for type checkers and editors
    from .adapt import AdaptOptions, create_adapter, list_adapters
    from .data import example_image_path, load_image, preprocess
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
    from .transforms import Brightness, Contrast, Crop, HFlip, Normalization, Resize, Rot90, Rotate, Scale, Shift, Transform, VFlip
    from .views import View
    from .evaluation.api import EvaluationResult, evaluate
    from .evaluation.classify_logits import ClassifyScoring
    from .evaluation.detect_eval import DetectScoring
    from .evaluation.scoring import EvalOptions
    from .evaluation.segment_eval import SegmentScoring
    from .runtime.prepare import PreparedRun, prepare_run
    from .task_spec import Option, TaskColumns, TaskSpec, get_task, list_tasks, register_task
    from .tasks.window import WindowConfig
    from .tasks.export import export_tta

__version__ = "0.1.0"

# Public names by the module defining them; each module is imported when one of its names is
# first used (the names stay in __all__).
_EXPORTS: dict[str, tuple[str, ...]] = {
    "adapt": ("AdaptOptions", "create_adapter", "list_adapters"),
    "data": ("example_image_path", "load_image", "preprocess"),
    "merge": ("get_merge", "list_merges", "merge_logits", "register_merge"),
    "models": ("DEFAULT_MODEL", "LoadedModel", "load_class_names", "load_model"),
    "policy": ("Policy", "create_policy", "list_presets", "load_policy", "parse_policy", "product", "register_preset", "save_policy", "union"),
    "registry": ("Registry",),
    "runtime.config": ("RunConfig", "default_run_config"),
    "soup": ("greedy_soup", "uniform_soup"),
    "stages": ("Input",),
    "tasks.classify": ("ClassificationResult", "ClassificationTTA"),
    "tasks.dense": ("DenseResult", "KeypointsTTA", "SegmentationTTA"),
    "tasks.detect": ("DetectionResult", "DetectionTTA", "load_detector"),
    "tasks.plan": ("Plan",),
    "transforms": ("Brightness", "Contrast", "Crop", "HFlip", "Normalization", "Resize", "Rot90", "Rotate", "Scale", "Shift", "Transform", "VFlip"),
    "views": ("View",),
    "runtime.prepare": ("PreparedRun", "prepare_run"),
    "task_spec": ("Option", "TaskColumns", "TaskSpec", "get_task", "list_tasks", "register_task"),
    "tasks.window": ("WindowConfig",),
    "evaluation.api": ("EvaluationResult", "evaluate"),
    "evaluation.classify_logits": ("ClassifyScoring",),
    "evaluation.detect_eval": ("DetectScoring",),
    "evaluation.scoring": ("EvalOptions",),
    "evaluation.segment_eval": ("SegmentScoring",),
    "tasks.export": ("export_tta",),
}
_LAZY = {name: f"{__name__}.{module}" for module, names in _EXPORTS.items() for name in names}
# Looking up ttakit.Plan registers the built-in tasks ("classify", "segment", "detect", ...),
# as `import ttakit` did when it imported them all.


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        if name == "Plan":
            importlib.import_module(f"{__name__}.task_spec").load_task_modules()  # the one list of task modules
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # resolved once
        return value
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:  # a subpackage: ttakit.tasks, ...
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'ttakit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "AdaptOptions",
    "ArgumentError",
    "BackendError",
    "Brightness",
    "ClassificationResult",
    "ClassificationTTA",
    "ClassifyScoring",
    "ConfigError",
    "Contrast",
    "Crop",
    "DEFAULT_MODEL",
    "DatasetError",
    "DenseResult",
    "DetectionResult",
    "DetectScoring",
    "DetectionTTA",
    "EvalOptions",
    "EvaluationResult",
    "HFlip",
    "ImageLoadError",
    "Input",
    "KeypointsTTA",
    "LoadedModel",
    "ModelLoadError",
    "Normalization",
    "Option",
    "Plan",
    "Policy",
    "PolicyError",
    "PreparedRun",
    "Registry",
    "Resize",
    "Rot90",
    "Rotate",
    "RunConfig",
    "Scale",
    "SegmentScoring",
    "SegmentationTTA",
    "ShapeError",
    "Shift",
    "TaskColumns",
    "TaskSpec",
    "TTAKitError",
    "Transform",
    "UnknownNameError",
    "VFlip",
    "View",
    "WeightsError",
    "WindowConfig",
    "create_adapter",
    "create_policy",
    "default_run_config",
    "evaluate",
    "example_image_path",
    "export_tta",
    "get_merge",
    "get_task",
    "greedy_soup",
    "list_adapters",
    "list_merges",
    "list_presets",
    "list_tasks",
    "load_class_names",
    "load_detector",
    "load_image",
    "load_model",
    "load_policy",
    "merge_logits",
    "parse_policy",
    "prepare_run",
    "preprocess",
    "product",
    "register_merge",
    "register_preset",
    "register_task",
    "save_policy",
    "uniform_soup",
    "union",
]
