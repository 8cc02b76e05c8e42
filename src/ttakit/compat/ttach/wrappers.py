"""ttach's three wrappers, each a ttakit Plan: every Compose combination is a view, run once, undone by ttakit's inverses, merged by ttach's Merger.

The model runs once per view on the whole batch (so extra ``*args`` stay aligned with the
images); the caller's model comes back as it was given (mode, ``requires_grad``, memory format).

Example:
    >>> from ttakit.compat.ttach import aliases
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    >>> ClassificationTTAWrapper(net, aliases.ten_crop_transform(8, 8), merge_mode="gmean")(torch.rand(2, 3, 12, 12)).shape
    torch.Size([2, 4])
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ...errors import ArgumentError
from ...policy import Policy
from ...runtime.config import kept_as_given
from ...tasks.plan import Plan
from .base import RAW, Compose, Merger, Transformer

__all__ = ["ClassificationTTAWrapper", "KeypointsTTAWrapper", "SegmentationTTAWrapper"]


def _run(model: nn.Module, transforms: Compose, image: Tensor, args: tuple[Any, ...],
         key: str | None) -> tuple[list[Transformer], list[Tensor]]:
    """Every combination's raw output (``key`` picked from dict outputs), one model call per
    view on the whole batch, through a ttakit :class:`~ttakit.Plan` (a combination holding a
    user's own transform is augmented by its own methods, as in ttach)."""
    steps = list(transforms)
    for t in steps:
        t.image_size = tuple(image.shape[-2:])  # the grid each view's mask goes back to
    with kept_as_given(model) if isinstance(model, nn.Module) else contextlib.nullcontext():
        if all(t.view is not None for t in steps):
            plan = Plan(Policy(tuple(t.view for t in steps)), "outputs", norm=RAW, micro_batch=max(1, image.shape[0]))
            outs = plan.run(lambda x: model(x, *args), image)
        else:
            outs = [model(t.augment_image(image), *args) for t in steps]
    return steps, [o if key is None else o[key] for o in outs]


def _merged(merge_mode: str, outs: list[Tensor], key: str | None) -> Tensor | dict[str, Tensor]:
    merger = Merger(type=merge_mode, n=len(outs))
    for o in outs:
        merger.append(o)
    return merger.result if key is None else {key: merger.result}


def _check(model: Any, transforms: Any, merge_mode: Any) -> None:
    """The wrappers' arguments, checked when built (ttach found a bad merge mode at the first call)."""
    if not callable(model):
        raise ArgumentError(f"model must be callable (an nn.Module), got {type(model).__name__}")
    if not isinstance(transforms, Compose):
        raise ArgumentError(f"transforms must be a Compose of ttach transforms, got {type(transforms).__name__}")
    Merger(type=merge_mode)  # an unknown merge mode fails here, naming the known ones


class _Wrapper(nn.Module):
    """Run every view, undo each output with :meth:`_undo`, merge with ttach's Merger."""

    def __init__(self, model: nn.Module, transforms: Compose, merge_mode: str, output_key: str | None) -> None:
        super().__init__()
        _check(model, transforms, merge_mode)
        self.model, self.transforms, self.merge_mode, self.output_key = model, transforms, merge_mode, output_key

    def _undo(self, t: Transformer, out: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, image: Tensor, *args: Any) -> Tensor | Mapping[str, Tensor]:
        steps, outs = _run(self.model, self.transforms, image, args, self.output_key)
        return _merged(self.merge_mode, [self._undo(t, o) for t, o in zip(steps, outs)], self.output_key)


class SegmentationTTAWrapper(_Wrapper):
    """A segmentation model (``(B, C, H, W)`` -> ``(B, K, h, w)``, or a dict holding it under
    ``output_mask_key``) with every view of ``transforms`` undone and merged by ``merge_mode``."""

    def __init__(self, model: nn.Module, transforms: Compose, merge_mode: str = "mean",
                 output_mask_key: str | None = None) -> None:
        super().__init__(model, transforms, merge_mode, output_mask_key)

    def _undo(self, t: Transformer, out: Tensor) -> Tensor:
        return t.deaugment_mask(out)


class ClassificationTTAWrapper(_Wrapper):
    """A classifier with every view of ``transforms`` merged by ``merge_mode`` (labels need no
    undoing; ``output_label_key`` picks them from dict outputs)."""

    def __init__(self, model: nn.Module, transforms: Compose, merge_mode: str = "mean",
                 output_label_key: str | None = None) -> None:
        super().__init__(model, transforms, merge_mode, output_label_key)

    def _undo(self, t: Transformer, out: Tensor) -> Tensor:
        return t.deaugment_label(out)


class KeypointsTTAWrapper(nn.Module):
    """A keypoint model returning ``(B, 2N)`` ``[x1, y1, ..., xN, yN]`` (pixels of the image it
    was given, or in ``[0, 1]`` with ``scaled=True``) with every view undone and merged.

    Each view's pixels are divided by that view's own image size (ttach divided by the
    original's, wrong after a quarter turn of a non-square image); the model's output is not
    modified in place.
    """

    def __init__(self, model: nn.Module, transforms: Compose, merge_mode: str = "mean",
                 output_keypoints_key: str | None = None, scaled: bool = False) -> None:
        super().__init__()
        _check(model, transforms, merge_mode)
        self.model, self.transforms, self.merge_mode = model, transforms, merge_mode
        self.output_key, self.scaled = output_keypoints_key, scaled

    def forward(self, image: Tensor, *args: Any) -> Tensor | Mapping[str, Tensor]:
        B, (H, W) = image.shape[0], image.shape[-2:]
        steps, outs = _run(self.model, self.transforms, image, args, self.output_key)
        back = []
        for t, o in zip(steps, outs):
            pts = o.reshape(B, -1, 2)
            if not self.scaled:
                h, w = t.view.output_size((H, W))
                pts = pts / pts.new_tensor([w, h])
            back.append(t.deaugment_keypoints(pts))
        merged = _merged(self.merge_mode, back, None)
        if not self.scaled:
            merged = merged * merged.new_tensor([W, H])
        merged = merged.reshape(B, -1)
        return merged if self.output_key is None else {self.output_key: merged}
