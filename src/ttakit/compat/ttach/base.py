"""ttach's base: transforms as (parameter name, parameter values), Compose's every combination as a ttakit View, and Merger.

A ttach transform here knows, for each of its parameter values, the ttakit
:class:`~ttakit.transform_base.Transform` it is (``None`` for the identity value): augmenting
applies it, de-augmenting a mask or keypoints uses its exact inverse. A :class:`Transformer`
(one combination of a :class:`Compose`) is a :class:`~ttakit.views.View`; it remembers the size
of the image it augmented, so a mask comes back on exactly that image's grid.

A user's own transform (a subclass of :class:`DualTransform` or :class:`ImageOnlyTransform`
with its own ``apply_aug_image`` and ``apply_deaug_*``, or a built-in transform with one of
them overridden) is not a ttakit transform: a combination holding one runs as ttach runs it,
each step's methods in turn (the built-in steps still through ttakit's transforms).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ... import functional as Fn
from ...errors import ArgumentError
from ...transform_base import Normalization, Transform
from ...views import View

__all__ = ["BaseTransform", "Compose", "DualTransform", "ImageOnlyTransform", "Merger", "Transformer", "is_native"]

# ttach's images are whatever the model takes; photometric views here never normalise.
RAW = Normalization((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def deaugment_keypoints(keypoints: Tensor, t: Transform | None) -> Tensor:
    """``(..., 2)`` keypoints ``(x, y)`` in ``[0, 1]`` of the augmented image back to the
    original image's ``[0, 1]``, through the inverse of ``t``'s map."""
    if t is None or not t.geometric:
        return keypoints
    m_inv = torch.linalg.inv(t.matrix((1, 1)))  # resolution-free transforms: any size gives the map
    return (Fn.transform_points(keypoints * 2 - 1, m_inv) + 1) / 2


_HERE = Path(__file__).resolve().parent  # this package's folder: where its own methods are written
_METHODS = ("ttakit_transform", "apply_aug_image", "apply_deaug_mask", "apply_deaug_label", "apply_deaug_keypoints")


def is_native(transform: BaseTransform) -> bool:
    """Whether ``transform`` augments and de-augments as this package's own transforms do (its
    class may be a user's subclass that changes only ``__init__``): then it is a ttakit
    transform. A user's transform, or a built-in one with any of :data:`_METHODS` overridden
    (in its class or on the instance), runs its own methods, as in ttach.

    Example:
        >>> from ttakit.compat.ttach import transforms as T
        >>> class Louder(T.Multiply):
        ...     def apply_aug_image(self, image, factor=1, **kwargs):
        ...         return image * factor * 2
        >>> is_native(T.Multiply([2])), is_native(Louder([2]))
        (True, False)
    """
    if any(m in vars(transform) for m in _METHODS):
        return False
    owners = [next(c for c in type(transform).__mro__ if m in vars(c)) for m in _METHODS]
    return owners[0] is not BaseTransform and all(_written_here(vars(c)[m]) for c, m in zip(owners, _METHODS))


def _written_here(method: Any) -> bool:
    code = getattr(method, "__code__", None)
    return code is not None and _in_this_folder(code.co_filename)


@functools.lru_cache(maxsize=None)
def _in_this_folder(filename: str) -> bool:
    return Path(filename).resolve().parent == _HERE


class BaseTransform:
    """A ttach transform: parameter ``name`` and its values ``params``; subclasses say which
    ttakit transform each value is (:meth:`ttakit_transform`)."""

    identity_param: Any = None
    masks_ok: bool = True  # whether a mask can be mapped back (not after a crop, as in ttach)

    def __init__(self, name: str, params: Sequence[Any]) -> None:
        self.params = params
        self.pname = name

    def ttakit_transform(self, value: Any) -> Transform | None:
        """The ttakit transform of parameter ``value`` (``None``: the identity)."""
        raise NotImplementedError

    def _t(self, params: dict[str, Any]) -> Transform | None:
        return self.ttakit_transform(params[self.pname]) if self.pname in params else None

    def apply_aug_image(self, image: Tensor, *args: Any, **params: Any) -> Tensor:
        t = self._t(params)
        return image if t is None else t.apply(image, RAW)

    def apply_deaug_mask(self, mask: Tensor, *args: Any, **params: Any) -> Tensor:
        raise NotImplementedError

    def apply_deaug_label(self, label: Tensor, *args: Any, **params: Any) -> Tensor:
        return label

    def apply_deaug_keypoints(self, keypoints: Tensor, *args: Any, **params: Any) -> Tensor:
        return deaugment_keypoints(keypoints, self._t(params))


class ImageOnlyTransform(BaseTransform):
    """A transform that moves no pixel: masks and keypoints come back as they are."""

    def apply_deaug_mask(self, mask: Tensor, *args: Any, **params: Any) -> Tensor:
        return mask

    def apply_deaug_keypoints(self, keypoints: Tensor, *args: Any, **params: Any) -> Tensor:
        return keypoints


class DualTransform(BaseTransform):
    """A transform that moves pixels; masks come back through the ttakit transform's inverse."""

    def apply_deaug_mask(self, mask: Tensor, *args: Any, **params: Any) -> Tensor:
        t = self._t(params)
        if t is None:
            return mask
        size = self.source_size(t, tuple(mask.shape[-2:]))
        return t.invert_dense(mask, mask.new_ones(1, 1, *mask.shape[-2:]), size, size)[0]

    def source_size(self, t: Transform, size: tuple[int, int]) -> tuple[int, int]:
        """The size of the image that ``t`` turned into one of ``size``: flips and quarter
        turns are their own shape map's inverse (resizes override it)."""
        return t.output_size(size)


