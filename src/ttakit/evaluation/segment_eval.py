"""Segmentation in the evaluation pipeline: stored class probabilities, masked merges, mIoU with paired intervals.

The pipeline (:mod:`~ttakit.evaluation.pipeline`) decodes each photo once and runs every
distinct view once; :class:`SegmentTask` de-augments each view's map with
:func:`~ttakit.tasks.deaugment.deaugment_maps` (no model: softmax, the view's geometry
undone onto the plain output grid, with the mask of the pixels the view saw) and stores the
class probabilities as float16 at a grid of at most ``store_size`` pixels on the long side
(``N x U x K x h x w x 2`` bytes in all), with the masks, under ``DIR/segmentation/``.

Scoring merges every row's views with the dense merge (``mean`` or ``max`` over the views that
saw each pixel), resizes the merged probabilities back onto each mask's pixels (through the
window of the photo the model saw: the whole photo for a segmenter's ``squash`` input), takes
the argmax and counts a confusion matrix and boundary-IoU counts per image
(:mod:`~ttakit.evaluation.seg_metrics`); each policy is compared with plain by a paired
bootstrap of mIoU over images.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..datasets import MaskedImages, load_mask
from ..errors import ConfigError, DatasetError, ShapeError
from ..models import LoadedModel
from ..policy import Policy
from ..runtime.backends import Backend
from ..runtime.config import RunConfig
from ..runtime.loop import RenderedInputs
from ..stages import Input
from ..tasks.deaugment import deaugment_maps
from ..tasks.dense import DENSE_MERGES
from ..tasks.geometry import Geometry
from ..views import View
from .rows import PerImageCsv, row_header, timing
from .pipeline import Scored, row_predictions, run_evaluation, single_view_runs, stored_chunks, view_columns
from .report import write_report
from .report_gallery import segmentation_from_folder, gallery_page
from .task_registry import EVAL_TASKS, ReportSettings, ReportSpec, TaskColumns
from .scoring import EvalOptions, PolicyRun, policy_runs
from .seg_metrics import band_counts, boundary_iou, class_bands, confusion, dice, iou_per_class, miou, pixel_accuracy
from .stats import compare_statistic
from .store import LogitStore

__all__ = ["SegmentScoring", "SegmentTask", "evaluate_segmentation", "row_masks"]


@dataclass(frozen=True)
class SegmentScoring:
    """How stored maps are scored.

    Attributes:
        num_classes: classes of the segmenter (its output channels); mask values are indices.
        ignore_index: mask value of pixels that are not scored (any other value >= K is an error).
        store_size: long side of the stored probability grid (the model's own grid if smaller).
        boundary_ratio: boundary-IoU band width as a share of the image diagonal.
        n_resamples: bootstrap resamples of the paired mIoU interval.

    Example:
        >>> SegmentScoring(num_classes=1)
        Traceback (most recent call last):
        ...
        ttakit.errors.ConfigError: num_classes must be an integer >= 2, got 1
    """

    num_classes: int
    ignore_index: int = 255
    store_size: int = 128
    boundary_ratio: float = 0.02
    n_resamples: int = 2000

    def __post_init__(self) -> None:
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ConfigError(f"num_classes must be an integer >= 2, got {self.num_classes!r}")
        if not isinstance(self.store_size, int) or self.store_size < 4:
            raise ConfigError(f"store_size must be an integer >= 4, got {self.store_size!r}")
        if not 0.0 < self.boundary_ratio < 0.5:
            raise ConfigError(f"boundary_ratio must be in (0, 0.5), got {self.boundary_ratio}")


def _default_dense_merge(policy: Policy) -> str:
    return policy.merge if policy.merge in DENSE_MERGES.names() else "mean"


def _store_grid(grid: tuple[int, int], cap: int) -> tuple[int, int]:
    h, w = grid
    s = min(1.0, cap / max(h, w))
    return max(1, round(h * s)), max(1, round(w * s))


@dataclass
class _Counts:
    """One row's per-image counts and model time."""

    run: PolicyRun
    cols: list[int]
    conf: list[Tensor] = field(default_factory=list)  # (K, K) per image
    edges: list[Tensor] = field(default_factory=list)  # (K, 2) per image
    seconds: float = 0.0

    def result(self, n: int) -> dict[str, Any]:
        c, b = torch.stack(self.conf).sum(0).numpy(), torch.stack(self.edges).sum(0).numpy()
        return {
            **row_header(self.run),
            "miou": float(miou(c)),
            "pixel_acc": float(pixel_accuracy(c)),
            "mean_dice": float(dice(c)),
            "boundary_iou": float(boundary_iou(b)),
            "per_class_iou": [None if np.isnan(v) else float(v) for v in iou_per_class(c)],
            **timing(self.seconds, n),
        }


def merged_probs(payload: Mapping[str, Tensor], run: PolicyRun, cols: Sequence[int]) -> Tensor:
    """A row's merged class probabilities ``(n, K, h, w)`` of one stored chunk."""
    y = payload["probs"][:, cols].float().transpose(0, 1)  # (V, n, K, h, w)
    m = payload["masks"][:, cols].float().transpose(0, 1)  # (V, n, 1, h, w)
    w = torch.ones(len(cols)) if run.policy.weights is None else torch.tensor(run.policy.weights, dtype=torch.float32)
    return DENSE_MERGES.get("mean" if len(cols) == 1 else run.merge)(y, m, w)


def to_photo(probs: Tensor, data_config: Mapping[str, Any], photo_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Probabilities ``(K, h, w)`` of the plain input's grid onto the photo's pixels: resized
    into the window of the photo the plain input shows (the whole photo for ``squash``).
    Returns ``(K, H, W)`` and the ``(H, W)`` pixels the model saw."""
    H, W = photo_size
    if data_config.get("crop_mode") == "squash":
        top, left, h, w = 0, 0, H, W
    else:
        t, l_, hh, ww = Input.of_model(data_config).window(photo_size)
        top, left, h, w = round(t), round(l_), round(hh), round(ww)
    inner = F.interpolate(probs[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    out = torch.zeros(probs.shape[0], H, W)
    seen = torch.zeros(H, W, dtype=torch.bool)
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + h, H), min(left + w, W)
    out[:, y0:y1, x0:x1] = inner[:, y0 - top:y1 - top, x0 - left:x1 - left]
    seen[y0:y1, x0:x1] = True
    return out, seen


@dataclass
class SegmentTask:
    """Segmentation in the pipeline (see the module docstring).

    Attributes:
        lm: the segmenter (its data config says how photos became its input).
        scoring: classes, ignore index, stored grid.
        run_config: micro-batch, memory format and autocast of the view loop.
    """

    lm: LoadedModel
    scoring: SegmentScoring
    run_config: RunConfig
    name: str = "segment"
    subdir: str = "segmentation"

    def runs(self, policies: Sequence[Policy], merges: Sequence[str] | None) -> list[PolicyRun]:
        return policy_runs(policies, merges, resolve=DENSE_MERGES.get, default=_default_dense_merge)

    def fingerprint(self, data: MaskedImages) -> dict[str, Any]:
        h = hashlib.sha256("\n".join(f"{p}\t{m}" for p, m in zip(data.paths, data.masks)).encode()).hexdigest()[:16]
        return {"task": "segment", "data_hash": h, "store_size": self.scoring.store_size}

    def pack(self, outs: list[Any], inputs: RenderedInputs, views: Sequence[View], indices: Sequence[int]) -> dict[str, Tensor]:
        # No model needed: the views are undone from their outputs and the photos' geometry.
        y, m = deaugment_maps(views, outs, Geometry.of(inputs, self.lm.data_config))  # (U, n, K, H', W'), (U, 1|n, 1, H', W')
        if y.shape[2] != self.scoring.num_classes:
            raise ShapeError("segmenter output", f"(B, {self.scoring.num_classes}, h, w) (`scoring.num_classes`)", tuple(outs[0].shape))
        u, n = y.shape[:2]
        size = _store_grid(tuple(y.shape[-2:]), self.scoring.store_size)
        y = F.interpolate(y.flatten(0, 1).float(), size=size, mode="area").view(u, n, -1, *size)
        m = F.interpolate(m.expand(-1, n, -1, -1, -1).flatten(0, 1).float(), size=size, mode="area").view(u, n, 1, *size)
        return {"probs": y.transpose(0, 1).half().cpu(), "masks": m.transpose(0, 1).half().cpu(),
                "photo_size": torch.tensor(inputs.photo_sizes, dtype=torch.long)}

    def empty(self, views: Sequence[View]) -> dict[str, Tensor]:
        k, u = self.scoring.num_classes, len(views)
        return {"probs": torch.zeros(0, u, k, 1, 1, dtype=torch.float16),
                "masks": torch.zeros(0, u, 1, 1, 1, dtype=torch.float16), "photo_size": torch.zeros(0, 2, dtype=torch.long)}

    def _truth(self, data: MaskedImages, i: int, photo_size: tuple[int, int]) -> Tensor:
        mask = torch.from_numpy(load_mask(data.masks[i]))
        if tuple(mask.shape) != photo_size:
            raise DatasetError(f"{data.masks[i]}: mask is {mask.shape[1]}x{mask.shape[0]}, its photo "
                               f"{photo_size[1]}x{photo_size[0]}")
        bad = (mask != self.scoring.ignore_index) & ((mask < 0) | (mask >= self.scoring.num_classes))
        if bad.any():
            raise DatasetError(f"{data.masks[i]}: value {int(mask[bad][0])} is neither a class index "
                               f"(< {self.scoring.num_classes}) nor the ignore index {self.scoring.ignore_index}")
        return mask

    def score(self, store: LogitStore, data: MaskedImages, runs: Sequence[PolicyRun], out: Path) -> Scored:
        singles = single_view_runs(store)
        rows = [_Counts(r, cols) for r, cols in zip([*runs, *singles], view_columns(store, [*runs, *singles]))]
        k, skipped, indices = self.scoring.num_classes, [], []
        for payload in stored_chunks(store, data, skipped):
            here = payload["indices"].tolist()
            indices += here
            truths = [self._truth(data, i, tuple(s)) for i, s in zip(here, payload["photo_size"].tolist())]
            ratio, seen_all, truth_bands = self.scoring.boundary_ratio, [], []
            for t in truths:  # what does not depend on the row: the window the model saw, the truth's bands
                seen = to_photo(torch.zeros(1, 1, 1), self.lm.data_config, tuple(t.shape))[1]
                valid = seen & (t != self.scoring.ignore_index)
                seen_all.append(valid)
                truth_bands.append(class_bands(t, valid, k, ratio))
            for row in rows:
                probs = merged_probs(payload, row.run, row.cols)  # (n, K, h, w)
                for j, t in enumerate(truths):
                    pred, valid = to_photo(probs[j], self.lm.data_config, tuple(t.shape))[0].argmax(0), seen_all[j]
                    row.conf.append(confusion(t, pred, valid, k))
                    row.edges.append(band_counts(truth_bands[j], class_bands(pred, valid, k, ratio)))
                row.seconds += float(payload["seconds"][row.cols].sum())
        n = len(indices)
        results = {r.run.key: r.result(n) for r in rows[:len(runs)]}
        per_view = {r.run.key: r.result(n)["miou"] for r in rows[len(runs):]}
        state = {r.run.key: torch.stack(r.conf).flatten(1).numpy().astype(np.float64) for r in rows[:len(runs)]}
        self._write_per_image(out / "per_image.csv", data, indices, rows[:len(runs)])
        doc = {"masks": data.mask_source, "scoring": {"num_classes": k, "ignore_index": self.scoring.ignore_index,
                                                      "store_size": self.scoring.store_size,
                                                      "boundary_ratio": self.scoring.boundary_ratio},
               "class_names": list(self.lm.class_names)}
        return Scored(results, per_view, skipped, state, doc)

    @staticmethod
    def _write_per_image(path: Path, data: MaskedImages, indices: Sequence[int], rows: Sequence[_Counts]) -> None:
        """``per_image.csv`` (:class:`~ttakit.evaluation.rows.PerImageCsv`): index, path, mask,
        then per row the image's own mIoU (``<key>_iou``, over the classes in its mask or
        prediction) and pixel accuracy (``<key>_acc``)."""
        with PerImageCsv(path, ["mask"], [r.run.key for r in rows], ["iou", "acc"]) as table:
            for j, i in enumerate(indices):
                values = [float(f(r.conf[j].numpy())) for r in rows for f in (miou, pixel_accuracy)]
                table.write(i, data.paths[i], [data.masks[i]], values)

    def compare(self, scored: Scored, key: str) -> tuple[dict[str, Any], str]:
        plain, tta = scored.state["plain"], scored.state[key]  # (N, K*K) per-image confusion counts
        k = self.scoring.num_classes

        def delta(w: np.ndarray) -> np.ndarray:
            return miou((w @ tta).reshape(-1, k, k)) - miou((w @ plain).reshape(-1, k, k))

        cmp = compare_statistic(delta, plain.shape[0], "miou", self.scoring.n_resamples)
        fields = cmp.to_dict()
        for metric in ("pixel_acc", "mean_dice", "boundary_iou"):
            fields[f"delta_{metric}"] = scored.results[key][metric] - scored.results["plain"][metric]
        return fields, cmp.verdict(key, "mIoU")

    def finish(self, out: Path, lm: LoadedModel, options: EvalOptions) -> list[str]:
        return [str(write_report(out))]


def evaluate_segmentation(
    lm: LoadedModel,
    data: MaskedImages,
    policies: Sequence[Policy],
    *,
    out_dir: str | Path,
    merges: Sequence[str] | None = None,
    run_config: RunConfig,
    scoring: SegmentScoring,
    options: EvalOptions = EvalOptions(),
    device: torch.device | str = "cpu",
    progress: Callable[[int], Any] | None = None,
    backend: Backend | None = None,
) -> dict[str, Any]:
    """Evaluate the plain segmenter and every policy x dense merge (``mean``, ``max``) on
    ``data``; write ``results.json``, ``per_view.json`` and ``per_image.csv`` and keep the
    per-view probabilities in ``out_dir/segmentation/``. Runs under torchrun as one process.

    Returns:
        The ``results.json`` document (task, model, weights, data, n_images, masks, scoring,
        class_names, skipped, results: rows with miou, pixel_acc, mean_dice, boundary_iou,
        per_class_iou, seconds, ...; each policy with ``delta_miou``, ``ci_miou``,
        ``significant``, ``delta_pixel_acc``, ``delta_mean_dice``, ``delta_boundary_iou`` and
        a ``verdict``) plus per_view and written.

    Example:
        >>> seg = load_segmenter("examples/segmentation_demo.py:load", 2)  # doctest: +SKIP
        >>> data = find_masked_images("runs/seg/test/images", "runs/seg/test/masks")  # doctest: +SKIP
        >>> res = evaluate_segmentation(seg, data, [create_policy("hflip")], out_dir="runs/s", run_config=RunConfig(),
        ...                             scoring=SegmentScoring(2))  # doctest: +SKIP
        >>> res["results"]["hflip"]["delta_miou"]  # doctest: +SKIP
        0.004
    """
    if options.adaptive is not None:
        raise ConfigError("adaptive TTA is for classification; leave `options.adaptive` out for segmentation")
    task = SegmentTask(lm, scoring, run_config)
    return run_evaluation(task, lm, data, policies, out_dir=out_dir, merges=merges, run_config=run_config,
                          options=options, device=device, progress=progress, backend=backend)


def row_masks(out_dir: str | Path, key: str, indices: Sequence[int]) -> list[np.ndarray]:
    """The predicted class map ``(H, W)`` int64 of row ``key`` of a finished segmentation run
    for the dataset images ``indices`` (on the photo's pixels; ``-1`` where the model saw
    nothing), recomputed from the stored probabilities: what the report draws.

    Raises:
        DatasetError: no such row or stored image.
    """

    def predict(payload: dict[str, Tensor], run: PolicyRun, cols: list[int], doc: dict[str, Any],
                positions: list[int]) -> list[np.ndarray]:
        probs = merged_probs(payload, run, cols)
        config = json.loads((Path(out_dir) / "segmentation" / "run.json").read_text())["data_config"]
        maps = []
        for j in positions:
            full, seen = to_photo(probs[j], config, tuple(payload["photo_size"][j].tolist()))
            maps.append(torch.where(seen, full.argmax(0), -1).numpy())
        return maps

    return row_predictions(out_dir, key, "segmentation", indices, predict)


SEGMENT_COLUMNS = TaskColumns("miou", "mIoU", (("miou", "mIoU"), ("pixel_acc", "pixel acc."), ("mean_dice", "mean Dice"),
                                               ("boundary", "boundary F1"), ("boundary_iou", "boundary IoU")), "IoU",
                              background=0, changes=True)


def _page(out: Path, doc: Mapping[str, Any], per_view: Mapping[str, Any], s: ReportSettings) -> dict[str, Any]:
    return gallery_page(out, doc, per_view, s.class_names, s.max_gallery, read_row=row_masks, columns=SEGMENT_COLUMNS,
                        build=segmentation_from_folder)


EVAL_TASKS.add("segment", ReportSpec(_page, SEGMENT_COLUMNS))
