"""The one evaluation pipeline every task runs: decode once, run each distinct view once, store, score.

A labelled evaluation flows the same way for classification, detection and segmentation:
the photos of a chunk are decoded once in decoding threads, which also render every input
stage the views need; all distinct views of all policies run in one
:func:`~ttakit.runtime.loop.run_views` call; the task de-augments and packs each view's
output and the :class:`~ttakit.evaluation.store.OutputStore` writes the chunk at once (so a
killed run resumes, and a later run asking only for stored views costs no model time); under
torchrun the chunks are dealt out to the ranks and gathered on rank 0; then the task's scorer
builds one row per policy x merge from the stored outputs, and each policy is compared with
plain on the same images.

A task contributes only an :class:`EvalTask`: how a view's output is packed for the store,
how stored outputs are merged and scored, and how a policy is compared with plain. Its methods
are pure: what a chunk needs (the dataset, the rows asked for) comes in an :class:`EvalJob`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image
from torch import Tensor

from ..data import InputRenderer
from ..datasets import make_loader
from ..errors import DatasetError, MissingExtraError
from ..files import write_atomic
from ..models import LoadedModel
from ..policy import Policy, parse_view
from ..runtime.backends import Backend
from ..runtime.config import RunConfig, prepared, timed, torch_threads
from ..runtime.distributed import DistContext
from ..runtime.loop import RenderedInputs, finite_rows, run_views, tree_take
from ..views import View
from .scoring import EvalOptions, PolicyRun, policy_runs, union_views
from .store import OutputStore, fingerprint, plan_chunks, runtime_fields

__all__ = [
    "NONFINITE",
    "EvalJob",
    "EvalTask",
    "Images",
    "Scored",
    "compute_outputs",
    "row_predictions",
    "run_evaluation",
    "single_view_runs",
    "stored_chunks",
    "view_columns",
]


class Images(Protocol):
    """What the pipeline needs of a dataset: its photo files, where it came from, a prefix."""

    paths: Sequence[str]
    source: str

    def __len__(self) -> int: ...

    def head(self, n: int | None) -> Images: ...


@dataclass
class Scored:
    """What a task's scorer returns.

    Attributes:
        results: one entry per row key (merge, views, view_names, the task's metrics, seconds,
            images_per_s); the pipeline adds each policy's paired comparison with plain.
        per_view: each stored view's headline metric alone.
        skipped: ``{"path", "reason"}`` of every file that could not be read.
        state: what the task's :meth:`EvalTask.compare` needs (per-image values of each row).
        doc: extra top-level fields of ``results.json`` (how the run was scored).
    """

    results: dict[str, dict[str, Any]]
    per_view: dict[str, float | None]
    skipped: list[dict[str, Any]]
    state: Any = None
    doc: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalJob:
    """What a task's chunk methods are told of the run: the dataset and the rows asked for."""

    data: Any  # the dataset being evaluated (after ``options.limit``)
    runs: tuple[PolicyRun, ...]  # the rows asked for: plain, then every policy x merge


class EvalTask:
    """What one task adds to the pipeline; a task subclasses it and overrides what it needs.

    A subclass sets ``name`` (the ``task`` of results.json: its registered name) and ``subdir``
    (the store's folder under ``out_dir``). Every method is a function of its arguments: what
    a chunk needs of the run comes in the :class:`EvalJob`.
    """

    name: str = ""  # the task's registered name: the ``task`` of results.json
    subdir: str = "outputs"  # the store's folder under ``out_dir``
    runs_views = False  # True: run_chunk runs a chunk's views itself (else the pipeline runs them, then pack)
    keeps_photos = False  # True: each chunk's decoded photos come in ``inputs.photos`` (decoded once, by the
    # pipeline), with only the plain input rendered

    def runs(self, policies: Sequence[Policy], merges: Sequence[str] | None) -> list[PolicyRun]:
        """The rows: plain, then every policy x merge (names checked once)."""
        return policy_runs(policies, merges)

    def fingerprint(self, data: Any) -> dict[str, Any]:
        """The task's fields of the store fingerprint (what identifies the data and its labels)."""
        return {}

    def run_chunk(self, model: Callable[[Tensor], Any], inputs: RenderedInputs, views: Sequence[View],
                  indices: Sequence[int], job: EvalJob) -> dict[str, Tensor]:
        """With ``runs_views``: run a chunk's views and return the tensors to store."""
        raise NotImplementedError(f"task {self.name!r} sets runs_views but has no run_chunk")

    def pack(self, outs: list[Any], inputs: RenderedInputs, views: Sequence[View], indices: Sequence[int],
             job: EvalJob) -> dict[str, Tensor]:
        """A chunk's per-view model outputs, de-augmented, as tensors to store."""
        raise NotImplementedError(f"task {self.name!r} has no pack")

    def empty(self, views: Sequence[View]) -> dict[str, Tensor]:
        """The stored tensors of a chunk in which no photo could be read."""
        raise NotImplementedError(f"task {self.name!r} has no empty")

    def score(self, store: OutputStore, data: Any, runs: Sequence[PolicyRun], out: Path) -> Scored:
        """Every row's metrics from the stored chunks (per-image files written into ``out``)."""
        raise NotImplementedError(f"task {self.name!r} has no score")

    def compare(self, scored: Scored, key: str) -> tuple[dict[str, Any], str]:
        """Row ``key`` against plain on the same images: JSON fields and one verdict line."""
        raise NotImplementedError(f"task {self.name!r} has no compare")

    def finish(self, out: Path, lm: LoadedModel, options: EvalOptions) -> list[str]:
        """Pages or charts written after results.json (paths; none by default)."""
        return []

    def more_rows(self, lm: LoadedModel, data: Any, policies: Sequence[Policy], merges: Sequence[str] | None,
                  run_config: RunConfig, options: EvalOptions, device: torch.device,
                  progress: Callable[[int], Any] | None) -> dict[str, dict[str, Any]]:
        """Rows that cannot come from the stored outputs (classification's adapted rows), scored
        on rank 0 after the others and added to results.json; none by default."""
        return {}

    def against_fp32(self, lm: LoadedModel, data: Any, out: Path, backend: Backend, options: EvalOptions,
                     device: torch.device, progress: Callable[[int], Any] | None) -> dict[str, Any]:
        """A reduced precision's plain row against fp32 on the same images (every rank calls
        it; rank 0 gets the comparison and its ``verdict``); none by default."""
        return {}


