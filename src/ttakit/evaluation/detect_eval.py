"""Detection evaluation: COCO mAP of the plain detector and every policy x box merge.

As for classification (:mod:`ttakit.evaluation.evaluate`), each image is decoded once, every
distinct view of all policies runs once on it, and each view's detections, already mapped
back to the photo's pixels, are stored chunk by chunk (ragged: the concatenated ``boxes``,
``scores`` and ``labels`` of the chunk with the ``image`` and ``view`` of each box) by the
same :class:`~ttakit.evaluation.store.LogitStore` under ``DIR/detections/``. A killed run
resumes at the first missing chunk; a later run asking only for stored views costs no model
time. Scoring merges the stored boxes for every row and measures COCO mAP@[.5:.95] and
mAP@.5 with pycocotools' ``COCOeval`` (not re-implemented here).

The data is a folder of images and a COCO annotation file whose ``images[].file_name`` are
paths relative to that folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..data import InputRenderer
from ..datasets import make_loader
from ..errors import ConfigError, DatasetError
from ..policy import Policy, parse_view
from ..runtime.config import RunConfig, prepare_model, timed
from ..runtime.loop import RenderedInputs
from ..tasks.boxes import get_box_merge
from ..tasks.detect import DetectionTTA, Detections, LoadedDetector, ViewDetections, merge_options_for
from ..transforms import View
from .evaluate import EvalOptions, PolicyRun, union_views
from .store import LogitStore, plan_chunks

__all__ = [
    "CocoImages",
    "DetectScoring",
    "check_merge_options",
    "coco_map",
    "compute_detections",
    "detection_fingerprint",
    "detection_runs",
    "evaluate_detection",
    "load_coco_images",
    "score_detections",
]

LABEL_MAPS = ("index", "id")


@dataclass(frozen=True)
class CocoImages:
    """The images of a folder named by a COCO annotation file.

    Attributes:
        paths: image files (``folder / file_name``), in the annotation file's order.
        image_ids: the COCO id of each image.
        annotations: path of the annotation file.
        source: the image folder.
        category_ids: the COCO category ids, sorted (label ``i`` is ``category_ids[i]``
            unless labels are ids).
        category_names: their names.
        digest: sha256 prefix of the annotation file (part of the run fingerprint).
    """

    paths: tuple[str, ...]
    image_ids: tuple[int, ...]
    annotations: str
    source: str
    category_ids: tuple[int, ...]
    category_names: tuple[str, ...]
    digest: str

    def __len__(self) -> int:
        return len(self.paths)

    def describe(self) -> str:
        return (f"{self.source}: {len(self)} images of {self.annotations}, "
                f"{len(self.category_ids)} categories ({', '.join(self.category_names[:8])})")

    def head(self, n: int | None) -> CocoImages:
        """The first ``n`` images (all when ``n`` is None)."""
        if n is None:
            return self
        return CocoImages(self.paths[:n], self.image_ids[:n], self.annotations, self.source,
                          self.category_ids, self.category_names, self.digest)


def load_coco_images(folder: str | Path, annotations: str | Path) -> CocoImages:
    """Match a folder of images with a COCO annotation file (``file_name`` relative to the
    folder). Images the file names but the folder lacks are kept: they become skip records.

    Raises:
        DatasetError: unreadable or malformed annotations, or none of its images in the folder.
    """
    root, ann = Path(folder), Path(annotations)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder of images")
    try:
        raw = ann.read_bytes()
        doc = json.loads(raw)
        images = [(str(root / im["file_name"]), int(im["id"])) for im in doc["images"]]
        cats = sorted((int(c["id"]), str(c.get("name", c["id"]))) for c in doc["categories"])
        doc["annotations"]  # noqa: B018 - required by COCOeval
    except OSError as e:
        raise DatasetError(f"{ann}: cannot read annotations ({e.strerror or e})") from e
    except (ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"{ann}: not a COCO annotation file (images, annotations, categories): {e}") from e
    if not images or not any(Path(p).is_file() for p, _ in images):
        raise DatasetError(f"{root}: none of the {len(images)} images of {ann} are in this folder")
    return CocoImages(tuple(p for p, _ in images), tuple(i for _, i in images), str(ann), str(root),
                      tuple(c for c, _ in cats), tuple(n for _, n in cats), hashlib.sha256(raw).hexdigest()[:16])


@dataclass(frozen=True)
class DetectScoring:
    """How stored detections are merged and scored.

    Attributes:
        merge_options: box-merge options: ``KEY`` for every merge that has that option,
            ``MERGE.KEY`` for one merge (e.g. ``{"iou_threshold": 0.6, "wbf.conf_type": "max"}``).
        label_map: ``index``: label ``i`` is the ``i``-th category by sorted id (a model
            trained on these categories); ``id``: labels are COCO category ids (torchvision's
            COCO models). Other labels are not scored.
        max_detections: merged boxes kept per image, by score (COCO counts at most 100).

    Example:
        >>> DetectScoring(label_map="name")
        Traceback (most recent call last):
        ...
        ttakit.errors.ConfigError: label_map must be one of index, id, got 'name'
    """

    merge_options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    label_map: str = "index"
    max_detections: int = 100

    def __post_init__(self) -> None:
        if self.label_map not in LABEL_MAPS:
            raise ConfigError(f"label_map must be one of {', '.join(LABEL_MAPS)}, got {self.label_map!r}")
        if not isinstance(self.max_detections, int) or self.max_detections < 1:
            raise ConfigError(f"max_detections must be a positive integer, got {self.max_detections!r}")


def detection_runs(policies: Sequence[Policy], merges: Sequence[str] | None) -> list[PolicyRun]:
    """The plain row, then every policy x box merge (default: the policy's merge if it is a
    box merge, else ``wbf``); names are checked here, once."""
    runs = [PolicyRun("plain", Policy((View(),), name="plain"), "none")]
    for p in policies:
        chosen = list(merges) if merges else [p.merge if p.merge in ("wbf", "nms", "soft_nms", "concat") else "wbf"]
        for m in chosen:
            get_box_merge(m)
            runs.append(PolicyRun(p.name if len(chosen) == 1 else f"{p.name}@{m}", p, m))
    return runs


def check_merge_options(options: Mapping[str, Any], merges: Sequence[str]) -> None:
    """Fail early on a box-merge option that none of ``merges`` would use (a typo would
    otherwise be ignored).

    Raises:
        ConfigError: naming the option.
    """
    for key, value in options.items():
        target, dot, _ = key.rpartition(".")
        if dot and target not in merges:
            raise ConfigError(f"box option {key!r} is for {target!r}, which this run does not use ({', '.join(merges)})")
        if not any(merge_options_for(m, {key: value}) for m in merges):
            raise ConfigError(f"no box merge of this run ({', '.join(merges)}) has an option {key!r}")


def detection_fingerprint(det: LoadedDetector, data: CocoImages, views: Sequence[View], batch_size: int) -> dict[str, Any]:
    """What identifies a run's stored detections: detector, weights, data, views, chunking."""
    return {
        "task": "detect",
        "model": det.name,
        "weights": det.weights,
        "data": data.source,
        "annotations": data.digest,
        "n_images": len(data),
        "views": [v.name for v in views],
        "batch_size": batch_size,
        "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in det.data_config.items()},
    }


