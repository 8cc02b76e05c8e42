"""The HTML report of an evaluation: one self-contained page built from the saved files alone.

:func:`write_report` reads what :func:`~ttakit.evaluation.evaluate.evaluate` wrote into its
output folder (``results.json``, ``per_view.json``, ``per_image.csv``, the stored logits and,
if there is one, the ``policy.json`` of a search) and renders ``report.html``: the results
table with the paired verdict of every policy, accuracy and NLL against cost, a reliability
diagram per policy, each view's own top-1, the classes each policy helped and hurt most, a
gallery of photos each policy fixed and broke (with the views as the model saw them) and the
search trace. No model runs: every probability on the page is recomputed from the stored
logits through :func:`~ttakit.evaluation.evaluate.classify_stored`, so ``ttakit report DIR``
re-renders the same page anywhere the folder (and, for the gallery, the photos) can be read.

The page has no JavaScript and loads nothing: the CSS is inline, the charts are inline SVG
and the photos are base64 JPEG data URIs, so it can be mailed or archived as one file.

Example:
    >>> write_report("runs/x")  # doctest: +SKIP
    PosixPath('runs/x/report.html')
"""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import torch
from PIL import Image
from torch import Tensor

from .. import __version__
from ..data import input_transform, load_image
from ..errors import DatasetError, TTAKitError
from ..policy import Policy, create_policy, parse_view
from ..transforms import Normalization, View
from ..viz import denormalize
from .scoring import EvalOptions, PolicyRun, classify_stored
from .metrics import ECE_BINS, MetricAccumulator
from .store import LogitStore

__all__ = ["write_report"]

PHOTO_PX = 128  # long side of a gallery photo thumbnail
VIEW_PX = 48  # long side of a view thumbnail (shown at 36 CSS px: sharp on 1.3x screens)
MAX_VIEWS_SHOWN = 12  # views drawn per gallery card (a searched pool can hold 20+)
CLASSES_SHOWN = 8  # classes listed under gains and under losses
# One colour per row, the same in every chart and section; plain is grey.
PLAIN_COLOUR = "#6b7280"
COLOURS = ("#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#65a30d", "#92400e")


# =========================================================================== SVG chart model
@dataclass(frozen=True)
class Mark:
    """One drawn element of a :class:`Chart`, in pixel coordinates.

    Attributes:
        kind: ``dot`` (filled circle), ``ring`` (hollow circle), ``bar`` (filled rectangle),
            ``gap`` (outlined rectangle), ``line`` (polyline) or ``dash`` (dashed polyline).
        x: centre (dots, rings) or left edge (bars) in pixels.
        y: centre (dots, rings) or top edge (bars) in pixels.
        w: width of a bar.
        h: height of a bar.
        points: ``"x,y x,y ..."`` of a polyline.
        colour: CSS colour.
        tip: tooltip text (an SVG ``<title>``).
    """

    kind: str
    x: float = 0.0
    y: float = 0.0
    w: float = 0.0
    h: float = 0.0
    points: str = ""
    colour: str = "#000"
    tip: str = ""


@dataclass
class Chart:
    """A small x/y chart, laid out here and drawn by the template as inline SVG.

    Attributes:
        title: caption above the plot.
        width: SVG width in pixels.
        height: SVG height in pixels.
        box: plot area ``(left, top, right, bottom)`` in pixels.
        xticks: ``(pixel x, label)`` of each x tick.
        yticks: ``(pixel y, label)`` of each y tick.
        xlabel: x axis title.
        ylabel: y axis title.
        marks: what is drawn in the plot area.
    """

    title: str
    width: int
    height: int
    box: tuple[float, float, float, float]
    xticks: list[tuple[float, str]]
    yticks: list[tuple[float, str]]
    xlabel: str
    ylabel: str
    marks: list[Mark] = field(default_factory=list)


