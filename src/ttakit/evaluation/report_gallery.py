"""The segmentation and detection parts of the report page: their table and the photos TTA changed most.

A task's gallery is a :class:`Gallery`: each image's path, each row's per-image headline score
(IoU for segmentation, AP for detection) and a function drawing one image's pictures for a row
(:func:`~ttakit.evaluation.overlays.segmentation_panels`,
:func:`~ttakit.evaluation.overlays.detection_panels`). :func:`gallery_page` turns a folder's
``results.json`` and such a gallery into the page context that ``report.html.j2`` draws: per
policy, the photos whose score it raised most and lowered most, each with the truth, the plain
and the TTA predictions side by side.

The gallery page knows no task by name: a task's :class:`~ttakit.evaluation.task_registry.TaskColumns`
say what its table shows and how its legend reads, and its gallery builder (passed to
:func:`load_gallery`) makes its pictures.

Example:
    >>> image_scores([{"plain_iou": "0.5", "hflip_iou": ""}], ["plain", "hflip"], "iou")
    {'plain': [0.5], 'hflip': [nan]}
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data import load_image
from ..datasets import load_mask
from ..errors import TTAKitError
from .charts import Chart, colour, scatter
from .overlays import CHANGE_COLOURS, class_colours, detection_panels, pick_changes, segmentation_panels
from .task_registry import TaskColumns, get_task

__all__ = ["Gallery", "GalleryBuilder", "RowReader", "detection_from_folder", "detection_gallery", "gallery_page",
           "image_scores", "load_gallery", "segmentation_from_folder", "segmentation_gallery"]


@dataclass(frozen=True)
class Gallery:
    """What a gallery needs of a scored folder: paths, per-image scores, pictures on demand."""

    paths: Sequence[str]  # one photo per scored image, in the scores' order
    scores: Mapping[str, Sequence[float]]  # results row key -> (N,) per-image headline score (nan: unscored)
    panels: Callable[[str, int], list[tuple[str, str]]]  # (row key, image) -> (label, data URI) pictures
    # Called once with every (row key -> images) the page will draw, before any picture: a
    # stored folder computes each row's predictions in one pass over its chunks.
    prepare: Callable[[Mapping[str, Sequence[int]]], None] | None = None


def _photo(path: str) -> np.ndarray:
    return np.asarray(load_image(path).convert("RGB"))


def segmentation_gallery(
    paths: Sequence[str], scores: Mapping[str, Sequence[float]], truth: Callable[[int], np.ndarray],
    prediction: Callable[[str, int], np.ndarray], num_classes: int, ignore_index: int | None = 255,
    prepare: Callable[[Mapping[str, Sequence[int]]], None] | None = None,
) -> Gallery:
    """A segmentation :class:`Gallery`: ``truth(j)`` and ``prediction(key, j)`` give image
    ``j``'s ``(H, W)`` class maps at its photo's size (``key`` ``"plain"`` for the plain model)."""
    def panels(key: str, j: int) -> list[tuple[str, str]]:
        return segmentation_panels(_photo(paths[j]), truth(j), prediction("plain", j), prediction(key, j),
                                   num_classes, ignore_index)

    return Gallery(paths, scores, panels, prepare)


def detection_gallery(
    paths: Sequence[str], scores: Mapping[str, Sequence[float]],
    truth: Callable[[int], tuple[np.ndarray, np.ndarray]],
    prediction: Callable[[str, int], Mapping[str, np.ndarray]], num_classes: int, score_threshold: float = 0.3,
    prepare: Callable[[Mapping[str, Sequence[int]]], None] | None = None,
) -> Gallery:
    """A detection :class:`Gallery`: ``truth(j)`` gives image ``j``'s ``(boxes (M, 4), labels (M,))``
    and ``prediction(key, j)`` its ``boxes``/``scores``/``labels``, in photo pixels."""
    def panels(key: str, j: int) -> list[tuple[str, str]]:
        return detection_panels(_photo(paths[j]), *truth(j), prediction("plain", j), prediction(key, j),
                                num_classes, score_threshold)

    return Gallery(paths, scores, panels, prepare)


# --------------------------------------------------------------------------- a stored folder's gallery
def _float(text: str | None) -> float:
    return float(text) if text else math.nan


RowReader = Callable[[Path, str, Sequence[int]], list[Any]]  # (folder, row key, dataset indices) -> predictions
# (paths, per_image.csv rows, results.json, prediction(key, j), prepare) -> the task's Gallery
GalleryBuilder = Callable[[Sequence[str], Sequence[Mapping[str, str]], Mapping[str, Any],
                           Callable[[str, int], Any], Callable[[Mapping[str, Sequence[int]]], None]], Gallery]


def load_gallery(out: Path, doc: Mapping[str, Any], read_row: RowReader | None,
                 build: GalleryBuilder | None = None) -> tuple[Gallery | None, str]:
    """The gallery of a folder, from its ``per_image.csv`` (every task's: dataset index, path,
    the image's own columns, each row's per-image scores) and its stored outputs: ``read_row``
    is the task's reader of a row's predictions and ``build`` makes the task's pictures from
    them. ``(None, why)`` when the folder cannot give one."""
    if read_row is None or build is None:
        return None, "the task's stored predictions were not read (no row reader given): the gallery is left out"
    path = out / "per_image.csv"
    if not path.exists():
        return None, "no per_image.csv in this folder: the gallery is left out"
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    index = [int(r["index"]) for r in rows]  # every task's per_image.csv opens with the dataset index
    paths = [r["path"] for r in rows]
    predictions: dict[tuple[str, int], Any] = {}

    def prepare(wanted: Mapping[str, Sequence[int]]) -> None:
        for key, js in wanted.items():
            todo = [j for j in js if (key, j) not in predictions]
            if todo:  # one pass over the stored chunks per row
                predictions.update(zip(((key, j) for j in todo), read_row(out, key, [index[j] for j in todo])))

    def prediction(key: str, j: int) -> Any:
        prepare({key: [j]})
        return predictions[(key, j)]

    return build(paths, rows, doc, prediction, prepare), ""


def image_scores(rows: Sequence[Mapping[str, str]], keys: Sequence[str], metric: str) -> dict[str, list[float]]:
    """Each results row's per-image ``metric`` from ``per_image.csv`` (empty cells: NaN)."""
    return {k: [_float(r.get(f"{k}_{metric}")) for r in rows] for k in keys}


