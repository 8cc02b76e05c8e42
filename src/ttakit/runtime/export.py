"""A whole TTA policy as one ONNX graph: the views, the model on every view, and the merge.

The graph takes either a batch of preprocessed images ``images`` ``(N, 3, H, W)`` (``input=
"tensor"``: dynamic ``N``, fixed ``H, W``) or the decoded photos themselves, ``photos``
``(N, H, W, 3)`` uint8 RGB (``input="photo"``: dynamic ``N``, ``H``, ``W``; every input stage the
policy needs, the plain one included, is rendered inside the graph as PIL renders it, see
:mod:`ttakit.runtime.photo_graph`). It returns merged probabilities: ``(N, C)`` for
classification, ``(N, K, h, w)`` for segmentation. Serving it needs only an ONNX runtime: no
torch, no ttakit.

Inside the graph every view's tensor stage is rebuilt from its parameters at the fixed input
size, so nothing depends on shapes at run time:

* flips and quarter turns are slices and transposes; crops, shifts and the crop/pad of a zoom
  are one padded window;
* resizes (``resize``, ``scale``) are two matrix products with the exact interpolation weights
  PyTorch uses (bilinear/bicubic, antialiased when shrinking), computed once at export;
* rotations are a constant sampling grid and ``GridSample``; brightness and contrast are the
  same arithmetic as the eager views.

Views of equal size are concatenated along the batch, so the model runs once per size (``d4`` on
a square input: one call on ``8N`` images). View weights and the temperature are constants; the
merge is the same function as :mod:`ttakit.merge` (``vote`` is refused: its scatter does not
export). Segmentation graphs take flips and quarter turns only (undone exactly) and average
the softmax probabilities. Views with an input stage (``input=256:1.0``) re-sample the source
photo: they need ``input="photo"`` (the tensor graph refuses them); photo corrections are
refused in both.

Example:
    >>> lm = ttakit.load_model()
    >>> export_tta(lm.model, "hflip", "hflip.onnx", data_config=lm.data_config)  # doctest: +SKIP
    PosixPath('hflip.onnx')
    >>> export_tta(lm.model, "none+input=256:1|hflip", "p.onnx", input="photo")  # doctest: +SKIP
    PosixPath('p.onnx')
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..conformal import Calibration, conformity_scores, get_score
from ..errors import BackendError, ConfigError, PolicyError, ShapeError
from ..merge import get_merge
from ..policy import Policy, PolicyLike, create_policy
from ..registry import Registry
from ..stages import Input
from ..transforms import Normalization
from ..views import View
from .onnx_cache import DEFAULT_OPSET, checking_runtime, eval_mode, onnx_export, quiet_export
from .photo_graph import check_photo_stages, photo_interpolation, photo_preprocessing, photo_stages_graph

__all__ = ["GRAPH_HEADS", "INPUTS", "TASKS", "ClassifyGraph", "GraphHead", "SegmentGraph", "export_tta", "view_steps"]

Size = tuple[int, int]
INPUTS = ("tensor", "photo")  # what the graph takes: preprocessed images, or decoded uint8 photos
_REFUSED_MERGES = {"vote": "its scatter of votes does not export; use mean, gmean or another merge"}


def _logsumexp(x: Tensor, dim: int) -> Tensor:
    # Written out: OpenVINO reads ONNX ReduceLogSumExp as a reduction over every axis.
    m = x.amax(dim, keepdim=True)
    return (m + (x - m).exp().sum(dim, keepdim=True).log()).squeeze(dim)


def _tsharpen(logits: Tensor, weights: Tensor) -> Tensor:
    """:mod:`ttakit.merge`'s ``tsharpen`` with an explicit log-sum-exp (same values)."""
    half = 0.5 * torch.log_softmax(logits, dim=-1) + torch.log(weights.view(1, -1, 1))
    return torch.softmax(_logsumexp(half, dim=1), dim=-1)


_GRAPH_MERGES = {"tsharpen": _tsharpen}  # exportable stand-ins for merges whose ops do not travel


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
    steps: list[nn.Module] = []
    for t, s in zip(view.transforms, view.sizes(size)):
        steps += t.graph_steps(s, norm)
    return nn.Sequential(*steps)


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


class _Views(nn.Module):
    """Every view of a batch, run through the model once per view size."""

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

    def outputs(self, xs: Sequence[Tensor]) -> list[Tensor]:
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


def _normalised_weights(policy: Policy) -> Tensor:
    w = torch.ones(len(policy.views)) if policy.weights is None else torch.tensor(policy.weights, dtype=torch.float32)
    return w / w.sum()


class ClassifyGraph(nn.Module):
    """The graph's inputs (``(N, C, H, W)`` images, or one rendered batch per input stage) ->
    ``(N, classes)`` merged probabilities, as :class:`~ttakit.tasks.classify.ClassificationTTA`
    computes them (no adaptive TTA); with a ``conformal`` calibration also the ``(N, classes)``
    bool set of each input (its threshold a constant of the graph)."""

    def __init__(self, model: nn.Module, policy: Policy, merge: str, stages: GraphInputs, norm: Normalization,
                 conformal: Calibration | None = None) -> None:
        super().__init__()
        if conformal is not None and get_score(conformal.score).randomized:
            raise PolicyError(f"a randomised conformal score ({conformal.score}) cannot be exported: "
                              "calibrate with thr, aps or raps")
        self.conformal = conformal
        if merge in _REFUSED_MERGES:
            raise PolicyError(f"merge {merge!r} cannot be exported: {_REFUSED_MERGES[merge]}")
        self.views = _Views(model, policy.views, stages, norm)
        self.merge = _GRAPH_MERGES.get(merge) or get_merge(merge)
        self.register_buffer("weights", _normalised_weights(policy))
        self.temperature = float(policy.temperature)

    def forward(self, *xs: Tensor) -> Tensor:
        logits = torch.stack([o.float() for o in self.views.outputs(xs)], dim=1)  # (N, V, C)
        if self.temperature != 1.0:
            logits = logits / self.temperature
        probs = self.merge(logits, self.weights)
        if self.conformal is None:
            return probs
        return probs, conformity_scores(probs, self.conformal.score) <= self.conformal.threshold


