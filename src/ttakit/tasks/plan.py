"""ttakit.Plan: a policy's views rendered for any runtime, and that runtime's outputs de-augmented and merged; no model.

A :class:`Plan` renders the views of a batch of photos (or preprocessed tensors) in chunks of
one image size, hands each chunk out as a :class:`Batch` (``float32`` NCHW, as a numpy array or
a tensor), takes each chunk's outputs back from whatever ran it (ONNX Runtime, TensorRT, a
Triton server, JAX, a torch module) and, once every chunk is back, undoes each view and merges
them with the task's head. ttakit never holds the model::

    plan = ttakit.Plan("hflip*input(224:1,256:1)", task="segment", data_config=cfg)
    for batch in plan.batches(photos):
        batch.put(my_runtime(batch.array))
    merged = plan.result()

A task's head is part of its :class:`~ttakit.task_spec.TaskSpec`, registered by its own module
(``classify``, ``segment``, ``keypoints``, ``detect``, and ``outputs``: the raw per-view
outputs; see :func:`~ttakit.task_spec.get_task`): ``schedule`` says which
rows and views to run (adaptive classification runs the plain view first), ``finish`` turns
the outputs into the result. The task wrappers (:class:`~ttakit.ClassificationTTA`, ...) are a
plan with a torch module or backend feeding :meth:`Batch.put`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..data import InputRenderer, PhotoLike, to_photo
from ..errors import ArgumentError, ConfigError, ShapeError, check_shape
from ..task_spec import TaskSpec, get_task, list_tasks, register_task
from ..policy import Policy, PolicyLike, create_policy
from ..runtime.loop import (RenderedInputs, ViewInputs, as_view_inputs, finite_rows, tree_cat, tree_slice, tree_take,
                            view_chunks)
from ..transforms import Normalization
from ..validate import check_device, check_int
from ..views import View
from .geometry import Geometry

__all__ = ["AllViews", "Batch", "Fetch", "Images", "OutputsHead", "Plan", "TaskHead", "as_inputs"]

# What a plan (and a wrapper) accepts: preprocessed (B, C, H, W) float images (a tensor or a
# numpy array), inputs already rendered per input stage, or photos (one or a list of paths,
# PIL images, (C, H, W) uint8 tensors).
Images = Union[Tensor, np.ndarray, ViewInputs, PhotoLike, Sequence[PhotoLike]]

# fetch(rows, views) -> one output per view, each for those rows (rows=None: every image).
Fetch = Callable[[Union[Tensor, None], Sequence[View]], list[Any]]


class TaskHead(Protocol):
    """What a task does around the runtime: which views run on which rows, and the result."""

    def schedule(self, views: Sequence[View], n: int, fetch: Fetch) -> Iterator[tuple[Tensor | None, Sequence[View]]]:
        """Yield ``(rows, views)`` to run (``rows=None``: every image); a later step may
        ``fetch`` the outputs of the earlier ones."""
        ...

    def finish(self, views: Sequence[View], n: int, fetch: Fetch, geometry: Geometry) -> Any:
        """The task's result from every view's outputs."""
        ...


class AllViews:
    """A head whose plan runs every view on every image once."""

    def schedule(self, views: Sequence[View], n: int, fetch: Fetch) -> Iterator[tuple[Tensor | None, Sequence[View]]]:
        yield None, views


class OutputsHead(AllViews):
    """Every view on every image; the result is the raw outputs, one per view (batch first)."""

    def finish(self, views: Sequence[View], n: int, fetch: Fetch, geometry: Geometry) -> Any:
        return fetch(None, views)


register_task(TaskSpec("outputs", "the raw per-view outputs", head=lambda policy: OutputsHead()))


def as_inputs(x: Images, views: Sequence[View], data_config: Mapping[str, Any] | None,
              device: torch.device | str | None = None) -> Tensor | ViewInputs:
    """Preprocessed tensors (or float numpy arrays) and rendered inputs as they are; photos
    decoded once and rendered for every input stage of ``views`` (on ``device``).

    Raises:
        ConfigError: photos without a ``data_config`` to turn them into model inputs.
    """
    if isinstance(x, np.ndarray) and x.dtype.kind == "f":
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if isinstance(x, Tensor) and x.is_floating_point() or isinstance(x, ViewInputs):
        if isinstance(x, Tensor):
            check_shape("images", x.shape, "(B, C, H, W)")
            if x.shape[0] == 0:
                raise ArgumentError("images: an empty batch (0 images); give at least one image")
        return x if device is None or not isinstance(x, Tensor) else x.to(device)
    if isinstance(x, (list, tuple)) and not x:
        raise ArgumentError("images: no images given (an empty list); give at least one photo")
    if data_config is None:
        raise ConfigError("rendering photos needs the model's data_config (input size, crop, mean, std); pass data_config=")
    single = isinstance(x, (str, Path, Image.Image)) or isinstance(x, Tensor) and x.ndim == 3
    if not single and not isinstance(x, (Sequence, Tensor, np.ndarray)):
        raise ArgumentError(f"images must be (B, C, H, W) floats, a photo or a list of photos, got {type(x).__name__}")
    photos = [to_photo(p) for p in ([x] if single else list(x))]  # type: ignore[union-attr, arg-type]
    renderer = InputRenderer({v.stage for v in views}, data_config)
    rendered = RenderedInputs(renderer.batch(photos), [(p.height, p.width) for p in photos])
    return rendered if device is None else rendered.to(device)


def _to_torch(out: Any) -> Any:
    """A runtime's output with numpy arrays as tensors (dicts, tuples, lists kept)."""
    if isinstance(out, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(out))
    if isinstance(out, Mapping):
        return {k: _to_torch(v) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return type(out)(_to_torch(v) for v in out)
    return out


def _leading(out: Any) -> int | None:
    """The batch dimension of an output tree (``None`` when it has no tensor to tell)."""
    if isinstance(out, Tensor):
        return out.shape[0] if out.ndim else None
    if isinstance(out, list) and out and isinstance(out[0], Mapping):
        return len(out)  # per-image records
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return next((n for n in map(_leading, out) if n is not None), None)
    return None


@dataclass
class Batch:
    """One chunk of views to run: ``n`` images of one size, each a (view, image) pair.

    Attributes:
        tensor: ``(n, C, h, w)`` float32 normalised images (on the plan's device).
        views: index into ``plan.views`` of each row (-1: the plain view, which adaptive
            classification runs first even when the policy has none).
        rows: image index (into the batch given to :meth:`Plan.batches`) of each row.
    """

    tensor: Tensor
    views: tuple[int, ...]
    rows: tuple[int, ...]
    _sink: Callable[[Any], None] = field(repr=False)
    done: bool = False

    @property
    def array(self) -> np.ndarray:
        """The images as a C-contiguous ``float32`` NCHW numpy array (copied off the GPU)."""
        return np.ascontiguousarray(self.tensor.detach().float().cpu().numpy())

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def put(self, out: Any) -> None:
        """Hand back the runtime's output for this batch: a tensor or numpy array with batch
        dimension ``n``, a dict or tuple of them, or a list of ``n`` per-image dicts (detection).
        A one-element list of arrays (``session.run(None, feed)``) counts as its element. What
        a task reads from it is the task's: ``outputs`` keeps any of these, ``segment`` reads
        a tensor or dict, ``keypoints`` a tensor, ``(points, scores)`` or dict, while
        ``classify`` needs the ``(n, classes)`` logits alone (a tuple is refused by
        :meth:`Plan.result`, naming it).

        Raises:
            ShapeError: the output's batch dimension is not ``n``.
            ConfigError: this batch was already put.
        """
        if self.done:
            raise ConfigError("this batch's output was already put")
        if isinstance(out, (list, tuple)) and len(out) == 1 and isinstance(out[0], (np.ndarray, Tensor)):
            out = out[0]
        out = _to_torch(out)
        n = _leading(out)
        if n is not None and n != len(self):
            raise ShapeError("runtime output", f"batch dimension {len(self)} (the batch's images)", (n,))
        if n is not None:
            bad = (~finite_rows([out], n)).nonzero().flatten().tolist()
            if bad:  # the merge of such an image is not meaningful: say so (warnings shows it once)
                warnings.warn(f"the runtime's output holds NaN or inf for {len(bad)} of {n} images (batch rows "
                              f"{bad[:5]}); their merged results are not meaningful", RuntimeWarning, stacklevel=2)
        self._sink(out)
        self.done = True


class _Run:
    """One pass of a plan over one batch of images: what came back, per view."""

    def __init__(self, inputs: Tensor | ViewInputs, geometry: Geometry) -> None:
        self.inputs, self.geometry = inputs, geometry
        self.n = as_view_inputs(inputs).batch_size
        self.got: dict[View, list[tuple[Tensor, Any]]] = {}  # view -> [(image rows, output)]
        self.finished = False

    def file(self, views: Sequence[View], row_ids: Tensor, runs: Sequence[tuple[int, int, int]], out: Any) -> None:
        offset = 0
        for vi, b0, b1 in runs:
            piece = tree_slice(out, offset, offset + b1 - b0) if len(runs) > 1 else out
            self.got.setdefault(views[vi], []).append((row_ids[b0:b1], piece))
            offset += b1 - b0

    def fetch(self, rows: Tensor | None, views: Sequence[View]) -> list[Any]:
        want = torch.arange(self.n) if rows is None else rows.detach().cpu().long()
        outs = []
        for view in views:
            pieces = self.got.get(view)
            if not pieces:
                raise ConfigError(f"view {view.name!r} has no outputs: put every batch before asking for the result")
            ids = torch.cat([r for r, _ in pieces])
            out = tree_cat([o for _, o in pieces])
            where = torch.full((self.n,), -1, dtype=torch.long)
            where[ids] = torch.arange(len(ids))
            pos = where[want]
            if (pos < 0).any():
                raise ConfigError(f"view {view.name!r} has no output for images {want[pos < 0].tolist()}")
            outs.append(out if torch.equal(pos, torch.arange(len(ids))) else tree_take(out, pos))
        return outs


class Plan:
    """A policy's views for one task, for any runtime: render, hand out, take back, merge.

    Args:
        policy: preset name, policy text, JSON path or :class:`~ttakit.policy.Policy`.
        task: ``classify``, ``segment``, ``keypoints``, ``detect``, ``outputs`` (the raw
            per-view outputs) or a :class:`TaskHead`.
        data_config: the model's timm data config (input size, interpolation, crop, mean,
            std): turns photos into model inputs and maps input stages back.
        norm: the model's input normalisation (photometric views need it); from
            ``data_config`` when not given.
        micro_batch: at most this many images per :class:`Batch`.
        device: where the views are rendered (``batch.tensor``'s device); CPU by default.
        **options: the task's options (classify: ``merge``, ``adaptive``, ``confidence``;
            segment: ``merge``, ``activation``, ``uncertainty``, ``dense_keys``,
            ``output_size``; keypoints: ``flip_pairs``; detect: ``merge``,
            ``merge_options``, ``max_detections``, ``keep_views``).

    Example:
        >>> net = timm.create_model("test_resnet", num_classes=10).eval()
        >>> runtime = lambda a: net(torch.from_numpy(a)).detach().numpy()     # numpy in, numpy out
        >>> plan = Plan("hflip", task="classify", micro_batch=8)
        >>> images = torch.randn(3, 3, 32, 32)
        >>> for batch in plan.batches(images):
        ...     batch.put(runtime(batch.array))
        >>> plan.result().probs.shape
        torch.Size([3, 10])
        >>> torch.allclose(plan.result().probs, ClassificationTTA(net, "hflip")(images), atol=1e-5)
        True
    """

    def __init__(
        self,
        policy: PolicyLike,
        task: str | TaskHead = "classify",
        *,
        data_config: Mapping[str, Any] | None = None,
        norm: Normalization | None = None,
        micro_batch: int = 32,
        device: torch.device | str | None = None,
        **options: Any,
    ) -> None:
        check_int("micro_batch", micro_batch)
        if data_config is not None and not isinstance(data_config, Mapping):
            raise ArgumentError(f"data_config must be a dict (timm's data config), got {type(data_config).__name__}")
        if device is not None:
            check_device("device", device)
        self.data_config = None if data_config is None else dict(data_config)
        self.policy: Policy = create_policy(policy, self.data_config)
        if norm is None and self.data_config is not None:
            norm = Normalization(tuple(self.data_config["mean"]), tuple(self.data_config["std"]))
        self.norm = norm or Normalization()
        self.micro_batch = micro_batch
        self.device = device
        if isinstance(task, str):
            try:
                self.head: TaskHead = get_task(task).part("head")(self.policy, **options)
            except TypeError as e:  # an option this task does not take
                raise ArgumentError(f"task {task!r} does not take options {sorted(options)}: {e}") from e
        elif not (callable(getattr(task, "schedule", None)) and callable(getattr(task, "finish", None))):
            raise ArgumentError(f"task must be a registered task name ({', '.join(list_tasks())}) or a head with "
                                f"schedule() and finish(), got {task!r}")
        elif options:
            raise ConfigError(f"options {sorted(options)} go to a task given by name; this head is already built")
        else:
            self.head = task
        self._run: _Run | None = None

    @property
    def views(self) -> tuple[View, ...]:
        return self.policy.views

    def batches(self, images: Images) -> Iterator[Batch]:
        """Render the views of ``images`` and yield them in :class:`Batch` chunks; put each
        batch's output back before taking the next one.

        Raises:
            ConfigError: a batch was not put before the next was asked for.
        """
        inputs = as_inputs(images, self.views, self.data_config, self.device)
        run = self._run = _Run(inputs, Geometry.of(inputs, self.data_config))
        for rows, views in self.head.schedule(self.views, run.n, run.fetch):
            views = list(dict.fromkeys(views))  # a view repeated in the policy runs once
            src = inputs if rows is None else as_view_inputs(inputs).take(rows)
            row_ids = torch.arange(run.n) if rows is None else rows.detach().cpu().long()
            vidx = [self.views.index(v) if v in self.views else -1 for v in views]
            for x, runs in view_chunks(src, views, self.norm, self.micro_batch):
                batch = Batch(x, tuple(vidx[vi] for vi, b0, b1 in runs for _ in range(b0, b1)),
                              tuple(int(r) for _, b0, b1 in runs for r in row_ids[b0:b1]),
                              lambda out, views=views, row_ids=row_ids, runs=runs: run.file(views, row_ids, runs, out))
                yield batch
                if not batch.done:
                    raise ConfigError("a batch's output was not put: call batch.put(output) before the next batch")
        run.finished = True

    def _last(self) -> _Run:
        if self._run is None or not self._run.finished:
            raise ConfigError("no finished run: iterate plan.batches(images) to the end, putting every batch")
        return self._run

    def outputs(self) -> list[Any]:
        """The raw output of every view of the last run (batch first), in ``self.views`` order."""
        return self._last().fetch(None, self.views)

    def result(self) -> Any:
        """The task's result for the last run (classify:
        :class:`~ttakit.tasks.classify.ClassificationResult`; segment:
        :class:`~ttakit.tasks.deaugment.DenseResult`; keypoints: ``(points, scores)``;
        detect: :class:`~ttakit.tasks.detect.DetectionResult`; outputs: one per view)."""
        run = self._last()
        return self.head.finish(self.views, run.n, run.fetch, run.geometry)

    def run(self, runtime: Callable[[Any], Any], images: Images, *, numpy: bool = False) -> Any:
        """Feed every batch to ``runtime`` (tensors, or numpy arrays with ``numpy=True``) and
        return :meth:`result`."""
        if not callable(runtime):
            raise ArgumentError(f"runtime must be a callable (batch -> outputs), got {type(runtime).__name__}")
        for batch in self.batches(images):
            batch.put(runtime(batch.array if numpy else batch.tensor))
        return self.result()
