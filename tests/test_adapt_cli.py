"""``--adapt`` on the command line: adapted rows in evaluate, predict on a stream, no abbreviations."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from ttakit.cli import build_parser, main

CLASSES = ["cat", "dog", "fox"]


@pytest.fixture()
def run_args(tmp_path):
    root = tmp_path / "data"
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(3):
            rgb = np.random.default_rng(10 * c + i).integers(0, 255, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(rgb).save(root / name / f"{i}.png")
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(CLASSES))
    torch.manual_seed(0)
    weights = tmp_path / "w.pth"
    torch.save(timm.create_model("test_resnet", num_classes=3).state_dict(), weights)
    return [str(root), "--model", "test_resnet", "--labels", str(labels), "--weights", str(weights), "--workers", "0"]


def test_evaluate_adds_a_row_per_policy_and_method(run_args, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["evaluate", *run_args, "--tta", "hflip", "--out", str(out), "--adapt", "bn", "--adapt", "auto",
                 "--adapt-batch", "4"])
    printed = capsys.readouterr().out
    assert code == 0
    doc = json.loads((out / "results.json").read_text())["results"]
    assert {"plain", "hflip", "plain adapt=bn", "hflip adapt=bn", "plain adapt=auto", "hflip adapt=auto"} <= set(doc)
    row = doc["plain adapt=bn"]
    assert row["adapt"] == "bn" and row["views"] == 1 and 0 <= row["top1"] <= 1 and "ci_top1" in row
    assert "plain adapt=bn" in printed and "hflip adapt=auto" in printed
    # the adapted rows are a stream in folder order: bn with batches of 4 by hand gives the same top-1
    from ttakit.adapt import AdaptOptions, create_adapter
    from ttakit.data import input_transform
    from ttakit.datasets import detect_dataset
    from ttakit.models import load_model

    lm = load_model("test_resnet", weights=run_args[6], labels=run_args[4])
    data = detect_dataset(run_args[0], lm.class_names)
    tf = input_transform(None, lm.data_config)
    x = torch.stack([tf(Image.open(p).convert("RGB")) for p in data.paths])
    adapter = create_adapter("bn", lm.model, AdaptOptions(batch=4))
    pred = torch.cat([adapter.step(x[s:s + 4]).argmax(-1) for s in range(0, len(x), 4)])
    assert row["top1"] == pytest.approx(float((pred == torch.tensor(data.labels)).float().mean()))


def test_predict_adapts_on_its_photos(run_args, tmp_path, capsys):
    """predict --adapt shows what the library's adapted ClassificationTTA predicts, and that
    differs from plain TTA (a random batch-norm model on photos unlike its running statistics)."""
    from ttakit import ClassificationTTA
    from ttakit.adapt import AdaptOptions
    from ttakit.datasets import detect_dataset
    from ttakit.models import load_model
    from ttakit.predict import predict_images

    weights = tmp_path / "sharp.pth"  # the random head made sharp: probabilities far from uniform
    state = torch.load(run_args[6], weights_only=True)
    torch.save({**state, "fc.weight": state["fc.weight"] * 20}, weights)
    args = [*run_args[1:6], str(weights)]  # --model test_resnet --labels L --weights W
    lm = load_model("test_resnet", weights=weights, labels=run_args[4])
    paths = list(detect_dataset(run_args[0], lm.class_names).paths[:4])

    def tta_probs(images):  # (N, C): each photo's merged probability of every class
        return torch.tensor([[next(s["prob"] for s in im["tta"] if s["index"] == c) for c in range(3)] for im in images])

    def cli(*extra):
        assert main(["predict", *paths, *args, "--tta", "hflip", "--json", *extra]) == 0
        return tta_probs(json.loads(capsys.readouterr().out)["images"])

    plain, adapted = cli(), cli("--adapt", "bn", "--adapt-batch", "2")
    assert (adapted - plain).abs().max() > 0.005  # adaptation changes what predict shows (by ~0.01 here)
    tta = ClassificationTTA(lm.model, "hflip", norm=lm.normalization, data_config=lm.data_config, adapt="bn",
                            adapt_options=AdaptOptions(batch=2))
    library = tta_probs([{"tta": [dataclasses.asdict(s) for s in p.tta]} for p in predict_images(lm, paths, tta, k=3)])
    torch.testing.assert_close(adapted, library, atol=1e-5, rtol=0)


def test_abbreviations_are_off_for_every_command():
    parser = build_parser()
    args = parser.parse_args(["evaluate", "d", "--out", "o", "--adapt", "bn"])
    assert args.adapt == ["bn"] and args.adaptive is None  # once read as an abbreviation of --adaptive
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate", "d", "--out", "o", "--adaptiv", "0.5"])
    with pytest.raises(SystemExit):
        parser.parse_args(["predict", "--tt", "hflip"])


def test_precropped_photos_get_a_one_line_note(tmp_path, capsys):
    photo = tmp_path / "n02123159_tiger_cat.png"
    Image.new("RGB", (224, 224), (120, 80, 40)).save(photo)
    code = main(["predict", str(photo), "--tta", "hflip"])
    out = capsys.readouterr().out
    assert code == 0
    notes = [line for line in out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "input=224:1" in notes[0]
