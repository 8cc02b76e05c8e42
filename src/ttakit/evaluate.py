"""Dataset evaluation: every distinct view run once, logits kept, every policy x merge scored.

The run is split into *chunks* of ``batch_size`` images. Each chunk's per-view logits
``(n, U, C)`` (``U`` = distinct views over all policies, the identity first) are written to
``DIR/logits/`` as soon as they are computed, so a killed run resumes at the first missing
chunk, and several policies and merges cost one pass. Scoring streams over the chunks, so
memory stays flat as the dataset grows. The chunk list is the unit of work that
:mod:`ttakit.distributed` deals out to ranks.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from .datasets import LabelledImages, make_loader
from .engine import CONFIDENCE, RunConfig, prepare_model, run_views
from .errors import TTAKitError
from .merge import get_merge, merge_logits
from .metrics import MetricAccumulator
from .models import LoadedModel
from .policy import Policy, parse_view
from .transforms import View

__all__ = [
    "EvalOptions",
    "LogitStore",
    "PolicyRun",
    "Progress",
    "compute_logits",
    "evaluate",
    "format_table",
    "load_logits",
    "plan_chunks",
    "policy_runs",
    "score",
    "union_views",
]


@dataclass(frozen=True)
class PolicyRun:
    """One row of the results: a policy with one merge.

    Attributes:
        key: name in ``results.json`` (the policy as written, ``@merge`` added when several
            merges are asked for; ``plain`` for the plain model).
        policy: the policy.
        merge: the merge name.
    """

    key: str
    policy: Policy
    merge: str


@dataclass(frozen=True)
class EvalOptions:
    """Settings of an evaluation run.

    Attributes:
        batch_size: images per chunk (and per DataLoader batch).
        workers: DataLoader worker processes decoding images.
        limit: evaluate only the first N images.
        strict: any unreadable file is an error instead of a skip.
        quiet: no progress bar.
        adaptive: confidence threshold for adaptive TTA (scored from the saved logits).
        confidence: ``max_prob`` or ``margin``, the confidence used by ``adaptive``.
    """

    batch_size: int = 32
    workers: int = 2
    limit: int | None = None
    strict: bool = False
    quiet: bool = False
    adaptive: float | None = None
    confidence: str = "max_prob"


def union_views(policies: Sequence[Policy]) -> list[View]:
    """Distinct views of all policies, the identity first (it is always needed for 'plain')."""
    seen: dict[str, View] = {"identity": View()}
    for p in policies:
        for v in p.views:
            seen.setdefault(v.name, v)
    return list(seen.values())


def policy_runs(policies: Sequence[Policy], merges: Sequence[str] | None) -> list[PolicyRun]:
    """The plain row, then every policy x merge (merge names resolved here, once)."""
    runs = [PolicyRun("plain", Policy((View(),), name="plain"), "mean")]
    for p in policies:
        chosen = list(merges) if merges else [p.merge or "mean"]
        for m in chosen:
            get_merge(m)
            key = p.name if len(chosen) == 1 else f"{p.name}@{m}"
            runs.append(PolicyRun(key, p, m))
    return runs


def plan_chunks(n: int, batch_size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` image ranges of the chunks."""
    return [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


# --------------------------------------------------------------------------- progress
class Progress:
    """A one-line progress bar on stderr (images/s and ETA); silent when not a terminal."""

    def __init__(self, total: int, label: str, enabled: bool | None = None, scale: int = 1) -> None:
        self.total, self.label, self.done = total, label, 0
        self.scale = scale  # each update counts this many times (ranks sharing the work)
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.t0 = time.perf_counter()

    def update(self, n: int) -> None:
        self.done = min(self.total, self.done + n * self.scale)
        if not self.enabled:
            return
        dt = max(time.perf_counter() - self.t0, 1e-9)
        rate = self.done / dt
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        width = 28
        filled = int(width * self.done / max(self.total, 1))
        sys.stderr.write(
            f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
            f"{rate:6.1f} img/s ETA {int(eta) // 60}:{int(eta) % 60:02d} "
        )
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


# --------------------------------------------------------------------------- the store
class LogitStore:
    """``DIR/logits/``: one safetensors file per chunk plus ``run.json``, the fingerprint of
    what was asked. A later run on the same folder must ask the same model, data and chunking,
    and views that the folder holds (the same or fewer): it then reuses the stored logits."""

    def __init__(self, out_dir: str | Path, fingerprint: dict[str, Any]) -> None:
        self.dir = Path(out_dir) / "logits"
        self.fingerprint = fingerprint
        meta = self.dir / "run.json"
        if meta.exists():
            old = json.loads(meta.read_text())
            same_but_views = {k: v for k, v in old.items() if k != "views"} == {
                k: v for k, v in fingerprint.items() if k != "views"}
            if same_but_views and set(fingerprint["views"]) <= set(old["views"]):
                # Every view asked for is stored: reuse the run (its views, its order).
                self.fingerprint = old
            elif old != fingerprint:
                diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
                raise TTAKitError(
                    f"{self.dir.parent} holds a different run (differs in: {', '.join(diff)}); "
                    "use another --out folder, or delete it to start over"
                )
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            meta.write_text(json.dumps(fingerprint, indent=1))

    def path(self, start: int) -> Path:
        return self.dir / f"chunk_{start:09d}.safetensors"

    def has(self, start: int) -> bool:
        return self.path(start).exists()

    def write(self, start: int, payload: dict[str, Tensor], skipped: list[tuple[int, str]]) -> None:
        tmp = self.path(start).with_suffix(".tmp")
        save_file({k: v.contiguous() for k, v in payload.items()}, str(tmp), metadata={"skipped": json.dumps(skipped)})
        tmp.replace(self.path(start))  # atomic: a killed run never leaves half a chunk

    def read(self, start: int) -> tuple[dict[str, Tensor], list[tuple[int, str]]]:
        from safetensors import safe_open

        with safe_open(str(self.path(start)), framework="pt") as f:
            skipped = [tuple(s) for s in json.loads(f.metadata()["skipped"])]
        return load_file(str(self.path(start))), skipped  # type: ignore[return-value]

    def chunks(self) -> Iterator[tuple[dict[str, Tensor], list[tuple[int, str]]]]:
        for start, _ in plan_chunks(self.fingerprint["n_images"], self.fingerprint["batch_size"]):
            yield self.read(start)


def fingerprint(lm: LoadedModel, data: LabelledImages, views: Sequence[View], batch_size: int) -> dict[str, Any]:
    """What identifies a run's logits: model, weights, data (paths and labels), views, chunking."""
    h = hashlib.sha256("\n".join(f"{p}\t{y}" for p, y in zip(data.paths, data.labels)).encode()).hexdigest()[:16]
    return {
        "model": lm.name,
        "weights": lm.weights,
        "data": data.source,
        "n_images": len(data),
        "data_hash": h,
        "views": [v.name for v in views],
        "batch_size": batch_size,
        "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in lm.data_config.items()},
    }


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
    progress: Progress | None = None,
) -> None:
    """Compute and store the logits of every missing chunk (of ``chunks``: all by default).

    Each image is decoded once; each view runs once per image; each view's time is recorded
    per chunk so that every policy's cost can be reported.
    """
    chunks = plan_chunks(len(data), options.batch_size) if chunks is None else chunks
    todo = [c for c in chunks if not store.has(c[0])]
    if progress is not None:  # chunks already on disk count as done
        progress.update(sum(e - s for s, e in chunks) - sum(e - s for s, e in todo))
    if not todo:
        return
    loader = make_loader(data.paths, lm.transform(), [range(s, e) for s, e in todo], options.workers)
    labels_all = torch.tensor(data.labels)
    for (start, stop), (idx, x, bad) in zip(todo, loader):
        if bad and options.strict:
            i, reason = bad[0]
            raise TTAKitError(f"{data.paths[i]}: {reason} (--strict)")
        seconds = torch.zeros(len(views), dtype=torch.float64)
        outs = []
        if x is not None:
            x = x.to(device, non_blocking=True)
            with torch.inference_mode():
                for u, view in enumerate(views):
                    t0 = time.perf_counter()
                    out = run_views(lm.model, x, [view], lm.normalization, run_config)[0].float()
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    seconds[u] = time.perf_counter() - t0
                    outs.append(out.cpu())
        logits = torch.stack(outs, dim=1) if outs else torch.zeros(0, len(views), lm.num_classes)  # (n, U, C)
        ids = torch.tensor(idx, dtype=torch.long)
        store.write(start, {"indices": ids, "labels": labels_all[ids], "logits": logits, "seconds": seconds}, bad)
        if progress is not None:
            progress.update(stop - start)


