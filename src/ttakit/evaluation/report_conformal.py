"""The conformal section of a classification report: each row's prediction sets, read from results.json.

``ttakit evaluate --conformal ALPHA`` stores every row's set metrics under its ``conformal``
field (see :mod:`~ttakit.evaluation.conformal`). :func:`conformal_part` turns them into the
section the page draws: one table line per row (coverage mean ± its spread over the splits,
mean set size, singleton and empty rates, the change of set size against plain with its 95%
interval) and one set-size histogram per row, drawn with the report's chart model. A run
without conformal fields has no section (``None``).

Example:
    >>> c = {"alpha": 0.1, "score": "thr", "splits": 5, "n_cal": 50, "n_test": 50, "coverage": 0.91,
    ...      "coverage_std": 0.02, "coverage_bounds": [0.9, 0.92], "set_size": 1.4, "singleton_rate": 0.6,
    ...      "empty_rate": 0.0, "size_histogram": {"0": 0.0, "1": 0.6, "2": 0.4, "3": 0.0},
    ...      "coverage_by_size": {"0": {"share": 0.0, "coverage": None}, "1": {"share": 0.6, "coverage": 0.9},
    ...                           "2": {"share": 0.4, "coverage": 0.93}, "3": {"share": 0.0, "coverage": None}}}
    >>> part = conformal_part([("plain", "#6b7280", {"conformal": c})])
    >>> part["rows"][0]["cells"]["coverage"], [label for _, label in part["charts"][0].xticks]
    ('91.0% ± 2.0', ['0', '1', '2'])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .charts import Chart, histogram_chart

__all__ = ["CONFORMAL_COLUMNS", "conformal_part"]

# The conformal table: (cell class, header); the tests read cells back by class.
CONFORMAL_COLUMNS = (("coverage", "coverage ± sd (pt)"), ("set_size", "mean set size"),
                     ("singleton_rate", "singletons"), ("empty_rate", "empty sets"),
                     ("delta_set_size", "Δ set size"), ("ci_set_size", "95% CI"))


def _cells(c: Mapping[str, Any]) -> dict[str, str]:
    """One row's conformal metrics as the table's text."""
    ci = c.get("ci_set_size")
    return {
        "coverage": f"{100 * c['coverage']:.1f}% ± {100 * c.get('coverage_std', 0.0):.1f}",
        "set_size": f"{c['set_size']:.2f}", "singleton_rate": f"{c['singleton_rate']:.1%}",
        "empty_rate": f"{c['empty_rate']:.1%}",
        "delta_set_size": "–" if c.get("delta_set_size") is None else f"{c['delta_set_size']:+.2f}",
        "ci_set_size": "–" if not ci else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]",
    }


def _shown_bins(metrics: Sequence[Mapping[str, Any]]) -> list[str]:
    """The histogram bins up to the largest size any row's sets reached (the same in every chart)."""
    labels = list(metrics[0]["size_histogram"])
    last = max((i for m in metrics for i, b in enumerate(labels) if m["size_histogram"].get(b, 0.0) > 0), default=0)
    return labels[: last + 1]


def _histogram(key: str, colour: str, c: Mapping[str, Any], bins: Sequence[str], top: float) -> Chart:
    by_size = c.get("coverage_by_size", {})
    shown = []
    for b in bins:
        share, cov = c["size_histogram"].get(b, 0.0), by_size.get(b, {}).get("coverage")
        tip = f"size {b}: {share:.1%} of test sets" + ("" if cov is None else f", {cov:.1%} of them cover the label")
        shown.append((b, share, tip))
    name = key if len(key) <= 22 else key[:21] + "…"  # the title must fit the chart
    return histogram_chart(f"{name} (mean size {c['set_size']:.2f})", colour, shown, "set size", top)


def conformal_part(rows: Sequence[tuple[str, str, Mapping[str, Any]]]) -> dict[str, Any] | None:
    """The conformal section of ``(key, colour, results row)`` rows, or ``None`` when no row
    has a ``conformal`` field. Rows without one are left out of it.

    Returns:
        ``columns``, ``rows`` (key, colour and cells of each row), ``charts`` (one set-size
        histogram per row, on a shared axis) and ``setup`` (alpha, score, splits,
        calibration and test images, the coverage guarantee of the first row).
    """
    scored = [(k, colour, r["conformal"]) for k, colour, r in rows if r.get("conformal")]
    if not scored:
        return None
    metrics = [c for _, _, c in scored]
    bins = _shown_bins(metrics)
    top = max(c["size_histogram"].get(b, 0.0) for c in metrics for b in bins)
    first = metrics[0]
    return {
        "columns": CONFORMAL_COLUMNS,
        "rows": [{"key": k, "colour": colour, "cells": _cells(c)} for k, colour, c in scored],
        "charts": [_histogram(k, colour, c, bins, top) for k, colour, c in scored],
        "setup": {k: first.get(k) for k in ("alpha", "score", "splits", "n_cal", "n_test", "coverage_bounds")},
    }
