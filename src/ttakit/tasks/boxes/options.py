"""Box-merge options: one frozen dataclass per merge, each value checked once, at construction.

A merge's options are built from a mapping by
:func:`ttakit.tasks.boxes.registry.box_merge_options` (``KEY`` or ``MERGE.KEY`` keys, as the
command line's ``--box-option`` gives them); a bad value raises
:class:`~ttakit.errors.ConfigError` naming the option.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from ...errors import ConfigError

__all__ = [
    "CONF_TYPES",
    "SOFT_NMS_METHODS",
    "BoxMergeOptions",
    "ConcatOptions",
    "NMSOptions",
    "SoftNMSOptions",
    "WBFOptions",
    "parse_box_options",
]

ConfType = Literal["avg", "max", "box_and_model_avg", "absent_model_aware_avg"]
CONF_TYPES: tuple[str, ...] = ("avg", "max", "box_and_model_avg", "absent_model_aware_avg")
SOFT_NMS_METHODS: tuple[str, ...] = ("linear", "gaussian")


def _unit(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value


class BoxMergeOptions:
    """Base of the options dataclasses; ``merge`` names the box merge they belong to."""

    merge: ClassVar[str]

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """The option names, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)  # frozen: only __post_init__ normalises (1 -> 1.0)


@dataclass(frozen=True)
class WBFOptions(BoxMergeOptions):
    """Options of ``wbf`` (:func:`~ttakit.tasks.boxes.weighted_boxes_fusion`).

    Example:
        >>> WBFOptions(iou_threshold=0.6, conf_type="max")
        WBFOptions(iou_threshold=0.6, skip_threshold=0.0, conf_type='max', allows_overflow=False)
        >>> WBFOptions(conf_type="mean")
        Traceback (most recent call last):
        ...
        ttakit.errors.ConfigError: conf_type must be one of avg, max, box_and_model_avg, absent_model_aware_avg, got 'mean'
    """

    merge: ClassVar[str] = "wbf"
    iou_threshold: float = 0.55  # a box joins a cluster when its IoU with the fused box is above this
    skip_threshold: float = 0.0  # boxes scoring below this are ignored
    conf_type: ConfType = "avg"  # how a cluster's score is computed: one of CONF_TYPES
    allows_overflow: bool = False  # with avg: let clusters of more boxes than views score above 1

    def __post_init__(self) -> None:
        self._set("iou_threshold", _unit("iou_threshold", self.iou_threshold))
        self._set("skip_threshold", _unit("skip_threshold", self.skip_threshold))
        _choice("conf_type", self.conf_type, CONF_TYPES)
        _flag("allows_overflow", self.allows_overflow)


@dataclass(frozen=True)
class NMSOptions(BoxMergeOptions):
    """Options of ``nms`` (:func:`~ttakit.tasks.boxes.nms`).

    Example:
        >>> NMSOptions(iou_threshold=1.5)
        Traceback (most recent call last):
        ...
        ttakit.errors.ConfigError: iou_threshold must be a number in [0, 1], got 1.5
    """

    merge: ClassVar[str] = "nms"
    iou_threshold: float = 0.5  # a box is dropped when a better box of its label overlaps it more

    def __post_init__(self) -> None:
        self._set("iou_threshold", _unit("iou_threshold", self.iou_threshold))


@dataclass(frozen=True)
class SoftNMSOptions(BoxMergeOptions):
    """Options of ``soft_nms`` (:func:`~ttakit.tasks.boxes.soft_nms`).

    Example:
        >>> SoftNMSOptions(sigma=0.1, method="gaussian").sigma
        0.1
    """

    merge: ClassVar[str] = "soft_nms"
    iou_threshold: float = 0.3  # linear decay applies above this IoU
    sigma: float = 0.5  # width of the Gaussian decay exp(-iou ** 2 / sigma), > 0
    method: Literal["linear", "gaussian"] = "linear"  # decay: score * (1 - iou) or the Gaussian
    score_threshold: float = 0.001  # boxes whose decayed score is not above this are dropped
    rescore: bool = True  # return the decayed scores (False: the kept boxes' original scores)

    def __post_init__(self) -> None:
        self._set("iou_threshold", _unit("iou_threshold", self.iou_threshold))
        if isinstance(self.sigma, bool) or not isinstance(self.sigma, (int, float)) or not self.sigma > 0:
            raise ConfigError(f"sigma must be a number > 0, got {self.sigma!r}")
        self._set("sigma", float(self.sigma))
        _choice("method", self.method, SOFT_NMS_METHODS)
        self._set("score_threshold", _unit("score_threshold", self.score_threshold))
        _flag("rescore", self.rescore)


@dataclass(frozen=True)
class ConcatOptions(BoxMergeOptions):
    """Options of ``concat`` (:func:`~ttakit.tasks.boxes.concat`): none, every box is kept."""

    merge: ClassVar[str] = "concat"


def parse_box_options(items: Sequence[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """``KEY=VALUE`` strings (``--box-option``) to options; values read as JSON where they can
    be (numbers, true/false), else kept as text. A mapping is taken as it is.

    Example:
        >>> parse_box_options(["iou_threshold=0.6", "wbf.conf_type=max"])
        {'iou_threshold': 0.6, 'wbf.conf_type': 'max'}
    """
    if isinstance(items, Mapping):
        return dict(items)
    out: dict[str, Any] = {}
    for item in items or ():
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"`box_option` expects KEY=VALUE (e.g. iou_threshold=0.6), got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value.strip()
    return out