class Transformer:
    """One combination of a :class:`Compose`: a ttakit :class:`~ttakit.views.View` when every
    step is one of the drop-in's own transforms (``view``), else (``view`` is ``None``) the
    steps' own methods in turn, as ttach runs them."""

    def __init__(self, steps: Sequence[tuple[BaseTransform, Any]]) -> None:
        self.steps = list(steps)  # (ttach transform, its parameter value), in augmentation order
        native = all(is_native(s) for s, _ in self.steps)
        self.view = View(tuple(t for t in (s.ttakit_transform(p) for s, p in self.steps) if t is not None)) if native else None
        self.image_size: tuple[int, int] | None = None  # of the last image augmented

    def augment_image(self, image: Tensor) -> Tensor:
        self.image_size = tuple(image.shape[-2:])  # type: ignore[assignment]
        if self.view is None:
            for s, p in self.steps:
                image = s.apply_aug_image(image, **{s.pname: p})
            return image
        return self.view.apply(image, RAW)

    def deaugment_mask(self, mask: Tensor) -> Tensor:
        """The mask mapped back onto the grid of the image :meth:`augment_image` was given
        (scaled by the model's output stride); without one, or with a user's transform among
        the steps, transform by transform as ttach does."""
        if self.view is None or self.image_size is None or not all(s.masks_ok for s, _ in self.steps):
            for s, p in reversed(self.steps):
                mask = s.apply_deaug_mask(mask, **{s.pname: p})
            return mask
        aug = self.view.output_size(self.image_size)
        grid = (round(self.image_size[0] * mask.shape[-2] / aug[0]), round(self.image_size[1] * mask.shape[-1] / aug[1]))
        return self.view.invert_dense(mask, self.image_size, grid)[0]

    def deaugment_label(self, label: Tensor) -> Tensor:
        for s, p in reversed(self.steps):
            label = s.apply_deaug_label(label, **{s.pname: p})
        return label

    def deaugment_keypoints(self, keypoints: Tensor) -> Tensor:
        for s, p in reversed(self.steps):
            keypoints = s.apply_deaug_keypoints(keypoints, **{s.pname: p})
        return keypoints


class Compose:
    """Every combination of the transforms' parameters, each one :class:`Transformer`.

    Example:
        >>> from ttakit.compat.ttach import transforms as T
        >>> c = Compose([T.HorizontalFlip(), T.Rotate90([0, 90])])
        >>> len(c), [t.view.name for t in c]
        (4, ['identity', 'rot90=1', 'hflip', 'hflip|rot90=1'])
    """

    def __init__(self, transforms: Sequence[BaseTransform]) -> None:
        self.aug_transforms = list(transforms)
        self.aug_transform_parameters = list(itertools.product(*[t.params for t in self.aug_transforms]))
        self.deaug_transforms = self.aug_transforms[::-1]
        self.deaug_transform_parameters = [p[::-1] for p in self.aug_transform_parameters]

    def __iter__(self) -> Iterator[Transformer]:
        for params in self.aug_transform_parameters:
            yield Transformer(list(zip(self.aug_transforms, params)))

    def __len__(self) -> int:
        return len(self.aug_transform_parameters)


_MERGES = ("mean", "gmean", "sum", "max", "min", "tsharpen")


class Merger:
    """ttach's running merge of ``n`` de-augmented outputs: ``mean``, ``gmean``, ``sum``,
    ``max``, ``min`` or ``tsharpen`` (the mean of square roots).

    Example:
        >>> m = Merger("gmean", n=2)
        >>> m.append(torch.tensor(4.0)); m.append(torch.tensor(1.0))
        >>> m.result
        tensor(2.)
    """

    def __init__(self, type: str = "mean", n: int = 1) -> None:  # noqa: A002 - ttach's keyword
        if type not in _MERGES:
            raise ArgumentError(f"Not correct merge type `{type}`: use one of {', '.join(_MERGES)}")
        self.output: Tensor | None = None
        self.type = type
        self.n = n

    def append(self, x: Tensor) -> None:
        if self.type == "tsharpen":
            x = x ** 0.5
        if self.output is None:
            self.output = x
        elif self.type in ("mean", "sum", "tsharpen"):
            self.output = self.output + x
        elif self.type == "gmean":
            self.output = self.output * x
        elif self.type == "max":
            self.output = torch.maximum(self.output, x)
        else:
            self.output = torch.minimum(self.output, x)

    @property
    def result(self) -> Tensor:
        if self.output is None:
            raise ValueError("nothing was appended to the Merger")
        if self.type in ("mean", "tsharpen"):
            return self.output / self.n
        if self.type == "gmean":
            return self.output ** (1 / self.n)
        return self.output
