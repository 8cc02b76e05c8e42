"""Detection in the evaluation pipeline: COCO images, stored boxes, box merges, COCO mAP, paired intervals.

The pipeline (:mod:`~ttakit.evaluation.pipeline`) decodes each image once, runs every distinct
view once and stores chunk by chunk what :class:`DetectTask` packs: each view's detections,
already mapped back to the photo's pixels (ragged: the concatenated ``boxes``, ``scores`` and
``labels`` of the chunk with the ``image`` and ``view`` of each box), under
``DIR/detections/``. Scoring merges the stored boxes for every row and measures COCO
mAP@[.5:.95], mAP@.5 and mAP@.75 with pycocotools' ``COCOeval``; each policy is compared
with plain by a paired bootstrap of mAP over images (:mod:`~ttakit.evaluation.box_map`
accumulates COCO's matches for every resample at once).

The data is a folder of images and a COCO annotation file whose ``images[].file_name`` are
paths relative to that folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, DatasetError
from ..models import LoadedModel
from ..policy import Policy
from ..runtime.config import RunConfig
from ..runtime.loop import RenderedInputs
from ..tasks.boxes import BoxMergeOptions, box_options_for_run, get_box_merge, list_box_merges
from ..tasks.detect import DETECT_COLUMNS, Detections, LoadedDetector, ViewDetections
from ..tasks.detect.deaugment import check_box_views, deaugment_detections
from ..tasks.geometry import Geometry
from ..views import View
from .box_map import coco_gt, coco_map, match_table, per_image_map, weighted_map
from .rows import PerImageCsv, Row
from .pipeline import EvalJob, EvalTask, Scored, row_predictions, run_evaluation, single_view_runs, stored_chunks, view_columns
from .report import write_report
from .report_gallery import detection_from_folder, gallery_page
from .task_registry import ReportSettings
from .scoring import EvalOptions, PolicyRun, policy_runs
from .stats import compare_statistic
from .store import OutputStore

__all__ = [
    "CocoImages",
    "DetectScoring",
    "DetectTask",
    "evaluate_detection",
    "load_coco_images",
    "row_detections",
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
        n_resamples: bootstrap resamples of the paired mAP interval (1000: mAP is re-accumulated
            for each, about 35 s for 500 images of 20 boxes on a busy 2-core CPU).

    Example:
        >>> DetectScoring(label_map="name")
        Traceback (most recent call last):
        ...
        ttakit.errors.ConfigError: label_map must be one of index, id, got 'name'
    """

    merge_options: Mapping[str, Any] = field(default_factory=dict, hash=False)
    label_map: str = "index"
    max_detections: int = 100
    n_resamples: int = 1000

    def __post_init__(self) -> None:
        if self.label_map not in LABEL_MAPS:
            raise ConfigError(f"label_map must be one of {', '.join(LABEL_MAPS)}, got {self.label_map!r}")
        if not isinstance(self.max_detections, int) or self.max_detections < 1:
            raise ConfigError(f"max_detections must be a positive integer, got {self.max_detections!r}")




# --------------------------------------------------------------------------- the task
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


@dataclass(kw_only=True)
class _Row(Row):
    """One detection row: the shared :class:`~ttakit.evaluation.rows.Row`, its merge options,
    its COCO result rows and boxes per image."""

    options: BoxMergeOptions | None
    rows: list[np.ndarray] = field(default_factory=list)
    boxes: list[int] = field(default_factory=list)

    def add(self, vd: ViewDetections, ids: Sequence[int], seconds: Tensor, scoring: DetectScoring,
            categories: Tensor | None) -> None:
        dets = _merged(vd, self.run, self.cols, self.options, scoring.max_detections)
        self.rows.append(_coco_rows(dets, ids, categories))
        self.boxes += [len(d["scores"]) for d in dets]
        self.charge(seconds)

    def table(self) -> np.ndarray:
        return np.concatenate(self.rows) if self.rows else np.zeros((0, 7))


def _merged(vd: ViewDetections, run: PolicyRun, cols: Sequence[int], options: BoxMergeOptions | None,
            max_detections: int) -> Detections:
    """A row's merged detections of one stored chunk (one view: its boxes as they are)."""
    merge = None if len(cols) == 1 else get_box_merge(run.merge)
    w = run.policy.weights
    return vd.select(cols).merge(merge, None if w is None else list(w), options, max_detections)


