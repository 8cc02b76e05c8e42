"""A task's report, looked up by name: what the report of a results folder shows for its task.

A results folder names its task (``results.json``'s ``task``); the report looks that name up
(:func:`get_task`: the task's :class:`~ttakit.task_spec.TaskSpec`, its page, template and
columns) and asks the task for its part of the page. A new task, even one defined outside the
package, registers its spec once and runs through
:func:`~ttakit.evaluation.pipeline.run_evaluation` and
:func:`~ttakit.evaluation.report.write_report` with no other module knowing its name.

Example:
    >>> spec = get_task("segment")
    >>> spec.columns.headline, spec.columns.label
    ('miou', 'mIoU')
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..task_spec import TaskColumns
from ..task_spec import get_task as get_task_spec

__all__ = ["ReportSettings", "ReportSpec", "TaskColumns", "get_task"]


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


def get_task(name: str) -> ReportSpec:
    """The report of the registered task ``name``.

    Raises:
        UnknownNameError: no task of that name is registered.
        ConfigError: the task has no report page.
    """
    spec = get_task_spec(name)
    return ReportSpec(spec.part("report"), spec.columns, spec.template)
