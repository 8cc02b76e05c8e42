"""The report's charts: a small x/y chart model laid out here, drawn by the template as inline SVG.

A :class:`Chart` holds pixel coordinates only (ticks, marks), so the template needs no arithmetic
and the page no JavaScript. The builders below lay out every chart of the report: a metric
against cost (views, model time), the NLL against cost, a reliability diagram, a search trace and a
histogram of shares per labelled bin (conformal set sizes).

Example:
    >>> c = scatter("Top-1 vs views", "views", "top-1", [(1, 0.7, "#6b7280", "plain"), (2, 0.72, "#2563eb", "hflip")],
    ...             yfmt="pct")
    >>> [m.kind for m in c.marks], c.yticks[0][1]
    (['dot', 'dot'], '69.5%')
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["COLOURS", "PLAIN_COLOUR", "Chart", "Mark", "colour", "histogram_chart", "nll_chart", "reliability_chart",
           "scatter", "trace_chart"]

# One colour per results row, the same in every chart and section; plain is grey.
PLAIN_COLOUR = "#6b7280"
COLOURS = ("#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#65a30d", "#92400e")
SIZE = (340, 260)  # a cost chart's SVG size in pixels


def colour(row: int) -> str:
    """The colour of results row ``row`` (0 is plain)."""
    return PLAIN_COLOUR if row == 0 else COLOURS[(row - 1) % len(COLOURS)]


@dataclass(frozen=True)
class Mark:
    """One drawn element of a :class:`Chart`, in pixel coordinates."""

    kind: str  # dot (filled circle), ring (hollow circle), bar (filled rect), gap (outlined rect), line, dash
    x: float = 0.0  # centre (dots, rings) or left edge (bars)
    y: float = 0.0  # centre (dots, rings) or top edge (bars)
    w: float = 0.0  # width of a bar
    h: float = 0.0  # height of a bar
    points: str = ""  # "x,y x,y ..." of a polyline
    colour: str = "#000"  # CSS colour
    tip: str = ""  # tooltip text (an SVG <title>)


@dataclass
class Chart:
    """A small x/y chart, laid out here and drawn by the template as inline SVG."""

    title: str  # caption above the plot
    width: int  # SVG size in pixels
    height: int
    box: tuple[float, float, float, float]  # plot area (left, top, right, bottom) in pixels
    xticks: list[tuple[float, str]]  # (pixel x, label) of each x tick
    yticks: list[tuple[float, str]]  # (pixel y, label) of each y tick
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


def _even(lo: float, hi: float) -> list[float]:
    """Five even ticks of a fixed ``[lo, hi]`` axis (the reliability diagram's 0..1)."""
    return [lo + (hi - lo) * i / 5 for i in range(6)]


def _padded(values: Sequence[float], share: float = 0.08) -> list[float]:
    """The values plus a margin on both sides, so that dots do not sit on the frame."""
    values = [v for v in values if math.isfinite(v)] or [0.0]
    lo, hi = min(values), max(values)
    pad = (hi - lo) * share or (abs(hi) * 0.05 or 0.5)
    return [lo - pad, hi + pad]


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


def scatter(title: str, xlabel: str, ylabel: str, points: Sequence[tuple[float, float, str, str]],
            xfmt: str = "num", yfmt: str = "num") -> Chart:
    """One dot per ``(x, y, colour, tip)``: a metric against a cost (``fmt`` ``pct`` prints 0.7 as 70%)."""
    ax = _Axes(_padded([p[0] for p in points]), _padded([p[1] for p in points]), SIZE, xfmt, yfmt)
    return ax.chart(title, xlabel, ylabel, [Mark("dot", ax.px(x), ax.py(y), colour=c, tip=t) for x, y, c, t in points])


def nll_chart(points: Sequence[tuple[float, float, float, str, str]]) -> Chart:
    """NLL (dot) and calibrated NLL (ring) against views, joined, for each ``(views, nll, calibrated, colour, key)``."""
    ax = _Axes(_padded([p[0] for p in points]), _padded([v for p in points for v in p[1:3]]), SIZE, "num", "num")
    marks = []
    for v, a, b, c, key in points:
        marks.append(Mark("line", points=f"{ax.px(v)},{ax.py(a)} {ax.px(v)},{ax.py(b)}", colour=c))
        marks.append(Mark("dot", ax.px(v), ax.py(a), colour=c, tip=f"{key}: NLL {a:.4f}"))
        marks.append(Mark("ring", ax.px(v), ax.py(b), colour=c, tip=f"{key}: calibrated NLL {b:.4f}"))
    return ax.chart("NLL (●) and calibrated NLL (○) vs views", "views (forwards per image)", "NLL, lower is better", marks)


def reliability_chart(title: str, colour_: str, count: Sequence[float], correct: Sequence[float],
                      conf_sum: Sequence[float]) -> Chart:
    """Reliability diagram: each confidence bin's accuracy (bar) against its mean confidence
    (the red outline shows the gap; a calibrated model fills the diagonal exactly)."""
    ax = _Axes([0, 1], [0, 1], (250, 236), "num", "num", xlim=(0.0, 1.0), ylim=(0.0, 1.0))
    marks = [Mark("dash", points=f"{ax.px(0)},{ax.py(0)} {ax.px(1)},{ax.py(1)}", colour="#9ca3af")]
    bins = len(count)
    for b in range(bins):
        c = float(count[b])
        if c == 0:
            continue
        acc, conf = float(correct[b]) / c, float(conf_sum[b]) / c
        left, right = ax.px(b / bins), ax.px((b + 1) / bins)
        tip = (f"confidence {b / bins:.2f}-{(b + 1) / bins:.2f}: {int(c)} images, "
               f"accuracy {acc:.1%}, mean confidence {conf:.1%}")
        height = round(ax.py(0) - ax.py(acc), 1)
        marks.append(Mark("bar", left, ax.py(acc), right - left, height, colour=colour_, tip=tip))
        top, bottom = min(ax.py(acc), ax.py(conf)), max(ax.py(acc), ax.py(conf))
        marks.append(Mark("gap", left, top, right - left, round(bottom - top, 1), colour="#dc2626"))
    return ax.chart(title, "confidence", "accuracy", marks)


def trace_chart(trace: Sequence[Mapping[str, Any]], top1: bool, plain: float | None) -> Chart:
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


def histogram_chart(title: str, colour_: str, bins: Sequence[tuple[str, float, str]], xlabel: str,
                    top: float | None = None) -> Chart:
    """One bar per ``(label, share, tip)`` bin, labelled under it, the share on a percent axis
    from 0 to at least ``top`` (give several charts the same ``top`` to compare them)."""
    high = max([share for _, share, _ in bins] + [top or 0.0]) or 1.0
    ax = _Axes([], [0.0, high], SIZE, "num", "pct", xlim=(0.0, float(len(bins))))
    ax.xticks = [(ax.px(i + 0.5), label) for i, (label, _, _) in enumerate(bins)]  # categories, not numbers
    marks = [Mark("bar", ax.px(i + 0.1), ax.py(share), ax.px(i + 0.9) - ax.px(i + 0.1),
                  round(ax.py(0) - ax.py(share), 1), colour=colour_, tip=tip)
             for i, (_, share, tip) in enumerate(bins) if share > 0]
    return ax.chart(title, xlabel, "share of sets", marks)