def _view_detections(payload: Mapping[str, Tensor], names: Sequence[str]) -> ViewDetections:
    return ViewDetections(payload["boxes"], payload["scores"], payload["labels"], payload["image"], payload["view"],
                          len(payload["indices"]), tuple(names))


def _default_box_merge(policy: Policy) -> str:
    return policy.merge if policy.merge in list_box_merges() else "wbf"


@dataclass
class DetectTask(EvalTask):
    """Detection in the pipeline (see the module docstring).

    Attributes:
        det: the detector (its data config maps boxes back to photo pixels).
        data: the COCO images.
        scoring: how stored boxes are merged and scored.
        run_config: micro-batch, memory format and autocast of the view loop.
    """

    det: LoadedDetector
    data: CocoImages
    scoring: DetectScoring
    run_config: RunConfig
    name: str = "detect"
    subdir: str = "detections"

    def runs(self, policies: Sequence[Policy], merges: Sequence[str] | None) -> list[PolicyRun]:
        runs = policy_runs(policies, merges, resolve=get_box_merge, default=_default_box_merge, plain_merge="none")
        box_options_for_run([r.merge for r in runs if not r.is_plain], self.scoring.merge_options)  # checked here, once
        return runs

    def fingerprint(self, data: CocoImages) -> dict[str, Any]:
        return {"task": "detect", "annotations": data.digest}

    def pack(self, outs: list[Any], inputs: RenderedInputs, views: Sequence[View], indices: Sequence[int],
             job: EvalJob) -> dict[str, Tensor]:
        check_box_views(views, tuple(self.det.data_config["input_size"][-2:]))  # views whose boxes cannot be undone
        vd = deaugment_detections(views, outs, Geometry.of(inputs, self.det.data_config))  # no model needed
        return {"boxes": vd.boxes.cpu(), "scores": vd.scores.cpu(), "labels": vd.labels.cpu(),
                "image": vd.images.cpu(), "view": vd.views.cpu()}

    def empty(self, views: Sequence[View]) -> dict[str, Tensor]:
        return {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long),
                "image": torch.zeros(0, dtype=torch.long), "view": torch.zeros(0, dtype=torch.long)}

    def score(self, store: OutputStore, data: CocoImages, runs: Sequence[PolicyRun], out: Path) -> Scored:
        names = list(store.fingerprint["views"])
        opts = box_options_for_run([r.merge for r in runs if not r.is_plain], self.scoring.merge_options)
        singles = single_view_runs(store)
        rows = [_Row(r, cols, options=opts.get(r.merge))
                for r, cols in zip([*runs, *singles], view_columns(store, [*runs, *singles]))]
        categories = torch.tensor(data.category_ids) if self.scoring.label_map == "index" else None
        skipped: list[dict[str, Any]] = []
        indices: list[int] = []
        for payload in stored_chunks(store, data, skipped):
            ids = [data.image_ids[i] for i in payload["indices"].tolist()]
            indices += payload["indices"].tolist()
            vd = _view_detections(payload, names)
            for row in rows:
                row.add(vd, ids, payload["seconds"], self.scoring, categories)
        gt = coco_gt(data.annotations)
        evaluated = [data.image_ids[i] for i in indices]
        tables = {r.run.key: match_table(gt, r.table(), evaluated) for r in rows[:len(runs)]}
        per_image = {k: per_image_map(t) for k, t in tables.items()}  # (N,) each image's own AP
        results = {
            r.run.key: r.entry(coco_map(gt, r.table(), evaluated), len(evaluated))
            for r in rows[:len(runs)]
        }
        self._write_per_image(out / "per_image.csv", data, indices, rows[:len(runs)], per_image)
        doc = {"annotations": data.annotations, "class_names": list(data.category_names), "scoring": {
            "label_map": self.scoring.label_map, "max_detections": self.scoring.max_detections,
            "merge_options": {m: dataclasses.asdict(o) for m, o in opts.items()}}}
        per_view = {r.run.key: coco_map(gt, r.table(), evaluated)["map"] for r in rows[len(runs):]}
        return Scored(results, per_view, skipped, tables, doc)

    @staticmethod
    def _write_per_image(path: Path, data: CocoImages, indices: Sequence[int], rows: Sequence[_Row],
                         per_image: Mapping[str, np.ndarray]) -> None:
        """``per_image.csv`` (:class:`~ttakit.evaluation.rows.PerImageCsv`): index, path,
        image_id, then per row its AP@[.5:.95] on the image (``<key>_ap``, empty without ground
        truth) and its merged box count (``<key>_boxes``)."""
        with PerImageCsv(path, ["image_id"], [r.run.key for r in rows], ["ap", "boxes"]) as table:
            for j, i in enumerate(indices):
                values = [v for r in rows for v in (float(per_image[r.run.key][j]), r.boxes[j])]
                table.write(i, data.paths[i], [data.image_ids[i]], values)

    def compare(self, scored: Scored, key: str) -> tuple[dict[str, Any], str]:
        plain, tta = scored.state["plain"], scored.state[key]
        cmp = compare_statistic(lambda w: weighted_map(tta, w) - weighted_map(plain, w), plain.n_images, "map",
                                self.scoring.n_resamples)
        fields = cmp.to_dict()
        p50, t50 = scored.results["plain"]["map50"], scored.results[key]["map50"]
        fields["delta_map50"] = None if p50 is None or t50 is None else t50 - p50
        return fields, cmp.verdict(key, "mAP")

    def finish(self, out: Path, lm: LoadedModel, options: EvalOptions) -> list[str]:
        return [str(write_report(out))]