# --------------------------------------------------------------------------- compute
class _SizedRenderer:
    """Every input stage of a photo plus its ``(H, W)`` (boxes go back to photo pixels);
    pickles, for DataLoader workers."""

    def __init__(self, renderer: InputRenderer) -> None:
        self.renderer = renderer

    def __call__(self, img: Image.Image) -> dict[str, Tensor]:
        return {**self.renderer(img), "photo_size": torch.tensor([img.height, img.width])}


def compute_detections(
    det: LoadedDetector,
    data: CocoImages,
    views: Sequence[View],
    store: LogitStore,
    run_config: RunConfig,
    options: EvalOptions,
    device: torch.device,
    progress: Callable[[int], Any] | None = None,
) -> None:
    """Run every view on every missing chunk and store its detections in photo pixels.

    The chunk's model time is shared between the views in proportion to their pixels, so each
    row's cost can be reported. ``progress(n)`` is called with the number of images done.
    """
    chunks = plan_chunks(len(data), options.batch_size)
    todo = [c for c in chunks if not store.has(c[0])]
    if progress is not None:
        progress(len(data) - sum(e - s for s, e in todo))
    if not todo:
        return
    tta = DetectionTTA(det.model, Policy(tuple(views)), "concat", norm=det.normalization, run_config=run_config,
                       data_config=det.data_config)
    renderer = _SizedRenderer(InputRenderer({v.source for v in views}, det.data_config))
    loader = make_loader(data.paths, renderer, [range(s, e) for s, e in todo], options.workers)
    h, w = det.data_config["input_size"][-2:]
    pixels = torch.tensor([float(np.prod(v.output_size((h, w) if v.source is None else (v.source.size,) * 2)))
                           for v in views], dtype=torch.float64)
    share = pixels / pixels.sum()  # (U,) each view's share of the chunk's model time
    for (start, stop), (idx, x, bad) in zip(todo, loader):
        if bad and options.strict:
            i, reason = bad[0]
            raise DatasetError(f"{data.paths[i]}: {reason} (--strict)")
        payload: dict[str, Tensor] = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                                      "labels": torch.zeros(0, dtype=torch.long), "image": torch.zeros(0, dtype=torch.long),
                                      "view": torch.zeros(0, dtype=torch.long), "seconds": torch.zeros(len(views), dtype=torch.float64)}
        if x is not None:
            sizes = [tuple(s) for s in x.pop("photo_size").tolist()]
            inputs = RenderedInputs(x, sizes).to(device)
            got: list[ViewDetections] = []
            total = timed(lambda: got.append(tta.detect_views(inputs)), device)
            vd = got[0]
            payload.update(boxes=vd.boxes.cpu(), scores=vd.scores.cpu(), labels=vd.labels.cpu(),
                           image=vd.images.cpu(), view=vd.views.cpu(), seconds=share * total)
        payload["indices"] = torch.tensor(idx, dtype=torch.long)
        store.write(start, payload, bad)
        if progress is not None:
            progress(stop - start)


