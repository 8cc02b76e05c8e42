"""The ``ttakit`` command line: a thin layer over the library.

Every command resolves its strings (model, policy, merge) once, calls library functions, and
prints. Errors that ttakit raises on purpose become one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
import json
import sys
from collections.abc import Callable, Sequence

import torch

from . import __version__
from .data import example_image_path, load_image
from .engine import CONFIDENCE, ClassificationTTA, RunConfig, default_run_config, tune_run_config
from .errors import TTAKitError
from .merge import list_merges
from .models import DEFAULT_MODEL, LoadedModel, load_model
from .policy import list_presets

__all__ = ["build_parser", "main"]

_AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}


# --------------------------------------------------------------------------- shared options
def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=DEFAULT_MODEL, help=f"timm model name (default: {DEFAULT_MODEL})")
    g.add_argument(
        "--weights",
        default=None,
        help="'hub' for timm's pretrained weights, or a .pth/.pt/.safetensors file "
        "(default: the embedded ImageNet weights of the default model)",
    )
    g.add_argument("--labels", default=None, help="class names: one per line, or a JSON list")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    g.add_argument("--amp", choices=sorted(_AMP), default=None, help="autocast dtype on GPU")
    g.add_argument("--micro-batch", default=None, type=_micro_batch,
                   help="images per model forward, or 'auto' to measure once per device and cache (default: per device)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model first")


def _add_policy_args(p: argparse.ArgumentParser, many: bool = False) -> None:
    g = p.add_argument_group("test-time augmentation")
    presets = ", ".join(list_presets())
    if many:
        g.add_argument("--tta", action="append", default=None, metavar="POLICY",
                       help=f"policy (repeatable): preset ({presets}), policy text or JSON file")
        g.add_argument("--merge", action="append", default=None, choices=list_merges(),
                       help="merge mode (repeatable; default: the policy's, else mean)")
    else:
        g.add_argument("--tta", default="hflip", metavar="POLICY",
                       help=f"preset ({presets}), policy text such as 'hflip*scale(0.9,1,1.1)', or a JSON file")
        g.add_argument("--merge", default=None, choices=list_merges(), help="merge mode (default: the policy's, else mean)")
    g.add_argument("--adaptive", type=float, default=None, metavar="THRESHOLD",
                   help="run the other views only where the plain view's confidence is below THRESHOLD")
    g.add_argument("--confidence", choices=sorted(CONFIDENCE), default="max_prob",
                   help="confidence used by --adaptive (default: max_prob)")


def _micro_batch(text: str) -> str | int:
    if text == "auto":
        return text
    try:
        return max(1, int(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from e


def _device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise TTAKitError(f"unknown device {name!r} (use cpu, cuda or cuda:N)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TTAKitError(f"device {name!r} asked for, but no CUDA GPU is available")
    return dev


def _load(args: argparse.Namespace) -> tuple[LoadedModel, torch.device, RunConfig]:
    lm = load_model(args.model, weights=args.weights, labels=args.labels)
    dev = _device(args.device)
    lm.model.to(dev)
    if args.micro_batch == "auto":
        cfg = tune_run_config(lm.model, lm.input_size, dev)
    else:
        cfg = default_run_config(dev)
        if args.micro_batch:
            cfg = replace(cfg, micro_batch=args.micro_batch)
    if args.amp:
        cfg = replace(cfg, amp_dtype=_AMP[args.amp])
    if getattr(args, "compile", False):
        lm = replace(lm, model=torch.compile(lm.model))
    return lm, dev, cfg


def _tta(lm: LoadedModel, policy: str, merge: str | None, cfg: RunConfig, args: argparse.Namespace) -> ClassificationTTA:
    return ClassificationTTA(
        lm.model, policy, merge, norm=lm.normalization, run_config=cfg,
        adaptive=args.adaptive, confidence=args.confidence,
    )


# --------------------------------------------------------------------------- commands
def _cmd_predict(args: argparse.Namespace) -> int:
    from .predict import format_predictions, predict_images, predictions_to_json

    paths = args.images or [str(example_image_path())]
    images = [load_image(p) for p in paths]  # a bad file fails before the model loads
    lm, _, cfg = _load(args)
    tta = _tta(lm, args.tta, args.merge, cfg, args)
    preds = predict_images(lm, paths, tta, k=args.topk, images=images)
    if args.json:
        print(json.dumps(predictions_to_json(lm, tta, preds), indent=2))
    else:
        print(format_predictions(lm, tta, preds), end="")
    return 0


def _cmd_views(args: argparse.Namespace) -> int:
    from .predict import predict_images
    from .viz import save_view_grid

    image = load_image(args.image)
    lm, dev, cfg = _load(args)
    tta = _tta(lm, args.tta, args.merge, cfg, args)
    pred = predict_images(lm, [args.image], tta, k=1, images=[image])[0]
    x = lm.transform()(image)
    titles = [f"{name}\n{s.label[:28]} {s.prob:.1%}" for name, s in pred.views]
    merged = f"merged ({tta.merge_name}, {len(tta.views)} views)\n{pred.tta[0].label[:28]} {pred.tta[0].prob:.1%}"
    out = save_view_grid(x, tta.views, lm.normalization, titles, merged, args.out)
    print(f"wrote {out} ({len(tta.views)} views; plain: {pred.plain[0].label} {pred.plain[0].prob:.1%}, "
          f"tta: {pred.tta[0].label} {pred.tta[0].prob:.1%})")
    return 0


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``ttakit`` command (also used for ``--help`` docs)."""
    parser = argparse.ArgumentParser(prog="ttakit", description="Test-time augmentation for timm image models.")
    parser.add_argument("--version", action="version", version=f"ttakit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("predict", help="plain vs TTA top-k for images (default: a bundled cat photo)")
    p.add_argument("images", nargs="*", help="image files (default: the bundled example photo)")
    _add_model_args(p)
    _add_policy_args(p)
    p.add_argument("--topk", type=int, default=5, help="classes to show (default: 5)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("views", help="save a picture of the views as the model sees them")
    p.add_argument("image", help="image file")
    p.add_argument("--out", required=True, help="output picture (.png)")
    _add_model_args(p)
    _add_policy_args(p)
    p.set_defaults(func=_cmd_views)

    for register in _EXTRA_COMMANDS:
        register(sub)
    return parser


# Commands defined in other modules register themselves here (keeps this file thin).
_EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ttakit`` console script."""
    _load_extra_commands()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TTAKitError as e:
        print(f"ttakit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ttakit: interrupted", file=sys.stderr)
        return 130
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _load_extra_commands() -> None:
    if _EXTRA_COMMANDS:
        return
    from . import cli_eval

    _EXTRA_COMMANDS.extend(cli_eval.COMMANDS)


if __name__ == "__main__":
    raise SystemExit(main())
