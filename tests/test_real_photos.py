"""The default model on real ImageNet photos (skips where ../shared/imagenet-sample is absent)."""

from __future__ import annotations

import pytest
import timm
import torch

from ttakit import ClassificationTTA, preprocess

pytestmark = pytest.mark.slow


def test_plain_hflip_and_d4_on_real_photos(sample_dir, default_lm):
    files = sorted(sample_dir.glob("*.JPEG"))
    wnids = timm.data.ImageNetInfo().label_names()
    labels = torch.tensor([wnids.index(f.name.split("_")[0]) for f in files])
    x = preprocess(files, default_lm.transform())
    acc = {}
    for policy in ("none", "hflip", "d4"):
        n = len(files) if policy != "d4" else 100  # d4 is 8 forwards an image: a subset says enough
        tta = ClassificationTTA(default_lm.model, policy, norm=default_lm.normalization)
        probs = torch.cat([tta(x[i : i + 50]) for i in range(0, n, 50)])
        acc[policy] = (probs.argmax(-1) == labels[:n]).float().mean().item()
    plain_100 = acc_at(default_lm, x[:100], labels[:100])
    assert acc["none"] > 0.85  # ~88% on these photos
    assert acc["hflip"] >= acc["none"] - 0.005  # flips help a little, never much worse
    assert acc["d4"] < plain_100 - 0.03  # upside-down views hurt ImageNet models


def acc_at(lm, x, labels):
    with torch.inference_mode():
        return (lm.model(x).argmax(-1) == labels).float().mean().item()


def test_evaluate_on_real_photos(sample_dir, default_lm, tmp_path):
    from ttakit import RunConfig, create_policy
    from ttakit.datasets import detect_dataset
    from ttakit.evaluation.evaluate import EvalOptions, evaluate

    data = detect_dataset(sample_dir, default_lm.class_names)
    assert data.layout == "imagenet-flat" and len(data) == 500 and data.n_classes == 500
    res = evaluate(default_lm, data, [create_policy("hflip")], out_dir=tmp_path / "ev", run_config=RunConfig(8, True),
                   options=EvalOptions(batch_size=16, workers=1, limit=48, quiet=True))
    assert res["n_images"] == 48 and res["skipped"] == []
    assert res["results"]["plain"]["top1"] > 0.75 and res["results"]["hflip"]["views"] == 2
