"""The HTML report of an evaluation, for every task: one self-contained page built from the saved files alone.

:func:`write_report` reads what an evaluation wrote into its output folder (``results.json``,
``per_view.json``, the per-image files and the stored outputs) and renders ``report.html``:
one page for every task, the same parts in the same places (the results table with each
policy's paired verdict against plain, the headline metric against cost, each view on its
own) and a task-fitting part:

- classification (:mod:`~ttakit.evaluation.report_classify`): reliability diagrams, the
  classes each policy helped and hurt, the photos it fixed and broke (with the views as the
  model saw them) and the search trace; every probability recomputed from the stored logits;
- segmentation and detection (:mod:`~ttakit.evaluation.report_gallery`): the photos whose
  score TTA raised and lowered most, with the truth, the plain and the TTA predictions drawn
  over the photo (masks and changed pixels, or boxes).

No model runs, so ``ttakit report DIR`` re-renders the same page anywhere the folder (and, for
the galleries, the photos) can be read. The page has no JavaScript and loads nothing: the CSS
is inline, the charts are inline SVG and the photos are base64 JPEG data URIs, so it can be
mailed or archived as one file.

Example:
    >>> write_report("runs/x")  # doctest: +SKIP
    PosixPath('runs/x/report.html')
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from .._optional import require
from ..errors import DatasetError
from ..files import write_atomic
from ..runtime.config import torch_threads as _torch_threads
from .classify_logits import ClassifyScoring
from .task_registry import ReportSettings, ReportSpec, get_task

if TYPE_CHECKING:
    import jinja2

__all__ = ["render_page", "write_report"]


def write_report(
    out_dir: str | Path,
    *,
    search_policy_path: str | Path | None = None,
    class_names: Sequence[str] | None = None,
    data_config: Mapping[str, Any] | None = None,
    max_gallery: int = 12,
    scoring: ClassifyScoring | None = None,
    task: ReportSpec | None = None,
) -> Path:
    """Build ``out_dir/report.html`` from an evaluation folder, without running any model.

    Args:
        out_dir: the ``--out`` folder of ``ttakit evaluate`` (or the ``data`` folder of a search).
        search_policy_path: a search's ``policy.json`` whose trace to show; by default
            ``out_dir/policy.json`` or ``out_dir/../policy.json`` when they hold one.
        class_names: the model's class names; by default those the folder reveals
            (classification: ``per_image.csv``, ImageNet's for a 1000-class model whose
            names agree; other tasks: ``results.json``), ``class_N`` for the rest.
        data_config: the model's timm data config, to draw the views as the model saw them;
            by default the one stored with the logits, else timm's default for the model name.
        max_gallery: photos shown per policy among those it improved, and again among those
            it made worse.
        scoring: the classification scoring the folder was evaluated with (its adaptive
            threshold and confidence), so that adaptive rows are recomputed as they were scored.
        task: the task's report (default: the task ``results.json`` names, looked up in
            :func:`~ttakit.evaluation.task_registry.get_task`).

    Returns:
        The path of ``report.html``.

    Raises:
        DatasetError: the folder has no ``results.json`` or no stored outputs.
        UnknownNameError: its task is not registered.
        MissingExtraError: Jinja2 is not installed (``pip install 'ttakit[report]'``).
    """
    require("jinja2", "report", "report.html")  # refused before any work
    out = Path(out_dir)
    if not (out / "results.json").exists():
        raise DatasetError(f"{out}: no results.json (evaluate into `out_dir={str(out)!r}` first)")
    doc = json.loads((out / "results.json").read_text())
    per_view = json.loads((out / "per_view.json").read_text()) if (out / "per_view.json").exists() else {}
    spec = task or get_task(str(doc.get("task", "classify")))  # folders older than the task field are classification
    settings = ReportSettings(search_policy_path, class_names, data_config, max_gallery, scoring)
    # Every tensor here is small (a chunk of logits, one photo): torch's intra-op threads only
    # add overhead, and on a busy machine they spin (measured: twice the CPU time, 3x the wall).
    with _torch_threads(1):
        context = spec.page(out, doc, per_view, settings)
    page = out / "report.html"
    write_atomic(page, render_page(doc, context, spec.template))
    return page


def render_page(doc: Mapping[str, Any], context: Mapping[str, Any], sections: str = "_gallery.html.j2") -> str:
    """The page's HTML: ``results.json``'s ``doc``, a task's page context and the template of
    its own sections (see :class:`~ttakit.evaluation.task_registry.ReportSpec`)."""
    return _environment().get_template("report.html.j2").render(
        doc=doc, version=__version__, sections=sections, **context)


def _environment() -> jinja2.Environment:
    """The Jinja2 environment of the packaged templates (autoescaped: names and paths are text).

    Raises:
        MissingExtraError: Jinja2 is not installed (the ``report`` extra).
    """
    jinja2 = require("jinja2", "report", "report.html")
    return jinja2.Environment(
        loader=jinja2.PackageLoader("ttakit.evaluation", "templates"),
        autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined,
    )
