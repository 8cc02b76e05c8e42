"""A whole TTA policy as one ONNX graph: the views, the model on every view, and a task's head on their outputs.

The graph takes either a batch of preprocessed images ``images`` ``(N, 3, H, W)`` (``input=
"tensor"``: dynamic ``N``, fixed ``H, W``) or the decoded photos themselves, ``photos``
``(N, H, W, 3)`` uint8 RGB (``input="photo"``: dynamic ``N``, ``H``, ``W``; every input stage the
policy needs, the plain one included, is rendered inside the graph as PIL renders it, see
:mod:`ttakit.runtime.photo_graph`). What it returns is the task's: a :class:`GraphHead` built
by the task's own module (classification: merged probabilities ``(N, C)``; segmentation: the
views undone and merged, ``(N, K, h, w)``) and handed to :func:`export_graph` by a layer that
knows tasks (:func:`ttakit.tasks.export.export_tta`, ``ttakit export``); this module knows
no task. Serving the graph needs only an ONNX runtime: no torch, no ttakit.

Inside the graph every view's tensor stage is its :meth:`View.graph_steps
<ttakit.views.View.graph_steps>` at the fixed input size (each transform's own graph form,
:mod:`ttakit.graph`), so nothing depends on shapes at run time:

* flips and quarter turns are slices and transposes; crops, shifts and the crop/pad of a zoom
  are one padded window;
* resizes (``resize``, ``scale``) are two matrix products with the exact interpolation weights
  PyTorch uses (bilinear/bicubic, antialiased when shrinking), computed once at export;
* rotations are a constant sampling grid and ``GridSample``; brightness and contrast are the
  same arithmetic as the eager views.

Views of equal size are concatenated along the batch, so the model runs once per size (``d4`` on
a square input: one call on ``8N`` images). Views with an input stage (``input=256:1.0``)
re-sample the source photo: they need ``input="photo"`` (the tensor graph refuses them); photo
corrections are refused in both.

Example:
    >>> lm = ttakit.load_model()
    >>> export_tta(lm.model, "hflip", "hflip.onnx", data_config=lm.data_config)  # doctest: +SKIP
    PosixPath('hflip.onnx')
    >>> export_tta(lm.model, "none+input=256:1|hflip", "p.onnx", input="photo")  # doctest: +SKIP
    PosixPath('p.onnx')
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import BackendError, ConfigError, PolicyError, ShapeError
from ..policy import Policy, PolicyLike, create_policy
from ..stages import Input
from ..transforms import Normalization
from ..views import View
from .onnx_cache import DEFAULT_OPSET, checking_runtime, eval_mode, onnx_export, quiet_export
from .photo_graph import check_photo_stages, photo_interpolation, photo_preprocessing, photo_stages_graph

__all__ = ["INPUTS", "GraphHead", "GraphInputs", "GraphViews", "export_graph", "view_steps"]

Size = tuple[int, int]
INPUTS = ("tensor", "photo")  # what the graph takes: preprocessed images, or decoded uint8 photos


# --------------------------------------------------------------------------- static view steps
def view_steps(view: View, size: Size, norm: Normalization) -> nn.Sequential:
    """``view``'s tensor stage on ``size`` images as an exportable module.

    Raises:
        PolicyError: the view has an input stage, or a transform with no ONNX form.

    Example:
        >>> view_steps(ttakit.policy.parse_view("hflip|crop=center:0.875"), (224, 224), Normalization())
        Sequential(
          (0): Flip()
          (1): Window()
        )
    """
    if view.stage is not None:
        raise PolicyError(
            f"view {view.name!r} has the input stage {view.stage.name!r}, which works on the source photo; the "
            "exported graph takes preprocessed images (N, 3, H, W): leave input stages and corrections out of "
            "exported policies")
    return view.graph_steps(size, norm)


# --------------------------------------------------------------------------- the graphs
class GraphInputs:
    """The rendered inputs a graph takes and which one each view starts from.

    Attributes:
        names: graph input name -> the input stage rendered there (``None``: the model's own
            preprocessing, or the only input of a tensor graph).
        sizes: graph input name -> ``(H, W)`` of its images.
        of_view: each view's graph input name, in view order.
        photo: the stages are rendered from photos inside the graph (views keep only their
            tensor transforms); else the one input is preprocessed images and input stages
            are refused.
    """

    def __init__(self, views: Sequence[View], size: Size, photo: bool) -> None:
        self.photo = photo
        if not photo:
            self.names: dict[str, Input | None] = {"images": None}
            self.of_view = ["images"] * len(views)
        else:
            corrected = [v.name for v in views if v.corrections]
            if corrected:
                raise PolicyError(f"photo corrections have no ONNX form (views {', '.join(corrected)}); "
                                  "export policies of input stages and tensor views")
            sources = list(dict.fromkeys(v.source for v in views))
            self.names = {f"stage_{i}": s for i, s in enumerate(sources)}
            self.of_view = [f"stage_{sources.index(v.source)}" for v in views]
        self.sizes = {k: size if s is None else (s.size, s.size) for k, s in self.names.items()}

    def steps(self, view: View, name: str, norm: Normalization) -> nn.Sequential:
        """``view``'s tensor steps on its input ``name`` (a tensor graph refuses input stages here)."""
        return view_steps(View(view.transforms) if self.photo else view, self.sizes[name], norm)


