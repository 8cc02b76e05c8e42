"""``ttakit predict`` and ``ttakit views``: plain vs TTA for a few photos, as text, JSON or a picture."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from ..data import example_image_path, load_image
from ..input_check import precropped_note
from ..models import LoadedModel
from ..policy import list_presets
from ..predict import ClassScore, ImagePrediction, predict_images
from ..task_spec import resolve
from ..tasks.classify import DEFAULT_POLICY, ClassificationTTA
from ..viz import save_view_grid
from .common import add_model_args, classification_tta, load, weights_note
from .options import add_task_arguments, task_values

__all__ = ["DEFAULT_POLICY", "format_predictions", "predict_classify", "predictions_to_json", "register",
           "views_classify"]


def predictions_to_json(lm: LoadedModel, tta: ClassificationTTA, preds: Sequence[ImagePrediction]) -> dict[str, Any]:
    """The ``--json`` document of ``ttakit predict``."""
    return {
        "model": lm.name,
        "policy": [v.name for v in tta.views],
        "merge": tta.merge_name,
        "adaptive": tta.adaptive,
        **({} if tta.conformal is None else {"conformal": tta.conformal.to_dict()}),  # a calibrated policy
        "images": [
            {
                "path": p.path,
                "plain": [asdict(s) for s in p.plain],
                "tta": [asdict(s) for s in p.tta],
                "views": [{"name": n, **asdict(s)} for n, s in p.views],
                **({} if p.conformal_set is None else {"set": [asdict(s) for s in p.conformal_set]}),
            }
            for p in preds
        ],
    }


def _cell(s: ClassScore | None, width: int) -> str:
    if s is None:
        return " " * (width + 8)
    label = s.label if len(s.label) <= width else s.label[: width - 1] + "…"
    return f"{label:<{width}} {s.prob:7.2%}"


def format_predictions(lm: LoadedModel, tta: ClassificationTTA, preds: Sequence[ImagePrediction]) -> str:
    """Human-readable table: plain and TTA top-k side by side, then each view's top-1."""
    lines = []
    width = 30
    adaptive = f", adaptive below {tta.adaptive:g}" if tta.adaptive is not None else ""
    for p in preds:
        lines.append(f"{p.path}")
        lines.append(f"  model {lm.name} ({weights_note(lm.weights)}); policy {tta.policy.name} ({len(tta.views)} views), "
                     f"merge {tta.merge_name}{adaptive}")
        lines.append(f"  {'#':>2}  {'plain':<{width + 8}}   {'tta':<{width + 8}}")
        for r in range(max(len(p.plain), len(p.tta))):
            a = p.plain[r] if r < len(p.plain) else None
            b = p.tta[r] if r < len(p.tta) else None
            lines.append(f"  {r + 1:>2}  {_cell(a, width)}   {_cell(b, width)}")
        if p.plain and p.tta:
            verdict = "same top-1" if p.plain[0].index == p.tta[0].index else "top-1 CHANGED"
            lines.append(f"  {verdict}: plain {p.plain[0].label} -> tta {p.tta[0].label}")
        if p.conformal_set is not None and tta.conformal is not None:
            names = ", ".join(s.label for s in p.conformal_set)
            note = "" if getattr(tta, "conformal_verified", True) else ", unverified: the policy does not record what it calibrated"
            lines.append(f"  set: {{{names}}} ({tta.conformal.coverage:.0%} coverage{note})")
        skipped = len(tta.views) - len(p.views)
        lines.append("  views:" + (f" ({skipped} not run: the plain view is confident enough)" if skipped else ""))
        name_w = max((len(n) for n, _ in p.views), default=8)
        for name, s in p.views:
            lines.append(f"    {name:<{name_w}}  {_cell(s, width)}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _run_task(command: str) -> Callable[[argparse.Namespace], int]:
    """``command`` of the chosen task, its options checked and ``--tta`` at the task's default
    when not given (classification: :data:`DEFAULT_POLICY`; others: ``hflip``)."""

    def run(args: argparse.Namespace) -> int:
        spec, _ = task_values(args, command)
        if args.tta is None:
            args.tta = spec.policy_for(command)
        return int(resolve(spec.commands[command])(args) or 0)

    return run


def predict_classify(args: argparse.Namespace) -> int:
    """``ttakit predict`` (classification): plain and TTA top-k of each photo."""
    paths = args.images or [str(example_image_path())]
    images = [load_image(p) for p in paths]  # a bad file fails before the model loads
    lm, _, cfg, backend = load(args)
    tta = classification_tta(lm, cfg, args, backend)
    note = None if args.json else precropped_note(paths, lm.data_config)
    if note:
        print(note)
    preds = predict_images(lm, paths, tta, k=args.topk, images=images)
    if args.json:
        print(json.dumps(predictions_to_json(lm, tta, preds), indent=2))
    else:
        print(format_predictions(lm, tta, preds), end="")
    return 0


def views_classify(args: argparse.Namespace) -> int:
    """``ttakit views`` (classification): the views as the model sees them, each with its top-1."""
    image = load_image(args.image)
    lm, _, cfg, backend = load(args)
    tta = classification_tta(lm, cfg, args, backend)
    pred = predict_images(lm, [args.image], tta, k=1, images=[image])[0]
    shown = dict(pred.views)
    titles = [f"{v.name}\n" + (f"{shown[v.name].label[:28]} {shown[v.name].prob:.1%}" if v.name in shown else "not run (confident)")
              for v in tta.views]
    merged = f"merged ({tta.merge_name}, {len(tta.views)} views)\n{pred.tta[0].label[:28]} {pred.tta[0].prob:.1%}"
    out = save_view_grid(tta.inputs([image]), tta.views, lm.normalization, titles, merged, args.out)
    print(f"wrote {out} ({len(tta.views)} views; plain: {pred.plain[0].label} {pred.plain[0].prob:.1%}, "
          f"tta: {pred.tta[0].label} {pred.tta[0].prob:.1%})")
    return 0


def _add_policy(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tta", default=None, metavar="POLICY",
                   help=f"preset ({', '.join(list_presets())}), policy text such as 'hflip*scale(0.9,1,1.1)', or a "
                   f"JSON file (default: the task's; classify: {DEFAULT_POLICY})")


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``predict`` and ``views`` to the command parser."""
    p = sub.add_parser("predict", help="plain vs TTA top-k for images (default: a bundled cat photo)")
    p.add_argument("images", nargs="*", help="image files (default: the bundled example photo)")
    add_model_args(p)
    _add_policy(p)
    p.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    add_task_arguments(p, "predict")
    p.set_defaults(func=_run_task("predict"))

    p = sub.add_parser("views", help="save a picture of the views as the model sees them")
    p.add_argument("image", help="image file")
    p.add_argument("--out", required=True, help="output picture (.png)")
    add_model_args(p)
    _add_policy(p)
    add_task_arguments(p, "views")
    p.set_defaults(func=_run_task("views"))