# --------------------------------------------------------------------------- scoring
def _coco(annotations: str) -> Any:
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        return COCO(annotations)


def coco_map(coco_gt: Any, rows: np.ndarray, image_ids: Sequence[int]) -> dict[str, float | None]:
    """COCO box mAP@[.5:.95], mAP@.5 and mAP@.75 (pycocotools' ``COCOeval``) of detections
    ``rows (M, 7)``: ``image_id, x, y, w, h, score, category_id``, over ``image_ids``
    (``None`` where no image has ground truth)."""
    from pycocotools.cocoeval import COCOeval

    if len(rows) == 0:  # loadRes cannot take an empty list; nothing detected scores 0
        has_gt = bool(coco_gt.getAnnIds(imgIds=list(image_ids)))
        return {k: 0.0 if has_gt else None for k in ("map", "map50", "map75")}
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco_gt, coco_gt.loadRes(rows), "bbox")
        ev.params.imgIds = list(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: (float(v) if v >= 0 else None) for k, v in zip(("map", "map50", "map75"), ev.stats[:3])}


def _coco_rows(dets: Detections, image_ids: Sequence[int], categories: Tensor | None) -> np.ndarray:
    """``(M, 7)`` COCO result rows of per-image detections (labels mapped through
    ``categories``; ``None``: labels are ids)."""
    counts = [len(d["scores"]) for d in dets]
    if not sum(counts):
        return np.zeros((0, 7))
    boxes = torch.cat([d["boxes"] for d in dets]).double().cpu()
    scores = torch.cat([d["scores"] for d in dets]).double().cpu()
    labels = torch.cat([d["labels"] for d in dets]).cpu()
    img = torch.repeat_interleave(torch.tensor(image_ids, dtype=torch.float64), torch.tensor(counts))
    if categories is None:
        cat, ok = labels.double(), torch.ones_like(labels, dtype=torch.bool)
    else:
        ok = (labels >= 0) & (labels < len(categories))
        cat = categories[labels.clamp(0, len(categories) - 1)].double()
    wh = boxes[:, 2:] - boxes[:, :2]
    rows = torch.cat([img[:, None], boxes[:, :2], wh, scores[:, None], cat[:, None]], 1)  # (M, 7)
    return rows[ok].numpy()


@dataclass
class _Row:
    """Streaming state of one results row: its COCO result rows and model time."""

    run: PolicyRun
    cols: list[int]
    options: dict[str, Any]
    rows: list[np.ndarray] = field(default_factory=list)
    seconds: float = 0.0


def _view_detections(payload: Mapping[str, Tensor], names: Sequence[str]) -> ViewDetections:
    return ViewDetections(payload["boxes"], payload["scores"], payload["labels"], payload["image"], payload["view"],
                          len(payload["indices"]), tuple(names))


