"""Dataset evaluation: every distinct view run once, logits kept, every policy x merge scored.

Each image is decoded once and every distinct view of all the policies runs once on it (one
:func:`~ttakit.runtime.loop.run_views` call per chunk); the per-view logits go to the
:class:`~ttakit.evaluation.store.LogitStore`, and scoring streams over the stored chunks,
so memory stays flat as the dataset grows and several policies and merges cost one pass.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..data import InputRenderer
from ..datasets import LabelledImages, make_loader
from ..errors import DatasetError
from ..merge import merge_logits
from ..models import LoadedModel
from ..policy import Policy, parse_view
from ..runtime.backends import Backend
from ..runtime.config import RunConfig, prepare_model, timed
from ..runtime.distributed import DistContext
from ..runtime.loop import RenderedInputs, run_views
from ..tasks.classify import TTAResult
from ..transforms import View
from ..viz import plot_accuracy
from .metrics import TEMPERATURES, MetricAccumulator
from .report import write_report
from .scoring import EvalOptions, PolicyRun, classify_stored, policy_runs, union_views
from .stats import compare
from .store import LogitStore, fingerprint, plan_chunks

__all__ = [
    "EvalOptions",
    "PolicyRun",
    "RowScores",
    "Scores",
    "classify_stored",
    "compute_logits",
    "evaluate",
    "policy_runs",
    "score",
    "union_views",
]


# --------------------------------------------------------------------------- compute
def compute_logits(
    lm: LoadedModel,
    data: LabelledImages,
    views: Sequence[View],
    store: LogitStore,
    run_config: RunConfig,
    options: EvalOptions,
    device: torch.device,
    chunks: Sequence[tuple[int, int]] | None = None,
    progress: Callable[[int], Any] | None = None,
    backend: Backend | None = None,
) -> None:
    """Compute and store the logits of every missing chunk (of ``chunks``: all by default).

    Each image is decoded once, in the DataLoader workers, which also render every input stage
    the views need from that one decode; all views of a chunk then run in one
    :func:`run_views` call (views of one size share forwards). The chunk's model time is recorded per view, shared
    in proportion to each view's pixels, so that every policy's cost can be reported.
    ``progress(n)`` is called with the number of images done (chunks already stored count).
    ``backend`` runs the model (default: ``lm.model`` itself; see :mod:`ttakit.runtime.backends`).
    """
    chunks = plan_chunks(len(data), options.batch_size) if chunks is None else chunks
    todo = [c for c in chunks if not store.has(c[0])]
    if progress is not None:
        progress(sum(e - s for s, e in chunks) - sum(e - s for s, e in todo))
    if not todo:
        return
    renderer = InputRenderer({v.source for v in views}, lm.data_config)
    loader = make_loader(data.paths, renderer, [range(s, e) for s, e in todo], options.workers)
    labels_all = torch.tensor(data.labels)

    def view_pixels(v: View) -> float:
        h, w = v.output_size(lm.input_size if v.source is None else (v.source.size, v.source.size))
        return float(h * w)

    pixels = torch.tensor([view_pixels(v) for v in views], dtype=torch.float64)
    share = pixels / pixels.sum()  # (U,) each view's share of the chunk's model time
    run_model = lm.model if backend is None else backend
    for (start, stop), (idx, x, bad) in zip(todo, loader):
        if bad and options.strict:
            i, reason = bad[0]
            raise DatasetError(f"{data.paths[i]}: {reason} (--strict)")
        logits = torch.zeros(0, len(views), lm.num_classes)  # (n, U, C)
        seconds = torch.zeros(len(views), dtype=torch.float64)
        if x is not None:
            x = RenderedInputs(x).to(device)
            outs: list[Tensor] = []
            with torch.inference_mode():
                total = timed(lambda: outs.extend(run_views(run_model, x, views, lm.normalization, run_config)), device)
            logits = torch.stack([o.float().cpu() for o in outs], dim=1)  # (n, U, C)
            seconds = share * total
        ids = torch.tensor(idx, dtype=torch.long)
        store.write(start, {"indices": ids, "labels": labels_all[ids], "logits": logits, "seconds": seconds}, bad)
        if progress is not None:
            progress(stop - start)


# --------------------------------------------------------------------------- scoring
@dataclass
class RowScores:
    """Streaming state of one results row.

    Attributes:
        run: the row.
        cols: union-view column of each of the policy's views.
        acc: metrics accumulator.
        calib_nll: ``(T,)`` NLL sums at each calibration temperature.
        correct: per-image top-1 correctness, chunk by chunk.
        nll: per-image NLL, chunk by chunk.
        seconds: model time spent (adaptive: the share it would spend).
        forwards: view-forwards spent.
    """

    run: PolicyRun
    cols: list[int]
    acc: MetricAccumulator = field(default_factory=MetricAccumulator)
    calib_nll: Tensor = field(default_factory=lambda: torch.zeros(len(TEMPERATURES), dtype=torch.float64))
    correct: list[Tensor] = field(default_factory=list)
    nll: list[Tensor] = field(default_factory=list)
    seconds: float = 0.0
    forwards: int = 0

    def add(self, res: TTAResult, logits: Tensor, labels: Tensor, seconds: Tensor, plain_right: Tensor,
            options: EvalOptions) -> Tensor:
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
            self.seconds += float(seconds[self.cols].sum())
        self.forwards += res.view_forwards
        return res.probs

    def result(self, adaptive: bool) -> dict[str, Any]:
        m = self.acc.compute()
        entry: dict[str, Any] = {
            "merge": "none" if self.run.is_plain else self.run.merge,
            "views": len(self.cols),
            "view_names": self.run.policy.view_names,
            **m,
            "nll_calibrated": float(self.calib_nll.min() / max(self.acc.n, 1)),
            "temperature_calibrated": TEMPERATURES[int(self.calib_nll.argmin())],
            "seconds": round(self.seconds, 4),
            "images_per_s": round(self.acc.n / self.seconds, 2) if self.seconds > 0 else None,
        }
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
    """

    results: dict[str, Any]
    per_view: dict[str, float]
    skipped: list[dict[str, Any]]
    correct: dict[str, Tensor]
    nll: dict[str, Tensor]
    indices: Tensor


