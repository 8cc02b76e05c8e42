"""Segmentation in the evaluation pipeline: exact per-image counts by default, reduced stored maps for reuse, paired intervals.

The pipeline (:mod:`~ttakit.evaluation.pipeline`) decodes each photo once and runs every
distinct view once; :class:`SegmentTask` de-augments each view's map with
:func:`~ttakit.tasks.deaugment.deaugment_maps` (no model: softmax, the view's geometry
undone onto the plain output grid, with the mask of the pixels the view saw) and then, in the
same pass, scores every row asked for exactly: the row's views merged by its dense merge
(``mean`` or ``max`` over the views that saw each pixel), brought onto each mask's own pixels
(through the window of the photo the model saw: the whole photo for a segmenter's ``squash``
input), argmax, and five counts per class kept per image (:mod:`~ttakit.evaluation.seg_stats`:
intersection, predicted and true areas, boundary-IoU intersection and union). That is all
mIoU, Dice, pixel accuracy, boundary IoU and the paired bootstrap need, so what is scored is
the model's own output at full resolution, and memory does not grow with the photos.

Per-view class probabilities are also stored, reduced, for reuse only (a policy added on a
resumed run of stored views, the report's gallery): within ``store_budget`` bytes in all, at
the largest grid that fits (float16, or uint8 when float16 would fall under 64 pixels), under
``DIR/segmentation/``. A row scored from them says so: ``"exact": false``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
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
from ..tasks.segment import SEGMENT_COLUMNS
from ..tasks.window import WindowConfig
from ..views import View
from .rows import PerImageCsv, Row
from .pipeline import EvalJob, EvalTask, Scored, row_predictions, run_evaluation, single_view_runs, stored_chunks, view_columns
from .report import write_report
from .report_gallery import segmentation_from_folder, gallery_page
from .task_registry import ReportSettings
from .scoring import EvalOptions, PolicyRun, policy_runs
from .seg_stats import SegmentationStats, budget_side, edge_band, image_stats, photo_argmax, stats_miou
from .segment_windows import RowPlan, window_chunk
from .stats import compare_statistic
from .store import OutputStore

__all__ = ["SegmentScoring", "SegmentTask", "evaluate_segmentation", "row_masks"]


@dataclass(frozen=True)
class SegmentScoring:
    """How views are scored and what is stored.

    Attributes:
        num_classes: classes of the segmenter (its output channels); mask values are indices.
        ignore_index: mask value of pixels that are not scored (any other value >= K is an error).
        store_budget: bytes of reduced per-view maps kept for reuse (0: none; then the report
            has no gallery, and a policy added later needs a new run).
        store_size: a cap on the long side of the stored maps (``None``: the budget decides).
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
    store_budget: int = 512 * 2**20
    store_size: int | None = None
    boundary_ratio: float = 0.02
    n_resamples: int = 2000

    def __post_init__(self) -> None:
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ConfigError(f"num_classes must be an integer >= 2, got {self.num_classes!r}")
        if not isinstance(self.store_budget, int) or self.store_budget < 0:
            raise ConfigError(f"store_budget must be a number of bytes >= 0, got {self.store_budget!r}")
        if self.store_size is not None and (not isinstance(self.store_size, int) or self.store_size < 4):
            raise ConfigError(f"store_size must be an integer >= 4, got {self.store_size!r}")
        if not 0.0 < self.boundary_ratio < 0.5:
            raise ConfigError(f"boundary_ratio must be in (0, 0.5), got {self.boundary_ratio}")


def _default_dense_merge(policy: Policy) -> str:
    return policy.merge if policy.merge in DENSE_MERGES.names() else "mean"


def _store_grid(grid: tuple[int, int], side: int) -> tuple[int, int]:
    h, w = grid
    f = min(1.0, side / max(h, w))
    return max(1, round(h * f)), max(1, round(w * f))


def _signature(merge: str, views: Sequence[str], weights: Sequence[float] | None) -> str:
    """What a row computes (a single view needs no merge): its stored counts' identity."""
    return json.dumps(["single" if len(views) == 1 else merge, list(views),
                       None if weights is None or len(views) == 1 else list(weights)])


