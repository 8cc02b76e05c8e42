"""The ttakit command: predict, views, and one clear line for every kind of bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import timm
import torch
from PIL import Image

import ttakit
from ttakit.cli import main

CAT = str(ttakit.example_image_path())


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_predict_default_prints_plain_and_tta_side_by_side(capsys):
    code, out, err = run(capsys, "predict")
    assert code == 0, err
    assert "tiger_cat.jpg" in out and "plain" in out and "tta" in out
    assert "tabby, tabby cat" in out and "tiger cat" in out
    from ttakit.cli.predict import DEFAULT_POLICY  # chosen from evidence; see README

    views = [v.strip() for v in DEFAULT_POLICY.split("+")]
    assert "views:" in out and all(f"    {v} " in out for v in views) and f"({len(views)} views)" in out
    code, out, _ = run(capsys, "predict", "--tta", "hflip")  # the flip alone, one flag away
    assert code == 0 and "policy hflip (2 views)" in out and "    identity " in out


def test_predict_json_schema(capsys):
    code, out, _ = run(capsys, "predict", CAT, CAT, "--tta", "d4", "--merge", "gmean", "--topk", "3", "--json")
    assert code == 0
    doc = json.loads(out)
    assert set(doc) == {"model", "policy", "merge", "adaptive", "images"}
    assert doc["model"] == "tf_efficientnet_lite0" and doc["merge"] == "gmean" and len(doc["policy"]) == 8
    assert len(doc["images"]) == 2
    img = doc["images"][0]
    assert set(img) == {"path", "plain", "tta", "views"}
    assert len(img["plain"]) == 3 and set(img["plain"][0]) == {"index", "label", "prob"}
    assert [v["name"] for v in img["views"]] == doc["policy"]
    assert set(img["views"][0]) == {"name", "index", "label", "prob"}
    assert img["plain"][0]["prob"] >= img["plain"][1]["prob"]
    assert img["views"][0]["index"] == img["plain"][0]["index"]  # identity view = plain top-1


def test_views_picture(capsys, tmp_path):
    out_png = tmp_path / "views.png"
    code, out, err = run(capsys, "views", CAT, "--tta", "hflip*scale(1,1.2)", "--out", str(out_png))
    assert code == 0, err
    img = Image.open(out_png)
    assert img.size[0] > 600 and img.size[1] > 150  # a 5-panel grid
    assert "4 views" in out


@pytest.fixture()
def bad_files(tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    data = ttakit.example_image_path().read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 3])
    weights = tmp_path / "resnet.pth"
    torch.save(timm.create_model("test_resnet").state_dict(), weights)
    return {"text": text, "cut": cut, "weights": weights, "missing": tmp_path / "missing.jpg"}


@pytest.mark.parametrize(
    "case,argv,message",
    [
        ("missing", ["predict", "{missing}"], "missing.jpg: no such file"),
        ("text", ["predict", "{text}"], "notes.jpg: not an image file"),
        ("cut", ["predict", "{cut}"], "cut.jpg: corrupt or truncated image"),
        ("model", ["predict", CAT, "--model", "resnet_5000"], "unknown model 'resnet_5000'"),
        ("preset", ["predict", CAT, "--tta", "d8"], "unknown preset"),
        ("transform", ["predict", CAT, "--tta", "hflip*zoom(2)"], "unknown transform 'zoom'"),
        ("syntax", ["predict", CAT, "--tta", "hflip*(scale(1.1)"], "malformed policy"),
        ("weights", ["predict", CAT, "--weights", "{weights}"], "weights do not fit the model"),
        ("missing_weights", ["predict", CAT, "--weights", "/nonexistent/w.pth"], "weights file not found"),
        ("views_missing", ["views", "{missing}", "--out", "x.png"], "missing.jpg: no such file"),
    ],
)
def test_bad_input_gives_one_line_and_nonzero_exit(capsys, bad_files, case, argv, message):
    argv = [a.format(**bad_files) for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ttakit: error: "), err
    assert message in lines[0]
    assert "Traceback" not in err and out == ""


def test_module_entry_point_and_its_error_line(capsys):
    res = subprocess.run(
        [sys.executable, "-m", "ttakit", "predict", "--tta", "none", "--json", "--topk", "1"],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["images"][0]["plain"][0]["index"] in (281, 282)
    # The exit code is main()'s return value (`python -m ttakit` and the console script call
    # sys.exit(main())): the error case in this process saves an interpreter start.
    assert main(["predict", "/nonexistent.png"]) == 2
    assert capsys.readouterr().err.strip() == "ttakit: error: /nonexistent.png: no such file"


@pytest.mark.parametrize("argv", [["evaluate", "data", "--out", "o", "--batch-size", "0"],
                                  ["evaluate", "data", "--out", "o", "--workers", "-1"],
                                  ["search", "data", "--out", "o", "--budget", "0"],
                                  ["predict", "--topk", "0"], ["predict", "--micro-batch", "-2"]])
def test_non_positive_sizes_are_one_line_usage_errors(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("ttakit: error: ") and ("positive" in err or "non-negative" in err) and "Traceback" not in err


def test_predict_adaptive_is_applied(capsys):
    """--adaptive used to be accepted and ignored: a threshold no image reaches keeps plain."""
    def tta_of(*extra):
        code, out, err = run(capsys, "predict", CAT, "--tta", "d4", "--json", "--topk", "3", *extra)
        assert code == 0, err
        return json.loads(out)

    full, confident = tta_of(), tta_of("--adaptive", "0.0")
    img = confident["images"][0]
    assert confident["adaptive"] == 0.0 and img["tta"] == img["plain"]  # plain kept: nobody is unsure
    assert [v["name"] for v in img["views"]] == ["identity"]  # the other views never ran
    assert full["images"][0]["tta"] != full["images"][0]["plain"] and len(full["images"][0]["views"]) == 8
    unsure = tta_of("--adaptive", "1.01")["images"][0]  # everyone unsure: the full policy
    assert [c["index"] for c in unsure["tta"]] == [c["index"] for c in full["images"][0]["tta"]]
    assert [c["prob"] for c in unsure["tta"]] == pytest.approx([c["prob"] for c in full["images"][0]["tta"]], abs=1e-6)


# --------------------------------------------------------------------------- one contract for every task
def make_classifier() -> torch.nn.Module:  # tests/test_cli.py:make_classifier
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=4), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())


def test_model_takes_module_function_for_classification(capsys):
    code, out, err = run(capsys, "predict", CAT, "--model", f"{__file__}:make_classifier", "--json", "--topk", "2")
    assert code == 0, err
    doc = json.loads(out)
    assert len(doc["images"][0]["plain"]) == 2 and {c["index"] for c in doc["images"][0]["plain"]} <= {0, 1, 2, 3}


def _run_flags(*argv):
    from ttakit.cli import build_parser

    return build_parser().parse_args(["evaluate", "data", "--out", "o", *argv])


# What each task's command tells prepare_run about its model.
_MODEL_KINDS = {"classify": {}, "detect": {"kind": "detector", "exportable": False, "tunable": False},
                "segment": {"kind": "segmenter"}}


@pytest.mark.parametrize("task", list(_MODEL_KINDS))
def test_shared_run_flags_are_honoured_for_every_task(task):
    from ttakit.cli.common import prepare_run

    lm = ttakit.LoadedModel(make_classifier(), "tiny", "none", {"input_size": (3, 32, 32), "mean": (0.5,) * 3,
                                                               "std": (0.5,) * 3}, ["a", "b", "c", "d"])
    loaded = prepare_run(lm, _run_flags("--precision", "bf16", "--micro-batch", "3", "--device", "cpu"),
                         **_MODEL_KINDS[task])
    assert loaded.run_config.amp_dtype == torch.bfloat16 and loaded.run_config.micro_batch == 3
    assert loaded.device == torch.device("cpu")
    compiled = prepare_run(lm, _run_flags("--compile", "--amp", "fp16"), **_MODEL_KINDS[task])
    assert compiled.lm.model is not lm.model and compiled.run_config.amp_dtype == torch.float16  # torch.compile'd


def test_detection_refuses_an_onnx_backend_in_one_line(capsys, tmp_path):
    argv = ["evaluate", "--task", "detect", str(tmp_path), "--annotations", str(tmp_path / "c.json"), "--model",
            "fasterrcnn_mobilenet_v3_large_320_fpn", "--weights", "random", "--out", str(tmp_path / "o")]
    (tmp_path / "c.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"}], "annotations": [],
                                                 "categories": [{"id": 1, "name": "x"}]}))
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    for backend in ("onnxruntime", "openvino"):
        code, out, err = run(capsys, *argv, "--backend", backend)
        assert code == 2 and err.startswith("ttakit: error: --backend") and len(err.strip().splitlines()) == 1, err
    code, out, err = run(capsys, *argv, "--micro-batch", "auto")
    assert code == 2 and "--micro-batch auto" in err and len(err.strip().splitlines()) == 1
