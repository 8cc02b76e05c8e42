"""Box merges by name: each merge with its options dataclass, and a run's options checked once.

Every registered merge is called the same way, ``merge(boxes, scores, labels, view_ids,
n_views, weights, options, image_size=None)``, with ``options`` an instance of its own
options dataclass (:mod:`ttakit.tasks.boxes.options`). Per-view weights scale the scores of
``nms``, ``soft_nms`` and ``concat`` by ``w[view] / w.sum()``, as ``ensemble_boxes`` does;
``wbf`` weighs them inside the fusion.

Options come from the user as a mapping (``--box-option [MERGE.]KEY=VALUE``):
:func:`box_options_for_run` turns it into one options object per merge of a run, checking
every key and value once; :func:`box_merge_options` does it for one merge.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ...errors import ConfigError
from ...registry import Registry
from .merges import concat, nms, soft_nms, weighted_boxes_fusion
from .ops import Merged, Weights, weighted_scores
from .options import BoxMergeOptions, ConcatOptions, NMSOptions, SoftNMSOptions, WBFOptions

__all__ = [
    "BOX_MERGES",
    "BoxMerge",
    "box_merge_options",
    "box_options_for_run",
    "get_box_merge",
    "list_box_merges",
    "register_box_merge",
]

# (boxes, scores, labels, view_ids, n_views, weights, options, image_size) -> (boxes, scores, labels)
MergeFn = Callable[[Tensor, Tensor, Tensor, Tensor, int, Weights, Any, "tuple[int, int] | None"], Merged]


@dataclass(frozen=True)
class BoxMerge:
    """A registered box merge: its name, its options dataclass and the function.

    Example:
        >>> merge = get_box_merge("nms")
        >>> merge(torch.tensor([[0., 0., 4., 4.], [0., 0., 4., 4.]]), torch.tensor([0.5, 0.9]),
        ...       torch.tensor([1, 1]), torch.tensor([0, 1]), 2, [3.0, 1.0], NMSOptions(iou_threshold=0.6))
        (tensor([[0., 0., 4., 4.]]), tensor([0.3750]), tensor([1]))
    """

    name: str
    options_type: type[BoxMergeOptions]  # the dataclass its options must be
    fn: MergeFn  # does the work, given an options_type instance

    def __call__(self, boxes: Tensor, scores: Tensor, labels: Tensor, view_ids: Tensor, n_views: int,
                 weights: Weights = None, options: BoxMergeOptions | None = None, *,
                 image_size: tuple[int, int] | None = None) -> Merged:
        """Merge one image's boxes of ``n_views`` views; ``options`` default to the dataclass's defaults.

        Raises:
            ConfigError: ``options`` of another merge's type.
        """
        return self.fn(boxes, scores, labels, view_ids, n_views, weights, self.check_options(options), image_size)

    def check_options(self, options: BoxMergeOptions | None) -> BoxMergeOptions:
        """``options`` if they are this merge's type (``None``: the defaults).

        Raises:
            ConfigError: options of another merge's type.
        """
        if options is None:
            return self.options_type()
        if type(options) is not self.options_type:
            raise ConfigError(f"box merge {self.name!r} takes {self.options_type.__name__}, "
                              f"got {type(options).__name__}")
        return options


BOX_MERGES: Registry[BoxMerge] = Registry("box merge", sort=False)  # registration order: wbf first


def register_box_merge(name: str, options_type: type[BoxMergeOptions]) -> Callable[[MergeFn], MergeFn]:
    """Decorator that registers ``fn(boxes, scores, labels, view_ids, n_views, weights, options,
    image_size)`` as the box merge ``name`` taking ``options_type`` options."""

    def deco(fn: MergeFn) -> MergeFn:
        BOX_MERGES.add(name, BoxMerge(name, options_type, fn))
        return fn

    return deco


def get_box_merge(name: str) -> BoxMerge:
    """The box merge registered as ``name``.

    Raises:
        UnknownNameError: unknown name (the message lists the known ones).
    """
    return BOX_MERGES.get(name)


def list_box_merges() -> list[str]:
    """Names of the registered box merges, the default (``wbf``) first."""
    return BOX_MERGES.names()


def box_options_for_run(merges: Sequence[str], options: Mapping[str, Any] | None = None) -> dict[str, BoxMergeOptions]:
    """One options object per merge of a run, every key and value checked once.

    A key ``KEY`` applies to every merge of the run that has such an option, ``MERGE.KEY`` to
    that merge only (and wins over ``KEY``). A key that no merge of the run takes is an error,
    so a typo is never ignored.

    Raises:
        UnknownNameError: an unknown merge name.
        ConfigError: a key no merge of the run takes (naming the accepted keys), or a bad value.

    Example:
        >>> opts = box_options_for_run(["wbf", "nms", "concat"], {"iou_threshold": 0.6, "wbf.conf_type": "max"})
        >>> opts["wbf"]
        WBFOptions(iou_threshold=0.6, skip_threshold=0.0, conf_type='max', allows_overflow=False)
        >>> opts["nms"], opts["concat"]
        (NMSOptions(iou_threshold=0.6), ConcatOptions())
        >>> box_options_for_run(["nms", "concat"], {"iou_treshold": 0.6})
        Traceback (most recent call last):
        ...
        ttakit.errors.ConfigError: no box merge of this run (nms, concat) has an option 'iou_treshold'; accepted keys: iou_threshold
    """
    types = {m: get_box_merge(m).options_type for m in dict.fromkeys(merges)}
    if options and not types:
        raise ConfigError(f"box options ({', '.join(options)}) given, but this run merges no boxes")
    chosen: dict[str, dict[str, Any]] = {m: {} for m in types}
    specific: dict[str, dict[str, Any]] = {m: {} for m in types}
    for key, value in (options or {}).items():
        target, dot, name = key.rpartition(".")
        if dot:
            get_box_merge(target)  # an unknown merge name is an UnknownNameError
            if target not in types:
                raise ConfigError(f"box option {key!r} is for {target!r}, which this run does not use "
                                  f"({', '.join(types)})")
            if name not in types[target].keys():
                raise ConfigError(f"box merge {target!r} has no option {name!r}; {_accepted([target], types)}")
            specific[target][name] = value
            continue
        takers = [m for m, t in types.items() if name in t.keys()]
        if not takers:
            who = (f"box merge {next(iter(types))!r} has no option" if len(types) == 1
                   else f"no box merge of this run ({', '.join(types)}) has an option")
            raise ConfigError(f"{who} {name!r}; {_accepted(list(types), types)}")
        for m in takers:
            chosen[m][name] = value
    return {m: _build(m, t, {**chosen[m], **specific[m]}) for m, t in types.items()}


def _build(merge: str, options_type: type[BoxMergeOptions], values: Mapping[str, Any]) -> BoxMergeOptions:
    try:
        return options_type(**values)
    except ConfigError as e:  # say which merge the value was for
        raise ConfigError(f"box merge {merge!r}: {e}") from e


def _accepted(merges: Sequence[str], types: Mapping[str, type[BoxMergeOptions]]) -> str:
    keys = list(dict.fromkeys(k for m in merges for k in types[m].keys()))
    return f"accepted keys: {', '.join(keys)}" if keys else f"{' and '.join(merges)} takes no options"


def box_merge_options(merge: str, options: Mapping[str, Any] | BoxMergeOptions | None = None) -> BoxMergeOptions:
    """The options of the box merge ``merge`` from a mapping of ``KEY`` or ``MERGE.KEY`` keys
    (an options object of the right type is returned as it is).

    Raises:
        ConfigError: a key this merge does not take (naming the accepted keys), a key for
            another merge, or a bad value.

    Example:
        >>> box_merge_options("soft_nms", {"sigma": 0.2, "soft_nms.method": "gaussian"})
        SoftNMSOptions(iou_threshold=0.3, sigma=0.2, method='gaussian', score_threshold=0.001, rescore=True)
        >>> box_merge_options("nms", {"sigma": 0.2})
        Traceback (most recent call last):
        ...
        ttakit.errors.ConfigError: box merge 'nms' has no option 'sigma'; accepted keys: iou_threshold
    """
    if isinstance(options, BoxMergeOptions):
        return get_box_merge(merge).check_options(options)
    return box_options_for_run([merge], options)[merge]


# --------------------------------------------------------------------------- the merges
@register_box_merge("wbf", WBFOptions)
def _wbf(boxes: Tensor, scores: Tensor, labels: Tensor, view_ids: Tensor, n_views: int, weights: Weights,
         options: WBFOptions, image_size: tuple[int, int] | None) -> Merged:
    return weighted_boxes_fusion(boxes, scores, labels, view_ids, n_views, weights, **dataclasses.asdict(options),
                                 image_size=image_size)


@register_box_merge("nms", NMSOptions)
def _nms(boxes: Tensor, scores: Tensor, labels: Tensor, view_ids: Tensor, n_views: int, weights: Weights,
         options: NMSOptions, image_size: tuple[int, int] | None) -> Merged:
    scores = weighted_scores(scores, view_ids, n_views, weights)
    return nms(boxes, scores, labels, **dataclasses.asdict(options), image_size=image_size)


@register_box_merge("soft_nms", SoftNMSOptions)
def _soft_nms(boxes: Tensor, scores: Tensor, labels: Tensor, view_ids: Tensor, n_views: int, weights: Weights,
              options: SoftNMSOptions, image_size: tuple[int, int] | None) -> Merged:
    scores = weighted_scores(scores, view_ids, n_views, weights)
    return soft_nms(boxes, scores, labels, **dataclasses.asdict(options), image_size=image_size)


@register_box_merge("concat", ConcatOptions)
def _concat(boxes: Tensor, scores: Tensor, labels: Tensor, view_ids: Tensor, n_views: int, weights: Weights,
            options: ConcatOptions, image_size: tuple[int, int] | None) -> Merged:
    return concat(boxes, weighted_scores(scores, view_ids, n_views, weights), labels)
