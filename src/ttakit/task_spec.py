"""Tasks by name: one :class:`TaskSpec` per task, registered once in the task's own module, read by every index.

A task (``classify``, ``segment``, ``detect``, ``keypoints``, ``outputs``, or one a user adds)
is registered by one :func:`register_task` call, the way timm's ``register_model`` fills every
index from one decorator. The spec holds the :class:`~ttakit.tasks.plan.Plan` head, the export
graph head, the evaluation task, the report page and its columns, the commands that run it and
the options it takes. What lives above ``tasks/`` (evaluation, report, command line) is named by
``"module:attribute"`` strings resolved on first use (:func:`resolve`), so this module imports
nothing but the errors and the registry, and a task's module never imports ``evaluation/``.

Options are plain data (:class:`Option`): the command line turns them into flags, the Python API
takes them as keyword arguments, and :func:`check_options` refuses one that the task or command
does not take, or that would do nothing given the others (``overlap`` without ``tile``).

Tasks outside the package are loaded by the ``ttakit.tasks`` entry point group, the
``TTAKIT_TASK_MODULES`` environment variable (module names, comma-separated) or
:func:`load_task_modules` (the command line's ``--task-module``).

Example:
    >>> spec = get_task("segment")
    >>> spec.columns.headline, "evaluate" in spec.commands
    ('miou', True)
    >>> check_options(get_task("segment"), "evaluate", {"conformal": 0.1})
    Traceback (most recent call last):
    ...
    ttakit.errors.ConfigError: `conformal` is not an option of task 'segment' (it is for: classify)
"""

from __future__ import annotations

import difflib
import importlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Union

from .errors import ConfigError
from .registry import Registry

__all__ = [
    "DEFAULT_TASK",
    "ENTRY_POINT_GROUP",
    "ENV_VAR",
    "Option",
    "Ref",
    "TaskColumns",
    "TaskSpec",
    "check_options",
    "get_task",
    "list_tasks",
    "load_task_modules",
    "register_task",
    "resolve",
]

DEFAULT_TASK = "classify"  # the task of a Plan, an evaluation or a command that names none
ENTRY_POINT_GROUP = "ttakit.tasks"  # entry points whose modules register tasks
ENV_VAR = "TTAKIT_TASK_MODULES"  # comma-separated modules that register tasks

# An object, or "module:attribute" naming it (imported on first use).
Ref = Union[str, Callable[..., Any], Any]

# The modules of the built-in tasks: imported on the first lookup, as a plug-in's module is.
_BUILT_IN = ("ttakit.tasks.plan", "ttakit.tasks.classify", "ttakit.tasks.segment", "ttakit.tasks.dense",
             "ttakit.tasks.detect")


@dataclass(frozen=True)
class Option:
    """One option a task or a command takes, as plain data: the command line makes it a flag
    (``--name`` with ``-`` for ``_``), the Python API a keyword argument.

    Example:
        >>> Option("store_budget", "disk for reduced maps", type="byte_size").flag
        '--store-budget'
    """

    name: str  # the keyword argument (``conformal``); its flag is ``--conformal``
    help: str  # one line for ``--help``
    type: str = "str"  # how the command line reads it: str, int, float, positive_int, byte_size, switch
    default: Any = None  # its value when not given
    commands: tuple[str, ...] = ("evaluate",)  # the commands that take it
    choices: tuple[str, ...] | None = None  # the values allowed (None: any of its type)
    metavar: str | None = None  # its value's name in ``--help``
    many: tuple[str, ...] = ()  # the commands in which it may be given more than once (a list)
    requires: tuple[str, ...] = ()  # other options it acts only with: "tile" (given), "precision=int8" (that value)
    group: str = ""  # its section of ``--help`` (the task's name by default)
    scoring: bool = False  # read into the task's default scoring object (refused beside an explicit ``scoring``)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


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
class TaskSpec:
    """Everything ttakit knows of one task, registered once (:func:`register_task`).

    Every ``Ref`` field is the object itself or ``"module:attribute"`` (:func:`resolve`).
    """

    name: str  # the ``task=`` / ``--task`` name, and results.json's ``task``
    summary: str = ""  # one line for ``--help``
    head: Ref | None = None  # Plan head: head(policy, **options) -> TaskHead (None: no Plan)
    graph_head: Ref | None = None  # export head: graph_head(policy, merge) -> GraphHead (None: no export)
    evaluation: Ref | None = None  # EvalTask factory: (lm, data, run_config, scoring, options) -> EvalTask
    load_model: Ref | None = None  # (spec, weights, labels, options) -> the task's loaded model
    load_data: Ref | None = None  # (source, lm, options) -> the task's labelled dataset
    report: Ref | None = None  # the report page: (folder, results, per_view, settings) -> page context
    template: str = "_gallery.html.j2"  # the template of the page's task sections
    columns: TaskColumns | None = None  # the results table and chart columns (None: the page draws its own)
    commands: Mapping[str, Ref] = field(default_factory=dict)  # command (predict, views, evaluate) -> its function
    options: tuple[Option, ...] = ()  # the options the task takes, per command
    default_policy: Mapping[str, str] = field(default_factory=dict)  # command -> its --tta default (else hflip)
    merge_option: str = "merge"  # the option that names the rows' merges (detect: box_merge)
    result: type | None = None  # what a Plan of this task returns
    describe: Ref | None = None  # (Plan result) -> one JSON-able summary per image (a generic predict prints it)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ConfigError(f"a task's name must be an identifier, got {self.name!r}")
        names = [o.name for o in self.options]
        if len(set(names)) != len(names):
            raise ConfigError(f"task {self.name!r} declares an option twice: {sorted(names)}")

    def options_of(self, command: str) -> dict[str, Option]:
        """The options this task takes in ``command``, by name."""
        return {o.name: o for o in self.options if command in o.commands}

    def policy_for(self, command: str) -> str:
        """The ``--tta`` default of ``command`` (``hflip`` unless the task says otherwise)."""
        return self.default_policy.get(command, "hflip")

    def part(self, field_name: str) -> Any:
        """A ``Ref`` field resolved (:func:`resolve`).

        Raises:
            ConfigError: the task has no such part (say, no export head).
        """
        ref = getattr(self, field_name)
        if ref is None:
            raise ConfigError(f"task {self.name!r} has no {field_name.replace('_', ' ')}")
        return resolve(ref)


