"""Import cost: ``import ttakit`` and ``import ttakit.compat.ttach`` against torch, torchvision and ttach.

Run: ``python benchmarks/bench_import.py`` (``--quick``: one round of the goal's two
statements; ``--repeats N``). Each statement runs in a fresh interpreter (``python -c``) with
this checkout's ``src`` first on the path; rounds are interleaved (every statement once per
round, in turn), the first round only warms the page cache, and the median wall time of the
rest is printed with its ratio to ``import torch, torchvision`` and to ``import ttach`` (goal:
``import ttakit`` at most 1.1x ``import torch, torchvision``). It also prints which heavy
optional modules each import loaded. The machine's load is printed before and after: compare
times only when it is low.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import provenance  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"
HEAVY = ("torch", "torchvision", "timm", "onnx", "onnxruntime", "openvino", "matplotlib", "jinja2", "pycocotools", "scipy")
STATEMENTS = {
    "torch": "import torch",
    "torch+torchvision": "import torch, torchvision",
    "ttach": "import ttach",
    "ttakit": "import ttakit",
    "ttakit.compat.ttach": "import ttakit.compat.ttach",
    "ttakit + first use": "import ttakit; ttakit.ClassificationTTA",
}


def _run(statement: str) -> tuple[float, list[str]]:
    """Wall seconds of a fresh interpreter running ``statement``, and the heavy modules it loaded."""
    probe = f"{statement}\nimport sys\nprint(__import__('json').dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=False)
    dt = time.perf_counter() - t0
    if res.returncode:
        raise SystemExit(f"{statement!r} failed:\n{res.stderr[-2000:]}")
    return dt, json.loads(res.stdout.strip().splitlines()[-1])


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Print the table and return the median seconds of each statement."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=7, help="measured rounds (after one warm-up round)")
    p.add_argument("--quick", action="store_true", help="one measured round (a smoke run, not a measurement)")
    args = p.parse_args(argv)
    repeats = 1 if args.quick else max(1, args.repeats)
    statements = dict(STATEMENTS)
    if args.quick:  # a smoke run: only the two statements of the goal's ratio
        statements = {k: v for k, v in statements.items() if k in ("torch+torchvision", "ttakit")}
    try:
        import ttach  # noqa: F401
    except ImportError:
        statements.pop("ttach", None)
    print(provenance(__file__, None if argv is None else list(argv)))
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {_load()}")
    times: dict[str, list[float]] = {k: [] for k in statements}
    loaded: dict[str, list[str]] = {}
    warm = 0 if args.quick else 1
    for r in range(1 - warm, repeats + 1):  # round 0 warms the page cache (not in a quick run)
        for name, statement in statements.items():
            dt, mods = _run(statement)
            loaded[name] = mods
            if r:
                times[name].append(dt)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["torch+torchvision"]
    print(f"{'statement':42s} {'median s':>9s} {'/ torch+tv':>11s} {'/ ttach':>8s}  heavy modules loaded")
    for name, statement in statements.items():
        vs_ttach = f"{med[name] / med['ttach']:.2f}" if "ttach" in med else "-"
        mods = ", ".join(m for m in loaded[name] if m != "torch") or "-"
        print(f"{statement:42s} {med[name]:9.3f} {med[name] / base:11.2f} {vs_ttach:>8s}  {mods}")
    print(f"ttakit / (torch, torchvision) = {med['ttakit'] / base:.2f} (goal <= 1.10); "
          f"{repeats} round(s), interleaved; load average after {_load()}")
    return med


if __name__ == "__main__":
    main()
