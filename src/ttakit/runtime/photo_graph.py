"""The photo front end of an exported TTA graph: decoded uint8 photos in, every input stage out.

:func:`photo_stages_graph` writes, as plain ONNX, what :mod:`ttakit.data` does with PIL and
torchvision for each input stage (:class:`~ttakit.stages.Input`, the plain one included):

1. the short side resized to ``floor(size / crop_pct)`` and the long side to
   ``int(size * long / short)`` (torchvision's ``Resize(int)``), resampled as PIL resamples:
   two separable passes (width first, then height), each rounded half up and clipped to
   0..255 as PIL's 8-bit passes are. Each pass is a matrix product with PIL's filter weights
   (bicubic ``a = -0.5`` or the triangle, stretched by the scale when shrinking, renormalised
   at the borders), built in the graph from the photo's size;
2. only the ``size`` window's rows and columns are computed (the centre rounded as
   ``CenterCrop`` rounds it: ONNX ``Round`` is half-to-even, like Python's ``round``);
3. ``(pixel / 255 - mean) / std``.

Why matrices and not ONNX ``Resize``: ``Resize`` with ``antialias=1`` and
``cubic_coeff_a=-0.5`` follows PIL to one grey level in ONNX Runtime, but OpenVINO 2026.4
reads its antialiased cubic shrink differently (errors of 100 grey levels) and ignores
``exclude_outside``; ``MatMul`` means the same everywhere.

The input ``photos`` is ``(N, H, W, 3)`` uint8 RGB with dynamic ``N``, ``H``, ``W`` (photos of
one size per call); each output ``(N, 3, size, size)`` float32 feeds the tensor part of the
graph (:mod:`ttakit.runtime.export`).

Example:
    >>> cfg = {"input_size": (3, 224, 224), "crop_pct": 0.875, "mean": (0.5,) * 3, "std": (0.5,) * 3}
    >>> g = photo_stages_graph({"stage_0": None, "stage_1": Input(256, 1.0)}, cfg)
    >>> [(o.name, o.type.tensor_type.shape.dim[-1].dim_value) for o in g.graph.output]
    [('stage_0', 224), ('stage_1', 256)]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..data import input_transform
from ..errors import BackendError, ConfigError, PolicyError
from ..stages import Input
from .onnx_cache import checking_runtime

__all__ = [
    "PHOTO_INPUT",
    "PHOTO_OPSET",
    "check_photo_stages",
    "photo_interpolation",
    "photo_preprocessing",
    "photo_stages_graph",
    "plain_stage",
]

PHOTO_INPUT = "photos"
PHOTO_OPSET = 17  # the ops used here are all older; the tensor part sets the graph's opset
# PIL's filters by timm interpolation name: (support at scale 1, weight of |x| in the graph).
_FILTERS = ("bicubic", "bilinear")


class _Builder:
    """Collects nodes and constants with unique names."""

    def __init__(self, onnx: Any) -> None:
        self.onnx, self.h = onnx, onnx.helper
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._n = 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"photo/{hint}_{self._n}"

    def const(self, value: Any, dtype: Any = np.int64, hint: str = "c") -> str:
        name = self.name(hint)
        self.inits.append(self.onnx.numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op: str, *inputs: str, hint: str | None = None, **attrs: Any) -> str:
        out = self.name(hint or op.lower())
        self.nodes.append(self.h.make_node(op, list(inputs), [out], **attrs))
        return out


def _scalar(b: _Builder, v: str, to: int) -> str:
    """A ``[1]`` int64 tensor as a 0-d tensor of type ``to`` (Range takes scalars)."""
    return b.op("Cast", b.op("Squeeze", v, b.const([0])), to=to)


def _filter(b: _Builder, x: str, interpolation: str) -> str:
    """PIL's filter at ``x``: bicubic with ``a = -0.5`` (support 2) or the triangle (support 1)."""
    f = lambda v: b.const(v, np.float32)  # noqa: E731
    ax = b.op("Abs", x)
    if interpolation == "bilinear":
        return b.op("Max", b.op("Sub", f(1.0), ax), f(0.0))
    a = -0.5
    near = b.op("Add", b.op("Mul", b.op("Sub", b.op("Mul", f(a + 2), ax), f(a + 3)), b.op("Mul", ax, ax)), f(1.0))
    poly = b.op("Sub", b.op("Mul", b.op("Add", b.op("Mul", b.op("Sub", ax, f(5.0)), ax), f(8.0)), ax), f(4.0))
    far = b.op("Mul", poly, f(a))
    return b.op("Where", b.op("Less", ax, f(1.0)), near, b.op("Where", b.op("Less", ax, f(2.0)), far, f(0.0)))


