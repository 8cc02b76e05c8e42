"""The engine: identity equals the plain model, parity with ttach, micro-batching, adaptive."""

from __future__ import annotations

import pytest
import torch
import ttach

from ttakit import ClassificationTTA, RunConfig, create_policy
from ttakit.runtime.loop import run_views
from ttakit.transforms import Normalization


def test_identity_policy_reproduces_plain_model_exactly(tiny_model, images):
    tta = ClassificationTTA(tiny_model, "none", run_config=RunConfig(micro_batch=64, channels_last=False))
    with torch.inference_mode():
        plain = torch.softmax(tiny_model(images), dim=-1)
    assert torch.equal(tta(images), plain)
    assert torch.equal(tta.forward_views(images)[:, 0], tiny_model(images))


def test_identity_policy_with_default_run_config(default_lm):
    x = torch.randn(3, 3, 224, 224)
    tta = ClassificationTTA(default_lm.model, "none", norm=default_lm.normalization)
    with torch.inference_mode():
        xs = x.contiguous(memory_format=torch.channels_last)
        plain = torch.cat([torch.softmax(default_lm.model(xs[i : i + 1]), -1) for i in range(3)])
    got = ClassificationTTA(default_lm.model, "none", run_config=RunConfig(1, True))(x)
    assert torch.equal(got, plain)  # same micro-batch and memory format: bit-identical
    torch.testing.assert_close(tta(x), plain, atol=1e-5, rtol=0)  # other batching: rounding only


@pytest.mark.parametrize("micro_batch", [1, 3, 8, 100])
def test_micro_batch_does_not_change_results(tiny_model, images, micro_batch):
    ref = ClassificationTTA(tiny_model, "d4+five_crop(48)", run_config=RunConfig(1000, False)).forward_views(images)
    got = ClassificationTTA(tiny_model, "d4+five_crop(48)", run_config=RunConfig(micro_batch, True)).forward_views(images)
    assert got.shape == (4, 13, 10)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_run_views_streams_bounded_batches(images):
    seen = []

    def model(x):
        seen.append(x.shape[0])
        return x.mean(dim=(2, 3))

    views = create_policy("d4").views
    outs = run_views(model, images, views, Normalization(), RunConfig(5, False))
    assert max(seen) <= 5 and sum(seen) == len(images) * len(views)
    assert len(outs) == 8 and all(o.shape == (4, 3) for o in outs)
    torch.testing.assert_close(outs[0], images.mean(dim=(2, 3)))


class _Softmax(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return torch.softmax(self.model(x), dim=-1)


@pytest.mark.parametrize(
    "ours,theirs",
    [
        ("hflip", lambda: ttach.aliases.hflip_transform()),
        ("d4", lambda: ttach.aliases.d4_transform()),
        ("five_crop(48x56)", lambda: ttach.aliases.five_crop_transform(48, 56)),
    ],
)
def test_parity_with_ttach(tiny_model, ours, theirs):
    """Same views, same batch: ttach's mean of probabilities equals ttakit's mean merge."""
    x = torch.randn(4, 3, 64, 80)
    wrapper = ttach.ClassificationTTAWrapper(_Softmax(tiny_model), theirs(), merge_mode="mean")
    with torch.no_grad():
        expected = wrapper(x)
    got = ClassificationTTA(tiny_model, ours, run_config=RunConfig(64, False))(x)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_adaptive_runs_views_only_on_uncertain_inputs(tiny_model, images):
    full = ClassificationTTA(tiny_model, "d4", run_config=RunConfig(64, False))
    plain = torch.softmax(tiny_model(images), -1).detach()
    conf = plain.max(-1).values
    thr = float(conf.median())
    ada = ClassificationTTA(tiny_model, "d4", run_config=RunConfig(64, False), adaptive=thr)
    res = ada.predict(images)
    uncertain = conf < thr
    assert torch.equal(res.augmented, uncertain)
    assert res.view_forwards == 4 + int(uncertain.sum()) * 7
    torch.testing.assert_close(res.probs[~uncertain], plain[~uncertain])
    torch.testing.assert_close(res.probs[uncertain], full(images)[uncertain], atol=1e-6, rtol=1e-5)
    # Threshold 0: nothing is augmented; threshold above 1: everything is.
    assert ClassificationTTA(tiny_model, "d4", adaptive=0.0).predict(images).view_forwards == 4
    torch.testing.assert_close(ClassificationTTA(tiny_model, "d4", adaptive=1.01)(images), full(images), atol=1e-5, rtol=1e-5)


def test_policy_weights_and_merge_are_used(tiny_model, images):
    from ttakit.policy import Policy

    views = create_policy("hflip").views
    only_flip = Policy(views, weights=(0.0, 1.0), merge="gmean")
    tta = ClassificationTTA(tiny_model, only_flip, run_config=RunConfig(64, False))
    assert tta.merge_name == "gmean"
    torch.testing.assert_close(tta(images), torch.softmax(tiny_model(images.flip(-1)), -1).detach(), atol=1e-6, rtol=1e-5)


def test_tune_run_config_measures_once_and_caches(tiny_model, tmp_path, monkeypatch):
    import json

    from ttakit.runtime.config import tune_run_config

    monkeypatch.setenv("TTAKIT_CACHE", str(tmp_path))
    cfg = tune_run_config(tiny_model, (32, 32), candidates=(1, 2))
    assert cfg.micro_batch in (1, 2) and isinstance(cfg.channels_last, bool)
    table = json.loads((tmp_path / "run_config.json").read_text())
    assert len(table) == 1
    key = next(iter(table))
    table[key] = {"micro_batch": 7, "channels_last": False}  # the cache is what a second call returns
    (tmp_path / "run_config.json").write_text(json.dumps(table))
    assert tune_run_config(tiny_model, (32, 32), candidates=(1, 2)) == RunConfig(7, False)
    assert tiny_model.conv1[0].weight.is_contiguous()  # the model's memory format is restored


def test_adaptive_threshold_from_the_policy_file(tiny_model, images, tmp_path):
    from ttakit.policy import Policy, save_policy

    pol = Policy(create_policy("d4").views, merge="mean", meta={"adaptive": 0.0})
    path = save_policy(pol, tmp_path / "p.json")
    tta = ClassificationTTA(tiny_model, str(path), run_config=RunConfig(64, False))
    assert tta.adaptive == 0.0 and tta.predict(images).view_forwards == len(images)
    assert ClassificationTTA(tiny_model, str(path), adaptive=1.01).predict(images).view_forwards == len(images) * 8


def test_bf16_autocast_on_cpu_keeps_the_ranking(tiny_model, images):
    ref = ClassificationTTA(tiny_model, "hflip", run_config=RunConfig(8, False))(images)
    got = ClassificationTTA(tiny_model, "hflip", run_config=RunConfig(8, False, torch.bfloat16))(images)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    torch.testing.assert_close(got, ref, atol=0.05, rtol=0)


def test_progress_bar_shows_rate_on_a_terminal_and_nothing_elsewhere(monkeypatch):
    import io
    import sys

    from ttakit.cli.common import progress_bar

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    with progress_bar(100, "evaluate", quiet=False) as update:
        update(40)
    assert "40/100" in term.getvalue() and "img/s" in term.getvalue()
    plain = io.StringIO()  # not a terminal: silent
    monkeypatch.setattr(sys, "stderr", plain)
    with progress_bar(100, "evaluate", quiet=False) as update:
        update(10)
    assert plain.getvalue() == ""