class SegmentGraph(nn.Module):
    """``(N, C, H, W)`` images -> ``(N, K, h, w)`` weighted mean of the views' softmax maps,
    each view's flips and quarter turns undone exactly."""

    def __init__(self, model: nn.Module, policy: Policy, stages: GraphInputs, norm: Normalization) -> None:
        super().__init__()
        undo = []
        for v in policy.views:
            try:
                if v.stage is not None:
                    raise PolicyError(f"its stage {v.stage.name} re-samples the photo")
                undo.append(nn.Sequential(*[s for t in reversed(v.transforms) for s in t.graph_inverse_steps()]))
            except PolicyError as e:
                raise PolicyError(f"segmentation export takes flips and quarter turns only (undone exactly in the "
                                  f"graph); view {v.name!r}: {e}") from e
        self.views = _Views(model, policy.views, stages, norm)
        self.undo = nn.ModuleList(undo)
        self.weights = [float(v) for v in _normalised_weights(policy)]

    def forward(self, *xs: Tensor) -> Tensor:
        total = None
        for y, undo, w in zip(self.views.outputs(xs), self.undo, self.weights):
            p = undo(torch.softmax(y.float(), dim=1)) * w
            total = p if total is None else total + p
        return total  # type: ignore[return-value]


# --------------------------------------------------------------------------- task heads
@dataclass(frozen=True)
class GraphHead:
    """What a task's graph does after the views: its module, the model output it expects, and
    what the graph's metadata and a reader are told.

    Attributes:
        build: ``(model, policy, merge, stages, norm, conformal) -> nn.Module`` over every view.
        output_rank: dimensions of the model's output (checked before exporting).
        output: the model output expected, in words (for the shape error).
        returns: what the graph returns, in words (``{classes}``: the number of classes).
        merge: the merge recorded in the graph's metadata, from the one asked for.
        calibrated: a policy's conformal calibration becomes the graph's ``sets`` output.
        class_names: the graph's metadata names the model's classes.
    """

    build: Callable[..., nn.Module]
    output_rank: int
    output: str
    returns: str
    merge: Callable[[str], str]
    calibrated: bool = False
    class_names: bool = False


GRAPH_HEADS = Registry[GraphHead]("export task", sort=False)
GRAPH_HEADS.add("classify", GraphHead(
    ClassifyGraph, 2, "(N, classes) logits", "(N, {classes}) merged probabilities", lambda m: m, True, True))
GRAPH_HEADS.add("segment", GraphHead(
    lambda model, policy, merge, stages, norm, conformal: SegmentGraph(model, policy, stages, norm),
    4, "(N, K, h, w) maps", "(N, K, h, w) mean probabilities", lambda m: "mean"))
TASKS = tuple(GRAPH_HEADS.names())


# --------------------------------------------------------------------------- export
def _probe(model: nn.Module, size: Size, task: str, head: GraphHead) -> None:
    with torch.inference_mode(), eval_mode(model):
        y = model(torch.zeros(2, 3, *size))
    if not isinstance(y, Tensor) or y.ndim != head.output_rank:
        got = tuple(y.shape) if isinstance(y, Tensor) else ()
        raise ShapeError(f"model output for `task={task!r}`", head.output, got)


def export_tta(
    model: nn.Module,
    policy: PolicyLike,
    path: str | Path,
    *,
    merge: str | None = None,
    input_size: Size | None = None,
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
        task: ``classify`` (merged class probabilities) or ``segment`` (mean softmax maps).
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
        UnknownNameError: an unknown task (:data:`GRAPH_HEADS`).
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
    head = GRAPH_HEADS.get(task)  # the task, looked up once
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
    merge_name = merge or pol.merge or "mean"
    # A calibrated policy (ttakit calibrate) also returns its conformal sets.
    conformal = Calibration.from_dict(pol.meta["conformal"]) if head.calibrated and "conformal" in pol.meta else None
    need = max((t.graph_opset for v in pol.views for t in v.transforms), default=1)
    if opset < need:
        raise PolicyError(f"the views of this policy need ONNX opset {need} or later (got `opset={opset}`)")
    photo = input == "photo"
    if photo:
        cfg["input_size"] = (3, *size)
        photo_interpolation(cfg)  # refuse a preprocessing with no photo form before writing anything
    stages = GraphInputs(pol.views, size, photo)
    graph = head.build(model, pol, merge_name, stages, norm, conformal)
    _probe(model, size, task, head)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    examples = tuple(torch.randn(2, 3, *stages.sizes[k], generator=g) for k in stages.names)
    onnx_export(graph, examples, out, opset=opset, input_name=list(stages.names), output_names=("probs",) if conformal is None else ("probs", "sets"),
                dynamic_spatial=False)
    if check:
        _check_graph(graph, out, stages)
    proto = onnx.load(str(out))
    props = {
        "ttakit.task": task,
        "ttakit.input": input,
        "ttakit.policy": json.dumps(pol.view_names),
        "ttakit.merge": head.merge(merge_name),
        "ttakit.weights": json.dumps(list(pol.weights) if pol.weights else None),
        "ttakit.temperature": json.dumps(pol.temperature),
        "ttakit.conformal": json.dumps(None if conformal is None else conformal.to_dict()),
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