_TASKS = Registry[TaskSpec]("task", sort=False)
_loaded: set[str] = set()


def resolve(ref: Ref) -> Any:
    """``"module:attribute"`` imported (anything else returned as it is).

    Raises:
        ConfigError: the module or attribute does not exist.
    """
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split(".") if attr else ():
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot import {ref!r}: {e}") from e
    return obj


def register_task(spec: TaskSpec) -> TaskSpec:
    """Register ``spec`` under its name; the one call that adds a task (a module imported twice
    registers again: the later spec replaces the earlier one).

    Example:
        >>> register_task(TaskSpec("doc_example", summary="a task of this docstring")).name in list_tasks()
        True
    """
    if not isinstance(spec, TaskSpec):
        raise ConfigError(f"register_task takes a TaskSpec, got {type(spec).__name__}")
    if spec.name in _TASKS.names():
        _TASKS.remove(spec.name)
    return _TASKS.add(spec.name, spec)


def load_task_modules(modules: Iterable[str] = ()) -> None:
    """Import the modules that register tasks: the built-in ones, the ``ttakit.tasks`` entry
    points, the modules named by ``TTAKIT_TASK_MODULES`` and ``modules`` (each once).

    Raises:
        ConfigError: a module that cannot be imported.
    """
    names = list(_BUILT_IN)
    if ENTRY_POINT_GROUP not in _loaded:
        _loaded.add(ENTRY_POINT_GROUP)
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            names.append(ep.value.partition(":")[0])
    names += [m.strip() for m in os.environ.get(ENV_VAR, "").split(",") if m.strip()]
    names += list(modules)
    for name in names:
        if name in _loaded:
            continue
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"task module {name!r} cannot be imported: {e}") from e
        _loaded.add(name)


def get_task(name: str) -> TaskSpec:
    """The task registered as ``name`` (task modules are loaded on first use).

    Raises:
        UnknownNameError: no task of that name; the message lists the known ones.
    """
    if name not in _TASKS.names():
        load_task_modules()
    return _TASKS.get(name)


def list_tasks(command: str | None = None) -> list[str]:
    """The registered tasks (that ``command`` runs, when given), in registration order."""
    load_task_modules()
    return [n for n, s in _TASKS.items() if command is None or command in s.commands]


def _owners(name: str, command: str) -> list[str]:
    return [n for n in list_tasks() if name in _TASKS.get(n).options_of(command)]


def check_options(spec: TaskSpec, command: str, given: Mapping[str, Any],
                  named: Callable[[str], str] = lambda n: f"`{n}`", *, extra: Mapping[str, Option] = {}
                  ) -> dict[str, Any]:
    """The options of ``spec`` in ``command``: those ``given`` (checked), the rest at their
    defaults. ``extra``: options the command itself takes, checked the same way. ``named``
    writes an option's name in messages (the command line: its flag).

    Raises:
        ConfigError: an option the task or command does not take, or one that would do
            nothing given the others (it ``requires`` an option that is not given).
    """
    taken = {**spec.options_of(command), **extra}
    for name in given:
        if name not in taken:
            owners = _owners(name, command)
            close = difflib.get_close_matches(name, list(taken), n=1)
            where = "; ".join(([f"it is for: {', '.join(owners)}"] if owners else [])
                              + ([f"did you mean {named(close[0])}?"] if close else []))
            raise ConfigError(f"{named(name)} is not an option of task {spec.name!r}" + (f" ({where})" if where else ""))
    values = {n: given.get(n, o.default) for n, o in taken.items()}
    for name in given:
        for need in taken[name].requires:
            other, eq, value = need.partition("=")
            actual = values.get(other)
            missing = actual is None or actual is False or (isinstance(actual, (tuple, list)) and not actual)
            if (eq and str(actual) != value) or (not eq and missing):
                what = f"{named(other)} {value}" if eq else named(other)
                raise ConfigError(f"{named(name)} does nothing without {what}: leave it out or add {what}")
    return values
