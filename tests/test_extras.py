"""Optional extras: without one, the feature that needs it says in one line which extra to install,
and evaluate still writes results.json and the CSVs without the report extra.

A missing package is simulated as Python reports a blocked import: ``sys.modules[name] = None``
(in a subprocess where the whole run must not see it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ttakit.errors import BackendError, MissingExtraError

SRC = Path(__file__).resolve().parents[1] / "src"
REPORT_LINE = "report.html needs the 'report' extra: pip install 'ttakit[report]'"


def _ttakit_without(blocked: str, *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    """``ttakit ARGV`` in a fresh interpreter in which ``blocked`` cannot be imported."""
    code = f"import sys; sys.modules[{blocked!r}] = None\nfrom ttakit.cli import main\nsys.exit(main({list(argv)!r}))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


@pytest.mark.slow
def test_evaluate_without_the_report_extra_writes_results_and_says_so(tmp_path):
    for c, name in enumerate(("cat", "dog")):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(2):
            rgb = np.random.default_rng(10 * c + i).integers(0, 255, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(rgb).save(tmp_path / "data" / name / f"{i}.png")
    (tmp_path / "labels.txt").write_text("cat\ndog\n")
    timm = pytest.importorskip("timm")
    torch.save(timm.create_model("test_resnet", num_classes=2).state_dict(), tmp_path / "w.pth")
    res = _ttakit_without("jinja2", "evaluate", "data", "--model", "test_resnet", "--weights", "w.pth",
                          "--labels", "labels.txt", "--tta", "hflip", "--out", "run", "--workers", "0", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "run"
    assert (run / "results.json").exists() and (run / "per_image.csv").exists()
    assert not (run / "report.html").exists()
    said = [line for line in res.stderr.splitlines() if "report" in line and "extra" in line]
    assert said == [f"ttakit: {REPORT_LINE}"], res.stderr[-2000:]
    # Rendering the page later names the extra in one CLI error line.
    again = _ttakit_without("jinja2", "report", "run", cwd=tmp_path)
    assert again.returncode != 0 and again.stderr.strip().splitlines() == [f"ttakit: error: {REPORT_LINE}"]


@pytest.mark.parametrize("blocked, call, extra", [
    ("pycocotools.coco", lambda: __import__("ttakit.evaluation.box_map", fromlist=["x"]).coco_gt("x.json"), "coco"),
    ("matplotlib", lambda: __import__("ttakit.viz", fromlist=["x"])._figure(), "report"),
])
def test_a_missing_extra_is_named(monkeypatch, blocked, call, extra):
    monkeypatch.setitem(sys.modules, blocked, None)
    with pytest.raises(MissingExtraError, match=rf"needs the '{extra}' extra: pip install 'ttakit\[{extra}\]'") as e:
        call()
    assert isinstance(e.value, BackendError) and isinstance(e.value, ImportError)