# --------------------------------------------------------------------------- compute
NONFINITE = "the model's output is not finite (NaN or inf)"  # the skip reason of such an image


class _SizedRenderer:
    """Every input stage of a photo plus its ``(H, W)`` (outputs are mapped back to photo
    pixels), and the decoded photo itself when ``keep`` (a task that runs its views at each
    photo's own size: the photo is decoded once, here)."""

    def __init__(self, renderer: InputRenderer, keep: bool = False) -> None:
        self.renderer, self.keep = renderer, keep

    def __call__(self, img: Image.Image) -> dict[str, Any]:
        photo = {"photo": img} if self.keep else {}
        return {**self.renderer(img), "photo_size": torch.tensor([img.height, img.width]), **photo}


def compute_outputs(
    task: EvalTask,
    lm: LoadedModel,
    data: Images,
    views: Sequence[View],
    store: OutputStore,
    run_config: RunConfig,
    options: EvalOptions,
    device: torch.device,
    chunks: Sequence[tuple[int, int]] | None = None,
    progress: Callable[[int], Any] | None = None,
    backend: Backend | None = None,
    job: EvalJob | None = None,
) -> None:
    """Compute and store the per-view outputs of every missing chunk (of ``chunks``: all by
    default).

    Each photo is decoded once, in the decoding threads, which also render every input stage
    the views need; all views of a chunk then run in one :func:`run_views` call (views of one
    size share forwards). The chunk's model time is shared between the views in proportion to
    their pixels, so every row's cost can be reported. ``progress(n)`` is called with the
    number of images done (chunks already stored count). ``backend`` runs the model (default:
    ``lm.model`` itself). ``job``: what the task's chunk methods are told (default: ``data``
    and no rows).
    """
    job = EvalJob(data, ()) if job is None else job
    chunks = plan_chunks(len(data), options.batch_size) if chunks is None else chunks
    todo = [c for c in chunks if not store.has(c[0])]
    if progress is not None:
        progress(sum(e - s for s, e in chunks) - sum(e - s for s, e in todo))
    if not todo:
        return
    # A task that keeps the decoded photos renders its views' stages from them itself: the
    # pipeline renders only the plain input (the chunk's batch) and hands the photos on.
    keep = bool(task.keeps_photos)
    renderer = _SizedRenderer(InputRenderer(() if keep else {v.stage for v in views}, lm.data_config), keep)
    loader = make_loader(data.paths, renderer, [range(s, e) for s, e in todo], options.workers)

    def view_pixels(v: View) -> float:
        h, w = v.output_size(lm.input_size if v.source is None else (v.source.size, v.source.size))
        return float(h * w)

    pixels = torch.tensor([view_pixels(v) for v in views], dtype=torch.float64)
    share = pixels / pixels.sum()  # (U,) each view's share of the chunk's model time
    run_model = lm.model if backend is None else backend
    for (start, stop), (idx, x, bad) in zip(todo, loader):
        if bad and options.strict:
            i, reason = bad[0]
            raise DatasetError(f"{data.paths[i]}: {reason} (`options.strict=True`: an unreadable file is an error)")
        payload = task.empty(views)
        seconds = torch.zeros(len(views), dtype=torch.float64)
        if x is not None:
            sizes = [tuple(s) for s in x.pop("photo_size").tolist()]
            photos = x.pop("photo", None)  # the decoded photos, for a task that keeps them
            inputs = RenderedInputs(x, sizes, photos).to(device)
            outs: list[Any] = []
            with torch.inference_mode():
                if task.runs_views:  # the task runs its views itself (segmentation tiled at each photo's own size)
                    total = timed(lambda: outs.append(task.run_chunk(run_model, inputs, views, idx, job)), device)
                    payload = outs[0]
                else:
                    total = timed(lambda: outs.extend(run_views(run_model, inputs, views, lm.normalization,
                                                                run_config)), device)
                    keep = finite_rows(outs, len(idx))
                    if not keep.all():  # NaN/inf outputs: those images are set aside, never scored as a class
                        lost = [idx[j] for j in (~keep).nonzero().flatten().tolist()]
                        if options.strict:
                            raise DatasetError(f"{data.paths[lost[0]]}: {NONFINITE} (`options.strict=True`)")
                        bad = [*bad, *((i, NONFINITE) for i in lost)]
                        rows = keep.nonzero().flatten()
                        outs, inputs = [tree_take(o, rows) for o in outs], inputs.take(rows)
                        idx = [idx[j] for j in rows.tolist()]
                    payload = task.pack(outs, inputs, views, idx, job) if idx else task.empty(views)
            seconds = share * total
        store.write(start, {**payload, "indices": torch.tensor(idx, dtype=torch.long), "seconds": seconds}, bad)
        if progress is not None:
            progress(stop - start)


