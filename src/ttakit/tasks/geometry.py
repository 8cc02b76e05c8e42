"""Where a batch's views came from: the sizes and photo windows that undoing them needs, and no model.

Every de-augmenter (:mod:`ttakit.tasks.deaugment`, :mod:`ttakit.tasks.detect.deaugment`)
takes the views, each view's raw output and a :class:`Geometry`: the plain model input's size,
each source photo's size (``None`` for preprocessed tensors) and the data config that made the
plain input. :func:`stage_matrices` maps an input stage's coordinates back onto the plain
input's, one matrix per photo.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..corrections import Corrected
from ..errors import PolicyError
from ..runtime.loop import ViewInputs, as_view_inputs
from ..stages import Input, input_matrix
from ..views import View

__all__ = ["Geometry", "stage_matrices"]


def stage_matrices(view: View, photo_sizes: Sequence[tuple[int, int]] | None,
                   data_config: Mapping[str, Any] | None) -> Tensor | None:
    """``(B, 3, 3)`` maps from the plain input's normalised coordinates to those of ``view``'s
    input stage, one per photo (``None`` for a view without an input stage).

    Raises:
        PolicyError: the photo sizes are unknown (preprocessed tensors), or the model's
            preprocessing is not a centre crop that other stages can be mapped back onto.

    Example:
        >>> cfg = {"input_size": (3, 224, 224), "crop_pct": 0.875, "crop_mode": "center"}
        >>> m = stage_matrices(View(source=Input(256, 1.0)), [(480, 640)], cfg)
        >>> tuple(m.shape), round(float(m[0, 0, 0]), 4)    # the plain window is 224/256 of the whole short side
        ((1, 3, 3), 0.875)
    """
    if view.source is None:
        return None
    if photo_sizes is None:
        raise PolicyError(f"{view.name}: mapping an input stage back needs the photo sizes; pass photos")
    if data_config is None:
        raise PolicyError(f"{view.name}: mapping an input stage back needs the model's data_config")
    plain = Input.of_model(data_config)
    return torch.stack([input_matrix(view.source, plain, tuple(s)) for s in photo_sizes])  # (B, 3, 3)


@dataclass(frozen=True)
class Geometry:
    """What undoing a batch's views needs to know about its inputs; no model, no pixels.

    Attributes:
        input_size: ``(H, W)`` of the plain model input (the preprocessed tensor, or the
            model's own preprocessing of each photo).
        photo_sizes: ``(H, W)`` of each source photo, or ``None`` for preprocessed tensors
            (then views with an input stage cannot be undone).
        data_config: the timm data config that made the plain input from each photo
            (needed only to map input stages back).

    Example:
        >>> g = Geometry((224, 224), [(480, 640)], {"input_size": (3, 224, 224), "crop_pct": 0.875})
        >>> g.size(None), g.size(Input(256, 1.0)), g.batch_size
        ((224, 224), (256, 256), 1)
    """

    input_size: tuple[int, int]
    photo_sizes: tuple[tuple[int, int], ...] | None = None
    data_config: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_size", tuple(int(s) for s in self.input_size))
        if self.photo_sizes is not None:
            object.__setattr__(self, "photo_sizes", tuple((int(h), int(w)) for h, w in self.photo_sizes))

    @classmethod
    def of(cls, inputs: Tensor | ViewInputs, data_config: Mapping[str, Any] | None = None) -> Geometry:
        """The geometry of what a wrapper's view loop ran on: a ``(B, C, H, W)`` tensor or
        rendered photos (:class:`~ttakit.runtime.loop.RenderedInputs`)."""
        src = as_view_inputs(inputs)
        return cls(src.size(None), getattr(inputs, "photo_sizes", None), data_config)

    @property
    def batch_size(self) -> int | None:
        """Images in the batch when photo sizes are known (else ``None``)."""
        return None if self.photo_sizes is None else len(self.photo_sizes)

    def size(self, stage: Input | Corrected | None) -> tuple[int, int]:
        """``(h, w)`` of the input a view with this rendering key (``view.stage``) ran on."""
        source = stage.source if isinstance(stage, Corrected) else stage
        if stage is not None and self.photo_sizes is None:
            raise PolicyError(
                f"view stage {stage.name!r} works on the source photo, but the input is a tensor of "
                "preprocessed images: pass the photos (PIL images or paths) instead")
        return self.input_size if source is None else (source.size, source.size)

    def stage_matrices(self, view: View) -> Tensor | None:
        """:func:`stage_matrices` of ``view`` for these photos."""
        return stage_matrices(view, self.photo_sizes, self.data_config)