def _nice_ticks(lo: float, hi: float, count: int = 5) -> tuple[float, float, list[float]]:
    """Round axis limits enclosing ``[lo, hi]`` and about ``count`` ticks at 1/2/2.5/5 x 10^k steps."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = 0.0, 1.0
    if hi - lo < 1e-12:  # a single value: open a window around it
        pad = abs(lo) * 0.05 or 0.5
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / count
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * 0.999)
    start, stop = math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step
    ticks = [start + i * step for i in range(int(round((stop - start) / step)) + 1)]
    return start, stop, ticks


def _tick_label(v: float, step: float, fmt: str) -> str:
    """A tick's text with as many decimals as the step needs (a 2.5 step needs one)."""
    scale = 100.0 if fmt == "pct" else 1.0
    digits = next((d for d in range(7) if abs(step * scale * 10**d - round(step * scale * 10**d)) < 1e-6), 6)
    return f"{v * scale:.{digits}f}" + ("%" if fmt == "pct" else "")


class _Axes:
    """Linear maps from data to pixels for one chart, with its ticks."""

    def __init__(self, xs: Sequence[float], ys: Sequence[float], size: tuple[int, int], xfmt: str, yfmt: str,
                 xlim: tuple[float, float] | None = None, ylim: tuple[float, float] | None = None,
                 xticks: Sequence[float] | None = None) -> None:
        self.width, self.height = size
        self.box = (62.0, 26.0, self.width - 14.0, self.height - 40.0)  # room for tick labels and titles
        self.x0, self.x1, xt = (*xlim, list(xticks or _even(*xlim))) if xlim else _nice_ticks(min(xs), max(xs))
        self.y0, self.y1, yt = (*ylim, _even(*ylim)) if ylim else _nice_ticks(min(ys), max(ys))
        xstep, ystep = (t[1] - t[0] if len(t) > 1 else 1.0 for t in (xt, yt))
        self.xticks = [(self.px(v), _tick_label(v, xstep, xfmt)) for v in xt]
        self.yticks = [(self.py(v), _tick_label(v, ystep, yfmt)) for v in yt]

    def px(self, v: float) -> float:
        left, _, right, _ = self.box
        return round(left + (v - self.x0) / (self.x1 - self.x0) * (right - left), 1)

    def py(self, v: float) -> float:
        _, top, _, bottom = self.box
        return round(bottom - (v - self.y0) / (self.y1 - self.y0) * (bottom - top), 1)

    def chart(self, title: str, xlabel: str, ylabel: str, marks: list[Mark]) -> Chart:
        return Chart(title, self.width, self.height, self.box, self.xticks, self.yticks, xlabel, ylabel, marks)


def _even(lo: float, hi: float) -> list[float]:
    """Five even ticks of a fixed ``[lo, hi]`` axis (the reliability diagram's 0..1)."""
    return [lo + (hi - lo) * i / 5 for i in range(6)]


def _padded(values: Sequence[float], share: float = 0.08) -> list[float]:
    """The values plus a margin on both sides, so that dots do not sit on the frame."""
    lo, hi = min(values), max(values)
    pad = (hi - lo) * share or (abs(hi) * 0.05 or 0.5)
    return [lo - pad, hi + pad]


# =========================================================================== reading the folder
@dataclass
class _RowData:
    """Everything the page shows about one results row, recomputed from the stored logits."""

    key: str
    run: PolicyRun
    result: dict[str, Any]
    colour: str
    acc: MetricAccumulator = field(default_factory=MetricAccumulator)
    top_idx: list[Tensor] = field(default_factory=list)  # (n, k) per chunk
    top_val: list[Tensor] = field(default_factory=list)
    p_true: list[Tensor] = field(default_factory=list)  # (n,) probability of the label
    idx: Tensor = field(init=False, repr=False)  # (N, k) top classes, once all chunks are read
    val: Tensor = field(init=False, repr=False)  # (N, k) their probabilities
    pt: Tensor = field(init=False, repr=False)  # (N,) probability of the label

    def done(self) -> None:
        """Join the chunks' parts (after the last chunk)."""
        self.idx, self.val, self.pt = torch.cat(self.top_idx), torch.cat(self.top_val), torch.cat(self.p_true)
        self.top_idx, self.top_val, self.p_true = [], [], []