def evaluate_detection(
    det: LoadedDetector,
    data: CocoImages,
    policies: Sequence[Policy],
    *,
    out_dir: str | Path,
    merges: Sequence[str] | None = None,
    run_config: RunConfig,
    scoring: DetectScoring = DetectScoring(),
    options: EvalOptions = EvalOptions(),
    device: torch.device | str = "cpu",
    progress: Callable[[int], Any] | None = None,
) -> dict[str, Any]:
    """Evaluate the plain detector and every policy x box merge on ``data``; write
    ``results.json``, ``per_view.json`` and ``per_image.csv`` and keep the per-view detections
    in ``out_dir/detections/``. Runs under torchrun as a single process does.

    Returns:
        The ``results.json`` document: task, model, weights, data, n_images, annotations,
        scoring, skipped, results (rows with map, map50, map75, views, seconds, ...; each
        policy with ``delta_map``, ``ci_map``, ``significant``, ``delta_map50``, ``verdict``)
        plus per_view and written.

    Example:
        >>> data = load_coco_images("runs/detection_demo/test", "runs/detection_demo/test.json")  # doctest: +SKIP
        >>> res = evaluate_detection(det, data, [create_policy("hflip")], out_dir="runs/x", merges=["nms", "wbf"],
        ...                          run_config=RunConfig())  # doctest: +SKIP
        >>> res["results"]["hflip@wbf"]["map"]  # doctest: +SKIP
        0.61
    """
    task = DetectTask(det, data, scoring, run_config)
    return run_evaluation(task, det, data, policies, out_dir=out_dir, merges=merges, run_config=run_config,
                          options=options, device=device, progress=progress)


def row_detections(out_dir: str | Path, key: str, indices: Sequence[int]) -> list[Detections]:
    """The merged detections of row ``key`` of a finished detection run, for the dataset
    images ``indices`` (photo pixels, as scored), recomputed from the stored boxes: what the
    report draws.

    Raises:
        DatasetError: no such row or stored image.
    """

    def predict(payload: dict[str, Tensor], run: PolicyRun, cols: list[int], doc: dict[str, Any],
                positions: list[int]) -> list[Any]:
        scoring = doc["scoring"]
        options = None if len(cols) == 1 else box_options_for_run(
            [run.merge], scoring["merge_options"].get(run.merge))[run.merge]
        dets = _merged(_view_detections(payload, doc["stored_views"]), run, cols, options, scoring["max_detections"])
        return [dets[j] for j in positions]

    return row_predictions(out_dir, key, "detections", indices, predict)


def page(out: Path, doc: Mapping[str, Any], per_view: Mapping[str, Any], s: ReportSettings) -> dict[str, Any]:
    return gallery_page(out, doc, per_view, s.class_names, s.max_gallery, read_row=row_detections, columns=DETECT_COLUMNS,
                        build=detection_from_folder)

