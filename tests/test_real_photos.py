"""The default model on real ImageNet photos (skips where ../shared/imagenet-sample is absent)."""

from __future__ import annotations

import pytest
import timm
import torch

from ttakit import ClassificationTTA, preprocess

pytestmark = pytest.mark.slow


def test_plain_hflip_and_d4_on_real_photos(sample_dir, default_lm):
    # The first 100 photos (88% plain, 89% with hflip on an AMD EPYC, fp32) and, for d4 at 8
    # forwards a photo, the first 16 (93.8% plain, 75.0% d4): each figure of the 500 holds on them,
    # for a fifth of the forwards.
    files = sorted(sample_dir.glob("*.JPEG"))[:100]
    wnids = timm.data.ImageNetInfo().label_names()
    labels = torch.tensor([wnids.index(f.name.split("_")[0]) for f in files])
    x = preprocess(files, default_lm.transform())
    acc = {}
    for policy in ("hflip", "d4"):
        n = len(files) if policy != "d4" else 16
        tta = ClassificationTTA(default_lm.model, policy, norm=default_lm.normalization)
        assert str(tta.policy.views[0]) == "identity"  # its first view is the plain model's
        res = [tta.predict(x[i : min(i + 50, n)]) for i in range(0, n, 50)]
        probs = torch.cat([r.probs for r in res])
        plain = torch.cat([r.view_logits[:, 0] for r in res])  # (n, C)
        acc[policy] = (probs.argmax(-1) == labels[:n]).float().mean().item()
        acc[f"plain_{n}"] = (plain.argmax(-1) == labels[:n]).float().mean().item()
    k = len(res[0].probs)  # d4's first micro-batch: its view 0 is the plain model's answer
    assert acc_at(default_lm, x[:k], labels[:k]) == pytest.approx(acc_at_logits(res[0].view_logits[:, 0], labels[:k]))
    assert acc["plain_100"] > 0.85  # ~88% on all 500 photos
    assert acc["hflip"] >= acc["plain_100"] - 0.005  # flips help a little, never much worse
    assert acc["d4"] < acc["plain_16"] - 0.03  # upside-down views hurt ImageNet models


def acc_at(lm, x, labels):
    with torch.inference_mode():
        return acc_at_logits(lm.model(x), labels)


def acc_at_logits(logits, labels):
    return (logits.argmax(-1) == labels).float().mean().item()


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
