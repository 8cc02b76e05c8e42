"""No silent wrong answers in a run: non-finite outputs, resumes that would mix runs,
half-written files, unreadable data, conformal calibrations used for something else."""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest
import torch

import ttakit
from ttakit import ClassificationTTA, RunConfig, create_policy, load_model
from ttakit.cli import main
from ttakit.cli.calibrate import calibrated_policy
from ttakit.conformal import Calibration
from ttakit.conformal_record import calibration_record
from ttakit.datasets import detect_dataset
from ttakit.errors import TTAKitError
from ttakit.evaluation.evaluate import EvalOptions, evaluate
from ttakit.evaluation.rows import PerImageCsv

CLASSES = ["cat", "dog", "fox"]


@pytest.fixture()
def folder(labelled_folder):
    return labelled_folder


@pytest.fixture()
def lm(labelled_model):
    return labelled_model  # conftest's: CLASSES, tmp_path/labels.txt


class _NaNFor(torch.nn.Module):
    """The model, with NaN logits for the images whose mean pixel is below ``cut``."""

    def __init__(self, net: torch.nn.Module, cut: float) -> None:
        super().__init__()
        self.net, self.cut = net, cut

    def forward(self, x):
        y = self.net(x)
        return torch.where((x.mean((1, 2, 3)) < self.cut)[:, None], torch.full_like(y, float("nan")), y)


@pytest.fixture()
def cli_args(folder, tmp_path, lm):
    weights = tmp_path / "w.pth"
    torch.save(lm.model.state_dict(), weights)
    return [str(folder), "--model", "test_resnet", "--labels", str(tmp_path / "labels.txt"), "--weights", str(weights),
            "--workers", "0", "--quiet"]


def _run(lm, folder, out, **kw):
    data = detect_dataset(folder, CLASSES)
    opts = kw.pop("options", EvalOptions(batch_size=4, workers=0, quiet=True))
    return evaluate(lm, data, [create_policy("hflip")], out_dir=out, run_config=kw.pop("run_config", RunConfig(8, False)),
                    options=opts, **kw)


def test_nonfinite_outputs_are_counted_not_scored_as_a_class(lm, folder, tmp_path, capsys):
    """A NaN model was scored as if it predicted class 0."""
    plain = _run(lm, folder, tmp_path / "ok")
    lm_nan = dataclasses.replace(lm, model=_NaNFor(lm.model, cut=float("inf")))  # every image NaN
    with pytest.raises(TTAKitError, match="all 9 photos"):
        _run(lm_nan, folder, tmp_path / "allnan")
    assert not (tmp_path / "allnan" / "results.json").exists()
    x = ttakit.preprocess([str(p) for p in sorted(folder.rglob("*.png"))], lm.transform())
    means = x.mean((1, 2, 3)).sort().values
    cut = float(means[2] + means[3]) / 2  # the three darkest photos give NaN
    lm_some = dataclasses.replace(lm, model=_NaNFor(lm.model, cut=cut))
    res = _run(lm_some, folder, tmp_path / "some")
    assert res["n_nonfinite"] == 3 and res["n_skipped"] == 3
    assert "NaN or inf" in capsys.readouterr().err
    doc = json.loads((tmp_path / "some" / "results.json").read_text())
    assert doc["n_nonfinite"] == 3 and plain["n_nonfinite"] == 0
    assert all(np.isfinite(r["nll"]) for r in doc["results"].values())
    rows = (tmp_path / "some" / "per_image.csv").read_text().splitlines()
    assert len(rows) == 1 + 6  # only the finite images are scored, in every row
    with pytest.raises(TTAKitError, match="not finite"):
        _run(lm_some, folder, tmp_path / "strict", options=EvalOptions(batch_size=4, workers=0, strict=True))


def test_resume_never_mixes_precisions(lm, folder, tmp_path):
    """A folder run in bf16 (torch autocast) was reused, and reported, as fp32."""
    out = tmp_path / "run"
    _run(lm, folder, out, run_config=RunConfig(8, False, torch.bfloat16))
    assert json.loads((out / "logits" / "run.json").read_text())["precision"] == "bf16"
    with pytest.raises(TTAKitError, match="differs in: precision"):
        _run(lm, folder, out)
    _run(lm, folder, out, run_config=RunConfig(8, False, torch.bfloat16))  # the same run resumes


