"""``--task detect`` of ``ttakit predict``, ``ttakit views`` and ``ttakit evaluate``.

The detector is named by ``--detector``: ``MODULE:FUNCTION`` or ``path/file.py:FUNCTION`` (a
callable returning a detection ``nn.Module`` or a :class:`~ttakit.tasks.detect.LoadedDetector`,
given ``weights=PATH`` when ``--weights`` is), or a torchvision detection model name such as
``fasterrcnn_mobilenet_v3_large_320_fpn`` (its pretrained COCO weights unless ``--weights
PATH`` or ``--weights random``; ``--num-classes``, default 91). Boxes are merged by ``--box-merge`` (wbf, nms, soft_nms,
concat) with ``--box-option [MERGE.]KEY=VALUE`` options.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from ..data import example_image_path, load_image
from ..errors import ConfigError
from ..evaluation.api import evaluate
from ..evaluation.detect_eval import load_coco_images
from ..runtime.config import RunConfig
from ..runtime.distributed import DistContext
from ..tasks.boxes.options import parse_box_options
from ..runtime.prepare import PreparedRun
from ..tasks.detect import DetectionResult, DetectionTTA, LoadedDetector
from ..tasks.detect.loading import detector_for_task
from ..viz import _figure, _save
from .common import eval_options, metric_table, prepare_run, print_written, progress_bar, weights_note

__all__ = [
    "cmd_evaluate",
    "cmd_predict",
    "cmd_views",
    "format_detection_table",
    "parse_box_options",
]


def _load(args: argparse.Namespace) -> PreparedRun:
    """The detector (:func:`~ttakit.tasks.detect.loading.detector_for_task`: ``--detector``, else
    ``--model``) and its run (:func:`ttakit.prepare_run`)."""
    det = detector_for_task(args.model, args.weights, args.labels, {"detector": args.detector,
                                                                    "num_classes": args.num_classes})
    return prepare_run(det, args, kind="detector", exportable=False, tunable=False)


def _tta(det: LoadedDetector, cfg: RunConfig, args: argparse.Namespace) -> DetectionTTA:
    return DetectionTTA(det.model, args.tta, args.box_merge or "wbf", merge_options=parse_box_options(args.box_option),
                        norm=det.normalization, run_config=cfg, data_config=det.data_config)


# --------------------------------------------------------------------------- predict / views
def _shown(det: LoadedDetector, rec: dict[str, torch.Tensor], threshold: float) -> list[dict[str, Any]]:
    keep = rec["scores"] >= threshold
    return [{"label": int(lab), "name": det.label_name(int(lab)), "score": round(float(s), 4),
             "box": [round(float(v), 2) for v in b]}
            for b, s, lab in zip(rec["boxes"][keep].cpu(), rec["scores"][keep].cpu(), rec["labels"][keep].cpu())]


def _document(det: LoadedDetector, tta: DetectionTTA, paths: Sequence[str], res: DetectionResult,
              threshold: float) -> dict[str, Any]:
    return {
        "task": "detect",
        "model": det.name,
        "policy": [v.name for v in tta.views],
        "merge": tta.merge_name,
        "images": [
            {"path": p, "detections": _shown(det, res.detections[i], threshold),
             "views": [{"name": v.name, "detections": _shown(det, r, threshold)}
                       for v, r in zip(tta.views, res.views[i])]}  # type: ignore[index]
            for i, p in enumerate(paths)
        ],
    }


def _format(doc: dict[str, Any], det: LoadedDetector, threshold: float) -> str:
    lines = []
    for img in doc["images"]:
        lines += [img["path"], f"  detector {det.name} ({weights_note(det.weights)}); policy {len(doc['policy'])} views, "
                  f"merge {doc['merge']}; boxes scoring >= {threshold:g}"]
        lines.append(f"  {'#':>3}  {'label':<24} {'score':>7}  box (x1, y1, x2, y2) in photo pixels")
        for k, d in enumerate(img["detections"], 1):
            lines.append(f"  {k:>3}  {d['name'][:24]:<24} {d['score']:7.2%}  ({', '.join(f'{v:.1f}' for v in d['box'])})")
        if not img["detections"]:
            lines.append("       (none)")
        lines.append("  views:")
        width = max(len(v["name"]) for v in img["views"])
        for v in img["views"]:
            top = ", ".join(f"{d['name'][:16]} {d['score']:.0%}" for d in v["detections"][:4])
            lines.append(f"    {v['name']:<{width}}  {len(v['detections']):>3} boxes  {top}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def cmd_predict(args: argparse.Namespace) -> int:
    """``ttakit predict --task detect``: merged boxes per photo, and each view's."""
    paths = [str(p) for p in (args.images or [example_image_path()])]
    images = [load_image(p) for p in paths]  # a bad file fails before the model loads
    det, _, cfg, _ = _load(args)
    tta = _tta(det, cfg, args)
    doc = _document(det, tta, paths, tta.predict(images, keep_views=True), args.score_threshold)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(_format(doc, det, args.score_threshold), end="")
    return 0


