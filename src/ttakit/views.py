"""Views: an optional input stage and photo corrections, then tensor transforms applied left to right and undone right to left.

Example:
    >>> View((HFlip(), Rot90(1))).name
    'hflip|rot90=1'
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from . import functional as Fn
from .corrections import Corrected, Correction, stage_of
from .errors import PolicyError
from .functional import Size
from .stages import Input
from .transforms import HFlip, Normalization, Transform, VFlip

__all__ = ["View"]


@dataclass(frozen=True)
class View:
    """One augmented view: an optional input stage (how the source photo becomes the model
    input; ``None`` is the model's own preprocessing), photo corrections run on the source
    photo before it (:mod:`ttakit.corrections`; they move no pixel, so no inverse undoes
    them), then tensor transforms applied left to right. ``View()`` is the identity."""

    transforms: tuple[Transform, ...] = ()
    source: Input | None = None
    corrections: tuple[Correction, ...] = ()

    @property
    def name(self) -> str:
        parts = ([self.source.name] if self.source is not None else []) + [c.name for c in self.corrections]
        return "|".join(parts + [t.name for t in self.transforms]) or "identity"

    @property
    def is_identity(self) -> bool:
        return not self.transforms and self.source is None and not self.corrections

    @property
    def stage(self) -> Input | Corrected | None:
        """What the photo is rendered as before the tensor transforms: the key of the view's
        rendered input (the input stage, with the corrections when there are any)."""
        return stage_of(self.source, self.corrections)

    @property
    def mirrored(self) -> bool:
        """An odd number of flips: left and right are swapped in the view."""
        return sum(isinstance(t, (HFlip, VFlip)) for t in self.transforms) % 2 == 1

    def __str__(self) -> str:
        return self.name

    def then(self, other: View) -> View:
        """This view followed by ``other`` (at most one of them may have an input stage: it
        always runs first, whatever the order they are written in; corrections run next, on
        the photo, in the order written)."""
        if self.source is not None and other.source is not None:
            raise PolicyError(f"a view has one input stage; {self.source.name!r} and {other.source.name!r} were combined")
        return View(self.transforms + other.transforms, self.source or other.source, self.corrections + other.corrections)

    def sizes(self, size: Size) -> list[Size]:
        """Image sizes before each transform and after the last (``len + 1`` entries)."""
        out = [size]
        for t in self.transforms:
            out.append(t.output_size(out[-1]))
        return out

    def output_size(self, size: Size) -> Size:
        return self.sizes(size)[-1]

    def apply(self, x: Tensor, norm: Normalization) -> Tensor:
        """Augment ``(B, C, H, W)`` normalised images."""
        for t in self.transforms:
            x = t.apply(x, norm)
        return x

    # ------------------------------------------------------------------ graph form (export)
    @property
    def graph_opset(self) -> int:
        """The lowest ONNX opset the view's graph steps export at."""
        return max((t.graph_opset for t in self.transforms), default=1)

    def graph_steps(self, size: Size, norm: Normalization) -> nn.Sequential:
        """:meth:`apply` on ``size`` images as one static, exportable module: each transform's
        ``graph_steps`` (:mod:`ttakit.graph`), left to right. The input stage and corrections
        work on the photo, before these steps.

        Raises:
            PolicyError: a transform has no graph form.

        Example:
            >>> View((HFlip(), Rot90(1))).graph_steps((4, 6), Normalization())
            Sequential(
              (0): Flip()
              (1): QuarterTurn()
            )
        """
        return nn.Sequential(*[s for t, ts in zip(self.transforms, self.sizes(size)) for s in t.graph_steps(ts, norm)])

    def graph_inverse_steps(self) -> nn.Sequential:
        """The exact inverse of the view as one static module on maps of any grid: each
        transform's ``graph_inverse_steps``, right to left (flips and quarter turns have one).

        Raises:
            PolicyError: the view has an input stage (it re-samples the photo) or a transform
                with no exact inverse on every grid.

        Example:
            >>> y = torch.arange(6.0).view(1, 1, 2, 3)
            >>> view = View((HFlip(), Rot90(1)))
            >>> torch.equal(view.graph_inverse_steps()(view.apply(y, Normalization())), y)
            True
        """
        if self.stage is not None:
            raise PolicyError(f"its stage {self.stage.name} re-samples the photo")
        return nn.Sequential(*[s for t in reversed(self.transforms) for s in t.graph_inverse_steps()])

    def invert_dense(self, y: Tensor, image_size: Size, grid_size: Size) -> tuple[Tensor, Tensor]:
        """Map the view's dense prediction ``(B, K, h, w)`` onto ``grid_size``, the output grid of
        the un-augmented ``image_size`` image.

        Returns:
            ``(y, mask)``: ``(B, K, H', W')`` and a ``(1, 1, H', W')`` float validity mask.
        """
        sizes = self.sizes(image_size)
        # Output grid of each intermediate image, assuming one stride for the whole view.
        ry, rx = grid_size[0] / image_size[0], grid_size[1] / image_size[1]
        grids = [grid_size] + [(max(1, round(h * ry)), max(1, round(w * rx))) for h, w in sizes[1:]]
        mask = y.new_ones((1, 1, *y.shape[-2:]))
        for t, s, g in zip(reversed(self.transforms), reversed(sizes[:-1]), reversed(grids[:-1])):
            y, mask = t.invert_dense(y, mask, s, g)
        if tuple(y.shape[-2:]) != tuple(grid_size):  # only when the model's stride is uneven
            y, mask = Fn.resize(y, grid_size), Fn.resize(mask, grid_size, mode="nearest")
        return y, mask

    def invert_points(self, points: Tensor, image_size: Size) -> Tensor:
        """Map ``(..., 2)`` pixel keypoints predicted on the view back to the original image."""
        sizes = self.sizes(image_size)
        for t, s in zip(reversed(self.transforms), reversed(sizes[:-1])):
            points = t.invert_points(points, s)
        return points

    def invert_boxes(self, boxes: Tensor, image_size: Size) -> Tensor:
        """Map ``(..., 4)`` xyxy pixel boxes detected on the view back to the original image of
        ``image_size`` (the view's input stage), through the transforms right to left.

        Raises:
            PolicyError: a transform is not axis-aligned (a free rotation); names the view.

        Example:
            >>> View((Rot90(1), HFlip())).invert_boxes(torch.tensor([[0., 0., 4., 2.]]), (10, 30))
            tensor([[28.,  6., 30., 10.]])
        """
        sizes = self.sizes(image_size)
        try:
            for t, s in zip(reversed(self.transforms), reversed(sizes[:-1])):
                boxes = t.invert_boxes(boxes, s)
        except PolicyError as e:
            raise PolicyError(f"view {self.name!r}: {e}") from e
        return boxes