def test_folder_written_before_precision_was_recorded_resumes_as_fp32(lm, folder, tmp_path):
    out = tmp_path / "old"
    first = _run(lm, folder, out)
    run_json = json.loads((out / "logits" / "run.json").read_text())
    assert "precision" not in run_json  # fp32 records nothing: the layout of older folders
    (out / "results.json").unlink()
    again = _run(lm, folder, out)
    assert again["results"]["plain"]["top1"] == first["results"]["plain"]["top1"]
    with pytest.raises(TTAKitError, match="precision"):
        _run(lm, folder, out, run_config=RunConfig(8, False, torch.float16))


def test_unreadable_folder_writes_nothing(lm, tmp_path):
    root = tmp_path / "bad" / "cat"
    root.mkdir(parents=True)
    for i in range(3):
        (root / f"{i}.png").write_bytes(b"not a png")
    for name in CLASSES[1:]:
        (tmp_path / "bad" / name).mkdir()
    with pytest.raises(TTAKitError, match="all 3 photos were unreadable.*0.png"):
        evaluate(lm, detect_dataset(tmp_path / "bad", CLASSES), [create_policy("hflip")], out_dir=tmp_path / "o",
                 run_config=RunConfig(8, False), options=EvalOptions(batch_size=4, workers=0, quiet=True))
    assert not (tmp_path / "o" / "results.json").exists() and not (tmp_path / "o" / "per_image.csv").exists()


def test_out_naming_a_file_is_one_line(cli_args, tmp_path, capsys):
    target = tmp_path / "taken.txt"
    target.write_text("mine")
    code = main(["evaluate", *cli_args, "--out", str(target), "--limit", "2"])
    err = capsys.readouterr().err
    assert code != 0 and "existing file" in err and "Traceback" not in err
    assert target.read_text() == "mine"


def test_per_image_csv_is_atomic(tmp_path):
    path = tmp_path / "per_image.csv"
    with pytest.raises(RuntimeError):
        with PerImageCsv(path, ["label"], ["plain"], [""]) as table:
            table.write(0, "a.png", ["cat"], ["cat"])
            raise RuntimeError("killed half way")
    assert not path.exists() and not list(tmp_path.iterdir())  # no half file, no temporary left
    with PerImageCsv(path, ["label"], ["plain"], [""]) as table:
        table.write(0, "a.png", ["cat"], ["cat"])
    assert path.read_text().splitlines()[1] == "0,a.png,cat,cat"