def load_logits(out_dir: str | Path) -> tuple[Tensor, Tensor, list[str], Tensor]:
    """Read a run's saved logits back: ``(logits (N, U, C), labels (N,), view names,
    image indices (N,))`` for the images that decoded."""
    meta = Path(out_dir) / "logits" / "run.json"
    if not meta.exists():
        raise TTAKitError(f"{out_dir}: no saved logits (run 'ttakit evaluate ... --out {out_dir}' first)")
    store = LogitStore(out_dir, json.loads(meta.read_text()))
    parts = [p for p, _ in store.chunks()]
    return (
        torch.cat([p["logits"] for p in parts]),
        torch.cat([p["labels"] for p in parts]),
        list(store.fingerprint["views"]),
        torch.cat([p["indices"] for p in parts]),
    )


# --------------------------------------------------------------------------- scoring
@dataclass
class _Row:
    run: PolicyRun
    cols: list[int]  # union-view index of each of the policy's views
    weights: Tensor | None
    acc: MetricAccumulator = field(default_factory=MetricAccumulator)
    seconds: float = 0.0
    forwards: int = 0


def score(
    store: LogitStore,
    data: LabelledImages,
    runs: Sequence[PolicyRun],
    class_names: Sequence[str],
    options: EvalOptions,
    per_image_csv: Path | None = None,
) -> tuple[dict[str, Any], dict[str, float], list[dict[str, Any]]]:
    """Stream over the stored chunks and score every policy run.

    Returns:
        ``(results, per_view, skipped)``: ``results[key]`` holds merge, views, top1, top5, nll,
        ece, fixed, broken, seconds, images_per_s (and forwards_fraction with adaptive);
        ``per_view[name]`` is each stored view's top-1 alone.
    """
    names = store.fingerprint["views"]
    col = {n: i for i, n in enumerate(names)}
    rows = []
    for r in runs:
        w = None if r.policy.weights is None else torch.tensor(r.policy.weights)
        rows.append(_Row(r, [col[v.name] for v in r.policy.views], w))
    single = [MetricAccumulator() for _ in names]
    conf_fn = CONFIDENCE[options.confidence]
    skipped: list[dict[str, Any]] = []
    writer = None
    handle = None
    if per_image_csv is not None:
        handle = per_image_csv.open("w", newline="", encoding="utf-8")
        writer = csv.writer(handle)
        header = ["path", "label"]
        for r in rows:
            header += [r.run.key, f"{r.run.key}_prob"]
        writer.writerow(header)
    try:
        for payload, bad in store.chunks():
            skipped += [{"path": data.paths[i], "reason": reason} for i, reason in bad]
            logits, labels = payload["logits"], payload["labels"]  # (n, U, C), (n,)
            n = len(labels)
            if n == 0:
                continue
            plain_right = logits[:, 0].argmax(-1) == labels
            for u, acc in enumerate(single):
                acc.update(torch.softmax(logits[:, u], -1), labels)
            preds = []
            for r in rows:
                sub = logits[:, r.cols]  # (n, V, C)
                probs = merge_logits(sub, r.run.merge, r.weights, r.run.policy.temperature)
                forwards = n * len(r.cols)
                seconds = float(payload["seconds"][r.cols].sum())
                threshold = options.adaptive if options.adaptive is not None else r.run.policy.meta.get("adaptive")
                if threshold is not None and r.run.key != "plain":
                    # Confident images keep the plain prediction and cost one forward; the
                    # other views' time is counted for the uncertain share only.
                    sure = conf_fn(logits[:, 0]) >= threshold
                    probs = torch.where(sure[:, None], torch.softmax(logits[:, 0], -1), probs)
                    others = [c for c in r.cols if c != 0]
                    forwards = n + int((~sure).sum()) * len(others)
                    share = float((~sure).sum()) / n
                    seconds = float(payload["seconds"][0]) + share * float(payload["seconds"][others].sum())
                r.acc.update(probs, labels, plain_right)
                r.seconds += seconds
                r.forwards += forwards
                preds.append(probs.max(-1))
            if writer is not None:
                for j in range(n):
                    i = int(payload["indices"][j])
                    line = [data.paths[i], class_names[int(labels[j])]]
                    for p in preds:
                        line += [class_names[int(p.indices[j])], f"{float(p.values[j]):.6f}"]
                    writer.writerow(line)
    finally:
        if handle is not None:
            handle.close()
    results: dict[str, Any] = {}
    for r in rows:
        m = r.acc.compute()
        entry = {"merge": r.run.merge if r.run.key != "plain" else "none", "views": len(r.cols), **m,
                 "seconds": round(r.seconds, 4),
                 "images_per_s": round(r.acc.n / r.seconds, 2) if r.seconds > 0 else None}
        if options.adaptive is not None or "adaptive" in r.run.policy.meta:
            entry["forwards_fraction"] = r.forwards / max(r.acc.n * len(r.cols), 1)
        results[r.run.key] = entry
    per_view = {n: acc.compute()["top1"] for n, acc in zip(names, single)}
    return results, per_view, skipped


