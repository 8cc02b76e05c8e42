"""The one masked merge of dense views: each view's map added with the pixels it saw, then the merged result.

Whole-image de-augmentation (:func:`~ttakit.tasks.deaugment.merge_maps`), sliding-window
stitching (:mod:`~ttakit.tasks.window`) and windowed evaluation
(:mod:`~ttakit.evaluation.segment_windows`) all merge through :class:`MaskedMerge`, so they
give the same answer wherever they see the same maps.

The rule, the same for every merge (``mean``, ``max``, any :class:`Fold` registered in
:data:`FOLDS`):

* a view of weight ``w`` saw a pixel where ``w x seen > 0``; a view of weight 0 is ignored
  everywhere (merge, fallback and coverage);
* a pixel seen by at least one view is merged over the views that saw it: ``mean`` is
  ``sum(w m y) / sum(w m)`` (a fractional mask ``m`` counts as a share of the view), ``max``
  the maximum over those views (weights > 0 take part alike; a maximum is not scaled);
* a pixel that **no** view saw is the same merge over **every** view, unmasked (each view's
  de-augmented value there: the edge of what it saw, since inverses pad with the border), so
  it is never 0 or NaN and the ``mean`` of probability maps still sums to 1.

Memory: one accumulator of the maps' shape, plus a ``(1|B, 1, H, W)`` weight map only once a
view that did not see every pixel arrives (0-dim while every view saw the whole map: flips,
quarter turns). The fallback needs no map of its own: until a pixel is first seen its
accumulator holds the unmasked merge, and the first view that sees it starts it afresh. A
view that sees every pixel may be added in parts (:meth:`MaskedMerge.open_view`, tiles of a
sliding window) straight into the accumulator.

Example:
    >>> acc = MaskedMerge("mean")
    >>> acc.add(torch.tensor([[[[0.0, 1.0]]]]), torch.tensor([[[[1.0, 0.0]]]]))  # (B, K, H, W), saw pixel 0
    >>> acc.add(torch.tensor([[[[1.0, 0.5]]]]), torch.tensor([[[[1.0, 0.0]]]]))
    >>> acc.result()[0, 0].tolist()          # pixel 1: nobody saw it, the plain mean of both
    [[0.5, 0.75]]
    >>> acc.coverage[0, 0].tolist()
    [[2.0, 0.0]]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor

from ..errors import ConfigError, ShapeError
from ..registry import Registry

__all__ = ["FOLDS", "Fold", "MaskedMerge", "merge_stack"]


class Fold(Protocol):
    """How one merge folds a view into its running value (in place) and finishes it."""

    fill: float  # the running value before any view
    linear: bool  # True: a view's parts may be folded one by one (sums of tiles)

    def fold(self, acc: Tensor, y: Tensor, weight: Tensor | float) -> None:
        """Fold ``y (B, K, H, W)`` into ``acc`` in place; ``weight`` (a number, or ``(1|B, 1, H,
        W)``) is > 0 at every pixel that takes part (0: leave ``acc`` as it is)."""
        ...

    def finish(self, acc: Tensor, norm: Tensor | float) -> Tensor:
        """The merged map from ``acc`` (in place), ``norm`` the summed weights of each pixel."""
        ...


class _Mean:
    fill, linear = 0.0, True

    def fold(self, acc: Tensor, y: Tensor, weight: Tensor | float) -> None:
        if isinstance(weight, Tensor):
            acc.addcmul_(y, weight)  # no temporary of the map's size
        else:
            acc.add_(y, alpha=weight)

    def finish(self, acc: Tensor, norm: Tensor | float) -> Tensor:
        return acc.div_(norm.clamp_min(1e-12) if isinstance(norm, Tensor) else max(norm, 1e-12))


class _Max:
    fill, linear = -torch.inf, False

    def fold(self, acc: Tensor, y: Tensor, weight: Tensor | float) -> None:
        if isinstance(weight, Tensor):
            acc.copy_(torch.where(weight > 0, torch.maximum(acc, y), acc))
        elif weight > 0:
            torch.maximum(acc, y, out=acc)

    def finish(self, acc: Tensor, norm: Tensor | float) -> Tensor:
        return acc


FOLDS = Registry[Fold]("masked fold", sort=False)  # how MaskedMerge folds a view in (DENSE_MERGES are built on them); the first is the default
FOLDS.add("mean", _Mean())
FOLDS.add("max", _Max())


class MaskedMerge:
    """Running merge of dense views over the pixels each view saw (the rule: module docstring).

    Args:
        merge: a name of :data:`FOLDS` (``mean``, ``max``) or a :class:`Fold`.

    Example:
        >>> acc = MaskedMerge("max")
        >>> acc.add(torch.ones(1, 2, 3, 3), weight=0.0)            # weight 0: ignored everywhere
        >>> acc.add(torch.zeros(1, 2, 3, 3), torch.zeros(1, 1, 3, 3))
        >>> acc.result().abs().sum().item(), acc.coverage.sum().item()  # nobody saw: the plain max
        (0.0, 0.0)
    """

    def __init__(self, merge: str | Fold = "mean") -> None:
        self.fold: Fold = FOLDS.get(merge) if isinstance(merge, str) else merge
        self.acc: Tensor | None = None  # (B, K, H, W)
        self.den: Tensor | None = None  # summed weight x seen: 0-dim, or (1|B, 1, H, W) once a view missed pixels
        self.seen: Tensor | None = None  # views that saw each pixel, shaped as den
        self.total = 0.0  # summed weight of every view added (the fallback's)
        self._open: float | None = None  # weight of the view being added in parts
        self._done = False  # result() taken: the accumulator was finished in place

    def _start(self, shape: Sequence[int], device: torch.device, dtype: torch.dtype) -> None:
        if self._done:
            raise ConfigError("MaskedMerge: result() was taken; start a new MaskedMerge")
        if self.acc is None:
            self.acc = torch.full(tuple(shape), self.fold.fill, device=device, dtype=dtype)
            self.den = torch.zeros((), device=device, dtype=dtype)
            self.seen = torch.zeros((), device=device, dtype=dtype)
        elif tuple(shape) != tuple(self.acc.shape):
            raise ShapeError("dense view", str(tuple(self.acc.shape)), tuple(shape))

    def add(self, y: Tensor, seen: Tensor | None = None, weight: float = 1.0) -> None:
        """Add one view's de-augmented map ``y (B, K, H, W)``, seen where ``seen (1|B, 1, H, W)``
        is > 0 (``None``: every pixel), with view weight ``weight`` (>= 0)."""
        weight = float(weight)
        if weight < 0:
            raise ConfigError(f"a view's weight must be >= 0, got {weight}")
        if self._open is not None:
            raise ConfigError("MaskedMerge.add: a view added in parts is still open (call close_view first)")
        if weight == 0:
            return
        self._start(y.shape, y.device, y.dtype if y.is_floating_point() else torch.float32)
        acc, den = self.acc, self.den
        assert acc is not None and den is not None and self.seen is not None
        y = y.to(acc)
        if seen is None or (den.ndim == 0 and bool((seen == 1).all())):  # saw every pixel, fully
            self._add_everywhere(y, weight)
            return
        wm = seen.to(acc) * weight  # (1|B, 1, H, W)
        fresh = (den == 0) & (wm > 0)  # first seen now: the unmasked merge held there so far is dropped
        acc.masked_fill_(fresh, self.fold.fill)
        # Still unseen pixels keep the unmasked merge: they fold the whole view weight.
        self.fold.fold(acc, y, torch.where((den == 0) & (wm <= 0), torch.full_like(wm, weight), wm))
        self.den = den + wm
        self.seen = self.seen + (wm > 0).to(acc)
        self.total += weight

    def _add_everywhere(self, y: Tensor, weight: float) -> None:
        assert self.acc is not None and self.den is not None and self.seen is not None
        self._reset_unseen()
        self.fold.fold(self.acc, y, weight)
        self._close(weight)

    def _reset_unseen(self) -> None:
        # A view that sees every pixel: no pixel stays unseen, so the unmasked merge is dropped.
        assert self.acc is not None and self.den is not None
        if self.den.ndim:
            self.acc.masked_fill_(self.den == 0, self.fold.fill)
        elif float(self.den) == 0:
            self.acc.fill_(self.fold.fill)

    def _close(self, weight: float) -> None:
        self.den = self.den + weight  # type: ignore[operator]
        self.seen = self.seen + 1  # type: ignore[operator]
        self.total += weight

    # -- a view that sees every pixel, added in parts (the tiles of a sliding window)
    def open_view(self, shape: Sequence[int], weight: float, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> None:
        """Start a view that sees every pixel of a ``shape`` ``(B, K, H, W)`` map, added in parts
        (:meth:`add_part`; ``mean`` and other linear merges only), finished by :meth:`close_view`."""
        if not self.fold.linear:
            raise ConfigError("a view is added in parts only by a linear merge (mean)")
        if self._open is not None:
            raise ConfigError("MaskedMerge.open_view: the previous view is still open (call close_view first)")
        self._start(shape, torch.device(device), dtype)
        if weight > 0:
            self._reset_unseen()
        self._open = float(weight)

    def add_part(self, part: Tensor, rows: slice, cols: slice) -> None:
        """Add ``part (B, K, h, w)`` of the open view at ``[rows, cols]`` (parts of one view sum)."""
        if self._open is None or self.acc is None:
            raise ConfigError("MaskedMerge.add_part: no view is open (call open_view first)")
        if self._open > 0:
            self.fold.fold(self.acc[..., rows, cols], part.to(self.acc), self._open)

    def close_view(self) -> None:
        """Finish the view opened by :meth:`open_view`."""
        if self._open is None:
            raise ConfigError("MaskedMerge.close_view: no view is open")
        weight, self._open = self._open, None
        if weight > 0:
            self._close(weight)

    # -- the result
    @property
    def coverage(self) -> Tensor:
        """``(1|B, 1, H, W)`` number of views (weight > 0) that saw each pixel (a broadcast view
        of one number while every view saw every pixel)."""
        if self.acc is None or self.seen is None or not self.total:
            raise ConfigError("MaskedMerge: no view was added (or every view has weight 0)")
        return self.seen.expand(1, 1, *self.acc.shape[-2:]) if self.seen.ndim == 0 else self.seen

    def result(self) -> Tensor:
        """The merged ``(B, K, H, W)`` map. Finished in place: the accumulator is consumed."""
        if self.acc is None or self.den is None or not self.total:
            raise ConfigError("MaskedMerge: no view was added (or every view has weight 0)")
        if self._open is not None or self._done:
            raise ConfigError("MaskedMerge.result: " + ("already taken (it is finished in place)" if self._done
                                                        else "a view added in parts is still open"))
        norm = torch.where(self.den > 0, self.den, self.total) if self.den.ndim else float(self.den)
        self._done = True
        return self.fold.finish(self.acc, norm)


def merge_stack(ys: Tensor, masks: Tensor | None, weights: Tensor | Sequence[float] | None = None,
                merge: str | Fold = "mean") -> Tensor:
    """:class:`MaskedMerge` of stacked views: ``ys (V, B, K, H, W)``, ``masks (V, 1|B, 1, H, W)``
    (``None``: every view saw every pixel), ``weights (V,)`` (``None``: equal) -> ``(B, K, H, W)``.

    Example:
        >>> ys = torch.stack([torch.zeros(1, 2, 1, 1), torch.ones(1, 2, 1, 1)])
        >>> merge_stack(ys, None, [1.0, 3.0]).flatten().tolist()
        [0.75, 0.75]
    """
    w = [1.0] * ys.shape[0] if weights is None else [float(v) for v in weights]
    if len(w) != ys.shape[0]:
        raise ShapeError("view weights", f"({ys.shape[0]},)", (len(w),))
    acc = MaskedMerge(merge)
    for v in range(ys.shape[0]):
        acc.add(ys[v], None if masks is None else masks[v], w[v])
    return acc.result()
