"""``ttakit export``: a model with its TTA policy as one ONNX graph (images or photos in, probabilities out)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..merge import list_merges
from ..models import DEFAULT_MODEL, load_model
from ..policy import create_policy, list_presets
from ..runtime.onnx_cache import DEFAULT_OPSET
from ..runtime.export import INPUTS, export_graph
from ..task_spec import DEFAULT_TASK, get_task
from ..tasks.export import graph_head, graph_tasks
from .common import WEIGHTS_HELP, positive_int

__all__ = ["register"]


def _size(text: str) -> tuple[int, int]:
    """argparse type: ``224`` or ``224x288``."""
    parts = text.lower().split("x")
    try:
        hw = [int(p) for p in parts]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected SIZE or HxW in pixels, got {text!r}") from e
    if len(hw) not in (1, 2) or min(hw) < 8:
        raise argparse.ArgumentTypeError(f"expected SIZE or HxW of at least 8 pixels, got {text!r}")
    return hw[0], hw[-1]


def _cmd_export(args: argparse.Namespace) -> int:
    policy = create_policy(args.tta)  # a bad policy, or one the task cannot export, fails before the model loads
    head = graph_head(args.task, policy, args.merge)
    lm = load_model(args.model, weights=args.weights, labels=args.labels)
    cfg = dict(lm.data_config)
    size = args.input_size or lm.input_size
    if args.input_size:
        cfg["input_size"] = (3, *size)
    meta = {"ttakit.model": lm.name, "ttakit.model_weights": lm.weights}
    if head.class_names:
        meta["ttakit.class_names"] = list(lm.class_names)
    t0 = time.perf_counter()
    path = export_graph(lm.model, policy, args.out, head, input_size=size, norm=lm.normalization, input=args.input,
                        opset=args.opset, data_config=cfg, metadata=meta, check=not args.no_check)
    secs = time.perf_counter() - t0
    mb = Path(path).stat().st_size / 2**20
    print(f"wrote {path} ({mb:.1f} MB, opset {args.opset}, {secs:.1f} s): {lm.name} ({lm.weights}), "
          f"policy {policy.name} ({len(policy.views)} views), merge {head.merge_name}")
    h, w = size
    if args.input == "photo":
        stages = sorted({v.source.name if v.source else "the model's own" for v in policy.views})
        print(f"  input  photos (N, H, W, 3) uint8 RGB, any H and W (one size per call): the graph renders "
              f"{', '.join(stages)} input stage(s) as PIL does ({cfg.get('interpolation')})")
    else:
        print(f"  input  images (N, 3, {h}, {w}) float32: the model's preprocessing, {cfg.get('interpolation')} "
              f"resize at crop_pct {cfg.get('crop_pct')}, then (pixel/255 - mean) / std with mean "
              f"{tuple(cfg['mean'])}, std {tuple(cfg['std'])}")
    out = head.returns.format(classes=lm.num_classes)
    print(f"  output probs {out}; the graph's metadata holds the policy and data config")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``export`` to the command parser."""
    p = sub.add_parser("export", help="write the model and a TTA policy as one ONNX graph")
    presets = ", ".join(list_presets())
    p.add_argument("--tta", default="hflip", metavar="POLICY",
                   help=f"preset ({presets}) or policy text (default: hflip); input stages need --input photo")
    p.add_argument("--merge", default=None, choices=list_merges(),
                   help="merge mode for --task classify (default: the policy's, else mean; vote does not export)")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--input", choices=INPUTS, default="tensor",
                   help="tensor: the graph takes preprocessed (N, 3, H, W) images; photo: decoded (N, H, W, 3) uint8 "
                   "RGB photos of any size, every input stage rendered inside the graph (default: tensor)")
    tasks = "; ".join(f"{name}: {get_task(name).part('graph_head').summary}" for name in graph_tasks())
    p.add_argument("--task", choices=graph_tasks(), default=DEFAULT_TASK, help=f"{tasks} (default: {DEFAULT_TASK})")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"timm model name (default: {DEFAULT_MODEL})")
    p.add_argument("--weights", default=None, metavar="FILE|random|hub", help=WEIGHTS_HELP)
    p.add_argument("--labels", default=None, help="class names: one per line, or a JSON list (stored in the graph)")
    p.add_argument("--input-size", type=_size, default=None, metavar="SIZE",
                   help="input SIZE or HxW of the graph (default: the model's data config)")
    p.add_argument("--opset", type=positive_int, default=DEFAULT_OPSET, help=f"ONNX opset (default: {DEFAULT_OPSET})")
    p.add_argument("--no-check", action="store_true",
                   help="do not run the written graph in onnxruntime against torch (by default it is, and a missing "
                   "onnxruntime is an error)")
    p.set_defaults(func=_cmd_export)