class GraphViews(nn.Module):
    """Every view of a batch, each rendered by its own :meth:`View.graph_steps
    <ttakit.views.View.graph_steps>` from its graph input, and the model run once per view
    size (views of one size concatenated along the batch, as :func:`~ttakit.runtime.loop.view_chunks`
    groups them)."""

    def __init__(self, model: nn.Module, views: Sequence[View], stages: GraphInputs, norm: Normalization) -> None:
        super().__init__()
        self.model = model
        self.steps = nn.ModuleList([stages.steps(v, k, norm) for v, k in zip(views, stages.of_view)])
        names = list(stages.names)
        self.inputs = [names.index(k) for k in stages.of_view]  # each view's position in forward's inputs
        groups: dict[Size, list[int]] = {}
        for i, (v, k) in enumerate(zip(views, stages.of_view)):
            groups.setdefault(v.output_size(stages.sizes[k]), []).append(i)
        self.groups = list(groups.values())  # view indices sharing one model call

    def forward(self, *xs: Tensor) -> list[Tensor]:
        """Each view's model output, in view order, from the graph's inputs ``xs``."""
        outs: list[Tensor | None] = [None] * len(self.steps)
        for idx in self.groups:
            parts = [self.steps[i](xs[self.inputs[i]]) for i in idx]
            y = self.model(torch.cat(parts) if len(parts) > 1 else parts[0])
            if not isinstance(y, Tensor):
                raise ShapeError("model output", "a tensor", ())
            y = y.reshape(len(idx), -1, *y.shape[1:])  # (G, N, ...): view-major, as concatenated
            for g, i in enumerate(idx):
                outs[i] = y[g]
        return outs  # type: ignore[return-value]


