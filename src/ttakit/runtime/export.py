"""A whole TTA policy as one ONNX graph: the views, the model on every view, and the merge.

The graph takes a batch of preprocessed images ``(N, 3, H, W)`` (dynamic ``N``, fixed ``H, W``)
and returns merged probabilities: ``(N, C)`` for classification, ``(N, K, h, w)`` for
segmentation. Serving it needs only an ONNX runtime: no torch, no ttakit.

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
photo, which the graph never sees: they are refused.

Example:
    >>> lm = ttakit.load_model()
    >>> export_tta(lm.model, "hflip", "hflip.onnx", data_config=lm.data_config)  # doctest: +SKIP
    PosixPath('hflip.onnx')
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import functional as Fn
from ..errors import BackendError, ConfigError, PolicyError, ShapeError
from ..merge import get_merge
from ..policy import Policy, PolicyLike, create_policy
from ..transforms import (
    Brightness,
    Contrast,
    Crop,
    HFlip,
    Normalization,
    Resize,
    Rot90,
    Rotate,
    Scale,
    Shift,
    Transform,
    VFlip,
    View,
)
from .backends import DEFAULT_OPSET, _quiet_export, onnx_export

__all__ = ["TASKS", "ClassifyGraph", "SegmentGraph", "export_tta", "view_steps"]

Size = tuple[int, int]
TASKS = ("classify", "segment")
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
class _Flip(nn.Module):
    def __init__(self, dims: tuple[int, ...]) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: Tensor) -> Tensor:
        return x.flip(self.dims)


class _Rot90(nn.Module):
    """``torch.rot90(x, k, (-2, -1))`` as transposes and flips (``rot90`` has no ONNX op)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k % 4

    def forward(self, x: Tensor) -> Tensor:
        if self.k == 1:
            return x.flip(-1).transpose(-2, -1)
        if self.k == 2:
            return x.flip((-2, -1))
        if self.k == 3:
            return x.transpose(-2, -1).flip(-1)
        return x


class _Window(nn.Module):
    """``out[i, j] = x[i + top, j + left]`` on an ``(h, w)`` grid, 0 outside ``x``: a crop, a
    whole-pixel shift, or the crop/pad of a zoom, all as one padding and one slice."""

    def __init__(self, in_size: Size, top: int, left: int, out_size: Size) -> None:
        super().__init__()
        (H, W), (h, w) = in_size, out_size
        self.pad = (max(0, -left), max(0, left + w - W), max(0, -top), max(0, top + h - H))
        self.box = (top + self.pad[2], left + self.pad[0], h, w)

    def forward(self, x: Tensor) -> Tensor:
        if any(self.pad):
            x = F.pad(x, self.pad)
        t, left, h, w = self.box
        return x[..., t : t + h, left : left + w]


def _axis_weights(n_in: int, n_out: int, mode: str, antialias: bool) -> Tensor:
    """``(n_out, n_in)`` interpolation weights of one axis, read off ``F.interpolate`` itself
    (a basis image per input pixel; 4 columns wide since PyTorch special-cases width 1)."""
    basis = torch.eye(n_in).reshape(n_in, 1, n_in, 1).expand(n_in, 1, n_in, 4)
    y = F.interpolate(basis, size=(n_out, 4), mode=mode, align_corners=False, antialias=antialias)
    return y[:, 0, :, 0].T.contiguous()


class _Resample(nn.Module):
    """:func:`ttakit.functional.resize` as ``A_h @ x @ A_w^T``: both are separable, so the
    matrices hold exactly its weights (antialiasing included), and MatMul exports anywhere."""

    def __init__(self, in_size: Size, out_size: Size, mode: str) -> None:
        super().__init__()
        (H, W), (h, w) = in_size, out_size
        aa = mode in ("bilinear", "bicubic") and (h < H or w < W)
        self.register_buffer("a_h", _axis_weights(H, h, mode, aa))
        self.register_buffer("a_wt", _axis_weights(W, w, mode, aa).T.contiguous())

    def forward(self, x: Tensor) -> Tensor:
        return torch.matmul(torch.matmul(self.a_h, x), self.a_wt)