def _row_signature(run: PolicyRun) -> str:
    return _signature(run.merge, run.policy.view_names, run.policy.weights)


@dataclass(kw_only=True)
class _Row(Row):
    """One segmentation row: the shared :class:`~ttakit.evaluation.rows.Row`, its streamed
    counts and whether every image was scored exactly."""

    stats: SegmentationStats
    exact: bool = True

    def result(self, n: int) -> dict[str, Any]:
        return self.entry({**self.stats.compute(), "exact": self.exact}, n)


def _merge(y: Tensor, m: Tensor, merge: str, weights: Sequence[float] | None) -> Tensor:
    """Merge ``(V, n, K, h, w)`` maps with their masks ``(V, 1|n, 1, h, w)``: ``(n, K, h, w)``."""
    w = torch.ones(y.shape[0]) if weights is None else torch.tensor(weights, dtype=torch.float32)
    return DENSE_MERGES.get("mean" if y.shape[0] == 1 else merge)(y, m, w)


def merged_probs(payload: Mapping[str, Tensor], run: PolicyRun, cols: Sequence[int]) -> Tensor:
    """A row's merged class probabilities ``(n, K, h, w)`` of one stored chunk (reduced maps)."""
    probs, masks = payload["probs"], payload["masks"]
    scale = 255.0 if probs.dtype == torch.uint8 else 1.0  # uint8 maps hold round(255 p)
    y = (probs[:, cols].float() / scale).transpose(0, 1)  # (V, n, K, h, w)
    m = (masks[:, cols].float() / scale).transpose(0, 1)  # (V, n, 1, h, w)
    return _merge(y, m, run.merge, run.policy.weights)