# --------------------------------------------------------------------------- a task's head
class GraphHead(nn.Module):
    """A task's part of a policy graph: each view's model output, in view order -> what the
    graph returns. The task's own module gives one (classification merges the views' logits;
    segmentation undoes each view by its graph inverse, then merges the maps), built for a
    policy by a layer that knows tasks (:func:`ttakit.tasks.export.graph_head`) and handed to
    :func:`export_graph`; this module never looks a task up.

    Attributes:
        task: the task's name, recorded in the graph's metadata (``ttakit.task``).
        output_rank: dimensions of the model output the head takes (checked before exporting).
        output: that model output, in words (for the shape error).
        returns: what the graph returns, in words (``{classes}``: the number of classes).
        summary: what the task's graph does, in a few words (``ttakit export --help``).
        class_names: the graph's metadata should name the model's classes.
        merge_name: the merge recorded in the graph's metadata (``ttakit.merge``).
        output_names: the graph's outputs (``probs`` first: the one the export check compares).
    """

    task: ClassVar[str]
    output_rank: ClassVar[int]
    output: ClassVar[str]
    returns: ClassVar[str]
    summary: ClassVar[str] = ""
    class_names: ClassVar[bool] = False

    def __init__(self, merge_name: str, output_names: Sequence[str] = ("probs",)) -> None:
        super().__init__()
        self.merge_name = merge_name
        self.output_names = tuple(output_names)

    def metadata(self) -> dict[str, Any]:
        """More ``ttakit.*`` entries for the graph's metadata (JSON-able values)."""
        return {}

    def forward(self, outs: list[Tensor]) -> Tensor | tuple[Tensor, ...]:
        raise NotImplementedError(f"{type(self).__name__} gives no forward: a task's head maps the views' outputs")


def normalised_weights(policy: Policy) -> Tensor:
    """``(V,)`` the policy's view weights summing to 1 (equal without weights)."""
    w = torch.ones(len(policy.views)) if policy.weights is None else torch.tensor(policy.weights, dtype=torch.float32)
    return w / w.sum()


class _PolicyGraph(nn.Module):
    """The graph's inputs -> every view's model output -> the task's head."""

    def __init__(self, views: GraphViews, head: GraphHead) -> None:
        super().__init__()
        self.views, self.head = views, head

    def forward(self, *xs: Tensor) -> Tensor | tuple[Tensor, ...]:
        return self.head(self.views(*xs))


# --------------------------------------------------------------------------- export
def _probe(model: nn.Module, size: Size, head: GraphHead) -> None:
    with torch.inference_mode(), eval_mode(model):
        y = model(torch.zeros(2, 3, *size))
    if not isinstance(y, Tensor) or y.ndim != head.output_rank:
        got = tuple(y.shape) if isinstance(y, Tensor) else ()
        raise ShapeError(f"model output for `task={head.task!r}`", head.output, got)


