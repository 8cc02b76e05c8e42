"""Library parameters as the command line names them: the library's errors name parameters, the CLI shows flags.

A library error names a parameter in backquotes (`` `out_dir` ``, `` `input='tensor'` ``,
`` `options.strict=True` ``), so it reads right for a caller of the Python API; the
command line prints the same message with the flag that sets that parameter.

Example:
    >>> translate("use another `out_dir`, or export with `input='tensor'`")
    'use another --out, or export with --input tensor'
    >>> translate("set `scoring.adaptive`; `unknown_name` stays")
    'set --adaptive; `unknown_name` stays'
"""

from __future__ import annotations

import re

from ..task_spec import get_task, list_tasks

__all__ = ["PARAMETER_FLAGS", "translate"]

# parameter (as library errors write it) -> the flag that sets it
PARAMETER_FLAGS = {
    "out_dir": "--out",
    "options.strict": "--strict",
    "scoring.adaptive": "--adaptive",
    "scoring.confidence": "--confidence",
    "options.limit": "--limit",
    "task": "--task",
    "input": "--input",
    "opset": "--opset",
    "num_classes": "--num-classes",
    "scoring.num_classes": "--num-classes",
    "weights": "--weights",
    "amp": "--amp",
    "val": "--val",
    "objective": "--objective",
    "conformal": "--conformal",
    "check": "--no-check",
    "device": "--device",
    "backend": "--backend",
    "precision": "--precision",
    "calibration": "--calibration",
    "micro_batch": "--micro-batch",
    "compile": "--compile",
    "model": "--model",
    "detector": "--detector",
    "box_option": "--box-option",
}

def _option_flags() -> dict[str, str]:
    """Every registered task's options, by name: the flag each is given."""
    return {o.name: o.flag for t in list_tasks() for o in get_task(t).options}


_PARAMETER = re.compile(r"`([A-Za-z_][\w.]*)(?:=([^`]*))?`")


def _flag(match: re.Match[str]) -> str:
    name, value = match.group(1), match.group(2)
    flag = PARAMETER_FLAGS.get(name) or _option_flags().get(name)
    if flag is None:
        return match.group(0)
    if value is None or value in ("True", "None") or flag == "--no-check":
        return flag
    return f"{flag} {value.strip(chr(34) + chr(39))}"


def translate(message: str) -> str:
    """``message`` with every parameter it names in backquotes replaced by its flag."""
    return _PARAMETER.sub(_flag, message)
