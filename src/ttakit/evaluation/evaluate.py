"""Classification evaluation: the classification task of the one pipeline, and :func:`evaluate`.

The pipeline (:mod:`~ttakit.evaluation.pipeline`) decodes each image once, runs every distinct
view of all the policies once and stores the per-view logits chunk by chunk; this module says
what classification adds: the logits are stored as they are, every row is merged through the
one classification path (:func:`~ttakit.evaluation.classify_logits.classify_stored`) and scored
(top-1, top-5, NLL, calibrated NLL, ECE, fixed/broken), and each policy is compared with plain
by McNemar's test and paired bootstrap intervals (:func:`~ttakit.evaluation.stats.compare`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..datasets import LabelledImages
from ..merge import merge_logits
from ..models import LoadedModel
from ..policy import Policy
from ..runtime.backends import Backend
from ..runtime.config import RunConfig
from ..runtime.loop import RenderedInputs
from ..tasks.classify import ClassificationResult
from ..views import View
from .metrics import TEMPERATURES, MetricAccumulator
from .pipeline import EvalJob, EvalTask, Scored, run_evaluation, single_view_runs, stored_chunks, view_columns
from .report import write_report
from .rows import PerImageCsv, Row
from .classify_logits import ClassifyScoring, classify_stored, data_hash
from .scoring import EvalOptions, PolicyRun, policy_runs, union_views
from .stats import compare
from .store import OutputStore

__all__ = [
    "ClassifyScoring",
    "ClassifyTask",
    "EvalOptions",
    "PolicyRun",
    "RowScores",
    "Scores",
    "classify_stored",
    "evaluate",
    "policy_runs",
    "score",
    "union_views",
]


# --------------------------------------------------------------------------- scoring
@dataclass
class RowScores(Row):
    """Streaming state of one classification row: the shared :class:`~ttakit.evaluation.rows.Row`
    (run, cols, seconds; adaptive rows count the share of model time they would spend) and:

    Attributes:
        acc: metrics accumulator.
        calib_nll: ``(T,)`` NLL sums at each calibration temperature.
        correct: per-image top-1 correctness, chunk by chunk.
        nll: per-image NLL, chunk by chunk.
        forwards: view-forwards spent.
    """

    acc: MetricAccumulator = field(default_factory=MetricAccumulator)
    calib_nll: Tensor = field(default_factory=lambda: torch.zeros(len(TEMPERATURES), dtype=torch.float64))
    correct: list[Tensor] = field(default_factory=list)
    nll: list[Tensor] = field(default_factory=list)
    forwards: int = 0

    def add(self, res: ClassificationResult, logits: Tensor, labels: Tensor, seconds: Tensor, plain_right: Tensor) -> Tensor:
        """Score one chunk; returns the merged probabilities ``(n, C)``."""
        right = self.acc.update(res.probs, labels, plain_right)
        self.correct.append(right)
        self.nll.append(-res.probs.gather(1, labels[:, None]).squeeze(1).clamp_min(1e-12).log())
        # Calibrated NLL: the merge of all the policy's views at every grid temperature (its
        # own temperature replaced, so a fitted temperature is not mistaken for a gain from the
        # views; Ashukha et al., ICLR 2020).
        sub = logits[:, self.cols]  # (n, V, C)
        weights = None if self.run.policy.weights is None else torch.tensor(self.run.policy.weights)
        for t, temp in enumerate(TEMPERATURES):
            probs = merge_logits(sub, self.run.merge, weights, temp)
            self.calib_nll[t] += float(-probs.gather(1, labels[:, None]).clamp_min(1e-12).log().sum())
        n = len(labels)
        others = [c for c in self.cols if c != 0]
        unsure = float((res.augmented).sum()) / max(n, 1)
        if res.view_forwards < n * len(self.cols):  # adaptive: the plain forward, the rest for the unsure share
            self.seconds += float(seconds[0]) + unsure * float(seconds[others].sum())
        else:
            self.charge(seconds)
        self.forwards += res.view_forwards
        return res.probs

    def result(self, adaptive: bool) -> dict[str, Any]:
        entry = self.entry({
            **self.acc.compute(),
            "nll_calibrated": float(self.calib_nll.min() / max(self.acc.n, 1)),
            "temperature_calibrated": TEMPERATURES[int(self.calib_nll.argmin())],
        }, self.acc.n)
        if adaptive:
            entry["forwards_fraction"] = self.forwards / max(self.acc.n * len(self.cols), 1)
        return entry


@dataclass(frozen=True)
class Scores:
    """What :func:`score` returns.

    Attributes:
        results: ``results[key]`` holds merge, views, view_names, top1, top5, nll,
            nll_calibrated, ece, fixed, broken, seconds, images_per_s (and forwards_fraction
            with adaptive).
        per_view: each stored view's top-1 alone.
        skipped: ``{"path", "reason"}`` of every file that could not be read.
        correct: per row, ``(N,)`` bool top-1 correctness of each scored image.
        nll: per row, ``(N,)`` per-image NLL.
        indices: ``(N,)`` dataset index of each scored image.
        labels: ``(N,)`` label of each scored image.
        probs: per row, ``(N, C)`` merged probabilities (only when asked for: ``keep_probs``).
    """

    results: dict[str, Any]
    per_view: dict[str, float]
    skipped: list[dict[str, Any]]
    correct: dict[str, Tensor]
    nll: dict[str, Tensor]
    indices: Tensor
    labels: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    probs: dict[str, Tensor] = field(default_factory=dict)


def score(
    store: OutputStore,
    data: LabelledImages,
    runs: Sequence[PolicyRun],
    class_names: Sequence[str],
    scoring: ClassifyScoring = ClassifyScoring(),
    per_image_csv: Path | None = None,
    keep_probs: bool = False,
) -> Scores:
    """Stream over the stored chunks and score every policy run (see :class:`Scores`); with
    ``keep_probs`` every row's merged probabilities are kept too (``N x C`` floats per row)."""
    names = store.fingerprint["views"]
    columns = {n: i for i, n in enumerate(names)}
    rows = [RowScores(r, cols) for r, cols in zip(runs, view_columns(store, runs))]
    # Each stored view alone (per_view.json), the rows every task counts them by: its top-1 from its softmax.
    singles = single_view_runs(store)
    single = [(r.key, cols[0], MetricAccumulator()) for r, cols in zip(singles, view_columns(store, singles))]
    adaptive = scoring.adaptive is not None or any("adaptive" in r.policy.meta for r in runs)
    skipped: list[dict[str, Any]] = []
    indices: list[Tensor] = []
    labels_seen: list[Tensor] = []
    probs: dict[str, list[Tensor]] = {r.key: [] for r in runs} if keep_probs else {}
    with PerImageCsv(per_image_csv, ["label"], [r.key for r in runs], ["", "prob"]) as table:
        for payload in stored_chunks(store, data, skipped):
            logits, labels = payload["logits"], payload["labels"]  # (n, U, C), (n,)
            indices.append(payload["indices"])
            labels_seen.append(labels)
            plain_right = logits[:, 0].argmax(-1) == labels
            for _, u, acc in single:
                acc.update(torch.softmax(logits[:, u], -1), labels)
            preds = []
            for row in rows:
                res = classify_stored(logits, columns, row.run, scoring)
                merged = row.add(res, logits, labels, payload["seconds"], plain_right)
                if keep_probs:
                    probs[row.run.key].append(merged.float())
                preds.append(merged.max(-1))
            for j, i in enumerate(payload["indices"].tolist()):
                values = [v for p in preds for v in (class_names[int(p.indices[j])], float(p.values[j]))]
                table.write(i, data.paths[i], [class_names[int(labels[j])]], values)
    return Scores(
        results={r.run.key: r.result(adaptive) for r in rows},
        per_view={key: acc.compute()["top1"] for key, _, acc in single},
        skipped=skipped,
        correct={r.run.key: torch.cat(r.correct) if r.correct else torch.zeros(0, dtype=torch.bool) for r in rows},
        nll={r.run.key: torch.cat(r.nll) if r.nll else torch.zeros(0) for r in rows},
        indices=torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long),
        labels=torch.cat(labels_seen) if labels_seen else torch.zeros(0, dtype=torch.long),
        probs={k: torch.cat(v) for k, v in probs.items() if v},
    )