def score_detections(
    store: LogitStore,
    data: CocoImages,
    runs: Sequence[PolicyRun],
    scoring: DetectScoring,
) -> tuple[dict[str, Any], dict[str, float | None], list[dict[str, Any]]]:
    """Merge the stored detections for every row, chunk by chunk, and score them.

    Returns:
        ``(results, per_view, skipped)``: ``results[key]`` holds merge, views, view_names,
        map, map50, map75, seconds, images_per_s; ``per_view[name]`` each view's mAP alone;
        ``skipped`` the unreadable files.
    """
    names = list(store.fingerprint["views"])
    columns = {n: i for i, n in enumerate(names)}
    try:
        rows = [_Row(r, [columns[v.name] for v in r.policy.views],
                     {} if r.is_plain else merge_options_for(r.merge, scoring.merge_options)) for r in runs]
    except KeyError as e:
        raise DatasetError(f"view {e.args[0]!r} is not in the stored detections of {store.dir.parent}") from e
    singles = [_Row(PolicyRun(n, Policy((parse_view(n),)), "none"), [u], {}) for u, n in enumerate(names)]
    categories = torch.tensor(data.category_ids) if scoring.label_map == "index" else None
    skipped: list[dict[str, Any]] = []
    evaluated: list[int] = []
    for payload, bad in store.chunks():
        skipped += [{"path": data.paths[i], "reason": reason} for i, reason in bad]
        ids = [data.image_ids[i] for i in payload["indices"].tolist()]
        evaluated += ids
        vd = _view_detections(payload, names)
        for row in rows + singles:
            merge = None if len(row.cols) == 1 else get_box_merge(row.run.merge)
            w = row.run.policy.weights
            dets = vd.select(row.cols).merge(merge, None if w is None else list(w), row.options, scoring.max_detections)
            row.rows.append(_coco_rows(dets, ids, categories))
            row.seconds += float(payload["seconds"][row.cols].sum())
    coco = _coco(data.annotations)

    def metrics(row: _Row) -> dict[str, float | None]:
        return coco_map(coco, np.concatenate(row.rows) if row.rows else np.zeros((0, 7)), evaluated)

    results = {
        r.run.key: {
            "merge": "none" if r.run.is_plain else r.run.merge,
            "views": len(r.cols),
            "view_names": r.run.policy.view_names,
            **metrics(r),
            "seconds": round(r.seconds, 4),
            "images_per_s": round(len(evaluated) / r.seconds, 2) if r.seconds > 0 else None,
        }
        for r in rows
    }
    return results, {r.run.key: metrics(r)["map"] for r in singles}, skipped


# --------------------------------------------------------------------------- driver
def evaluate_detection(
    det: LoadedDetector,
    data: CocoImages,
    policies: Sequence[Policy],
    merges: Sequence[str] | None,
    out_dir: str | Path,
    run_config: RunConfig,
    options: EvalOptions = EvalOptions(),
    scoring: DetectScoring = DetectScoring(),
    device: torch.device | str = "cpu",
    progress: Callable[[int], Any] | None = None,
) -> dict[str, Any]:
    """Evaluate the plain detector and every policy x box merge on ``data``; write
    ``results.json`` and ``per_view.json`` and keep the per-view detections in ``out_dir``.

    Returns:
        The ``results.json`` document: task, model, weights, data, annotations, n_images,
        skipped, results (rows with map, map50, map75, views, seconds, ...) and per_view.

    Example:
        >>> data = load_coco_images("runs/detection_demo/test", "runs/detection_demo/test.json")  # doctest: +SKIP
        >>> res = evaluate_detection(det, data, [create_policy("hflip")], ["nms", "wbf"], "runs/x", RunConfig())  # doctest: +SKIP
        >>> res["results"]["hflip@wbf"]["map"]  # doctest: +SKIP
        0.61
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("detection evaluation runs in one process (not under torchrun)")
    if options.adaptive is not None:
        raise ConfigError("adaptive TTA is for classification; leave --adaptive out with --task detect")
    device = torch.device(device)
    prepare_model(det.model.to(device), run_config)
    data = data.head(options.limit)
    runs = detection_runs(policies, merges)
    check_merge_options(scoring.merge_options, sorted({r.merge for r in runs if not r.is_plain}))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = LogitStore(out, detection_fingerprint(det, data, union_views(policies), options.batch_size), subdir="detections")
    views = [parse_view(n) for n in store.fingerprint["views"]]  # a reused run may hold more views
    compute_detections(det, data, views, store, run_config, options, device, progress)
    results, per_view, skipped = score_detections(store, data, runs, scoring)
    doc = {
        "task": "detect",
        "model": det.name,
        "weights": det.weights,
        "data": data.source,
        "annotations": data.annotations,
        "n_images": len(data),
        "skipped": skipped,
        "results": results,
        "per_view": per_view,
    }
    (out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "per_view.json").write_text(json.dumps(per_view, indent=2) + "\n")
    return doc