# --------------------------------------------------------------------------- scoring helpers
def view_columns(store: OutputStore, runs: Sequence[PolicyRun]) -> list[list[int]]:
    """Each row's stored column of each of its views.

    Raises:
        DatasetError: a view the store does not hold.
    """
    columns = {n: i for i, n in enumerate(store.fingerprint["views"])}
    try:
        return [[columns[v.name] for v in r.policy.views] for r in runs]
    except KeyError as e:
        raise DatasetError(f"view {e.args[0]!r} is not in the stored outputs of {store.dir.parent}") from e


def single_view_runs(store: OutputStore) -> list[PolicyRun]:
    """One row per stored view (its metric alone, for ``per_view.json``)."""
    return [PolicyRun(n, Policy((parse_view(n),), name=n), "none") for n in store.fingerprint["views"]]


def stored_chunks(store: OutputStore, data: Images, skipped: list[dict[str, Any]]) -> Iterator[dict[str, Tensor]]:
    """The stored chunks that hold images, in order; unreadable files are added to ``skipped``."""
    for payload, bad in store.chunks():
        skipped += [{"path": data.paths[i], "reason": reason} for i, reason in bad]
        if len(payload["indices"]):
            yield payload


def row_predictions(
    out_dir: str | Path,
    key: str,
    subdir: str,
    indices: Sequence[int],
    predict: Callable[[dict[str, Tensor], PolicyRun, list[int], dict[str, Any], list[int]], list[Any]],
) -> list[Any]:
    """Row ``key``'s predictions of the dataset images ``indices`` in a finished run folder,
    recomputed from the stored outputs under ``subdir`` (what a report draws).
    ``predict(payload, run, columns, doc, positions)`` makes the predictions of the chunk
    images at ``positions`` (``doc``: the folder's results.json, plus ``stored_views``: the
    store's view names).

    Raises:
        DatasetError: no such row or stored image.
    """
    out = Path(out_dir)
    doc = json.loads((out / "results.json").read_text())
    if key not in doc["results"]:
        raise DatasetError(f"{out}: no row {key!r} (rows: {', '.join(doc['results'])})")
    row = doc["results"][key]
    weights = None if row.get("weights") is None else tuple(row["weights"])
    run = PolicyRun(key, Policy(tuple(parse_view(n) for n in row["view_names"]), weights=weights), row["merge"])
    store = OutputStore(out, json.loads((out / subdir / "run.json").read_text()), subdir)
    cols = view_columns(store, [run])[0]
    doc["stored_views"] = list(store.fingerprint["views"])
    found: dict[int, Any] = {}
    wanted = set(indices)
    for payload, _ in store.chunks():
        positions = [j for j, i in enumerate(payload["indices"].tolist()) if i in wanted]
        if positions:
            here = payload["indices"][positions].tolist()
            found.update(zip(here, predict(payload, run, cols, doc, positions)))
    missing = wanted - set(found)
    if missing:
        raise DatasetError(f"{out}: images {sorted(missing)[:5]} were not scored (unreadable or out of range)")
    return [found[i] for i in indices]