# --------------------------------------------------------------------------- the task
@dataclass(frozen=True)
class ClassifyTask(EvalTask):
    """Classification in the pipeline: per-view logits ``(n, U, C)`` stored as they are.

    Attributes:
        class_names: the model's classes.
        labels: the class index of every image of the dataset.
        scoring: the adaptive threshold and the confidence it compares (scoring choices).
        extras: more per-row scores: each is called with every row's merged probabilities
            ``{key: (N, C)}`` and the labels ``(N,)`` and returns ``{key: {field: value}}``,
            added to those rows (conformal set sizes, for example).
    """

    class_names: Sequence[str]
    labels: Tensor
    scoring: ClassifyScoring = ClassifyScoring()
    extras: tuple[Callable[[Mapping[str, Tensor], Tensor], Mapping[str, Mapping[str, Any]]], ...] = ()
    name: str = "classify"
    subdir: str = "logits"

    def runs(self, policies: Sequence[Policy], merges: Sequence[str] | None) -> list[PolicyRun]:
        return policy_runs(policies, merges)

    def fingerprint(self, data: LabelledImages) -> dict[str, Any]:
        return {"data_hash": data_hash(data)}

    def pack(self, outs: list[Any], inputs: RenderedInputs, views: Sequence[View], indices: Sequence[int],
             job: EvalJob) -> dict[str, Tensor]:
        logits = torch.stack([o.float().cpu() for o in outs], dim=1)  # (n, U, C)
        return {"labels": self.labels[torch.tensor(indices, dtype=torch.long)], "logits": logits}

    def empty(self, views: Sequence[View]) -> dict[str, Tensor]:
        return {"labels": torch.zeros(0, dtype=torch.long), "logits": torch.zeros(0, len(views), len(self.class_names))}

    def score(self, store: OutputStore, data: LabelledImages, runs: Sequence[PolicyRun], out: Path) -> Scored:
        scores = score(store, data, runs, self.class_names, self.scoring, out / "per_image.csv", bool(self.extras))
        for extra in self.extras:
            for key, fields in extra(scores.probs, scores.labels).items():
                scores.results[key].update(fields)
        return Scored(scores.results, scores.per_view, scores.skipped, scores)  # type: ignore[arg-type]

    def compare(self, scored: Scored, key: str) -> tuple[dict[str, Any], str]:
        s: Scores = scored.state
        if key not in s.correct:  # a row made outside the store (EvalTask.more_rows) carries its own comparison
            return {}, scored.results[key].get("verdict", "")
        cmp = compare(s.correct["plain"], s.correct[key], s.nll["plain"], s.nll[key])
        return cmp.to_dict(), cmp.verdict(key)

    def finish(self, out: Path, lm: LoadedModel, options: EvalOptions) -> list[str]:
        return [str(write_report(out, class_names=lm.class_names, data_config=lm.data_config, scoring=self.scoring))]