def score(
    store: LogitStore,
    data: LabelledImages,
    runs: Sequence[PolicyRun],
    class_names: Sequence[str],
    options: EvalOptions,
    per_image_csv: Path | None = None,
) -> Scores:
    """Stream over the stored chunks and score every policy run (see :class:`Scores`)."""
    names = store.fingerprint["views"]
    columns = {n: i for i, n in enumerate(names)}
    try:
        rows = [RowScores(r, [columns[v.name] for v in r.policy.views]) for r in runs]
    except KeyError as e:
        raise DatasetError(f"view {e.args[0]!r} is not in the stored logits of {store.dir.parent}") from e
    single = [MetricAccumulator() for _ in names]
    adaptive = options.adaptive is not None or any("adaptive" in r.policy.meta for r in runs)
    skipped: list[dict[str, Any]] = []
    indices: list[Tensor] = []
    with _CsvRows(per_image_csv, ["path", "label"] + [c for r in runs for c in (r.key, f"{r.key}_prob")]) as writer:
        for payload, bad in store.chunks():
            skipped += [{"path": data.paths[i], "reason": reason} for i, reason in bad]
            logits, labels = payload["logits"], payload["labels"]  # (n, U, C), (n,)
            if len(labels) == 0:
                continue
            indices.append(payload["indices"])
            plain_right = logits[:, 0].argmax(-1) == labels
            for u, acc in enumerate(single):
                acc.update(torch.softmax(logits[:, u], -1), labels)
            preds = []
            for row in rows:
                res = classify_stored(logits, columns, row.run, options)
                preds.append(row.add(res, logits, labels, payload["seconds"], plain_right, options).max(-1))
            for j, i in enumerate(payload["indices"].tolist()):
                line = [data.paths[i], class_names[int(labels[j])]]
                for p in preds:
                    line += [class_names[int(p.indices[j])], f"{float(p.values[j]):.6f}"]
                writer(line)
    return Scores(
        results={r.run.key: r.result(adaptive) for r in rows},
        per_view={n: acc.compute()["top1"] for n, acc in zip(names, single)},
        skipped=skipped,
        correct={r.run.key: torch.cat(r.correct) if r.correct else torch.zeros(0, dtype=torch.bool) for r in rows},
        nll={r.run.key: torch.cat(r.nll) if r.nll else torch.zeros(0) for r in rows},
        indices=torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long),
    )