def segmentation_from_folder(paths: Sequence[str], rows: Sequence[Mapping[str, str]], doc: Mapping[str, Any],
                             prediction: Callable[[str, int], Any],
                             prepare: Callable[[Mapping[str, Sequence[int]]], None]) -> Gallery:
    """A :data:`GalleryBuilder` of segmentation folders (``mask`` and ``<key>_iou`` columns)."""
    scoring = doc.get("scoring", {})
    return segmentation_gallery(paths, image_scores(rows, list(doc["results"]), "iou"),
                                lambda j: load_mask(rows[j]["mask"]), prediction,
                                int(scoring.get("num_classes") or len(doc.get("class_names") or [])),
                                scoring.get("ignore_index", 255), prepare)


def detection_from_folder(paths: Sequence[str], rows: Sequence[Mapping[str, str]], doc: Mapping[str, Any],
                          prediction: Callable[[str, int], Any],
                          prepare: Callable[[Mapping[str, Sequence[int]]], None]) -> Gallery:
    """A :data:`GalleryBuilder` of detection folders (``image_id`` and ``<key>_ap`` columns)."""
    truth = _coco_truth(doc["annotations"])

    def boxes(key: str, j: int) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy() for k, v in prediction(key, j).items()}

    return detection_gallery(paths, image_scores(rows, list(doc["results"]), "ap"),
                             lambda j: truth(int(rows[j]["image_id"])), boxes,
                             max(1, len(doc.get("class_names") or [])), prepare=prepare)


def _coco_truth(annotations: str) -> Callable[[int], tuple[np.ndarray, np.ndarray]]:
    """``image_id -> (boxes (M, 4) xyxy, labels (M,))`` of a COCO file (labels: category ids in sorted order)."""
    doc = json.loads(Path(annotations).read_text())
    order = {c: i for i, c in enumerate(sorted(c["id"] for c in doc["categories"]))}
    by_image: dict[int, list[tuple[list[float], int]]] = {}
    for a in doc["annotations"]:
        x, y, w, h = a["bbox"]
        by_image.setdefault(a["image_id"], []).append(([x, y, x + w, y + h], order[a["category_id"]]))

    def truth(image_id: int) -> tuple[np.ndarray, np.ndarray]:
        found = by_image.get(image_id, [])
        return np.array([b for b, _ in found], float).reshape(-1, 4), np.array([c for _, c in found], np.int64)

    return truth


def _pct(v: Any, percent: bool = True) -> str:
    if v is None or not math.isfinite(float(v)):
        return "–"
    return f"{float(v):.2%}" if percent else f"{float(v):.4g}"