def _draw(ax: Any, photo: Image.Image, dets: Sequence[dict[str, Any]], title: str) -> None:
    from matplotlib.patches import Rectangle  # matplotlib is imported only to draw

    ax.imshow(photo)
    colours = "rgbcmy"
    for d in dets:
        x1, y1, x2, y2 = d["box"]
        c = colours[d["label"] % len(colours)]
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=c, linewidth=1.5))
        ax.text(x1, y1, f"{d['name'][:14]} {d['score']:.0%}", color="white", fontsize=6,
                bbox={"facecolor": c, "alpha": 0.7, "pad": 1, "linewidth": 0})
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def cmd_views(args: argparse.Namespace) -> int:
    """``ttakit views --task detect``: each view's boxes mapped back onto the photo, and the
    merged boxes, one panel each."""
    photo = load_image(args.image)
    det, _, cfg, _ = _load(args)
    tta = _tta(det, cfg, args)
    doc = _document(det, tta, [args.image], tta.predict([photo], keep_views=True), args.score_threshold)["images"][0]
    panels = [(v["detections"], f"{v['name']}\n{len(v['detections'])} boxes") for v in doc["views"]]
    panels.append((doc["detections"], f"merged ({tta.merge_name}, {len(tta.views)} views)\n{len(doc['detections'])} boxes"))
    plt = _figure()
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (dets, title) in zip(axes.flat, panels):
        _draw(ax, photo, dets, title)
    fig.tight_layout()
    out = _save(plt, fig, args.out)
    print(f"wrote {out} ({len(tta.views)} views; {len(doc['detections'])} merged boxes scoring >= {args.score_threshold:g})")
    return 0


# --------------------------------------------------------------------------- evaluate
def format_detection_table(results: dict[str, Any], per_view: dict[str, Any] | None = None) -> str:
    """The printed table of ``ttakit evaluate --task detect``."""
    return metric_table(results, (("map", "mAP"), ("map50", "mAP50"), ("map75", "mAP75")), per_view, "mAP")


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``ttakit evaluate --task detect DATA --annotations coco.json``: :func:`ttakit.evaluate`
    of the flags, the table printed."""
    if not args.annotations:
        raise ConfigError("--task detect needs --annotations COCO_JSON naming the images of DATA")
    options = eval_options(args)
    data = load_coco_images(args.data, args.annotations)
    run = _load(args)
    if DistContext.current().is_main:
        print(f"data: {data.describe()}" + (f" (first {args.limit} used)" if args.limit else ""))
    with progress_bar(len(data.head(options.limit)), "evaluate", options.quiet) as bar:
        res = evaluate(run, data, args.tta, task=args.task, out_dir=args.out, options=options, progress=bar,
                       **args.given_options)
    if not res:  # not rank 0
        return 0
    print(format_detection_table(res.results, res.per_view))
    print_written(dict(res.doc), args.out)
    return 0