def format_table(results: dict[str, Any], per_view: dict[str, float] | None = None) -> str:
    """The printed results table (policies, then single views)."""
    head = f"{'policy':<34} {'merge':<10} {'views':>5} {'top1':>7} {'top5':>7} {'nll':>7} {'ece':>6} {'fixed':>6} {'broken':>6} {'img/s':>8}"
    lines = [head, "-" * len(head)]
    for key, r in results.items():
        ips = f"{r['images_per_s']:8.1f}" if r.get("images_per_s") else f"{'-':>8}"
        extra = f"  ({r['forwards_fraction']:.0%} of forwards)" if "forwards_fraction" in r else ""
        lines.append(
            f"{key[:34]:<34} {r['merge']:<10} {r['views']:>5} {r['top1']:7.2%} {r['top5']:7.2%} {r['nll']:7.4f} "
            f"{r['ece']:6.3f} {r['fixed']:>6} {r['broken']:>6} {ips}{extra}"
        )
    single = per_view or {}
    if single:
        lines.append("")
        lines.append("single views (top-1 alone):")
        for name, top1 in sorted(single.items(), key=lambda t: -t[1]):
            lines.append(f"  {name:<40} {top1:7.2%}")
    return "\n".join(lines)


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
) -> dict[str, Any]:
    """Evaluate the plain model and every policy x merge on ``data``; write ``results.json``,
    ``per_image.csv``, ``per_view.json``, ``accuracy.png`` and the logits into ``out_dir``.

    Example:
        >>> data = detect_dataset("imagenet-sample", lm.class_names)
        >>> res = evaluate(lm, data, [create_policy("hflip")], None, "runs/x", default_run_config())
        >>> res["results"]["hflip"]["top1"]
    """
    from .distributed import DistContext

    dist = DistContext.from_env()
    device = torch.device(device) if dist.world_size == 1 else dist.device(device)
    prepare_model(lm.model.to(device), run_config)
    data = data.head(options.limit)
    runs = policy_runs(policies, merges)
    views = union_views(policies)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = dist.run_once(lambda: LogitStore(out, fingerprint(lm, data, views, options.batch_size)))
    views = [parse_view(n) for n in store.fingerprint["views"]]  # a reused run may hold more views
    all_chunks = plan_chunks(len(data), options.batch_size)
    mine = dist.shard(all_chunks)
    # Shown once, on rank 0; with several ranks it extrapolates rank 0's share to the total.
    progress = Progress(len(data), "evaluate", None if (not options.quiet and dist.is_main) else False, dist.world_size)
    try:
        dist.run_checked(lambda: compute_logits(lm, data, views, store, run_config, options, device, mine, progress))
        dist.gather_chunks(store, mine)
    finally:
        progress.close()
    if not dist.is_main:
        dist.barrier()
        return {}
    results, per_view, skipped = score(store, data, runs, lm.class_names, options, out / "per_image.csv")
    doc = {
        "model": lm.name,
        "weights": lm.weights,
        "data": data.source,
        "n_images": len(data),
        "skipped": skipped,
        "results": results,
    }
    (out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out / "per_view.json").write_text(json.dumps(per_view, indent=2) + "\n")
    from .viz import plot_accuracy

    plot_accuracy(results, out / "accuracy.png")
    dist.barrier()
    return {**doc, "per_view": per_view}