def _axis_weights(b: _Builder, n_in: str, n_out: str, first: str, count: int, interpolation: str) -> str:
    """``(count, n_in)`` weights of output pixels ``first .. first + count`` of one axis resized
    from ``n_in`` to ``n_out`` pixels, as PIL computes them (``ImagingResample``): centre
    ``(i + 0.5) * scale``, the filter stretched by ``max(scale, 1)``, each row summing to 1."""
    F, I = b.onnx.TensorProto.FLOAT, b.onnx.TensorProto.INT64
    fin, fout = _scalar(b, n_in, F), _scalar(b, n_out, F)
    scale = b.op("Div", fin, fout)
    stretch = b.op("Max", scale, b.const(1.0, np.float32))
    start = _scalar(b, first, I)
    i = b.op("Cast", b.op("Range", start, b.op("Add", start, b.const(count)), b.const(1)), to=F)  # (count,)
    center = b.op("Mul", b.op("Add", i, b.const(0.5, np.float32)), scale)
    j = b.op("Range", b.const(0.0, np.float32), fin, b.const(1.0, np.float32))  # (n_in,)
    dist = b.op("Sub", b.op("Unsqueeze", b.op("Add", j, b.const(0.5, np.float32)), b.const([0])),
                b.op("Unsqueeze", center, b.const([1])))  # (count, n_in)
    w = _filter(b, b.op("Div", dist, stretch), interpolation)
    return b.op("Div", w, b.op("ReduceSum", w, b.const([1]), keepdims=1))


def _pil_round(b: _Builder, x: str) -> str:
    """Round half up and clip to 0..255, as each of PIL's 8-bit passes ends."""
    y = b.op("Floor", b.op("Add", x, b.const(0.5, np.float32)))
    return b.op("Clip", y, b.const(0.0, np.float32), b.const(255.0, np.float32))


def _stage(b: _Builder, x: str, h: str, w: str, source: Input, interpolation: str, mean: str, std: str,
           out: str) -> None:
    """Nodes of one input stage: ``x`` (N, 3, H, W) float pixels -> ``out`` (N, 3, S, S)."""
    s, side = b.const([source.scale_size()]), source.size
    landscape = b.op("LessOrEqual", h, w)  # the short side is the height (ties: both become s)
    new_h = b.op("Where", landscape, s, b.op("Div", b.op("Mul", s, h), w))  # int(s * long / short), in integers
    new_w = b.op("Where", landscape, b.op("Div", b.op("Mul", s, w), h), s)
    if source.position == "center":  # int(round((n - S) / 2)), half to even as Python rounds

        def corner(n: str) -> str:
            d = b.op("Cast", b.op("Sub", n, b.const([side])), to=b.onnx.TensorProto.FLOAT)
            return b.op("Cast", b.op("Round", b.op("Div", d, b.const([2.0], np.float32))), to=b.onnx.TensorProto.INT64)

        top, left = corner(new_h), corner(new_w)
    else:
        top = b.const([0]) if source.position in ("tl", "tr") else b.op("Sub", new_h, b.const([side]))
        left = b.const([0]) if source.position in ("tl", "bl") else b.op("Sub", new_w, b.const([side]))
    ww = _axis_weights(b, w, new_w, left, side, interpolation)  # (S, W)
    wh = _axis_weights(b, h, new_h, top, side, interpolation)  # (S, H)
    y = _pil_round(b, b.op("MatMul", x, b.op("Transpose", ww, perm=[1, 0])))  # (N, 3, H, S): width first, as PIL
    y = _pil_round(b, b.op("MatMul", wh, y))  # (N, 3, S, S)
    y = b.op("Div", y, b.const(255.0, np.float32))
    b.nodes.append(b.h.make_node("Div", [b.op("Sub", y, mean), std], [out]))


def plain_stage(data_config: Mapping[str, Any]) -> Input:
    """The model's own preprocessing (timm's eval transform) as the input stage it equals.

    Raises:
        ConfigError: the preprocessing is not a centre crop of a square input.
    """
    try:
        return Input.of_model(data_config)
    except PolicyError as e:
        raise ConfigError(f"{e}; export with `input='tensor'` and preprocess outside the graph") from e


def photo_interpolation(data_config: Mapping[str, Any]) -> str:
    """The model's interpolation, checked: one whose PIL filter the graph rebuilds, and a
    plain preprocessing the graph can render.

    Raises:
        ConfigError: another interpolation, or a plain preprocessing that is not a square
            centre crop (both say to export ``--input tensor`` instead).
    """
    interp = data_config.get("interpolation", "bicubic")
    if interp not in _FILTERS:
        raise ConfigError(f"the photo graph resamples as PIL does with {', '.join(_FILTERS)}, not {interp!r}; "
                          "export with `input='tensor'` and preprocess outside the graph")
    plain_stage(data_config)
    return interp