def test_adapted_rows_are_part_of_the_one_results_write(cli_args, tmp_path, capsys):
    """results.json used to be written before the adapted rows were computed (then rewritten)."""
    out = tmp_path / "adapt"
    assert main(["evaluate", *cli_args, "--out", str(out), "--adapt", "bn", "--adapt-batch", "8"]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert any(k.endswith("adapt=bn") for k in doc["results"])
    assert not [p for p in out.iterdir() if p.suffix == ".tmp"]
    # --strict refuses tent's last batch of 1 photo (9 photos, batches of 8): the failure comes after
    # the plain rows were scored, and nothing is written.
    failed = tmp_path / "strict"
    code = main(["evaluate", *cli_args, "--out", str(failed), "--adapt", "tent", "--adapt-batch", "8", "--strict"])
    assert code != 0 and "collapse" in capsys.readouterr().err
    assert not (failed / "results.json").exists()


def test_conformal_calibration_is_tied_to_what_it_calibrated(lm):
    cal = Calibration(alpha=0.1, score="thr", threshold=0.8, n=100)
    policy = create_policy("hflip")
    record = calibration_record(lm.model, merge="mean", model_name=lm.name)
    tied = calibrated_policy(policy, "mean", cal, "data", record)
    assert ClassificationTTA(lm.model, tied).conformal_verified
    with pytest.raises(TTAKitError, match="merge"):
        ClassificationTTA(lm.model, tied, merge="gmean")
    with pytest.raises(TTAKitError, match="adaptive"):
        ClassificationTTA(lm.model, tied, adaptive=0.5)
    other = load_model("test_resnet", num_classes=3, weights="random")
    with torch.no_grad():
        for p in other.model.parameters():
            p.add_(1.0)
    with pytest.raises(TTAKitError, match="weights"):
        ClassificationTTA(other.model, tied)
    old = calibrated_policy(policy, "mean", cal, "data")  # calibrated before the record existed
    with pytest.warns(UserWarning, match="unverified"):
        tta = ClassificationTTA(lm.model, old)
    assert not tta.conformal_verified
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ClassificationTTA(lm.model, policy).conformal is None  # no calibration, nothing said


def test_adaptation_refused_before_anything_is_written(folder, tmp_path, capsys):
    """--adapt tent on a model without normalisation layers failed after results.json was written."""
    loader = tmp_path / "nonorm.py"
    loader.write_text("import torch\n\n"
                      "def load():\n"
                      "    return torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3), torch.nn.AdaptiveAvgPool2d(1),"
                      " torch.nn.Flatten()).eval()\n")
    (tmp_path / "labels.txt").write_text("\n".join(CLASSES))
    out = tmp_path / "run"
    code = main(["evaluate", str(folder), "--model", f"{loader}:load", "--labels", str(tmp_path / "labels.txt"),
                 "--workers", "0", "--quiet", "--out", str(out), "--adapt", "tent"])
    err = capsys.readouterr().err
    assert code != 0 and "has none" in err and "Traceback" not in err
    assert not (out / "results.json").exists()


def test_calibration_photos_without_int8_are_refused(cli_args, tmp_path, capsys):
    """--calibration DIR with fp32 exited 0: the photos changed nothing."""
    code = main(["evaluate", *cli_args, "--out", str(tmp_path / "o"), "--calibration", str(tmp_path)])
    err = capsys.readouterr().err
    assert code != 0 and "calibrate int8 and do nothing" in err and "--calibration" in err
    assert not (tmp_path / "o").exists()


def test_scoring_given_with_the_options_it_replaces_is_refused(lm, folder, tmp_path):
    """``scoring=`` beside ``adaptive=`` used the scoring object and dropped the option unsaid."""
    scoring = ttakit.ClassifyScoring(adaptive=0.9)
    with pytest.raises(TTAKitError, match="`confidence` would be ignored: `scoring` is given"):
        ttakit.evaluate(lm, folder, "hflip", out_dir=tmp_path / "a", scoring=scoring, confidence="margin",
                        options=EvalOptions(workers=0, quiet=True))
    with pytest.raises(TTAKitError, match="`ignore_index` would be ignored"):
        ttakit.evaluate(lm, folder, "hflip", task="segment", out_dir=tmp_path / "b", masks=folder,
                        scoring=ttakit.SegmentScoring(3), ignore_index=0, options=EvalOptions(workers=0, quiet=True))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    res = ttakit.evaluate(lm, folder, "hflip", out_dir=tmp_path / "c", scoring=scoring,
                          options=EvalOptions(workers=0, quiet=True))  # the object alone is used
    assert res.doc["n_images"] == 9 and "top1" in res.results["hflip"]


def test_device_beside_a_prepared_run_on_another_device_is_refused(lm, folder, tmp_path):
    run = ttakit.prepare_run(lm, device="cpu")
    elsewhere = dataclasses.replace(run, device=torch.device("meta"))  # as if prepared on a GPU
    with pytest.raises(TTAKitError, match="`device`='cpu' would be ignored: the prepared run is on meta"):
        ttakit.evaluate(elsewhere, folder, "hflip", out_dir=tmp_path / "a", device="cpu",
                        options=EvalOptions(workers=0, quiet=True))
    with pytest.raises(TTAKitError, match="device must be a device"):
        ttakit.evaluate(run, folder, "hflip", out_dir=tmp_path / "a", device="gpu0",
                        options=EvalOptions(workers=0, quiet=True))
    res = ttakit.evaluate(run, folder, "hflip", out_dir=tmp_path / "b", device="cpu",
                          options=EvalOptions(workers=0, quiet=True))  # the same device: fine
    assert res.doc["n_images"] == 9 and "top1" in res.results["hflip"]
