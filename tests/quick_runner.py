"""Run several benchmark/example scripts' ``--quick`` mode in one interpreter.

Usage: ``python tests/quick_runner.py RESULT.json WORKDIR SCRIPT [SCRIPT ...]``.

Each script is imported as a module (its folder first on ``sys.path``, as when it runs as a
script) and its ``main(["--quick"])`` is called in a fresh sub-folder of WORKDIR, with its
stdout captured. One interpreter for many scripts: importing torch, torchvision and timm costs
about 8 s per interpreter on a 2-core machine, more than most quick runs themselves.

The state a script may change (torch threads, working folder, environment, warning filters,
sibling modules) is put back before the next one. RESULT.json is rewritten after every script
(``{name: {"ok": bool, "stdout": str, "error": str, "seconds": float}}``) and names the script
running when the interpreter dies, so a crash is reported against its script.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any


def _load(script: Path) -> Any:
    spec = importlib.util.spec_from_file_location(script.stem, script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[script.stem] = module  # a sibling's `from <stem> import ...` gets this one
    spec.loader.exec_module(module)
    return module


def _write(path: Path, results: dict[str, dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results))
    tmp.replace(path)


def run(result_path: Path, workdir: Path, scripts: list[Path]) -> dict[str, dict[str, Any]]:
    import torch

    from ttakit.runtime.signal_stack import kept_signal_stack

    torch.set_num_threads(1)  # tiny models on a shared CPU: 2 threads fighting other jobs run 10x slower
    results: dict[str, dict[str, Any]] = {}
    base_path, base_env, base_modules = list(sys.path), dict(os.environ), set(sys.modules)
    stems = {s.stem for s in scripts} | {"bench_common"}  # the scripts' own modules, dropped after each
    for script in scripts:
        name = f"{script.parent.name}/{script.name}"
        results[name] = {"ok": False, "stdout": "", "error": "the interpreter died during this script", "seconds": 0.0}
        _write(result_path, results)
        cwd = workdir / script.stem
        cwd.mkdir(parents=True, exist_ok=True)
        os.environ["TTAKIT_CACHE"] = str(cwd / "cache")
        sys.path.insert(0, str(script.parent))
        out = io.StringIO()
        t0 = time.perf_counter()
        try:
            os.chdir(cwd)  # a relative output path lands here, never in the repository
            # kept_signal_stack: a script that drives OpenVINO itself must not leave the next one
            # a freed signal stack (runtime/signal_stack.py)
            with warnings.catch_warnings(), contextlib.redirect_stdout(out), kept_signal_stack():
                _load(script).main(["--quick"])
            results[name].update(ok=True, error="")
        except BaseException:  # noqa: BLE001 - SystemExit too: a script that exits is a failure here
            results[name].update(error=traceback.format_exc()[-4000:])
        finally:
            results[name].update(stdout=out.getvalue(), seconds=round(time.perf_counter() - t0, 1))
            os.chdir(workdir)
            sys.path[:] = base_path
            os.environ.clear()
            os.environ.update(base_env)
            for mod in (set(sys.modules) - base_modules) & stems:
                del sys.modules[mod]
            torch.set_num_threads(1)
        _write(result_path, results)
    return results


if __name__ == "__main__":
    if len(sys.argv) < 4:
        raise SystemExit(__doc__)
    run(Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve(), [Path(a).resolve() for a in sys.argv[3:]])
