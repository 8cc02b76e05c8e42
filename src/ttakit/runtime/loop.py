"""The one view loop every task uses.

:func:`run_views` streams the ``B x V`` augmented images through the model in micro-batches
built on the fly, so memory is bounded by the micro-batch, not by ``V``. Views whose images
have the same size are grouped, so even a single input image fills a micro-batch. Tasks differ
only in what they do with each view's output afterwards (see :mod:`ttakit.tasks`).

The inputs are either a ``(B, C, H, W)`` tensor of preprocessed images or a
:class:`ViewInputs` that renders the model input of each *input stage* (how the source photo
becomes the model input, :class:`ttakit.stages.Input`) from the decoded photos; the
tensor-stage transforms of each view then run on that rendered batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from ..corrections import Corrected
from ..errors import PolicyError, ShapeError, check_shape
from ..stages import Input
from ..transforms import Normalization
from ..views import View
from .config import RunConfig

__all__ = [
    "ChunkOutputs",
    "RenderedInputs",
    "TensorInputs",
    "ViewInputs",
    "as_view_inputs",
    "model_runner",
    "run_views",
    "tree_cat",
    "tree_slice",
    "tree_take",
    "view_chunks",
]


@runtime_checkable
class ViewInputs(Protocol):
    """A batch of images that can be rendered for any input stage.

    ``render(None)`` is the plain model input (the model's own preprocessing); ``render(s)``
    the input stage ``s``; every call returns ``(B, C, h, w)`` normalised images.
    """

    @property
    def batch_size(self) -> int: ...

    def size(self, source: Input | Corrected | None) -> tuple[int, int]:
        """``(h, w)`` of ``render(source)`` without rendering it."""
        ...

    def render(self, source: Input | Corrected | None) -> Tensor: ...

    def take(self, rows: Tensor) -> ViewInputs:
        """The same inputs restricted to ``rows`` (a 1-D index tensor)."""
        ...


class TensorInputs:
    """Already preprocessed ``(B, C, H, W)`` images: only tensor-stage views can run on them."""

    def __init__(self, x: Tensor) -> None:
        check_shape("images", x.shape, "(B, C, H, W)")
        self.x = x

    @property
    def batch_size(self) -> int:
        return self.x.shape[0]

    def size(self, source: Input | Corrected | None) -> tuple[int, int]:
        self._check(source)
        return tuple(self.x.shape[-2:])  # type: ignore[return-value]

    def render(self, source: Input | Corrected | None) -> Tensor:
        self._check(source)
        return self.x

    def take(self, rows: Tensor) -> TensorInputs:
        return TensorInputs(self.x[rows.to(self.x.device)])

    @staticmethod
    def _check(source: Input | Corrected | None) -> None:
        if source is not None:
            raise PolicyError(
                f"view stage {source.name!r} works on the source photo, but the input is a tensor of "
                "preprocessed images: pass the photos (PIL images or paths) instead")


class RenderedInputs:
    """Photos already rendered for each input stage a policy needs: ``{key: (B, C, h, w)}``
    keyed by stage name (``identity`` for the model's own preprocessing), as
    :class:`ttakit.data.InputRenderer` builds them from one decode per photo. ``photos``: the
    decoded photos themselves, when a task asked for them (it runs its views at each photo's
    own size), so no photo is decoded twice."""

    def __init__(self, batches: Mapping[str, Tensor], photo_sizes: Sequence[tuple[int, int]] | None = None,
                 photos: Sequence[Any] | None = None) -> None:
        self.batches = dict(batches)
        # (H, W) of each source photo: what maps an input stage back onto the plain input.
        self.photo_sizes = None if photo_sizes is None else [tuple(s) for s in photo_sizes]
        self.photos = None if photos is None else list(photos)  # decoded PIL photos, kept on the host
        sizes = {k: v.shape[0] for k, v in self.batches.items()}
        if len(set(sizes.values())) != 1:
            raise ShapeError("rendered inputs", "one batch size for every input stage", tuple(sizes.values()))

    @staticmethod
    def _key(source: Input | Corrected | None) -> str:
        return "identity" if source is None else source.name

    @property
    def batch_size(self) -> int:
        return next(iter(self.batches.values())).shape[0]

    def _get(self, source: Input | Corrected | None) -> Tensor:
        key = self._key(source)
        if key not in self.batches:
            raise PolicyError(f"input stage {key!r} was not rendered (have: {', '.join(self.batches)})")
        return self.batches[key]

    def size(self, source: Input | Corrected | None) -> tuple[int, int]:
        return tuple(self._get(source).shape[-2:])  # type: ignore[return-value]

    def render(self, source: Input | Corrected | None) -> Tensor:
        return self._get(source)

    def take(self, rows: Tensor) -> RenderedInputs:
        sizes = None if self.photo_sizes is None else [self.photo_sizes[i] for i in rows.tolist()]
        photos = None if self.photos is None else [self.photos[i] for i in rows.tolist()]
        return RenderedInputs({k: v[rows.to(v.device)] for k, v in self.batches.items()}, sizes, photos)

    def to(self, device: torch.device | str) -> RenderedInputs:
        return RenderedInputs({k: v.to(device, non_blocking=True) for k, v in self.batches.items()}, self.photo_sizes,
                              self.photos)


def as_view_inputs(x: Tensor | ViewInputs) -> ViewInputs:
    """Wrap a tensor as :class:`TensorInputs`; pass a :class:`ViewInputs` through."""
    return TensorInputs(x) if isinstance(x, Tensor) else x


# --------------------------------------------------------------------------- output trees
def _not_a_tree(out: Any) -> PolicyError:
    return PolicyError(f"model output of type {type(out).__name__} is not a tensor, dict or tuple of tensors "
                       "(or a list of per-image dicts)")


def _is_records(out: Any) -> bool:
    """A list of per-image dicts (torchvision detection output): sliced and joined as a list."""
    return isinstance(out, list) and bool(out) and isinstance(out[0], dict)


def tree_cat(parts: Sequence[Any]) -> Any:
    """Join outputs (tensors, dicts or tuples of them, lists of per-image dicts) along the batch;
    one part is returned as it is (whatever it holds)."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    if isinstance(first, Tensor):
        return torch.cat(list(parts), dim=0)
    if _is_records(first):
        return [r for p in parts for r in p]
    if isinstance(first, dict):
        return {k: tree_cat([p[k] for p in parts]) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(tree_cat([p[i] for p in parts]) for i in range(len(first)))
    raise _not_a_tree(first)


def tree_take(out: Any, index: Tensor) -> Any:
    """The rows ``index`` (a 1-D index tensor) of an output tree, along the batch."""
    if isinstance(out, Tensor):
        return out[index.to(out.device)]
    if _is_records(out):
        return [out[i] for i in index.tolist()]
    if isinstance(out, dict):
        return {k: tree_take(v, index) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return type(out)(tree_take(v, index) for v in out)
    raise _not_a_tree(out)


def tree_slice(out: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of an output tree, along the batch (views, no copies)."""
    if isinstance(out, Tensor) or _is_records(out):
        return out[start:stop]
    if isinstance(out, dict):
        return {k: tree_slice(v, start, stop) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return type(out)(tree_slice(v, start, stop) for v in out)
    raise _not_a_tree(out)


# --------------------------------------------------------------------------- the loop
# One chunk of the loop: (n, C, h, w) augmented images and, per slice of them, (view, b0, b1):
# rows b0:b1 of the batch seen through that view.
Chunk = tuple[Tensor, list[tuple[int, int, int]]]


def view_chunks(inputs: Tensor | ViewInputs, views: Sequence[View], norm: Normalization,
                micro_batch: int) -> Iterator[Chunk]:
    """The ``B x V`` augmented images of a batch in chunks of at most ``micro_batch`` images of
    one size, built on the fly (memory is bounded by the chunk, not by ``V``); what any runtime
    (:func:`run_views`, :class:`ttakit.Plan`) feeds its model.

    Example:
        >>> chunks = list(view_chunks(torch.zeros(3, 3, 8, 8), [View(), View((HFlip(),))], Normalization(), 4))
        >>> [(tuple(x.shape), runs) for x, runs in chunks]
        [((4, 3, 8, 8), [(0, 0, 3), (1, 0, 1)]), ((2, 3, 8, 8), [(1, 1, 3)])]
    """
    src = as_view_inputs(inputs)
    B, mb = src.batch_size, micro_batch
    # Views sharing an input stage share its rendered batch; within it, views whose images
    # have the same size can share a forward.
    by_source: dict[Input | Corrected | None, dict[tuple[int, int], list[int]]] = {}
    for i, view in enumerate(views):
        groups = by_source.setdefault(view.stage, {})  # with its corrections: distinct renderings
        groups.setdefault(view.output_size(src.size(view.stage)), []).append(i)
    for source, groups in by_source.items():
        x = src.render(source)  # (B, C, H, W): one input stage held at a time
        for idx in groups.values():
            # Walk the (view, image) pairs of this size group in chunks of `mb`; a chunk may
            # span several views, so one image with many views still fills each forward.
            total = len(idx) * B
            for pos in range(0, total, mb):
                end = min(pos + mb, total)
                runs, batch, p = [], [], pos
                while p < end:
                    v, b0 = divmod(p, B)
                    b1 = min(B, b0 + (end - p))
                    batch.append(views[idx[v]].apply(x[b0:b1], norm))
                    runs.append((idx[v], b0, b1))
                    p += b1 - b0
                yield (torch.cat(batch) if len(batch) > 1 else batch[0]), runs  # (n, C, h, w)
        del x


class ChunkOutputs:
    """Collects a model's outputs of :func:`view_chunks` chunks back into one output per view."""

    def __init__(self, n_views: int) -> None:
        self.pieces: list[list[tuple[int, Any]]] = [[] for _ in range(n_views)]  # per view: (b0, output slice)

    def add(self, runs: Sequence[tuple[int, int, int]], out: Any) -> None:
        """File ``out`` (batch dimension first) of the chunk described by ``runs``."""
        offset = 0
        for vi, b0, b1 in runs:
            self.pieces[vi].append((b0, tree_slice(out, offset, offset + b1 - b0)))
            offset += b1 - b0

    def outputs(self) -> list[Any]:
        """One output per view, each with the full batch dimension, in view order."""
        return [tree_cat([o for _, o in sorted(p, key=lambda t: t[0])]) for p in self.pieces]


def model_runner(model: Callable[[Tensor], Any], config: RunConfig) -> Callable[[Tensor], Any]:
    """``model`` called as ``config`` says: channels-last inputs, under autocast."""
    def run(x: Tensor) -> Any:
        if config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=x.device.type, dtype=config.amp_dtype, enabled=config.amp_dtype is not None):
            return model(x)
    return run


def run_views(
    model: Callable[[Tensor], Any],
    inputs: Tensor | ViewInputs,
    views: Sequence[View],
    norm: Normalization,
    config: RunConfig,
) -> list[Any]:
    """Run ``model`` on every view of a batch of images.

    Args:
        model: maps ``(N, C, h, w)`` images to a tensor, dict or tuple of tensors with batch
            dimension ``N``.
        inputs: ``(B, C, H, W)`` normalised images, or a :class:`ViewInputs` (decoded photos)
            for views with an input stage.
        views: the views to run.
        norm: the model's input normalisation (used by photometric views).
        config: micro-batch size, memory format and autocast.

    Returns:
        One output per view, in ``views`` order, each with batch dimension ``B``.

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(3))
        >>> outs = run_views(net, torch.zeros(2, 3, 8, 8), [View(), View((HFlip(),))], Normalization(), RunConfig())
        >>> [tuple(o.shape) for o in outs]
        [(2, 3), (2, 3)]
    """
    run, collected = model_runner(model, config), ChunkOutputs(len(views))
    for x, runs in view_chunks(inputs, views, norm, config.micro_batch):
        collected.add(runs, run(x))
    return collected.outputs()