# --------------------------------------------------------------------------- driver
def evaluate(
    lm: LoadedModel,
    data: LabelledImages,
    policies: Sequence[Policy],
    *,
    out_dir: str | Path,
    merges: Sequence[str] | None = None,
    run_config: RunConfig,
    scoring: ClassifyScoring = ClassifyScoring(),
    options: EvalOptions = EvalOptions(),
    device: torch.device | str = "cpu",
    progress: Callable[[int], Any] | None = None,
    backend: Backend | None = None,
    extras: Sequence[Callable[[Mapping[str, Tensor], Tensor], Mapping[str, Mapping[str, Any]]]] = (),
) -> dict[str, Any]:
    """Evaluate the plain model and every policy x merge on ``data``; write ``results.json``,
    ``per_image.csv``, ``per_view.json``, ``report.html`` (see
    :func:`~ttakit.evaluation.report.write_report`) and the logits into ``out_dir``.

    In a process group (torchrun, after ``DistContext.init()``) the chunks are dealt out to the
    ranks; rank 0 gathers them, scores and writes; the other ranks return ``{}``. ``scoring``
    holds classification's own choices (adaptive threshold, confidence). ``backend``
    runs the model (default: ``lm.model``); a backend other than torch is part of the stored logits' fingerprint. ``extras`` add
    per-row scores from every row's merged probabilities, before results.json is written, once
    (see :class:`ClassifyTask`; adapted rows: :func:`ttakit.evaluate`).

    Returns:
        The ``results.json`` document plus ``per_view`` and ``written`` (the report's path,
        in a list). Each policy row also holds its paired
        comparison with plain (``delta_top1``, ``ci_top1``, ``p_value``, ``delta_nll``,
        ``ci_nll``, ``significant``, ``images_needed`` and a one-line ``verdict``).

    Example:
        >>> data = detect_dataset("../shared/imagenet-sample", lm.class_names)  # doctest: +SKIP
        >>> res = evaluate(lm, data, [create_policy("hflip")], out_dir="runs/x", run_config=RunConfig())  # doctest: +SKIP
        >>> res["results"]["hflip"]["top1"]  # doctest: +SKIP
        0.898
    """
    task = ClassifyTask(lm.class_names, torch.tensor(data.labels, dtype=torch.long), scoring, tuple(extras))
    return run_evaluation(task, lm, data, policies, out_dir=out_dir, merges=merges, run_config=run_config,
                          options=options, device=device, progress=progress, backend=backend)
