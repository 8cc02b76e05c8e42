"""Optional extras: without one, the feature that needs it says in one line which extra to install,
and evaluate still writes results.json and the CSVs without the report extra.

A missing package is simulated as Python reports a blocked import: ``sys.modules[name] = None``
(in a subprocess where the whole run must not see it: tests/cli_session.py)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ttakit.errors import BackendError, MissingExtraError

from cli_session import run_commands

REPORT_LINE = "report.html needs the 'report' extra: pip install 'ttakit[report]'"


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
    done = run_commands([["evaluate", "data", "--model", "test_resnet", "--weights", "w.pth", "--labels", "labels.txt",
                          "--tta", "hflip", "--out", "run", "--workers", "0"],
                         ["report", "run"]],  # rendering the page later
                        blocked=["jinja2"], cwd=tmp_path)
    codes, errs = done.codes, done.stderr
    assert codes[0] == 0, errs[0][-3000:]
    run = tmp_path / "run"
    assert (run / "results.json").exists() and (run / "per_image.csv").exists()
    assert not (run / "report.html").exists()
    said = [line for line in errs[0].splitlines() if "report" in line and "extra" in line]
    assert said == [f"ttakit: {REPORT_LINE}"], errs[0][-2000:]
    # Rendering the page later names the extra in one CLI error line.
    assert codes[1] != 0 and errs[1].strip().splitlines() == [f"ttakit: error: {REPORT_LINE}"], errs[1]


@pytest.mark.parametrize("blocked, call, extra", [
    ("pycocotools.coco", lambda: __import__("ttakit.evaluation.box_map", fromlist=["x"]).coco_gt("x.json"), "coco"),
    ("matplotlib", lambda: __import__("ttakit.viz", fromlist=["x"])._figure(), "report"),
])
def test_a_missing_extra_is_named(monkeypatch, blocked, call, extra):
    monkeypatch.setitem(sys.modules, blocked, None)
    with pytest.raises(MissingExtraError, match=rf"needs the '{extra}' extra: pip install 'ttakit\[{extra}\]'") as e:
        call()
    assert isinstance(e.value, BackendError) and isinstance(e.value, ImportError)
