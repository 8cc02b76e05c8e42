"""ttakit: test-time augmentation for timm and PyTorch image models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .adapt import AdaptOptions, create_adapter, list_adapters
from .data import example_image_path, load_image, preprocess
from .errors import (
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
from .runtime.prepare import PreparedRun, prepare_run
from .soup import greedy_soup, uniform_soup
from .stages import Input
from .tasks.classify import ClassificationResult, ClassificationTTA
from .tasks.dense import DenseResult, KeypointsTTA, SegmentationTTA
from .tasks.detect import DetectionResult, DetectionTTA, load_detector
from .task_spec import Option, TaskColumns, TaskSpec, get_task, list_tasks, register_task
from .tasks.plan import Plan
from .tasks.window import WindowConfig
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
    from .evaluation.api import EvaluationResult, evaluate
    from .evaluation.classify_logits import ClassifyScoring
    from .evaluation.detect_eval import DetectScoring
    from .evaluation.scoring import EvalOptions
    from .evaluation.segment_eval import SegmentScoring
    from .tasks.export import export_tta

__version__ = "0.1.0"

# Imported on first use: the evaluation pipeline and the ONNX graph export pull in modules
# that `import ttakit` should not pay for (and evaluation reads this package's __version__).
_LAZY = {"evaluate": "ttakit.evaluation.api", "EvaluationResult": "ttakit.evaluation.api",
         "ClassifyScoring": "ttakit.evaluation.classify_logits", "DetectScoring": "ttakit.evaluation.detect_eval",
         "EvalOptions": "ttakit.evaluation.scoring", "SegmentScoring": "ttakit.evaluation.segment_eval",
         "export_tta": "ttakit.tasks.export"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib  # noqa: PLC0415

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # resolved once
        return value
    raise AttributeError(f"module 'ttakit' has no attribute {name!r}")


__all__ = [
    "AdaptOptions",
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