class _CsvRows:
    """Context manager giving a row writer for ``path`` (a no-op writer when ``path`` is None)."""

    def __init__(self, path: Path | None, header: list[str]) -> None:
        self.path, self.header, self.handle = path, header, None

    def __enter__(self) -> Callable[[list[str]], Any]:
        if self.path is None:
            return lambda line: None
        self.handle = self.path.open("w", newline="", encoding="utf-8")
        writer = csv.writer(self.handle)
        writer.writerow(self.header)
        return writer.writerow

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.close()


# --------------------------------------------------------------------------- driver
def evaluate(
    lm: LoadedModel,
    data: LabelledImages,
    policies: Sequence[Policy],
    merges: Sequence[str] | None,
    out_dir: str | Path,
    run_config: RunConfig,
    options: EvalOptions = EvalOptions(),
    device: torch.device | str = "cpu",
    progress: Callable[[int], Any] | None = None,
    backend: Backend | None = None,
) -> dict[str, Any]:
    """Evaluate the plain model and every policy x merge on ``data``; write ``results.json``,
    ``per_image.csv``, ``per_view.json``, ``accuracy.png``, ``report.html`` (see
    :func:`~ttakit.evaluation.report.write_report`) and the logits into ``out_dir``.

    Under torchrun the chunks are dealt out to the ranks; rank 0 gathers them, scores and
    writes; the other ranks return ``{}``. ``backend`` runs the model (default: ``lm.model``);
    a backend other than torch is part of the stored logits' fingerprint.

    Returns:
        The ``results.json`` document plus ``per_view`` and ``written`` (the report's path,
        in a list). Each policy row also holds its paired
        comparison with plain (``delta_top1``, ``ci_top1``, ``p_value``, ``delta_nll``,
        ``ci_nll``, ``significant``, ``images_needed`` and a one-line ``verdict``).

    Example:
        >>> data = detect_dataset("../shared/imagenet-sample", lm.class_names)  # doctest: +SKIP
        >>> res = evaluate(lm, data, [create_policy("hflip")], None, "runs/x", RunConfig())  # doctest: +SKIP
        >>> res["results"]["hflip"]["top1"]  # doctest: +SKIP
        0.898
    """
    dist = DistContext.from_env()
    device = torch.device(device) if dist.world_size == 1 else dist.device(device)
    prepare_model(lm.model.to(device), run_config)
    data = data.head(options.limit)
    if len(data) == 0:
        raise DatasetError(f"{data.source}: no images to evaluate")
    runs = policy_runs(policies, merges)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fp = fingerprint(lm, data, union_views(policies), options.batch_size)
    if backend is not None and backend.label != "torch":  # torch runs keep the fingerprint they always had
        fp["backend"] = backend.label
    store = dist.run_once(lambda: LogitStore(out, fp))
    views = [parse_view(n) for n in store.fingerprint["views"]]  # a reused run may hold more views
    mine = dist.shard(plan_chunks(len(data), options.batch_size))
    report = progress if dist.is_main else None
    dist.run_checked(lambda: compute_logits(lm, data, views, store, run_config, options, device, mine, report, backend))
    dist.gather_chunks(store, mine)
    if not dist.is_main:
        dist.barrier()
        return {}
    scores = score(store, data, runs, lm.class_names, options, out / "per_image.csv")
    for key, row in scores.results.items():
        if key != "plain":  # each policy against plain, paired on the same images
            cmp = compare(scores.correct["plain"], scores.correct[key], scores.nll["plain"], scores.nll[key])
            row.update(cmp.to_dict(), verdict=cmp.verdict(key))
    doc = {
        "model": lm.name,
        "weights": lm.weights,
        "data": data.source,
        "n_images": len(data),
        "skipped": scores.skipped,
        "results": scores.results,
    }
    (out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "per_view.json").write_text(json.dumps(scores.per_view, indent=2) + "\n")
    plot_accuracy(scores.results, out / "accuracy.png")

    page = write_report(out, class_names=lm.class_names, data_config=lm.data_config, options=options)
    dist.barrier()
    return {**doc, "per_view": scores.per_view, "written": [str(page)]}
