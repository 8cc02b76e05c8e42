"""Several ``ttakit`` command lines in one fresh interpreter (one start instead of one each).

A test that needs a process of its own (an environment without downloads, a package blocked
from import, a task module not imported yet) pays about 8 s of imports for it on 2 cores; the
commands it runs there share that start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
SEP = "---- ttakit command done ----"

# Runs each command through ttakit.cli.main as `python -m ttakit` would (an argparse exit is
# its code), then prints the exit codes as JSON.
_DRIVER = f"""
import json, sys
for name in json.loads(sys.argv[1]):  # modules blocked from import, as Python reports a missing one
    sys.modules[name] = None
from ttakit.cli import main
codes = []
for argv in json.loads(sys.argv[2]):
    try:
        codes.append(main(argv))
    except SystemExit as e:
        codes.append(e.code)
    print({SEP!r}, file=sys.stderr, flush=True)
    print({SEP!r}, flush=True)
print(json.dumps(codes))
"""


@dataclass(frozen=True)
class Session:
    codes: list[int]  # each command's exit code
    stdout: list[str]  # each command's standard output
    stderr: list[str]  # each command's standard error


def run_commands(commands: Sequence[Sequence[str]], *, blocked: Sequence[str] = (), cwd: Path | None = None,
                 env: Mapping[str, str] | None = None, timeout: float = 300) -> Session:
    """Run each ``ttakit`` command (its argv) in turn in one fresh interpreter in which the
    modules ``blocked`` cannot be imported."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(list(blocked)), json.dumps([list(c) for c in commands])],
                          capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout.split(SEP + "\n")
    return Session(json.loads(out[-1]), out[:-1], done.stderr.split(SEP + "\n")[:-1])