def photo_window(data_config: Mapping[str, Any], photo_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of the photo the plain input shows (the whole photo for
    ``squash``), in photo pixels."""
    if data_config.get("crop_mode") == "squash":
        return 0, 0, *photo_size
    t, l_, hh, ww = Input.of_model(data_config).window(photo_size)
    return round(t), round(l_), round(hh), round(ww)


@dataclass
class SegmentTask(EvalTask):
    """Segmentation in the pipeline (see the module docstring).

    Attributes:
        lm: the segmenter (its data config says how photos became its input).
        scoring: classes, ignore index, store budget.
        run_config: micro-batch, memory format and autocast of the view loop.
    """

    lm: LoadedModel
    scoring: SegmentScoring
    run_config: RunConfig
    name: str = "segment"
    subdir: str = "segmentation"
    window: WindowConfig | None = None  # sliding-window inference at each photo's own size

    @property
    def keeps_photos(self) -> bool:
        """With a window, each chunk carries its decoded photos (tiled at their own size): each
        photo is decoded once, by the pipeline."""
        return self.window is not None

    def runs(self, policies: Sequence[Policy], merges: Sequence[str] | None) -> list[PolicyRun]:
        return policy_runs(policies, merges, resolve=DENSE_MERGES.get, default=_default_dense_merge)

    def fingerprint(self, data: MaskedImages) -> dict[str, Any]:
        h = hashlib.sha256("\n".join(f"{p}\t{m}" for p, m in zip(data.paths, data.masks)).encode()).hexdigest()[:16]
        fp = {"task": "segment", "data_hash": h, "store_budget": self.scoring.store_budget,
              "store_size": self.scoring.store_size}
        if self.window is not None:  # only then: runs without a window keep the fingerprint they had
            fp["window"] = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self.window).items()}
        return fp

    def _stats_key(self, signature: str, boundary: bool = True) -> str:
        """The stored tensor of a row's counts: its signature and what the counts depend on
        (without ``boundary``: a view counted for its mIoU alone)."""
        sc = self.scoring
        text = json.dumps([signature, sc.num_classes, sc.ignore_index, sc.boundary_ratio] + ([] if boundary else [0]))
        return "stats." + hashlib.sha256(text.encode()).hexdigest()[:16]

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

    def _truths(self, data: MaskedImages, indices: Sequence[int], sizes: Sequence[tuple[int, int]]
                ) -> list[tuple[Tensor, Tensor, Tensor, tuple[int, int, int, int]]]:
        """Per image: the mask, its valid pixels, the truth's boundary band and the window the model saw."""
        out = []
        for i, size in zip(indices, sizes):
            t = self._truth(data, i, tuple(size))
            win = (0, 0, *size) if self.window is not None else photo_window(self.lm.data_config, tuple(size))
            seen = photo_argmax(torch.ones(1, 1, 1), tuple(size), win) >= 0
            valid = seen & (t != self.scoring.ignore_index)
            out.append((t, valid, edge_band(t, self.scoring.boundary_ratio), win))
        return out

    def _score_rows(self, rows: Sequence[tuple[str, list[int], str, Sequence[float] | None]], y: Tensor, m: Tensor,
                    truths: Sequence[tuple[Tensor, Tensor, Tensor, tuple[int, int, int, int]]],
                    asked: set[str]) -> dict[str, Tensor]:
        """``(n, 5, K)`` counts of every row (signature, columns, merge, weights) on these images
        (``asked``: the signatures of the rows asked for; the others are views alone)."""
        k, ratio, out = self.scoring.num_classes, self.scoring.boundary_ratio, {}
        for sig, cols, merge, weights in rows:
            probs = _merge(y[cols], m[cols], merge, weights).cpu()  # (n, K, h, w)
            out[self._stats_key(sig, sig in asked)] = torch.stack([  # a view only in per_view.json: no boundary
                image_stats(t, photo_argmax(probs[j], tuple(t.shape), win), valid, k, ratio, bands, sig in asked)
                for j, (t, valid, bands, win) in enumerate(truths)]).to(torch.int32)
        return out

    @staticmethod
    def _rows_to_count(runs: Sequence[PolicyRun], names: Sequence[str]
                       ) -> list[tuple[str, list[int], str, Sequence[float] | None]]:
        """The rows asked for and every stored view alone (for per_view.json), each once."""
        col = {n: i for i, n in enumerate(names)}
        rows = {}
        for r in runs:
            rows.setdefault(_row_signature(r), ([col[n] for n in r.policy.view_names], r.merge, r.policy.weights))
        for n in names:
            rows.setdefault(_signature("single", [n], None), ([col[n]], "mean", None))
        return [(sig, *v) for sig, v in rows.items()]

    def _store_plan(self, grid: tuple[int, int], views: int, n_images: int) -> tuple[tuple[int, int] | None, torch.dtype]:
        """The grid and precision of the stored maps that fit the budget for ``n_images`` photos
        (``None``: nothing fits)."""
        k = self.scoring.num_classes
        side, dtype = budget_side(self.scoring.store_budget, n_images, views, k, grid, 2), torch.float16
        if side < min(64, max(grid)):
            side, dtype = budget_side(self.scoring.store_budget, n_images, views, k, grid, 1), torch.uint8
        if self.scoring.store_size is not None:
            side = min(side, self.scoring.store_size)
        return (_store_grid(grid, side) if side >= 1 else None), dtype

    @staticmethod
    def _encode(y: Tensor, m: Tensor, dtype: torch.dtype) -> dict[str, Tensor]:
        """Stored maps ``(n, U, K|1, h, w)``: float16, or uint8 holding ``round(255 p)``."""
        if dtype == torch.uint8:
            return {"probs": (y * 255).round().to(torch.uint8), "masks": (m * 255).round().to(torch.uint8)}
        return {"probs": y.half(), "masks": m.half()}

    def _reduced(self, y: Tensor, m: Tensor, views: int, n_images: int) -> dict[str, Tensor]:
        """The per-view maps kept for reuse, at the grid and precision the budget allows."""
        u, n, k = y.shape[0], y.shape[1], self.scoring.num_classes
        size, dtype = self._store_plan(tuple(y.shape[-2:]), views, n_images)  # type: ignore[arg-type]
        if size is None:
            return {"probs": torch.zeros(n, u, k, 0, 0, dtype=torch.float16),
                    "masks": torch.zeros(n, u, 1, 0, 0, dtype=torch.float16)}
        y = F.interpolate(y.flatten(0, 1).float(), size=size, mode="area").view(u, n, -1, *size)
        m = F.interpolate(m.expand(-1, n, -1, -1, -1).flatten(0, 1).float(), size=size, mode="area").view(u, n, 1, *size)
        return self._encode(y.transpose(0, 1).cpu(), m.transpose(0, 1).cpu(), dtype)

    @property
    def runs_views(self) -> bool:
        """With a window, :meth:`run_chunk` runs the views itself, tiled at each photo's own size."""
        return self.window is not None

    def run_chunk(self, model: Callable[[Tensor], Any], inputs: RenderedInputs, views: Sequence[View],
                  indices: Sequence[int], job: EvalJob) -> dict[str, Tensor]:
        """With a window, the chunk's views run here, tiled at each photo's own size, and every row
        is counted as the views arrive (:mod:`~ttakit.evaluation.segment_windows`)."""
        if self.window is None:
            raise ConfigError("SegmentTask.run_chunk needs a window (without one the pipeline runs the views)")
        data: MaskedImages = job.data
        if inputs.photos is None:
            raise DatasetError("SegmentTask.run_chunk: the chunk holds no decoded photos (keeps_photos asks for them)")
        sizes = [tuple(s) for s in inputs.photo_sizes]  # type: ignore[union-attr]
        truths = self._truths(data, indices, sizes)
        asked = {_row_signature(r) for r in job.runs}
        rows = [RowPlan(self._stats_key(sig, sig in asked), cols, merge, w, sig in asked) for sig, cols, merge, w in
                self._rows_to_count(job.runs, [v.name for v in views])]
        grid, dtype = self._store_plan(self.window.size, len(views), len(data))
        device = next(iter(inputs.batches.values())).device
        counts, y, m = window_chunk(model, inputs.photos, truths, views, rows, self.window,
                                    self.lm.normalization, self.lm.data_config, self.run_config, device, self.scoring.num_classes,
                                    self.scoring.boundary_ratio, grid)
        n, u, k = len(indices), len(views), self.scoring.num_classes
        stored = (self._encode(y, m, dtype) if y is not None and m is not None else
                  {"probs": torch.zeros(n, u, k, 0, 0, dtype=torch.float16),
                   "masks": torch.zeros(n, u, 1, 0, 0, dtype=torch.float16)})
        return {**counts, **stored, "photo_size": torch.tensor(sizes, dtype=torch.long)}

    def pack(self, outs: list[Any], inputs: RenderedInputs, views: Sequence[View], indices: Sequence[int],
             job: EvalJob) -> dict[str, Tensor]:
        key = tuple(v.name for v in views)
        if outs[0].shape[1] != self.scoring.num_classes:
            raise ShapeError("segmenter output", f"(B, {self.scoring.num_classes}, h, w) (--num-classes)", tuple(outs[0].shape))
        data: MaskedImages = job.data
        sizes = [tuple(s) for s in inputs.photo_sizes]  # type: ignore[union-attr]
        rows = self._rows_to_count(job.runs, key)
        asked = {_row_signature(r) for r in job.runs}
        parts: list[dict[str, Tensor]] = []
        for j, i in enumerate(indices):  # one photo at a time: K full-resolution maps of one photo at most
            # No model needed: the views are undone from their outputs and the photo's geometry.
            y, m = deaugment_maps(views, [o[j:j + 1] for o in outs],
                                  Geometry.of(inputs.take(torch.tensor([j])), self.lm.data_config))
            truths = self._truths(data, [i], [sizes[j]])  # (U, 1, K, H', W'), (U, 1, 1, H', W')
            parts.append({**self._score_rows(rows, y, m, truths, asked), **self._reduced(y, m, len(views), len(data))})
        payload = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}  # exact counts and reduced maps
        return {**payload, "photo_size": torch.tensor(sizes, dtype=torch.long)}

    def empty(self, views: Sequence[View]) -> dict[str, Tensor]:
        k, u = self.scoring.num_classes, len(views)
        return {"probs": torch.zeros(0, u, k, 1, 1, dtype=torch.float16),
                "masks": torch.zeros(0, u, 1, 1, 1, dtype=torch.float16), "photo_size": torch.zeros(0, 2, dtype=torch.long)}

    def _from_maps(self, row: _Row, payload: Mapping[str, Tensor], data: MaskedImages) -> Tensor:
        """``(n, 5, K)`` counts of a row the pass did not count, from the reduced stored maps."""
        if payload["probs"].shape[-1] == 0:
            raise DatasetError(f"row {row.run.key!r} was not counted when its views ran and no maps are stored "
                               "(store budget 0): use a new --out folder to score it")
        sizes = [tuple(s) for s in payload["photo_size"].tolist()]
        truths = self._truths(data, payload["indices"].tolist(), sizes)
        probs = merged_probs(payload, row.run, row.cols)
        k, ratio = self.scoring.num_classes, self.scoring.boundary_ratio  # (a window's maps: squashed, whole photo)
        return torch.stack([image_stats(t, photo_argmax(probs[j], tuple(t.shape), win), valid, k, ratio, bands)
                            for j, (t, valid, bands, win) in enumerate(truths)])

    def score(self, store: OutputStore, data: MaskedImages, runs: Sequence[PolicyRun], out: Path) -> Scored:
        singles = single_view_runs(store)
        k = self.scoring.num_classes
        rows = [_Row(r, cols, stats=SegmentationStats(k))
                for r, cols in zip([*runs, *singles], view_columns(store, [*runs, *singles]))]
        skipped: list[dict[str, Any]] = []
        indices: list[int] = []
        stored: dict[str, Any] = {}
        for payload in stored_chunks(store, data, skipped):
            indices += payload["indices"].tolist()
            if not stored:
                stored = {"side": list(payload["probs"].shape[-2:]), "dtype": str(payload["probs"].dtype).removeprefix("torch.")}
            for r, row in enumerate(rows):
                keys = [self._stats_key(_row_signature(row.run))]
                if r >= len(runs):  # a view alone (per_view.json, mIoU only): counted with or without boundary
                    keys.append(self._stats_key(_row_signature(row.run), False))
                key = next((k_ for k_ in keys if k_ in payload), None)
                if key is not None:
                    row.stats.update(payload[key])
                else:  # a row added to a resumed run: from the reduced maps, and marked so
                    row.stats.update(self._from_maps(row, payload, data))
                    row.exact = False
                row.charge(payload["seconds"])
        n = len(indices)
        results = {r.run.key: r.result(n) for r in rows[:len(runs)]}
        per_view = {r.run.key: r.result(n)["miou"] for r in rows[len(runs):]}
        state = {r.run.key: r.stats.per_image[:, :3].flatten(1).numpy().astype(np.float64) for r in rows[:len(runs)]}
        self._write_per_image(out / "per_image.csv", data, indices, rows[:len(runs)])
        # Each row's (N, 5, K) per-image counts: what pairs this run with another on the same images.
        np.savez_compressed(out / "per_image_counts.npz", indices=np.asarray(indices, dtype=np.int64),
                            **{f"row{j}": r.stats.per_image.numpy() for j, r in enumerate(rows[:len(runs)])})
        (out / "per_image_counts.json").write_text(json.dumps({f"row{j}": r.run.key for j, r in enumerate(rows[:len(runs)])}))
        disk = sum(p.stat().st_size for p in store.dir.glob("chunk_*.safetensors"))
        doc = {"masks": data.mask_source,
               "scoring": {"num_classes": k, "ignore_index": self.scoring.ignore_index,
                           "boundary_ratio": self.scoring.boundary_ratio, "exact": all(r.exact for r in rows[:len(runs)])},
               "store": {"budget_bytes": self.scoring.store_budget, "map_grid": stored.get("side"),
                         "dtype": stored.get("dtype"), "disk_bytes": disk},
               "class_names": list(self.lm.class_names)}
        return Scored(results, per_view, skipped, state, doc)

    @staticmethod
    def _write_per_image(path: Path, data: MaskedImages, indices: Sequence[int], rows: Sequence[_Row]) -> None:
        """``per_image.csv`` (:class:`~ttakit.evaluation.rows.PerImageCsv`): index, path, mask,
        then per row the image's own mIoU (``<key>_iou``, over the classes in its mask or
        prediction) and pixel accuracy (``<key>_acc``)."""
        scores = [r.stats.image_scores() for r in rows]
        with PerImageCsv(path, ["mask"], [r.run.key for r in rows], ["iou", "acc"]) as table:
            for j, i in enumerate(indices):
                values = [float(sc[name][j]) for sc in scores for name in ("miou", "pixel_acc")]
                table.write(i, data.paths[i], [data.masks[i]], values)

    def compare(self, scored: Scored, key: str) -> tuple[dict[str, Any], str]:
        plain, tta = scored.state["plain"], scored.state[key]  # (N, 3*K) per-image counts
        k = self.scoring.num_classes

        def delta(w: np.ndarray) -> np.ndarray:
            pad = np.zeros((w.shape[0], 2, k))  # the boundary counts play no part in mIoU
            return (stats_miou(np.concatenate([(w @ tta).reshape(-1, 3, k), pad], 1))
                    - stats_miou(np.concatenate([(w @ plain).reshape(-1, 3, k), pad], 1)))

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
    window: WindowConfig | int | tuple[int, int] | dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate the plain segmenter and every policy x dense merge (``mean``, ``max``) on
    ``data``; write ``results.json``, ``per_view.json``, ``per_image.csv`` and
    ``per_image_counts.npz`` (each row's ``(N, 5, K)`` counts, ``row<j>`` named in
    ``per_image_counts.json``: what pairs two runs on the same images) and keep the
    reduced per-view probabilities in ``out_dir/segmentation/``. Runs under torchrun as one
    process. With ``window``, each photo is segmented at its own size by sliding-window
    inference (tiles and views share forwards) instead of being resized to the model's input.

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
    task = SegmentTask(lm, scoring, run_config, window=WindowConfig.of(window))
    return run_evaluation(task, lm, data, policies, out_dir=out_dir, merges=merges, run_config=run_config,
                          options=options, device=device, progress=progress, backend=backend)


