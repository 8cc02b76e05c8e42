"""Evaluation tasks by name: what the report of a results folder shows for its task, looked up once.

A results folder names its task (``results.json``'s ``task``); the report looks that name up in
:data:`EVAL_TASKS` and asks the task for its part of the page. A task registers itself in its
own module (classification in :mod:`~ttakit.evaluation.report_classify`, segmentation in
:mod:`~ttakit.evaluation.segment_eval`, detection in :mod:`~ttakit.evaluation.detect_eval`);
a new task, even one defined in a test file, registers a :class:`ReportSpec` the same way and
runs through :func:`~ttakit.evaluation.pipeline.run_evaluation` and
:func:`~ttakit.evaluation.report.write_report` with no other module knowing its name.

Example:
    >>> spec = get_task("segment")
    >>> spec.columns.headline, spec.columns.label
    ('miou', 'mIoU')
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..registry import Registry

__all__ = ["EVAL_TASKS", "ReportSettings", "ReportSpec", "TaskColumns", "get_task"]


@dataclass(frozen=True)
class TaskColumns:
    """What the results table and charts show of a task's rows.

    Attributes:
        headline: the metric compared with plain (``delta_<headline>``, ``ci_<headline>``).
        label: its name for people.
        metrics: ``(results key, header)`` of every metric column shown if present.
        image_score: what a gallery card's per-image score is.
        percent: metrics are shares, shown as percentages (else as numbers).
        higher_is_better: a rise of the headline is good news (RMSE: False).
        background: the class drawn without colour in the gallery's legend (segmentation: 0).
        changes: the legend explains changed pixels (segmentation overlays).
    """

    headline: str
    label: str
    metrics: tuple[tuple[str, str], ...]
    image_score: str
    percent: bool = True
    higher_is_better: bool = True
    background: int | None = None
    changes: bool = False


@dataclass(frozen=True)
class ReportSettings:
    """What ``write_report`` was asked, passed on to the task's page."""

    search_policy_path: str | Path | None = None  # a search's policy.json (classification)
    class_names: Sequence[str] | None = None  # the model's classes (default: what the folder reveals)
    data_config: Mapping[str, Any] | None = None  # to draw views as the model saw them (classification)
    max_gallery: int = 12  # photos per policy among those it improved, and among those it made worse
    scoring: Any = None  # classification's ClassifyScoring (adaptive rows are recomputed as scored)


# (folder, results.json, per_view.json, settings) -> the task's part of the page context
PageBuilder = Callable[[Path, Mapping[str, Any], Mapping[str, Any], ReportSettings], dict[str, Any]]


@dataclass(frozen=True)
class ReportSpec:
    """One task's report: its page part, and (for the shared gallery page) its table columns.

    Attributes:
        page: builds the task's part of the page context from the folder.
        columns: the results table and chart columns (``None``: the page draws its own).
        template: the template of the task's sections (``_gallery.html.j2`` or ``_classify.html.j2``).
    """

    page: PageBuilder
    columns: TaskColumns | None = None
    template: str = "_gallery.html.j2"


EVAL_TASKS = Registry[ReportSpec]("evaluation task")

# The built-in tasks register when their module is imported; a folder of one is readable
# without importing it first. A task added elsewhere registers in EVAL_TASKS itself.
_BUILT_IN = {"classify": "ttakit.evaluation.report_classify", "segment": "ttakit.evaluation.segment_eval",
             "detect": "ttakit.evaluation.detect_eval"}


def get_task(name: str) -> ReportSpec:
    """The registered task ``name`` (a built-in one is imported on first use).

    Raises:
        UnknownNameError: no task of that name is registered.
    """
    if name not in EVAL_TASKS and name in _BUILT_IN:
        importlib.import_module(_BUILT_IN[name])
    return EVAL_TASKS.get(name)