def _format_row(i: int, key: str, res: Mapping[str, Any], spec: TaskColumns, columns: Sequence[tuple[str, str]],
                n: int) -> dict[str, Any]:
    """One results-table row: cells as text (the headline's delta and interval in points)."""
    h = spec.headline
    cells = {c: "–" for c, _ in columns}
    cells.update({c: _pct(res.get(c), spec.percent) for c, _ in spec.metrics if c in cells})
    cells.update(merge=res.get("merge", "–"), views=res.get("views", "–"),
                 ms=f"{1000.0 * res['seconds'] / n:.1f}" if res.get("seconds") and n else "–")
    tone = ""
    if res.get(f"delta_{h}") is not None:
        lo, hi = res.get(f"ci_{h}") or (None, None)
        # percentage points, or the metric's own units
        num = (lambda v: f"{100 * v:+.2f}") if spec.percent else (lambda v: f"{v:+.4g}")
        cells[f"delta_{h}"] = num(res[f"delta_{h}"])
        cells[f"ci_{h}"] = "–" if lo is None else f"[{num(lo)}, {num(hi)}]"
        cells["significant"] = "yes" if res.get("significant") else "no"
        better = (res[f"delta_{h}"] > 0) == spec.higher_is_better
        tone = ("good" if better else "bad") if res.get("significant") else "neutral"
    return {"key": key, "colour": colour(i), "cells": cells, "tone": tone, "tone_cell": f"delta_{h}",
            "verdict": res.get("verdict", ""), "significant": bool(res.get("significant")),
            "exact": res.get("exact", True)}  # False: scored from reduced stored maps (segmentation)


def _cost_charts(results: Mapping[str, Mapping[str, Any]], spec: TaskColumns, n: int) -> list[Chart]:
    """The headline metric against views, and against model time when it was measured."""
    rows = [(i, k, r) for i, (k, r) in enumerate(results.items()) if r.get(spec.headline) is not None]
    h, label = spec.headline, spec.label
    charts = [scatter(f"{label} vs views", "views (forwards per image)", label,
                      [(float(r["views"]), r[h], colour(i), f"{k}: {_pct(r[h], spec.percent)} with {r['views']} views")
                       for i, k, r in rows], yfmt="pct" if spec.percent else "num")]
    ms = [1000.0 * float(r.get("seconds") or 0.0) / max(n, 1) for _, _, r in rows]
    if any(m > 0 for m in ms):
        charts.append(scatter(f"{label} vs model time", "model time per image (ms)", label,
                              [(m, r[h], colour(i), f"{k}: {_pct(r[h], spec.percent)} at {m:.1f} ms/image")
                               for (i, k, r), m in zip(rows, ms)], yfmt="pct" if spec.percent else "num"))
    return charts


def _cards(gallery: Gallery, key: str, picks: Sequence[int], kind: str, spec: TaskColumns) -> list[dict[str, Any]]:
    cards = []
    for j in picks:
        plain, tta = float(gallery.scores["plain"][j]), float(gallery.scores[key][j])
        card = {"path": gallery.paths[j], "file": Path(gallery.paths[j]).name, "kind": kind,
                "score": f"{spec.image_score} {100 * plain:.1f} → {100 * tta:.1f}" if spec.percent
                else f"{spec.image_score} {plain:.4g} → {tta:.4g}", "panels": [], "note": ""}
        try:
            card["panels"] = gallery.panels(key, j)
        except (TTAKitError, OSError) as e:  # a photo moved away: the card says so
            card["note"] = str(e)
        cards.append(card)
    return cards