def row_masks(out_dir: str | Path, key: str, indices: Sequence[int]) -> list[np.ndarray]:
    """The predicted class map ``(H, W)`` int64 of row ``key`` of a finished segmentation run
    for the dataset images ``indices`` (on the photo's pixels; ``-1`` where the model saw
    nothing), recomputed from the reduced stored probabilities: what the report draws.

    Raises:
        DatasetError: no such row or stored image.
    """

    def predict(payload: dict[str, Tensor], run: PolicyRun, cols: list[int], doc: dict[str, Any],
                positions: list[int]) -> list[np.ndarray]:
        if payload["probs"].shape[-1] == 0:
            raise DatasetError(f"{out_dir}: no maps stored (store budget 0)")
        probs = merged_probs(payload, run, cols)
        run = json.loads((Path(out_dir) / "segmentation" / "run.json").read_text())
        maps = []
        for j in positions:
            size = tuple(payload["photo_size"][j].tolist())
            win = None if run.get("window") else photo_window(run["data_config"], size)  # tiled: the whole photo
            maps.append(photo_argmax(probs[j], size, win).numpy())
        return maps

    return row_predictions(out_dir, key, "segmentation", indices, predict)


def page(out: Path, doc: Mapping[str, Any], per_view: Mapping[str, Any], s: ReportSettings) -> dict[str, Any]:
    return gallery_page(out, doc, per_view, s.class_names, s.max_gallery, read_row=row_masks, columns=SEGMENT_COLUMNS,
                        build=segmentation_from_folder)