# --------------------------------------------------------------------------- driver
def run_evaluation(
    task: EvalTask,
    lm: LoadedModel,
    data: Images,
    policies: Sequence[Policy],
    *,
    out_dir: str | Path,
    merges: Sequence[str] | None = None,
    run_config: RunConfig,
    options: EvalOptions = EvalOptions(),
    device: torch.device | str = "cpu",
    progress: Callable[[int], Any] | None = None,
    backend: Backend | None = None,
) -> dict[str, Any]:
    """Evaluate the plain model and every policy x merge of one task on ``data``; write
    ``results.json`` and ``per_view.json`` (and what the task adds: ``per_image.csv``, the
    report) into ``out_dir``, the per-view outputs under ``out_dir/<task.subdir>/``.

    In a process group (under torchrun, after
    :meth:`~ttakit.runtime.distributed.DistContext.init`, which the CLI calls; evaluation never
    starts one) the chunks are dealt out to the ranks; rank 0 gathers them, scores and writes;
    the other ranks return ``{}``. What runs the model is part of the stored outputs'
    fingerprint: a backend other than torch, a precision other than fp32 (torch autocast
    included) and int8's calibration photos, so a rerun with another never mixes them.

    Returns:
        The ``results.json`` document plus ``per_view`` and ``written`` (pages, as text). Each
        policy row also holds its paired comparison with plain and a one-line ``verdict``.
    """
    dist = DistContext.current()
    device = torch.device(device) if dist.world_size == 1 else dist.device(device)
    data = data.head(options.limit)
    if len(data) == 0:
        raise DatasetError(f"{data.source}: no images to evaluate")
    runs = task.runs(policies, merges)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DatasetError(f"out_dir {out} is an existing file, not a folder; name a folder (it is created)")
    out.mkdir(parents=True, exist_ok=True)
    fp = fingerprint(lm, data, union_views(policies), options.batch_size, task.fingerprint(data))
    fp.update(runtime_fields(backend, run_config.amp_dtype))  # backend, precision, int8 calibration (fp32 torch: none)
    if getattr(backend, "check", None):  # the precision check's figures, for the record (not compared)
        fp["backend_check"] = backend.check
    store = dist.run_once(lambda: OutputStore(out, fp, task.subdir))
    views = [parse_view(n) for n in store.fingerprint["views"]]  # a reused run may hold more views
    mine = dist.shard(plan_chunks(len(data), options.batch_size))
    report = progress if dist.is_main else None
    with prepared(lm.model.to(device), run_config):  # the caller's model is given back as it was given
        dist.run_checked(lambda: compute_outputs(task, lm, data, views, store, run_config, options, device, mine,
                                                 report, backend, EvalJob(data, tuple(runs))))
    dist.gather_chunks(store, mine)
    if not dist.is_main:
        dist.barrier()
        return {}
    unscored = store.skipped()
    if len(unscored) >= len(data):  # nothing to score: nothing is written
        raise DatasetError(f"all {len(data)} photos were unreadable (or gave non-finite outputs), e.g. "
                           + "; ".join(f"{data.paths[i]}: {why}" for i, why in unscored[:3]))
    nonfinite = [data.paths[i] for i, why in unscored if why == NONFINITE]
    if nonfinite:
        print(f"warning: {len(nonfinite)} image(s) gave NaN or inf model outputs and are not scored (every row "
              f"leaves them out): {', '.join(nonfinite[:3])}{' ...' if len(nonfinite) > 3 else ''}", file=sys.stderr)
    with torch_threads(1):  # many small tensors: intra-op threads only spin (see torch_threads)
        scored = task.score(store, data, runs, out)
        for key, row in scored.results.items():
            if key != "plain":  # each policy against plain, paired on the same images
                fields, verdict = task.compare(scored, key)
                row.update(fields, verdict=verdict)
    # Rows that cannot come from the stored outputs (adapted rows), with their own comparison:
    # before results.json, so it is written once, complete.
    scored.results.update(task.more_rows(lm, data, policies, merges, run_config, options, device, progress))
    doc = {
        "task": task.name,
        "model": lm.name,
        "weights": lm.weights,
        "data": data.source,
        "n_images": len(data),
        **scored.doc,
        "n_skipped": len(scored.skipped),
        "n_nonfinite": len(nonfinite),
        "skipped": scored.skipped,
        "results": scored.results,
    }
    write_atomic(out / "results.json", json.dumps(doc, indent=2) + "\n")
    write_atomic(out / "per_view.json", json.dumps(scored.per_view, indent=2) + "\n")
    try:
        written = task.finish(out, lm, options)
    except MissingExtraError as e:  # results.json and the CSVs stand without the pages
        print(f"ttakit: {e}", file=sys.stderr)
        written = []
    dist.barrier()
    return {**doc, "per_view": scored.per_view, "written": written}
