"""``ttakit evaluate --precision``: the precision runs, is checked, and its plain top-1 is
compared with fp32 on the same images (paired); a CPU without it gets one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from ttakit.cli import main
from ttakit.runtime.precision import CPU_PRECISIONS_ENV, cpu_precisions

CLASSES = ["cat", "dog"]


@pytest.fixture()
def run_args(tmp_path, monkeypatch):
    monkeypatch.setenv("TTAKIT_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for c in CLASSES:
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (48, 56, 3), dtype=np.uint8)).save(tmp_path / "data" / c / f"{i}.png")
    (tmp_path / "labels.txt").write_text("\n".join(CLASSES))
    torch.manual_seed(0)
    torch.save(timm.create_model("test_resnet", num_classes=2).state_dict(), tmp_path / "w.pth")
    return ["evaluate", str(tmp_path / "data"), "--model", "test_resnet", "--labels", str(tmp_path / "labels.txt"),
            "--weights", str(tmp_path / "w.pth"), "--batch-size", "4", "--workers", "2", "--tta", "hflip"]


@pytest.mark.parametrize("have", [True, False], ids=["cpu-has-it", "cpu-lacks-it"])
def test_evaluate_int8_reports_its_top1_against_fp32_paired(run_args, tmp_path, monkeypatch, capsys, have):
    pytest.importorskip("onnxruntime")  # the int8 file is quantised with ONNX Runtime's tools
    pytest.importorskip("openvino")
    if not have:
        monkeypatch.setenv(CPU_PRECISIONS_ENV, "fp32")
    elif "int8" not in cpu_precisions():
        pytest.skip("this CPU has no int8: the absent side is the other parameter")
    out = tmp_path / "int8"
    code = main([*run_args, "--backend", "openvino", "--precision", "int8", "--out", str(out)])
    captured = capsys.readouterr()
    if not have:
        assert code == 2 and not out.exists()
        errors = [line for line in captured.err.splitlines() if "int8" in line]
        assert len(errors) == 1 and "this CPU has no native int8 for openvino" in errors[0]
        return
    assert code == 0, captured.err
    # The check's figures: printed the first time, kept in run.json.
    assert "openvino:int8 checked against fp32 torch: top-1 agreement" in captured.err
    run = json.loads((out / "logits" / "run.json").read_text())
    assert run["backend"] == "openvino:int8" and run["backend_check"]["figures"]["n"] == 16  # 8 views + 8 photos
    # The paired comparison with fp32 on the same 8 images, from the plain view evaluated in fp32 torch.
    row = json.loads((out / "precision.json").read_text())
    assert row["n"] == 8 and row["precision"] == "int8" and row["verdict"] in captured.out
    assert row["verdict"].startswith("int8 vs fp32: ") and "same top-1 on" in row["verdict"]
    fp32 = json.loads((out / "fp32" / "results.json").read_text())
    assert row["top1_fp32"] == pytest.approx(fp32["results"]["plain"]["top1"])
    int8 = json.loads((out / "results.json").read_text())
    assert row["top1"] == pytest.approx(int8["results"]["plain"]["top1"])
    assert row["fixed"] - row["broken"] == round((row["top1"] - row["top1_fp32"]) * 8)
    # Run again: everything is stored, the same answer comes back.
    assert main([*run_args, "--backend", "openvino", "--precision", "int8", "--out", str(out), "--quiet"]) == 0
    assert json.loads((out / "precision.json").read_text())["verdict"] == row["verdict"]


def test_onnxruntime_bf16_and_torch_int8_are_refused_in_one_line(run_args, tmp_path, capsys):
    for backend, precision, why in [("onnxruntime", "bf16", "no bf16/fp16 convolution kernels on x86"),
                                    ("torch", "int8", "use backend onnxruntime or openvino")]:
        code = main([*run_args, "--backend", backend, "--precision", precision, "--out", str(tmp_path / "x")])
        err = capsys.readouterr().err
        assert code == 2 and why in err and len([line for line in err.splitlines() if why in line]) == 1
