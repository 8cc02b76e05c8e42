"""Import cost: `import ttakit` loads no optional heavy module, and the ttach drop-in loads neither
timm nor torchvision (benchmarks/bench_import.py prints the times; this test asserts the facts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
HEAVY = ("timm", "torchvision", "onnx", "onnxruntime", "openvino", "matplotlib", "jinja2", "pycocotools", "scipy")


def _loaded_after(code: str) -> set[str]:
    """Which of HEAVY are in sys.modules after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    return set(json.loads(res.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("code", ["import ttakit", "import ttakit.compat.ttach as tta; tta.SegmentationTTAWrapper"])
def test_heavy_modules_load_on_first_use(code):
    assert _loaded_after(code) == set()


def test_lazy_names_resolve_and_are_listed():
    import ttakit

    assert set(ttakit.__all__) <= set(dir(ttakit))
    assert "classify" in ttakit.Plan("hflip", task="classify").head.__class__.__module__
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ttakit.nope  # noqa: B018