def photo_preprocessing(stages: Mapping[str, Input | None], data_config: Mapping[str, Any]) -> dict[str, Any]:
    """What the photo graph does, for its metadata: each output's stage and the shared settings."""
    return {
        "photos": "(N, H, W, 3) uint8 RGB, one size per call; decoded with EXIF orientation applied",
        "stages": {k: {"name": "identity" if s is None else s.name, "short_side": r.scale_size(), "size": r.size,
                       "crop_pct": r.crop_pct, "position": r.position}
                   for k, s in stages.items() for r in [plain_stage(data_config) if s is None else s]},
        "resample": f"PIL {data_config.get('interpolation', 'bicubic')}, width then height, each pass rounded to uint8",
        "mean": list(data_config["mean"]), "std": list(data_config["std"]),
    }


def photo_stages_graph(stages: Mapping[str, Input | None], data_config: Mapping[str, Any], *,
                       opset: int = PHOTO_OPSET) -> Any:
    """An ONNX model: input ``photos`` ``(N, H, W, 3)`` uint8 -> one ``(N, 3, S, S)`` float
    output per input stage, named by the keys of ``stages``.

    Args:
        stages: output name -> the input stage to render (``None``: the model's own
            preprocessing, ``Input.of_model(data_config)``).
        data_config: the model's timm data config (``interpolation``, ``mean``, ``std``).
        opset: ONNX opset (17 or later).

    Raises:
        ConfigError: an interpolation other than bicubic or bilinear, a plain preprocessing
            that is not a square centre crop, or opset < 17.
        BackendError: the onnx package is missing.
    """
    try:
        import onnx  # noqa: PLC0415 - an optional extra
    except ImportError as e:
        raise BackendError("exporting a photo graph needs the onnx package: pip install 'ttakit[onnx]'") from e
    interp = photo_interpolation(data_config)
    if opset < PHOTO_OPSET:
        raise ConfigError(f"the photo graph needs ONNX opset {PHOTO_OPSET} or later, got {opset}")
    b = _Builder(onnx)
    x = b.op("Transpose", b.op("Cast", PHOTO_INPUT, to=onnx.TensorProto.FLOAT), perm=[0, 3, 1, 2])  # (N, 3, H, W)
    shape = b.op("Shape", PHOTO_INPUT)
    h, w = (b.op("Slice", shape, b.const([i]), b.const([i + 1])) for i in (1, 2))
    mean = b.const(np.asarray(data_config["mean"], np.float32).reshape(1, 3, 1, 1), np.float32, "mean")
    std = b.const(np.asarray(data_config["std"], np.float32).reshape(1, 3, 1, 1), np.float32, "std")
    for name, source in stages.items():
        _stage(b, x, h, w, plain_stage(data_config) if source is None else source, interp, mean, std, name)
    T = onnx.TensorProto
    graph = onnx.helper.make_graph(
        b.nodes, "ttakit_photo_stages",
        [onnx.helper.make_tensor_value_info(PHOTO_INPUT, T.UINT8, ["batch", "height", "width", 3])],
        [onnx.helper.make_tensor_value_info(k, T.FLOAT, ["batch", 3, *size, *size]) for k, s in stages.items()
         for size in [[plain_stage(data_config).size] if s is None else [s.size]]],
        initializer=b.inits,
    )
    # IR 8: old enough for runtimes a few releases old (the tensor part's IR is used when merged).
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def check_photo_stages(front: Any, stages: Mapping[str, Input | None], data_config: Mapping[str, Any],
                       photo_sizes: tuple[tuple[int, int], ...] = ((150, 211), (233, 170))) -> float:
    """Run ``front`` (from :func:`photo_stages_graph`) in onnxruntime on random photos of a
    landscape and a portrait size and compare each stage with ttakit's PIL rendering
    (:func:`ttakit.data.input_transform`; the plain stage with timm's own transform).

    Returns:
        The largest difference, in grey levels (PIL's rounding: at most 1).

    Raises:
        BackendError: a pixel differs by more than one grey level, or onnxruntime is missing.
    """
    ort = checking_runtime()
    from PIL import Image  # noqa: PLC0415

    so = ort.SessionOptions()
    so.log_severity_level = 3
    session = ort.InferenceSession(front.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    std = np.asarray(data_config["std"], np.float32).reshape(3, 1, 1)
    rng = np.random.default_rng(0)
    worst = 0.0
    for h, w in photo_sizes:
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        got = dict(zip(names, session.run(None, {PHOTO_INPUT: pixels[None]})))
        img = Image.fromarray(pixels)
        for name, stage in stages.items():
            ref = input_transform(stage, data_config)(img).numpy()
            if got[name].shape[1:] != ref.shape:
                raise BackendError(f"photo stage {name}: the graph gives {got[name].shape[1:]}, PIL {ref.shape}")
            worst = max(worst, float((np.abs(got[name][0] - ref) * std).max()) * 255.0)
    if not worst <= 1.0 + 1e-3:
        raise BackendError(f"the photo graph renders the input stages {worst:.2f} grey levels away from PIL (more than 1)")
    return worst
