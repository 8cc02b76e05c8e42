"""The ``ttakit`` command line: a thin layer over the library, one module per command.

Every command resolves its strings (model, policy, merge) once, calls library functions and
prints. Errors that ttakit raises on purpose become one ``ttakit: error: ...`` line on stderr
and exit status 2; warnings shown during a command are one ``ttakit: warning: ...`` line each.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from typing import TextIO

import torch

from .. import __version__
from ..errors import TTAKitError
from ..runtime.distributed import DistContext
from ..task_spec import load_task_modules
from . import calibrate, evaluate, export, models, predict, report, search, soup
from .flags import translate

__all__ = ["build_parser", "main"]

# Each command module adds its subcommands; registered statically, in help order.
_COMMANDS = (predict, evaluate, search, calibrate, soup, report, export, models)


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors as the one ``ttakit: error: ...`` line every error gets, and
    no abbreviated options (``--adapt`` must never be read as ``--adaptive``); subcommand
    parsers are made by this class too, so the rule holds for every command."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"ttakit: error: {self.prog.removeprefix('ttakit ')}: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``ttakit`` command (also used for ``--help`` docs)."""
    parser = _Parser(prog="ttakit", description="Test-time augmentation for timm image models.")
    parser.add_argument("--version", action="version", version=f"ttakit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _COMMANDS:
        module.register(sub)
    return parser


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: TextIO | None = None, line: str | None = None) -> None:
    """A warning in the command's own voice: one ``ttakit: warning: ...`` line, no source echo."""
    print(f"ttakit: warning: {translate(' '.join(str(message).split()))}", file=file or sys.stderr)


def _load_task_modules(argv: Sequence[str] | None) -> None:
    """Import the modules that register tasks before the parser is built (their options are
    flags): the built-in ones, entry points, ``TTAKIT_TASK_MODULES`` and ``--task-module``."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--task-module", action="append", default=[])
    load_task_modules(pre.parse_known_args(sys.argv[1:] if argv is None else list(argv))[0].task_module)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ttakit`` console script."""
    try:
        _load_task_modules(argv)
    except TTAKitError as e:
        print(f"ttakit: error: {translate(str(e))}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():  # restores the caller's warning display afterwards
        warnings.showwarning = _show_warning
        try:
            DistContext.init()  # under torchrun: join its process group (nothing is started otherwise)
            return int(args.func(args) or 0)
        except TTAKitError as e:
            print(f"ttakit: error: {translate(str(e))}", file=sys.stderr)  # parameters named as flags
            return 2
        except KeyboardInterrupt:
            print("ttakit: interrupted", file=sys.stderr)
            return 130
        finally:
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