def export_graph(
    model: nn.Module,
    policy: PolicyLike,
    path: str | Path,
    head: GraphHead,
    *,
    input_size: Size | None = None,
    norm: Normalization | None = None,
    input: str = "tensor",  # noqa: A002 - the CLI's --input
    opset: int = DEFAULT_OPSET,
    data_config: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    check: bool = True,
) -> Path:
    """Write ``model`` with a TTA ``policy`` and a task's ``head`` as one ONNX graph: input
    ``images`` ``(N, 3, H, W)`` (preprocessed as for the model) or ``photos`` ``(N, H, W, 3)``
    uint8, outputs ``head.output_names``. :func:`ttakit.export_tta` is this function with the
    head of a task named.

    Args:
        model: the network (on the CPU; its train/eval modes are left as they were).
        policy: preset, policy text, JSON path or :class:`~ttakit.policy.Policy`.
        path: the ``.onnx`` file to write.
        head: the task's head, built for ``policy`` (:func:`ttakit.tasks.export.graph_head`).
        input_size, norm, input, opset, data_config, metadata, check: as for
            :func:`ttakit.export_tta`.

    Returns:
        ``path``.

    Example:
        >>> net = timm.create_model("test_resnet", num_classes=10).eval()
        >>> head = ttakit.tasks.export.graph_head("classify", "d4", merge="gmean")
        >>> export_graph(net, "d4", "d4.onnx", head, input_size=(64, 64))  # doctest: +SKIP
        PosixPath('d4.onnx')
    """
    if input not in INPUTS:
        raise ConfigError(f"input must be one of {', '.join(INPUTS)}, got {input!r}")
    try:
        import onnx  # noqa: PLC0415 - an optional extra
    except ImportError as e:
        raise BackendError("exporting a TTA graph needs the onnx package: pip install 'ttakit[onnx]'") from e
    if check:
        checking_runtime()  # missing: refused before anything is written
    import timm  # noqa: PLC0415 - only to resolve a data config

    pol = create_policy(policy)
    cfg = dict(data_config or timm.data.resolve_data_config({}, model=model))
    size = tuple(input_size or cfg["input_size"][-2:])  # type: ignore[assignment]
    size = (int(size[0]), int(size[1]))
    norm = norm or Normalization(tuple(cfg["mean"]), tuple(cfg["std"]))
    need = max((v.graph_opset for v in pol.views), default=1)
    if opset < need:
        raise PolicyError(f"the views of this policy need ONNX opset {need} or later (got `opset={opset}`)")
    photo = input == "photo"
    if photo:
        cfg["input_size"] = (3, *size)
        photo_interpolation(cfg)  # refuse a preprocessing with no photo form before writing anything
    stages = GraphInputs(pol.views, size, photo)
    graph = _PolicyGraph(GraphViews(model, pol.views, stages, norm), head)
    _probe(model, size, head)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    examples = tuple(torch.randn(2, 3, *stages.sizes[k], generator=g) for k in stages.names)
    onnx_export(graph, examples, out, opset=opset, input_name=list(stages.names), output_names=head.output_names,
                dynamic_spatial=False)
    if check:
        _check_graph(graph, out, stages)
    proto = onnx.load(str(out))
    props = {
        "ttakit.task": head.task,
        "ttakit.input": input,
        "ttakit.policy": json.dumps(pol.view_names),
        "ttakit.merge": head.merge_name,
        "ttakit.weights": json.dumps(list(pol.weights) if pol.weights else None),
        "ttakit.temperature": json.dumps(pol.temperature),
        **{k: v if isinstance(v, str) else json.dumps(v) for k, v in head.metadata().items()},
        "ttakit.input_size": json.dumps(list(size)),
        "ttakit.data_config": json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}),
        **{k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()},
    }
    if photo:
        front = photo_stages_graph(stages.names, cfg, opset=max(opset, 17))
        if check:
            check_photo_stages(front, stages.names, cfg)
        proto = _prepend(onnx, front, proto, list(stages.names))
        props["ttakit.preprocessing"] = json.dumps(photo_preprocessing(stages.names, cfg))
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, str(out))
    return out


def _prepend(onnx: Any, front: Any, back: Any, names: list[str]) -> Any:
    """``back`` fed by ``front``: the photo front end's outputs become the tensor graph's inputs."""
    front.ir_version = back.ir_version
    del front.opset_import[:]
    front.opset_import.extend(back.opset_import)
    return onnx.compose.merge_models(front, back, io_map=[(n, n) for n in names])


def _check_graph(graph: nn.Module, path: Path, stages: GraphInputs, tolerance: float = 1e-4) -> None:
    """The written graph in onnxruntime against the same module in torch (the tests compare
    both runtimes with the task wrappers).

    Raises:
        BackendError: onnxruntime is missing, or the graph differs from torch.
    """
    ort = checking_runtime()
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(3, 3, *stages.sizes[k], generator=g) for k in stages.names]  # a batch unlike the example's
    with torch.inference_mode(), quiet_export(), eval_mode(graph):
        ref = graph(*xs)
        ref = (ref[0] if isinstance(ref, tuple) else ref).numpy()  # the probabilities
    so = ort.SessionOptions()
    so.log_severity_level = 3
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    got = session.run(None, {k: x.numpy() for k, x in zip(stages.names, xs)})[0]
    err = float(np.abs(got - ref).max()) if got.shape == ref.shape else float("inf")
    if not err <= tolerance:
        raise BackendError(f"the exported graph {path.name} differs from torch by {err:.3g} (more than {tolerance:g})")