def _rebuild_run(key: str, row: Mapping[str, Any], data_config: Mapping[str, Any] | None) -> PolicyRun:
    """The :class:`PolicyRun` of a ``results.json`` row.

    Rows are named by the policy as written, so the name usually resolves again (a preset,
    policy text, a JSON file with its weights and temperature; presets that depend on the
    model resolve with its ``data_config``); when it does not, or gives other views, the row's
    own view names are used (equal weights, temperature 1).
    """
    if key == "plain":
        return PolicyRun("plain", Policy((View(),), name="plain"), "mean")
    merge = row["merge"]
    base = key[: -len(merge) - 1] if key.endswith(f"@{merge}") else key
    try:
        policy: Policy | None = create_policy(base, data_config)
    except TTAKitError:  # a JSON file moved away, a preset of another ttakit, ...
        policy = None
    if policy is None or policy.view_names != list(row["view_names"]):
        policy = Policy(tuple(parse_view(n) for n in row["view_names"]), name=base)
    return PolicyRun(key, policy, merge)


def _read_csv(path: Path) -> tuple[list[str], list[str], list[dict[str, str]]]:
    """``per_image.csv`` as (paths, label names, per image ``{row key: predicted name}``)."""
    if not path.exists():
        return [], [], []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        keys = header[2::2]
        paths, labels, preds = [], [], []
        for line in reader:
            paths.append(line[0])
            labels.append(line[1])
            preds.append(dict(zip(keys, line[2::2])))
    return paths, labels, preds


def _class_names(
    given: Sequence[str] | None, n_classes: int, labels: Tensor, csv_labels: list[str],
    preds: list[dict[str, str]], plain: _RowData,
) -> list[str]:
    """Class names: as given; else what ``per_image.csv`` reveals (each image's label and the
    plain model's prediction, paired with the stored indices; plain is never adaptive, so its
    recomputed prediction is the one written), completed with ImageNet's names for a
    1000-class model whose revealed names agree with them, else ``class_N``."""
    if given is not None and len(given) == n_classes:
        return list(given)
    known: dict[int, str] = {}
    for j, name in enumerate(csv_labels[: len(labels)]):
        known[int(labels[j])] = name
        if "plain" in preds[j]:
            known.setdefault(int(plain.idx[j, 0]), preds[j]["plain"])
    fill = [f"class_{i}" for i in range(n_classes)]
    if n_classes == 1000:
        from ..models import imagenet_class_names

        imagenet = imagenet_class_names()
        if all(imagenet[i] == n for i, n in known.items()):
            fill = imagenet
    return [known.get(i, fill[i]) for i in range(n_classes)]


