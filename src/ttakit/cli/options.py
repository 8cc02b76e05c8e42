"""Task options as flags: each task's declared :class:`~ttakit.task_spec.Option` becomes one flag, checked against the task chosen.

A command that runs tasks (``predict``, ``views``, ``evaluate``) takes ``--task`` and the flags
of every registered task's options for that command; nothing here names a task. Every flag
parses to ``None`` (a switch to ``False``) when left out and gets its declared default only once
the task is known (:func:`task_values`), so an option the user gave is told apart from one left
out: a flag the chosen task does not take, or one that would do nothing given the others
(``--overlap`` without ``--tile``), is refused in one line.

Example:
    >>> p = argparse.ArgumentParser()
    >>> add_task_arguments(p, "evaluate")
    >>> spec, values = task_values(p.parse_args(["--task", "segment", "--tile", "64"]), "evaluate")
    >>> spec.name, values["tile"], values["overlap"]
    ('segment', 64, 0.25)
    >>> task_values(p.parse_args(["--conformal", "0.1", "--task", "segment"]), "evaluate")
    Traceback (most recent call last):
    ...
    ttakit.errors.ConfigError: --conformal is not an option of task 'segment' (it is for: classify)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from ..task_spec import DEFAULT_TASK, Option, TaskSpec, check_options, get_task, list_tasks
from .common import positive_int
from .segment import byte_size

__all__ = ["TYPES", "add_options", "add_task_arguments", "command_options", "flag_of", "task_values"]

# how a declared option's value is read from the command line, by its ``type``
TYPES: dict[str, Callable[[str], Any]] = {"str": str, "int": int, "float": float, "positive_int": positive_int,
                                          "byte_size": byte_size}


def flag_of(name: str) -> str:
    """The flag of option ``name`` (``store_budget`` -> ``--store-budget``)."""
    return "--" + name.replace("_", "-")


def command_options(command: str) -> dict[str, tuple[Option, list[str]]]:
    """Every registered task's options for ``command``, each name once (its choices joined),
    with the tasks that take it."""
    merged: dict[str, tuple[Option, list[str]]] = {}
    for name in list_tasks(command):
        for o, opt in get_task(name).options_of(command).items():
            if o in merged:
                first, owners = merged[o]
                choices = None if first.choices is None or opt.choices is None else tuple(
                    dict.fromkeys(first.choices + opt.choices))
                merged[o] = (replace(first, choices=choices), owners + [name])
            else:
                merged[o] = (opt, [name])
    return merged


def add_options(p: argparse.ArgumentParser, options: Sequence[tuple[Option, Sequence[str]]], command: str) -> None:
    """One flag per option (``--help`` names the tasks that take it); an option left out parses
    to ``None`` (a switch to ``False``) until :func:`task_values` gives it its default."""
    groups: dict[str, Any] = {}
    for opt, owners in options:
        title = opt.group or f"--task {owners[0]}"
        g = groups.get(title) or groups.setdefault(title, p.add_argument_group(title))
        kwargs: dict[str, Any] = {"dest": opt.name, "default": None, "help": f"{opt.help} [--task {', '.join(owners)}]"}
        if opt.type == "switch":
            kwargs.update(action="store_true", default=False)
        else:
            kwargs.update(type=TYPES[opt.type], action="append" if command in opt.many else "store")
            if opt.choices is not None:
                kwargs["choices"] = list(opt.choices)
            if opt.metavar is not None:
                kwargs["metavar"] = opt.metavar
        g.add_argument(opt.flag, **kwargs)


def add_task_arguments(p: argparse.ArgumentParser, command: str) -> None:
    """``--task`` (the tasks that run ``command``), ``--task-module`` and every task's options."""
    tasks = list_tasks(command)
    summary = "; ".join(f"{n}: {get_task(n).summary}" for n in tasks)
    p.add_argument("--task", choices=tasks, default=DEFAULT_TASK if DEFAULT_TASK in tasks else tasks[0],
                   help=f"{summary} (default: {DEFAULT_TASK})")
    p.add_argument("--task-module", action="append", default=[], metavar="MODULE",
                   help="a module that registers a task (repeatable; also the TTAKIT_TASK_MODULES variable and the "
                   "'ttakit.tasks' entry points)")
    add_options(p, list(command_options(command).values()), command)


def task_values(args: argparse.Namespace, command: str) -> tuple[TaskSpec, dict[str, Any]]:
    """The chosen task and its options for ``command``: those given checked, the rest at their
    defaults; each is also set on ``args`` (the commands read ``args.tile``, ...), and those
    given are ``args.given_options``.

    Raises:
        ConfigError: an option the task does not take, or one that does nothing without another.
    """
    spec = get_task(args.task)
    given = {name: getattr(args, name) for name in command_options(command)
             if getattr(args, name, None) is not None and getattr(args, name) is not False}  # 0.0 is given
    values = check_options(spec, command, given, flag_of)
    for name, value in values.items():
        setattr(args, name, value)
    args.given_options = given  # what the user gave, for library calls that check options themselves
    return spec, values
