"""ttakit: test-time augmentation for timm and PyTorch image models."""

from __future__ import annotations

from .errors import (
    BackendError,
    ConfigError,
    DatasetError,
    ImageLoadError,
    ModelLoadError,
    PolicyError,
    ShapeError,
    TTAKitError,
    WeightsError,
)
from .merge import get_merge, list_merges, merge_logits, register_merge
from .models import DEFAULT_MODEL, LoadedModel, load_class_names, load_model
from .data import example_image_path, load_image, preprocess
from .policy import Policy, create_policy, list_presets, load_policy, parse_policy, product, register_preset, save_policy, union
from .runtime.config import RunConfig, default_run_config
from .runtime.loop import run_views
from .tasks.classify import CONFIDENCE, ClassificationTTA, TTAResult
from .tasks.dense import DenseResult, KeypointsTTA, SegmentationTTA
from .tasks.detect import DetectionResult, DetectionTTA
from .soup import greedy_soup, uniform_soup
from .transforms import (
    Brightness,
    Contrast,
    Crop,
    HFlip,
    Input,
    Normalization,
    Resize,
    Rot90,
    Rotate,
    Scale,
    Shift,
    Transform,
    VFlip,
    View,
)

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "CONFIDENCE",
    "ConfigError",
    "DatasetError",
    "Input",
    "DEFAULT_MODEL",
    "Brightness",
    "ClassificationTTA",
    "DenseResult",
    "DetectionResult",
    "DetectionTTA",
    "KeypointsTTA",
    "SegmentationTTA",
    "Contrast",
    "Crop",
    "HFlip",
    "ImageLoadError",
    "LoadedModel",
    "ModelLoadError",
    "Normalization",
    "Policy",
    "PolicyError",
    "Resize",
    "Rot90",
    "Rotate",
    "RunConfig",
    "Scale",
    "ShapeError",
    "Shift",
    "TTAKitError",
    "TTAResult",
    "Transform",
    "VFlip",
    "View",
    "WeightsError",
    "create_policy",
    "default_run_config",
    "example_image_path",
    "get_merge",
    "greedy_soup",
    "list_merges",
    "list_presets",
    "load_class_names",
    "load_image",
    "load_model",
    "load_policy",
    "merge_logits",
    "parse_policy",
    "preprocess",
    "product",
    "register_merge",
    "register_preset",
    "run_views",
    "save_policy",
    "uniform_soup",
    "union",
]