def _data_config(given: Mapping[str, Any] | None, fingerprint: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The model's data config: as given, else the one stored with the logits, else timm's
    default for the model name (no weights are loaded). ``(config or None, note)``."""
    cfg = given or fingerprint.get("data_config")
    if not cfg:
        try:
            import timm

            model = timm.create_model(fingerprint["model"], pretrained=False)
            cfg = timm.data.resolve_data_config({}, model=model)
        except Exception as e:  # noqa: BLE001 - any failure only means no view thumbnails
            return None, f"view thumbnails skipped: the model's data config is unknown ({type(e).__name__})"
    # JSON stored tuples as lists; timm's transforms want tuples.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}, ""


def _find_policy(out: Path, given: str | Path | None) -> dict[str, Any] | None:
    """The search's ``policy.json`` (given, or next to / above the folder) if it holds a trace."""
    candidates = [Path(given)] if given is not None else [out / "policy.json", out.parent / "policy.json"]
    for p in candidates:
        if p.is_file():
            try:
                doc = json.loads(p.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(doc, dict) and isinstance(doc.get("meta"), dict) and doc["meta"].get("trace"):
                return {**doc, "path": str(p)}
    return None


# =========================================================================== images
def _jpeg_uri(img: Image.Image, side: int, quality: int = 78) -> str:
    """``img`` shrunk to ``side`` px on its long side, as a base64 JPEG data URI."""
    if max(img.size) > side:
        img = img.copy()
        img.thumbnail((side, side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, optimize=True)  # optimised Huffman tables: a third smaller at 48 px
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class _Thumbnails:
    """Photo and view thumbnails of gallery images, each photo decoded once and each
    (photo, view) rendered once however many policies show it."""

    def __init__(self, data_config: Mapping[str, Any] | None) -> None:
        self.cfg = data_config
        self.norm = Normalization(tuple(data_config["mean"]), tuple(data_config["std"])) if data_config else None
        self.stages: dict[str, Any] = {}
        self.cache: dict[str, tuple[str | None, dict[str, str], str]] = {}

    def _stage(self, view: View) -> Any:
        key = view.source.name if view.source is not None else "identity"
        if key not in self.stages:
            self.stages[key] = input_transform(view.source, self.cfg)  # type: ignore[arg-type]
        return self.stages[key]

    def render_all(self, wanted: Mapping[str, Sequence[View]]) -> None:
        """:meth:`render` every photo, a few at a time (decoding, resizing and encoding release
        the GIL)."""
        if self.norm is not None:
            for views in wanted.values():
                for v in views:
                    self._stage(v)  # built once, before the threads share them
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            list(pool.map(lambda item: self.render(*item), wanted.items()))

    def render(self, path: str, views: Sequence[View]) -> None:
        """Decode ``path`` once and render its photo thumbnail and every view in ``views``."""
        try:
            photo = load_image(path)
        except TTAKitError as e:
            self.cache[path] = (None, {}, str(e))
            return
        thumbs: dict[str, str] = {}
        note = ""
        if self.norm is not None:
            inputs: dict[str, Tensor] = {}
            with torch.inference_mode():
                for v in views:
                    try:
                        stage = self._stage(v)
                        src = v.source.name if v.source is not None else "identity"
                        if src not in inputs:
                            inputs[src] = stage(photo)
                        x = v.apply(inputs[src][None], self.norm)[0]
                    except TTAKitError as e:  # e.g. an input window larger than this photo
                        note = str(e)
                        continue
                    thumbs[v.name] = _jpeg_uri(self._small(x), VIEW_PX, 70)
        self.cache[path] = (_jpeg_uri(photo, PHOTO_PX), thumbs, note)

    def _small(self, x: Tensor) -> Image.Image:
        """A normalised ``(C, H, W)`` view as a small PIL image: area-shrunk while still a
        tensor, so denormalising and converting touch a few thousand pixels, not 50k."""
        factor = VIEW_PX / max(x.shape[-2:])
        if factor < 1:
            x = torch.nn.functional.interpolate(x[None].float(), scale_factor=factor, mode="area")[0]
        pixels = (denormalize(x.float(), self.norm) * 255 + 0.5).to(torch.uint8)  # type: ignore[arg-type]
        return Image.fromarray(pixels.contiguous().numpy())


# =========================================================================== page parts
def _cost_charts(rows: Sequence[_RowData]) -> list[Chart]:
    """Top-1 and NLL (plain and calibrated) against views, and top-1 against model time."""
    views = [float(r.result["views"]) for r in rows]
    top1 = [r.result["top1"] for r in rows]
    nlls = [r.result["nll"] for r in rows] + [r.result["nll_calibrated"] for r in rows]
    charts = []
    ax = _Axes(_padded(views), _padded(top1), (340, 260), "num", "pct")
    marks = [Mark("dot", ax.px(v), ax.py(t), colour=r.colour, tip=f"{r.key}: {t:.2%} with {int(v)} views")
             for r, v, t in zip(rows, views, top1)]
    charts.append(ax.chart("Top-1 accuracy vs views", "views (forwards per image)", "top-1", marks))
    ax = _Axes(_padded(views), _padded(nlls), (340, 260), "num", "num")
    marks = []
    for r, v in zip(rows, views):
        a, b = r.result["nll"], r.result["nll_calibrated"]
        marks.append(Mark("line", points=f"{ax.px(v)},{ax.py(a)} {ax.px(v)},{ax.py(b)}", colour=r.colour))
        marks.append(Mark("dot", ax.px(v), ax.py(a), colour=r.colour, tip=f"{r.key}: NLL {a:.4f}"))
        marks.append(Mark("ring", ax.px(v), ax.py(b), colour=r.colour, tip=f"{r.key}: calibrated NLL {b:.4f}"))
    charts.append(ax.chart("NLL (●) and calibrated NLL (○) vs views", "views (forwards per image)",
                           "NLL, lower is better", marks))
    n = max(int(rows[0].acc.n), 1)
    ms = [1000.0 * float(r.result.get("seconds") or 0.0) / n for r in rows]
    if any(m > 0 for m in ms):
        ax = _Axes(_padded(ms), _padded(top1), (340, 260), "num", "pct")
        marks = [Mark("dot", ax.px(m), ax.py(t), colour=r.colour, tip=f"{r.key}: {t:.2%} at {m:.1f} ms/image")
                 for r, m, t in zip(rows, ms, top1)]
        charts.append(ax.chart("Top-1 accuracy vs model time", "model time per image (ms)", "top-1", marks))
    return charts


def _reliability(r: _RowData) -> Chart:
    """Reliability diagram: each confidence bin's accuracy (bar) against its mean confidence
    (the red outline shows the gap; a calibrated model fills the diagonal exactly)."""
    ax = _Axes([0, 1], [0, 1], (250, 236), "num", "num", xlim=(0.0, 1.0), ylim=(0.0, 1.0))
    marks = [Mark("dash", points=f"{ax.px(0)},{ax.py(0)} {ax.px(1)},{ax.py(1)}", colour="#9ca3af")]
    bins = len(r.acc.count)
    for b in range(bins):
        c = float(r.acc.count[b])
        if c == 0:
            continue
        acc, conf = float(r.acc.correct[b]) / c, float(r.acc.conf_sum[b]) / c
        left, right = ax.px(b / bins), ax.px((b + 1) / bins)
        tip = (f"confidence {b / bins:.2f}-{(b + 1) / bins:.2f}: {int(c)} images, "
               f"accuracy {acc:.1%}, mean confidence {conf:.1%}")
        height = round(ax.py(0) - ax.py(acc), 1)
        marks.append(Mark("bar", left, ax.py(acc), right - left, height, colour=r.colour, tip=tip))
        top, bottom = min(ax.py(acc), ax.py(conf)), max(ax.py(acc), ax.py(conf))
        marks.append(Mark("gap", left, top, right - left, round(bottom - top, 1), colour="#dc2626"))
    key = r.key if len(r.key) <= 22 else r.key[:21] + "…"  # the title must fit the 250 px chart
    return ax.chart(f"{key} (ECE {r.result.get('ece', 0.0):.3f})", "confidence", "accuracy", marks)


def _trace_chart(trace: Sequence[Mapping[str, Any]], top1: bool, plain: float | None) -> Chart:
    """The search objective after each step, with the plain model's as a dashed line."""
    values = [(-t["objective"] if top1 else t["objective"]) for t in trace]
    steps = list(range(1, len(values) + 1))
    ax = _Axes([], _padded(values + ([plain] if plain is not None else [])), (340, 240), "num",
               "pct" if top1 else "num", xlim=(0.5, len(steps) + 0.5), xticks=steps)  # whole steps only
    pts = " ".join(f"{ax.px(s)},{ax.py(v)}" for s, v in zip(steps, values))
    marks = [Mark("line", points=pts, colour=COLOURS[0])]
    if plain is not None:
        marks.insert(0, Mark("dash", points=f"{ax.px(0.5)},{ax.py(plain)} {ax.px(len(steps) + 0.5)},{ax.py(plain)}",
                             colour=PLAIN_COLOUR))
    marks += [Mark("dot", ax.px(s), ax.py(v), colour=COLOURS[0], tip=f"step {s}: +{t['view']}")
              for s, v, t in zip(steps, values, trace)]
    return ax.chart("Objective after each step (dashed: plain)", "views chosen",
                    "top-1" if top1 else "calibrated NLL", marks)


def _class_changes(plain: _RowData, r: _RowData, labels: Tensor, names: Sequence[str]) -> dict[str, Any]:
    """Per class: images fixed and broken by the policy, against plain."""
    plain_right = plain.idx[:, 0] == labels
    right = r.idx[:, 0] == labels
    C = len(names)
    fixed = torch.bincount(labels[right & ~plain_right], minlength=C)
    broken = torch.bincount(labels[~right & plain_right], minlength=C)
    support = torch.bincount(labels, minlength=C)
    net = fixed - broken

    def top(counts: Tensor) -> list[dict[str, Any]]:
        order = sorted((i for i in range(C) if counts[i] > 0), key=lambda i: (-int(counts[i]), -int(net[i]), names[i]))
        return [{"name": names[i], "fixed": int(fixed[i]), "broken": int(broken[i]), "n": int(support[i])}
                for i in order[:CLASSES_SHOWN]]

    return {"gains": top(fixed), "losses": top(broken), "up": int((net > 0).sum()), "down": int((net < 0).sum())}


def _top(r: _RowData, j: int, label: int, names: Sequence[str]) -> list[dict[str, Any]]:
    return [{"name": names[int(c)], "prob": float(p), "true": int(c) == label}
            for c, p in zip(r.idx[j].tolist(), r.val[j].tolist())]


def _format_row(r: _RowData, n: int) -> dict[str, Any]:
    """The results-table cells of one row, as text (the test reads them back)."""
    res = r.result
    cells: dict[str, Any] = {
        "key": r.key, "colour": r.colour, "merge": res["merge"], "views": res["views"],
        "top1": f"{res['top1']:.2%}", "top5": f"{res['top5']:.2%}", "nll": f"{res['nll']:.4f}",
        "nll_calibrated": f"{res['nll_calibrated']:.4f}", "ece": f"{res['ece']:.3f}",
        "fixed": res["fixed"], "broken": res["broken"],
        "ms": f"{1000.0 * res['seconds'] / n:.1f}" if res.get("seconds") else "–",
        "verdict": res.get("verdict", ""),
    }
    if "delta_top1" in res and res["delta_top1"] is not None:
        lo, hi = res["ci_top1"]
        cells.update(
            delta_top1=f"{100 * res['delta_top1']:+.2f}",
            ci_top1="–" if lo is None else f"[{100 * lo:+.2f}, {100 * hi:+.2f}]",
            p_value="–" if res["p_value"] is None else f"{res['p_value']:.3g}",
            delta_nll="–" if res["delta_nll"] is None else f"{res['delta_nll']:+.4f}",
            significant="yes" if res["significant"] else "no",
            images_needed="–" if res["images_needed"] is None else f"{res['images_needed']:,}",
            tone=("good" if res["delta_top1"] > 0 else "bad") if res["significant"] else "neutral",
        )
    return cells


# =========================================================================== driver
def _score_rows(store: LogitStore, doc: Mapping[str, Any], options: EvalOptions,
                data_config: Mapping[str, Any] | None) -> tuple[list[_RowData], Tensor, int]:
    """Every results row recomputed from the stored logits: ``(rows, labels (N,), classes)``.

    The chunks are streamed (memory stays flat however large the run), each row's merged
    probabilities computed through the one classification path and reduced to what is shown.
    """
    rows = [_RowData(key, _rebuild_run(key, res, data_config), res,
                     PLAIN_COLOUR if i == 0 else COLOURS[(i - 1) % len(COLOURS)])
            for i, (key, res) in enumerate(doc["results"].items())]
    columns = {n: i for i, n in enumerate(store.fingerprint["views"])}
    missing = sorted({v.name for r in rows for v in r.run.policy.views} - set(columns))
    if missing:
        raise DatasetError(f"{store.dir.parent}: views {', '.join(missing)} are not in the stored logits")
    labels_parts: list[Tensor] = []
    n_classes = 0
    for payload, _ in store.chunks():
        logits, labels = payload["logits"], payload["labels"].long()
        if len(labels) == 0:
            continue
        n_classes = logits.shape[-1]
        labels_parts.append(labels)
        plain_right = logits[:, 0].argmax(-1) == labels
        for r in rows:
            probs = classify_stored(logits, columns, r.run, options).probs.float()
            r.acc.update(probs, labels, plain_right)
            val, idx = probs.topk(min(3, probs.shape[-1]), dim=-1)
            r.top_idx.append(idx)
            r.top_val.append(val)
            r.p_true.append(probs.gather(1, labels[:, None]).squeeze(1))
    if not labels_parts:
        raise DatasetError(f"{store.dir.parent}: no scored images in the stored logits")
    for r in rows:
        r.done()
    return rows, torch.cat(labels_parts), n_classes


def _pick(plain: _RowData, r: _RowData, labels: Tensor, count: int) -> dict[str, list[int]]:
    """The images a policy fixed and broke that the gallery shows: the fixed ones where it
    gained most probability on the true class, the broken ones where it lost most (its
    clearest wins and failures, not arbitrary ones)."""
    plain_right, right = plain.idx[:, 0] == labels, r.idx[:, 0] == labels
    gain = r.pt - plain.pt
    picks = {}
    for kind, mask, sign in (("fixed", right & ~plain_right, -1.0), ("broken", ~right & plain_right, 1.0)):
        where = mask.nonzero().squeeze(1)
        picks[kind] = where[torch.argsort(sign * gain[where], stable=True)][:count].tolist()
    return picks


def _card(j: int, plain: _RowData, r: _RowData, labels: Tensor, names: Sequence[str], paths: Sequence[str],
          thumbs: _Thumbnails) -> dict[str, Any]:
    """One gallery card: the photo, plain and TTA top-3, the views as the model saw them."""
    uri, view_uris, note = thumbs.cache[paths[j]]
    shown = _distinct(r.run.policy.views)
    label = int(labels[j])
    return {
        "path": paths[j], "file": Path(paths[j]).name, "truth": names[label], "photo": uri,
        "plain": _top(plain, j, label, names), "tta": _top(r, j, label, names),
        "views": [(v.name, view_uris[v.name]) for v in shown[:MAX_VIEWS_SHOWN] if v.name in view_uris],
        "more_views": max(0, len(shown) - MAX_VIEWS_SHOWN), "note": note,
    }


def _search_part(search: Mapping[str, Any]) -> dict[str, Any]:
    """The search section: how the policy was chosen and the objective after each step."""
    meta = search["meta"]
    top1 = "(top1" in str(meta.get("how", ""))  # search_policy writes "greedy policy search (top1, ..."
    return {
        "path": search["path"], "meta": meta, "top1": top1,
        "trace": [{"step": i + 1, "view": t["view"],
                   "value": f"{-t['objective']:.2%}" if top1 else f"{t['objective']:.4f}"}
                  for i, t in enumerate(meta["trace"])],
        "chart": _trace_chart(meta["trace"], top1, meta.get("plain_top1" if top1 else "plain_nll")),
        "views": search.get("views", []),
        "weights": search.get("weights"), "temperature": search.get("temperature", 1.0),
    }


def write_report(
    out_dir: str | Path,
    *,
    search_policy_path: str | Path | None = None,
    class_names: Sequence[str] | None = None,
    data_config: Mapping[str, Any] | None = None,
    max_gallery: int = 12,
    options: EvalOptions | None = None,
) -> Path:
    """Build ``out_dir/report.html`` from an evaluation folder, without running any model.

    Args:
        out_dir: the ``--out`` folder of ``ttakit evaluate`` (or the ``data`` folder of a search).
        search_policy_path: a search's ``policy.json`` whose trace to show; by default
            ``out_dir/policy.json`` or ``out_dir/../policy.json`` when they hold one.
        class_names: the model's class names; by default those that ``per_image.csv`` reveals
            (ImageNet's for a 1000-class model whose names agree), ``class_N`` for the rest.
        data_config: the model's timm data config, to draw the views as the model saw them;
            by default the one stored with the logits, else timm's default for the model name.
        max_gallery: photos shown per policy among those it fixed, and again among those it broke.
        options: the evaluation's options (its adaptive threshold and confidence), so that
            adaptive rows are recomputed as they were scored.

    Returns:
        The path of ``report.html``.

    Raises:
        DatasetError: the folder has no ``results.json`` or no stored logits.
    """
    # Every tensor here is small (a chunk of logits, one photo): torch's intra-op threads only
    # add overhead, and on a busy machine they spin (measured: twice the CPU time, 3x the wall).
    with _torch_threads(1):
        return _write_report(Path(out_dir), search_policy_path, class_names, data_config, max_gallery, options)


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _write_report(
    out: Path, search_policy_path: str | Path | None, class_names: Sequence[str] | None,
    data_config: Mapping[str, Any] | None, max_gallery: int, options: EvalOptions | None,
) -> Path:
    """:func:`write_report` itself (see there)."""
    if not (out / "results.json").exists():
        raise DatasetError(f"{out}: no results.json (run 'ttakit evaluate ... --out {out}' first)")
    if not (out / "logits" / "run.json").exists():
        raise DatasetError(f"{out}: no saved logits (run 'ttakit evaluate ... --out {out}' first)")
    doc = json.loads((out / "results.json").read_text())
    per_view = json.loads((out / "per_view.json").read_text()) if (out / "per_view.json").exists() else {}
    store = LogitStore(out, json.loads((out / "logits" / "run.json").read_text()))
    cfg, note = _data_config(data_config, store.fingerprint)
    rows, labels, n_classes = _score_rows(store, doc, options or EvalOptions(), cfg)
    notes = [f"{r.key}: top-1 recomputed from the stored logits ({r.acc.compute()['top1']:.2%}) differs from "
             f"results.json ({r.result['top1']:.2%}): evaluated with --adaptive? Re-render with the same "
             "--adaptive and --confidence (ttakit report DIR --adaptive T)"
             for r in rows if abs(r.acc.compute()["top1"] - r.result["top1"]) > 1e-6]
    paths, csv_labels, preds = _read_csv(out / "per_image.csv")
    if len(paths) != len(labels):
        notes.append(f"per_image.csv lists {len(paths)} images for {len(labels)} stored: the gallery is left out")
        paths, max_gallery = [], 0
    names = _class_names(class_names, n_classes, labels, csv_labels, preds, rows[0])
    notes += [note] if note else []

    plain, policies = rows[0], rows[1:]
    picks = [_pick(plain, r, labels, max_gallery) for r in policies]
    wanted: dict[str, dict[str, View]] = {}  # photo -> the views any policy shows of it
    for r, p in zip(policies, picks):
        for j in p["fixed"] + p["broken"]:
            wanted.setdefault(paths[j], {}).update((v.name, v) for v in _distinct(r.run.policy.views)[:MAX_VIEWS_SHOWN])
    thumbs = _Thumbnails(cfg)
    thumbs.render_all({p: list(v.values()) for p, v in wanted.items()})
    unreadable = [p for p, (uri, _, _) in thumbs.cache.items() if uri is None]
    if unreadable:
        notes.append(f"{len(unreadable)} gallery photo(s) could not be read (e.g. {thumbs.cache[unreadable[0]][2]})")

    n = len(labels)
    policy_parts = [{
        "cells": _format_row(r, n), "classes": _class_changes(plain, r, labels, names), "reliability": _reliability(r),
        "gallery": {kind: [_card(j, plain, r, labels, names, paths, thumbs) for j in js] for kind, js in p.items()},
        "fixed": r.result["fixed"], "broken": r.result["broken"], "views": r.run.policy.view_names,
    } for r, p in zip(policies, picks)]
    search = _find_policy(out, search_policy_path)
    if search is not None and search["meta"].get("data") not in (None, doc.get("data")):
        notes.append(f"{search['path']} was searched on {search['meta']['data']}, "
                     f"this evaluation is on {doc.get('data')}")
    best_view = max(per_view.values(), default=1.0) or 1.0
    context = {
        "doc": doc, "n_scored": n, "n_classes": n_classes, "rows": [_format_row(r, n) for r in rows],
        "policies": policy_parts, "cost_charts": _cost_charts(rows), "reliability": [_reliability(r) for r in rows],
        "single": [{"name": k, "top1": f"{v:.2%}", "width": round(100 * v / best_view, 1), "plain": k == "identity"}
                   for k, v in sorted(per_view.items(), key=lambda t: -t[1])],
        "search": None if search is None else _search_part(search), "notes": notes, "bins": ECE_BINS,
        "version": __version__,
    }
    page = out / "report.html"
    page.write_text(_environment().get_template("report.html.j2").render(**context), encoding="utf-8")
    return page


def _distinct(views: Sequence[View]) -> list[View]:
    """Views in order, repeats dropped (a searched policy may choose a view twice)."""
    return list({v.name: v for v in views}.values())


def _environment() -> jinja2.Environment:
    """The Jinja2 environment of the packaged templates (autoescaped: names and paths are text)."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("ttakit.evaluation", "templates"),
        autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined,
    )
