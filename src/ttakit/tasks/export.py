"""A task's export head looked up by name, and ``export_tta``: a policy graph for the task named.

A task's :class:`~ttakit.runtime.export.GraphHead` is part of its
:class:`~ttakit.task_spec.TaskSpec`, next to its :class:`~ttakit.tasks.plan.Plan` head
(``classify`` in :mod:`ttakit.tasks.classify`, ``segment`` in :mod:`ttakit.tasks.segment`).
The task is looked up once, here (or by ``ttakit export``), and the head handed to
:func:`~ttakit.runtime.export.export_graph`, which knows no task.

Example:
    >>> head = graph_head("classify", "hflip*rot90(0,1)", merge="gmean")
    >>> head.task, head.merge_name, head.output_names
    ('classify', 'gmean', ('probs',))
    >>> graph_tasks()
    ['classify', 'segment']
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ConfigError
from ..policy import PolicyLike, create_policy
from ..runtime.export import GraphHead, export_graph
from ..runtime.onnx_cache import DEFAULT_OPSET
from ..task_spec import get_task, list_tasks
from ..transforms import Normalization

__all__ = ["export_tta", "graph_head", "graph_tasks"]


def graph_tasks() -> list[str]:
    """The tasks that export to one graph (those whose spec has a graph head)."""
    return [n for n in list_tasks() if get_task(n).graph_head is not None]


def graph_head(task: str, policy: PolicyLike, merge: str | None = None) -> GraphHead:
    """The export head of ``task`` for ``policy`` (``merge``: the task's merge, default the policy's).

    Raises:
        UnknownNameError: an unknown task, listing the known ones.
        PolicyError: a merge or view the task's graph cannot hold (say, ``vote``; a resampling
            view in a segmentation graph).
    """
    spec = get_task(task)
    if spec.graph_head is None:
        raise ConfigError(f"task {task!r} does not export to a graph; `task` is one of {', '.join(graph_tasks())}")
    return spec.part("graph_head")(create_policy(policy), merge)


def export_tta(
    model: nn.Module,
    policy: PolicyLike,
    path: str | Path,
    *,
    merge: str | None = None,
    input_size: tuple[int, int] | None = None,
    norm: Normalization | None = None,
    task: str = "classify",
    input: str = "tensor",  # noqa: A002 - the CLI's --input
    opset: int = DEFAULT_OPSET,
    data_config: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    check: bool = True,
) -> Path:
    """Write ``model`` with a TTA ``policy`` as one ONNX graph: input ``images`` ``(N, 3, H, W)``
    (preprocessed as for the model) or ``photos`` ``(N, H, W, 3)`` uint8, output ``probs`` (and
    ``sets``, the ``(N, classes)`` bool conformal sets, for a policy calibrated by ``ttakit calibrate``).

    Args:
        model: the network (on the CPU; its train/eval modes are left as they were).
        policy: preset, policy text, JSON path or :class:`~ttakit.policy.Policy` (its weights
            and temperature are used).
        path: the ``.onnx`` file to write.
        merge: classification merge (default: the policy's, else ``mean``); ``vote`` is refused.
        input_size: ``(H, W)`` of the plain input (default: ``data_config``'s).
        norm: the model's normalisation (brightness/contrast views; default: ``data_config``'s).
        task: a name in :func:`graph_tasks`: ``classify`` (merged class probabilities) or
            ``segment`` (flips and quarter turns undone, mean softmax maps).
        input: ``tensor`` (preprocessed images; input stages refused) or ``photo`` (decoded
            uint8 RGB photos of any size; every input stage and the model's own preprocessing
            run inside the graph, as :mod:`ttakit.data` renders them with PIL).
        opset: ONNX opset (16 at least for ``rotate`` views).
        data_config: timm data config (default: resolved from the model); stored in the
            graph's metadata with the policy, so a server can preprocess without ttakit.
        metadata: more ``key: value`` pairs for the graph's metadata (e.g. class names).
        check: run the written graph in onnxruntime (an error when it is not installed) and compare its tensor
            part with the same computation in torch on random images, and its photo front
            end with ttakit's PIL rendering of two random photos (to one grey level).

    Returns:
        ``path``.

    Raises:
        PolicyError: a view with an input stage in a tensor graph, a correction, a transform
            or merge with no ONNX form.
        UnknownNameError: an unknown task (:func:`graph_tasks`).
        ConfigError: an unknown input, or a photo graph for a model whose
            preprocessing has no photo form (not a centre crop, not bicubic/bilinear).
        ShapeError: the model's output does not fit ``task``.
        BackendError: the onnx package is missing (or onnxruntime, with ``check``), or the export
            or its check failed.

    Example:
        >>> net = timm.create_model("test_resnet", num_classes=10).eval()
        >>> export_tta(net, "d4", "d4.onnx", merge="gmean", input_size=(64, 64))  # doctest: +SKIP
        PosixPath('d4.onnx')
    """
    pol = create_policy(policy)
    return export_graph(model, pol, path, graph_head(task, pol, merge), input_size=input_size, norm=norm,
                        input=input, opset=opset, data_config=data_config, metadata=metadata, check=check)