class _Warp(nn.Module):
    """:func:`ttakit.functional.warp` with its sampling grid computed once (batch expanded)."""

    def __init__(self, matrix: Tensor, size: Size) -> None:
        super().__init__()
        theta = matrix[:2].to(torch.float32).unsqueeze(0)
        self.register_buffer("grid", F.affine_grid(theta, [1, 1, *size], align_corners=False))

    def forward(self, x: Tensor) -> Tensor:
        grid = self.grid.expand(x.shape[0], -1, -1, -1)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class _Photometric(nn.Module):
    def __init__(self, t: Transform, norm: Normalization) -> None:
        super().__init__()
        self.t, self.norm = t, norm

    def forward(self, x: Tensor) -> Tensor:
        return self.t.apply(x, self.norm)


def _steps_of(t: Transform, size: Size, norm: Normalization) -> list[nn.Module]:
    """The static graph steps of one transform applied to images of ``size``."""
    if isinstance(t, HFlip):
        return [_Flip((-1,))]
    if isinstance(t, VFlip):
        return [_Flip((-2,))]
    if isinstance(t, Rot90):
        return [_Rot90(t.k)]
    if isinstance(t, Crop):
        top, left, h, w = t._box(size)
        return [_Window(size, top, left, (h, w))]
    if isinstance(t, Shift):
        return [_Window(size, -t.dy, -t.dx, size)]
    if isinstance(t, Resize):
        out = t.output_size(size)
        return [] if tuple(out) == tuple(size) else [_Resample(size, out, "bicubic")]
    if isinstance(t, Scale):  # Fn.zoom: resize to round(size * factor), then centre crop or pad
        big = Fn.scale_resize_size(size, t.factor)
        steps: list[nn.Module] = [] if big == tuple(size) else [_Resample(size, big, "bilinear")]
        return steps + [_Window(big, (big[0] - size[0]) // 2, (big[1] - size[1]) // 2, size)]
    if isinstance(t, Rotate):
        return [_Warp(torch.linalg.inv(t.matrix(size)), size)]
    if isinstance(t, (Brightness, Contrast)):
        return [_Photometric(t, norm)]
    raise PolicyError(f"transform {t.name!r} has no ONNX form; export policies of flips, rot90, crops, resize, "
                      "scale, shift, rotate, brightness and contrast")


def view_steps(view: View, size: Size, norm: Normalization) -> nn.Sequential:
    """``view``'s tensor stage on ``size`` images as an exportable module.

    Raises:
        PolicyError: the view has an input stage, or a transform with no ONNX form.

    Example:
        >>> view_steps(ttakit.policy.parse_view("hflip|crop=center:0.875"), (224, 224), Normalization())
        Sequential(
          (0): _Flip()
          (1): _Window()
        )
    """
    if view.source is not None:
        raise PolicyError(
            f"view {view.name!r} has the input stage {view.source.name!r}, which re-samples the source photo; the "
            "exported graph takes preprocessed images (N, 3, H, W): leave input stages out of exported policies")
    steps: list[nn.Module] = []
    for t, s in zip(view.transforms, view.sizes(size)):
        steps += _steps_of(t, s, norm)
    return nn.Sequential(*steps)


# --------------------------------------------------------------------------- the graphs
class _Views(nn.Module):
    """Every view of a batch, run through the model once per view size."""

    def __init__(self, model: nn.Module, views: Sequence[View], size: Size, norm: Normalization) -> None:
        super().__init__()
        self.model = model
        self.steps = nn.ModuleList([view_steps(v, size, norm) for v in views])
        groups: dict[Size, list[int]] = {}
        for i, v in enumerate(views):
            groups.setdefault(v.output_size(size), []).append(i)
        self.groups = list(groups.values())  # view indices sharing one model call

    def outputs(self, x: Tensor) -> list[Tensor]:
        """Each view's model output, in view order."""
        outs: list[Tensor | None] = [None] * len(self.steps)
        for idx in self.groups:
            batch = torch.cat([self.steps[i](x) for i in idx]) if len(idx) > 1 else self.steps[idx[0]](x)
            y = self.model(batch)
            if not isinstance(y, Tensor):
                raise ShapeError("model output", "a tensor", ())
            y = y.reshape(len(idx), -1, *y.shape[1:])  # (G, N, ...): view-major, as concatenated
            for g, i in enumerate(idx):
                outs[i] = y[g]
        return outs  # type: ignore[return-value]


class ClassifyGraph(nn.Module):
    """``(N, C, H, W)`` images -> ``(N, classes)`` merged probabilities, as
    :class:`~ttakit.tasks.classify.ClassificationTTA` computes them (no adaptive TTA)."""

    def __init__(self, model: nn.Module, policy: Policy, merge: str, size: Size, norm: Normalization) -> None:
        super().__init__()
        if merge in _REFUSED_MERGES:
            raise PolicyError(f"merge {merge!r} cannot be exported: {_REFUSED_MERGES[merge]}")
        self.views = _Views(model, policy.views, size, norm)
        self.merge = _GRAPH_MERGES.get(merge) or get_merge(merge)
        w = torch.ones(len(policy.views)) if policy.weights is None else torch.tensor(policy.weights, dtype=torch.float32)
        self.register_buffer("weights", w / w.sum())
        self.temperature = float(policy.temperature)

    def forward(self, x: Tensor) -> Tensor:
        logits = torch.stack([o.float() for o in self.views.outputs(x)], dim=1)  # (N, V, C)
        if self.temperature != 1.0:
            logits = logits / self.temperature
        return self.merge(logits, self.weights)


class SegmentGraph(nn.Module):
    """``(N, C, H, W)`` images -> ``(N, K, h, w)`` weighted mean of the views' softmax maps,
    each view's flips and quarter turns undone exactly."""

    def __init__(self, model: nn.Module, policy: Policy, size: Size, norm: Normalization) -> None:
        super().__init__()
        undo = []
        for v in policy.views:
            bad = [t.name for t in v.transforms if not isinstance(t, (HFlip, VFlip, Rot90))]
            if bad or v.source is not None:
                raise PolicyError(
                    f"segmentation export takes flips and quarter turns only (undone exactly in the graph); "
                    f"view {v.name!r} has {', '.join(bad) or v.source.name}")  # type: ignore[union-attr]
            undo.append(nn.Sequential(*[_Flip((-1,)) if isinstance(t, HFlip) else _Flip((-2,)) if isinstance(t, VFlip)
                                        else _Rot90(-t.k) for t in reversed(v.transforms)]))  # type: ignore[attr-defined]
        self.views = _Views(model, policy.views, size, norm)
        self.undo = nn.ModuleList(undo)
        w = torch.ones(len(policy.views)) if policy.weights is None else torch.tensor(policy.weights, dtype=torch.float32)
        self.weights = [float(v) for v in (w / w.sum())]

    def forward(self, x: Tensor) -> Tensor:
        total = None
        for y, undo, w in zip(self.views.outputs(x), self.undo, self.weights):
            p = undo(torch.softmax(y.float(), dim=1)) * w
            total = p if total is None else total + p
        return total  # type: ignore[return-value]


# --------------------------------------------------------------------------- export
def _probe(model: nn.Module, size: Size, task: str) -> None:
    modes = {m: m.training for m in model.modules()}
    try:
        with torch.inference_mode():
            model.eval()
            y = model(torch.zeros(2, 3, *size))
    finally:
        for m, training in modes.items():
            m.training = training
    want = 2 if task == "classify" else 4
    if not isinstance(y, Tensor) or y.ndim != want:
        got = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        expected = "(N, classes) logits" if task == "classify" else "(N, K, h, w) maps"
        raise ShapeError(f"model output for --task {task}", expected, got if isinstance(got, tuple) else ())


def export_tta(
    model: nn.Module,
    policy: PolicyLike,
    path: str | Path,
    *,
    merge: str | None = None,
    input_size: Size | None = None,
    norm: Normalization | None = None,
    task: str = "classify",
    opset: int = DEFAULT_OPSET,
    data_config: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    check: bool = True,
) -> Path:
    """Write ``model`` with a TTA ``policy`` as one ONNX graph: input ``images`` ``(N, 3, H, W)``
    (preprocessed as for the model), output ``probs``.

    Args:
        model: the network (on the CPU; its train/eval modes are left as they were).
        policy: preset, policy text, JSON path or :class:`~ttakit.policy.Policy` (its weights
            and temperature are used).
        path: the ``.onnx`` file to write.
        merge: classification merge (default: the policy's, else ``mean``); ``vote`` is refused.
        input_size: ``(H, W)`` of the graph's input (default: ``data_config``'s).
        norm: the model's normalisation (brightness/contrast views; default: ``data_config``'s).
        task: ``classify`` (merged class probabilities) or ``segment`` (mean softmax maps).
        opset: ONNX opset (16 at least for ``rotate`` views).
        data_config: timm data config (default: resolved from the model); stored in the
            graph's metadata with the policy, so a server can preprocess without ttakit.
        metadata: more ``key: value`` pairs for the graph's metadata (e.g. class names).
        check: run the written graph in onnxruntime (when installed) on two random images and
            compare it with the same computation in torch.

    Returns:
        ``path``.

    Raises:
        PolicyError: a view with an input stage, a transform or merge with no ONNX form.
        ShapeError: the model's output does not fit ``task``.
        BackendError: the ONNX package is missing, or the export or its check failed.

    Example:
        >>> net = timm.create_model("test_resnet", num_classes=10).eval()
        >>> export_tta(net, "d4", "d4.onnx", merge="gmean", input_size=(64, 64))  # doctest: +SKIP
        PosixPath('d4.onnx')
    """
    if task not in TASKS:
        raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    try:
        import onnx  # noqa: PLC0415 - an optional extra
    except ImportError as e:
        raise BackendError("exporting a TTA graph needs the onnx package: pip install 'ttakit[onnx]'") from e
    import timm  # noqa: PLC0415 - only to resolve a data config

    pol = create_policy(policy)
    cfg = dict(data_config or timm.data.resolve_data_config({}, model=model))
    size = tuple(input_size or cfg["input_size"][-2:])  # type: ignore[assignment]
    size = (int(size[0]), int(size[1]))
    norm = norm or Normalization(tuple(cfg["mean"]), tuple(cfg["std"]))
    merge_name = merge or pol.merge or "mean"
    if any(isinstance(t, Rotate) for v in pol.views for t in v.transforms) and opset < 16:
        raise PolicyError(f"rotate views need GridSample, ONNX opset 16 or later (got --opset {opset})")
    graph: nn.Module
    if task == "classify":
        graph = ClassifyGraph(model, pol, merge_name, size, norm)
    else:
        graph = SegmentGraph(model, pol, size, norm)
    _probe(model, size, task)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    example = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    onnx_export(graph, example, out, opset=opset, input_name="images", output_names=("probs",), dynamic_spatial=False)
    props = {
        "ttakit.task": task,
        "ttakit.policy": json.dumps(pol.view_names),
        "ttakit.merge": merge_name if task == "classify" else "mean",
        "ttakit.weights": json.dumps(list(pol.weights) if pol.weights else None),
        "ttakit.temperature": json.dumps(pol.temperature),
        "ttakit.input_size": json.dumps(list(size)),
        "ttakit.data_config": json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}),
        **{k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()},
    }
    proto = onnx.load(str(out))
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, str(out))
    if check:
        _check_graph(graph, out, size)
    return out


def _check_graph(graph: nn.Module, path: Path, size: Size, tolerance: float = 1e-4) -> None:
    """The written graph in onnxruntime against the same module in torch (skipped without
    onnxruntime; the tests compare both runtimes with the task wrappers)."""
    try:
        import onnxruntime as ort  # noqa: PLC0415
    except ImportError:
        return
    x = torch.randn(3, 3, *size, generator=torch.Generator().manual_seed(1))  # a batch unlike the example's
    modes = {m: m.training for m in graph.modules()}
    try:
        with torch.inference_mode(), _quiet_export():
            graph.eval()
            ref = graph(x).numpy()
    finally:
        for m, training in modes.items():
            m.training = training
    so = ort.SessionOptions()
    so.log_severity_level = 3
    got = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]
    err = float(np.abs(got - ref).max()) if got.shape == ref.shape else float("inf")
    if not err <= tolerance:
        raise BackendError(f"the exported graph {path.name} differs from torch by {err:.3g} (more than {tolerance:g})")
