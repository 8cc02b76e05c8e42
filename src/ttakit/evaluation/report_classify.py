"""The classification parts of the report page: its table cells, charts, classes and fixed/broken gallery.

:func:`classification_page` reads a classification folder (rows rescored from the stored
logits by :mod:`~ttakit.evaluation.run_folder`) and returns the page context that
``report.html.j2`` draws: the shared parts (table, verdicts, cost charts) and the
classification sections (reliability diagrams, conformal sets when the run scored them, each
view alone, the search, and per policy the classes it helped and hurt and the photos it fixed
and broke, drawn as the model saw them).

Example:
    >>> [c for c, _ in COLUMNS][:4]
    ['merge', 'views', 'top1', 'top5']
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from ..errors import DatasetError
from ..views import View
from .charts import Chart, nll_chart, reliability_chart, scatter, trace_chart
from .classify_logits import ClassifyScoring
from .metrics import ECE_BINS
from .report_conformal import conformal_part
from .run_folder import (RowData, find_policy, read_csv, resolve_class_names, resolve_data_config,
                         score_rows)
from .store import OutputStore
from .task_registry import ReportSettings
from .thumbnails import Thumbnails

__all__ = ["COLUMNS", "classification_page"]

MAX_VIEWS_SHOWN = 12  # views drawn per gallery card (a searched pool can hold 20+)
CLASSES_SHOWN = 8  # classes listed under gains and under losses
# The results table: (cell class, header); the tests read cells back by class.
COLUMNS = (("merge", "merge"), ("views", "views"), ("top1", "top-1"), ("top5", "top-5"), ("nll", "NLL"),
           ("nll_calibrated", "NLL cal."), ("ece", "ECE"), ("fixed", "fixed"), ("broken", "broken"),
           ("delta_top1", "Δ top-1 (pt)"), ("ci_top1", "95% CI (pt)"), ("p_value", "p"), ("delta_nll", "Δ NLL"),
           ("significant", "sig."), ("images_needed", "images needed"), ("ms", "ms / image"))


def _format_row(r: RowData, n: int) -> dict[str, Any]:
    """The results-table row of one results row: its cells as text, its tone and verdict."""
    res = r.result
    cells: dict[str, Any] = {c: "–" for c, _ in COLUMNS}
    cells.update(
        merge=res["merge"], views=res["views"], top1=f"{res['top1']:.2%}", top5=f"{res['top5']:.2%}",
        nll=f"{res['nll']:.4f}", nll_calibrated=f"{res['nll_calibrated']:.4f}", ece=f"{res['ece']:.3f}",
        fixed=res["fixed"], broken=res["broken"],
        ms=f"{1000.0 * res['seconds'] / n:.1f}" if res.get("seconds") else "–",
    )
    tone = ""
    if res.get("delta_top1") is not None:
        lo, hi = res["ci_top1"]
        cells.update(
            delta_top1=f"{100 * res['delta_top1']:+.2f}",
            ci_top1="–" if lo is None else f"[{100 * lo:+.2f}, {100 * hi:+.2f}]",
            p_value="–" if res["p_value"] is None else f"{res['p_value']:.3g}",
            delta_nll="–" if res["delta_nll"] is None else f"{res['delta_nll']:+.4f}",
            significant="yes" if res["significant"] else "no",
            images_needed="–" if res["images_needed"] is None else f"{res['images_needed']:,}",
        )
        tone = ("good" if res["delta_top1"] > 0 else "bad") if res["significant"] else "neutral"
    return {"key": r.key, "colour": r.colour, "cells": cells, "tone": tone, "tone_cell": "delta_top1",
            "verdict": res.get("verdict", ""), "significant": bool(res.get("significant"))}


def _cost_charts(rows: Sequence[RowData]) -> list[Chart]:
    """Top-1 and NLL (plain and calibrated) against views, and top-1 against model time."""
    n = max(int(rows[0].acc.n), 1)
    views = [float(r.result["views"]) for r in rows]
    top1 = [r.result["top1"] for r in rows]
    charts = [
        scatter("Top-1 accuracy vs views", "views (forwards per image)", "top-1",
                [(v, t, r.colour, f"{r.key}: {t:.2%} with {int(v)} views") for r, v, t in zip(rows, views, top1)],
                yfmt="pct"),
        nll_chart([(v, r.result["nll"], r.result["nll_calibrated"], r.colour, r.key) for r, v in zip(rows, views)]),
    ]
    ms = [1000.0 * float(r.result.get("seconds") or 0.0) / n for r in rows]
    if any(m > 0 for m in ms):
        charts.append(scatter("Top-1 accuracy vs model time", "model time per image (ms)", "top-1",
                              [(m, t, r.colour, f"{r.key}: {t:.2%} at {m:.1f} ms/image")
                               for r, m, t in zip(rows, ms, top1)], yfmt="pct"))
    return charts


def _reliability(r: RowData) -> Chart:
    key = r.key if len(r.key) <= 22 else r.key[:21] + "…"  # the title must fit the 250 px chart
    return reliability_chart(f"{key} (ECE {r.result.get('ece', 0.0):.3f})", r.colour,
                             r.acc.count.tolist(), r.acc.correct.tolist(), r.acc.conf_sum.tolist())


def _class_changes(plain: RowData, r: RowData, labels: Tensor, names: Sequence[str]) -> dict[str, Any]:
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


def _pick(plain: RowData, r: RowData, labels: Tensor, count: int) -> dict[str, list[int]]:
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


def _top(r: RowData, j: int, label: int, names: Sequence[str]) -> list[dict[str, Any]]:
    return [{"name": names[int(c)], "prob": float(p), "true": int(c) == label}
            for c, p in zip(r.idx[j].tolist(), r.val[j].tolist())]


def _card(j: int, plain: RowData, r: RowData, labels: Tensor, names: Sequence[str], paths: Sequence[str],
          thumbs: Thumbnails) -> dict[str, Any]:
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
        "chart": trace_chart(meta["trace"], top1, meta.get("plain_top1" if top1 else "plain_nll")),
        "views": search.get("views", []),
        "weights": search.get("weights"), "temperature": search.get("temperature", 1.0),
    }


def _distinct(views: Sequence[View]) -> list[View]:
    """Views in order, repeats dropped (a searched policy may choose a view twice)."""
    return list({v.name: v for v in views}.values())


def classification_page(
    out: Path, doc: Mapping[str, Any], per_view: Mapping[str, float], search_policy_path: str | Path | None,
    class_names: Sequence[str] | None, data_config: Mapping[str, Any] | None, max_gallery: int,
    scoring: ClassifyScoring | None,
) -> dict[str, Any]:
    """The page context of a classification folder (see :func:`~ttakit.evaluation.report.write_report`)."""
    if not (out / "logits" / "run.json").exists():
        raise DatasetError(f"{out}: no saved logits (run 'ttakit evaluate ... --out {out}' first)")
    store = OutputStore(out, json.loads((out / "logits" / "run.json").read_text()))
    cfg, note = resolve_data_config(data_config, store.fingerprint)
    # Adapted rows (``evaluate --adapt``) ran as a stream: the stored logits cannot rescore them,
    # so they join the table as results.json has them, with their paired comparison against plain.
    adapted = {k: r for k, r in doc["results"].items() if "adapt" in r}
    stored = {**doc, "results": {k: r for k, r in doc["results"].items() if k not in adapted}}
    rows, labels, n_classes = score_rows(store, stored, scoring or ClassifyScoring(), cfg)
    notes = [f"{r.key}: top-1 recomputed from the stored logits ({r.acc.compute()['top1']:.2%}) differs from "
             f"results.json ({r.result['top1']:.2%}): evaluated adaptively? Re-render with the same "
             "`scoring=ClassifyScoring(adaptive=T, confidence=...)` (CLI: ttakit report DIR --adaptive T)"
             for r in rows if abs(r.acc.compute()["top1"] - r.result["top1"]) > 1e-6]
    paths, csv_labels, preds = read_csv(out / "per_image.csv")
    if len(paths) != len(labels):
        notes.append(f"per_image.csv lists {len(paths)} images for {len(labels)} stored: the gallery is left out")
        paths, max_gallery = [], 0
    names = resolve_class_names(class_names, n_classes, labels, csv_labels, preds, rows[0])
    notes += [note] if note else []

    plain, policies = rows[0], rows[1:]
    picks = [_pick(plain, r, labels, max_gallery) for r in policies]
    wanted: dict[str, dict[str, View]] = {}  # photo -> the views any policy shows of it
    for r, p in zip(policies, picks):
        for j in p["fixed"] + p["broken"]:
            wanted.setdefault(paths[j], {}).update((v.name, v) for v in _distinct(r.run.policy.views)[:MAX_VIEWS_SHOWN])
    thumbs = Thumbnails(cfg)
    thumbs.render_all({p: list(v.values()) for p, v in wanted.items()})
    unreadable = [p for p, (uri, _, _) in thumbs.cache.items() if uri is None]
    if unreadable:
        notes.append(f"{len(unreadable)} gallery photo(s) could not be read (e.g. {thumbs.cache[unreadable[0]][2]})")

    n = len(labels)
    table = [_format_row(r, n) for r in rows]
    table += [_format_row(SimpleNamespace(key=k, colour="#777777", result=r), n) for k, r in adapted.items()]
    if adapted:
        notes.append(f"{', '.join(adapted)}: adapted to the stream (photos in folder order), each paired with the "
                     "unadapted plain model on the same photos; shown in the table only (their logits are not stored)")
    policy_parts = [{
        "row": row, "classes": _class_changes(plain, r, labels, names), "reliability": _reliability(r),
        "gallery": {kind: [_card(j, plain, r, labels, names, paths, thumbs) for j in js] for kind, js in p.items()},
        "fixed": r.result["fixed"], "broken": r.result["broken"], "views": r.run.policy.view_names,
    } for r, p, row in zip(policies, picks, table[1:])]
    search = find_policy(out, search_policy_path)
    if search is not None and search["meta"].get("data") not in (None, doc.get("data")):
        notes.append(f"{search['path']} was searched on {search['meta']['data']}, "
                     f"this evaluation is on {doc.get('data')}")
    best_view = max(per_view.values(), default=1.0) or 1.0
    conformal = conformal_part([(r.key, r.colour, r.result) for r in rows])
    return {
        "n_scored": n, "n_classes": n_classes, "columns": COLUMNS, "rows": table, "notes": notes,
        "cost_title": "Accuracy and NLL against cost", "cost_charts": _cost_charts(rows),
        "policies": policy_parts, "reliability": [_reliability(r) for r in rows], "bins": ECE_BINS,
        "conformal": conformal,
        "single": [{"name": k, "value": f"{v:.2%}", "width": round(100 * v / best_view, 1), "plain": k == "identity"}
                   for k, v in sorted(per_view.items(), key=lambda t: -t[1])],
        "single_metric": "top-1", "search": None if search is None else _search_part(search),
        "sources": "results.json, per_view.json, per_image.csv, logits/",
        # the page's own sections in the navigation, and how the paired columns were computed
        "nav_before": [("calibration", "Calibration")] + ([("conformal", "Conformal sets")] if conformal else []),
        "nav_after": [("search", "Search")] if search is not None else [],
        "paired_note": "Paired against plain on the same images: Δ top-1 with a bootstrap 95% interval, exact "
                       "McNemar p-value (significant at 0.05), and the images an 80%-power test would need to detect "
                       "a change this size. NLL cal. is the NLL at the best temperature of a grid, so a calibration "
                       "gain is not mistaken for a gain from the views.",
    }


def page(out: Path, doc: Mapping[str, Any], per_view: Mapping[str, Any], s: ReportSettings) -> dict[str, Any]:
    return classification_page(out, doc, per_view, s.search_policy_path, s.class_names, s.data_config, s.max_gallery,
                               s.scoring)