def gallery_page(
    out: Path, doc: Mapping[str, Any], per_view: Mapping[str, float | None], class_names: Sequence[str] | None,
    max_gallery: int, gallery: Gallery | None = None, read_row: RowReader | None = None, *,
    columns: TaskColumns | None = None, build: GalleryBuilder | None = None,
) -> dict[str, Any]:
    """The page context of a folder of any task but classification: the shared parts and, per
    policy, the photos whose per-image score it raised and lowered most (``gallery``: by
    default the folder's own, read with ``read_row`` and drawn by ``build``, see
    :func:`load_gallery`). ``columns``: the task's (default: its registered ones)."""
    spec = columns or get_task(str(doc.get("task"))).columns
    if spec is None:
        raise TTAKitError(f"{out}: task {doc.get('task')!r} draws its own page, not the gallery page")
    results = doc["results"]
    present = [(c, hdr) for c, hdr in spec.metrics if any(r.get(c) is not None for r in results.values())]
    h = spec.headline
    columns = [("merge", "merge"), ("views", "views"), *present, (f"delta_{h}", f"Δ {spec.label}" + (" (pt)" if spec.percent else "")),
               (f"ci_{h}", "95% CI" + (" (pt)" if spec.percent else "")), ("significant", "sig."), ("ms", "ms / image")]
    n = int(doc.get("n_scored") or doc.get("n_images") or 0) - len(doc.get("skipped") or [])
    table = [_format_row(i, k, r, spec, columns, n) for i, (k, r) in enumerate(results.items())]
    names = list(class_names or doc.get("class_names") or [])
    notes = []
    if gallery is None:
        gallery, note = load_gallery(out, doc, read_row, build)
        notes += [note] if note else []
    picks = {row["key"]: pick_changes(gallery.scores["plain"], gallery.scores[row["key"]], max_gallery)
             if gallery is not None and row["key"] in gallery.scores else {"raised": [], "lowered": []}
             for row in table[1:]}
    if gallery is not None and gallery.prepare is not None:
        wanted = {k: sorted({j for js in p.values() for j in js}) for k, p in picks.items()}
        try:
            gallery.prepare({**wanted, "plain": sorted({j for js in wanted.values() for j in js})})
        except (TTAKitError, OSError) as e:  # stored outputs moved or incomplete: the table still stands
            notes.append(f"the gallery is left out: {e}")
            gallery, picks = None, {k: {"raised": [], "lowered": []} for k in picks}
    policies = [{"row": row, "views": list(results[row["key"]].get("view_names", [])),
                 "gallery": {kind: _cards(gallery, row["key"], js, kind, spec) if gallery is not None else []
                             for kind, js in picks[row["key"]].items()},
                 "per_class": _per_class(results["plain"], results[row["key"]], names)} for row in table[1:]]
    best = max((v for v in per_view.values() if v is not None), default=1.0) or 1.0
    return {
        "n_scored": n, "n_classes": len(names) or "–", "headline": spec.label, "legend": _legend(spec, names),
        "columns": columns, "rows": table, "notes": notes, "policies": policies,
        "cost_title": f"{spec.label} against cost", "cost_charts": _cost_charts(results, spec, n),
        "single": [{"name": k, "value": _pct(v, spec.percent), "width": round(100 * (v or 0.0) / best, 1), "plain": k == "identity"}
                   for k, v in sorted(per_view.items(), key=lambda t: -(t[1] or 0.0))],
        "single_metric": spec.label, "image_score": spec.image_score, "nav_before": [], "nav_after": [],
        "paired_note": f"Paired against plain on the same images: Δ {spec.label} with a 95% bootstrap interval over "
                       "images (the statistic recomputed on each resample of images); significant when the interval "
                       "excludes 0.",
        "sources": "results.json, per_view.json and the stored per-view outputs",
    }


def _legend(spec: TaskColumns, names: Sequence[str]) -> list[tuple[str, str]]:
    """The colours of the gallery's pictures: each class's, and (segmentation) the changed pixels'."""
    background = spec.background
    css = [f"rgb{tuple(int(v) for v in c)}" for c in class_colours(len(names), background)]
    shown = [(n, c) for i, (n, c) in enumerate(zip(names, css)) if i != background]
    if spec.changes:
        shown += [(f"changed: {what}", f"rgb{CHANGE_COLOURS[k]}")
                  for k, what in (("fixed", "now right"), ("broken", "now wrong"), ("other", "another wrong class"))]
    return shown


def _per_class(plain: Mapping[str, Any], row: Mapping[str, Any], names: Sequence[str] | None) -> list[dict[str, Any]]:
    """Per class: plain and policy IoU (segmentation rows carry ``per_class_iou``), largest change first."""
    a, b = plain.get("per_class_iou"), row.get("per_class_iou")
    if not a or not b:
        return []
    if isinstance(a, Mapping):
        keys = list(a)
        a, b, labels = [a[k] for k in keys], [b.get(k) for k in keys], keys
    else:
        labels = [names[i] if names and i < len(names) else f"class_{i}" for i in range(len(a))]
    rows = [{"name": lab, "plain": _pct(x), "tta": _pct(y), "delta": (y - x) if x is not None and y is not None else 0.0}
            for lab, x, y in zip(labels, a, b)]
    for r in rows:
        r["tone"] = "good" if r["delta"] > 0 else "bad" if r["delta"] < 0 else ""
        r["delta"] = f"{100 * r['delta']:+.2f}"
    return rows
