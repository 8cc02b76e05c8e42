"""Model loading, weights files, class names, preprocessing, image decoding."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

import ttakit
from ttakit import ImageLoadError, ModelLoadError, WeightsError, load_image, load_model
from ttakit.models import map_state_dict_by_order


def test_default_model_is_offline_imagenet(default_lm):
    assert default_lm.name == "tf_efficientnet_lite0"
    assert default_lm.weights.startswith("embedded:")
    assert not default_lm.model.training
    assert default_lm.class_names[282] == "tiger cat"
    cfg = default_lm.data_config
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["std"] == (0.5, 0.5, 0.5)
    assert cfg["interpolation"] == "bicubic" and cfg["crop_pct"] == 0.875


def test_default_model_recognises_the_bundled_cat(default_lm):
    x = ttakit.preprocess([ttakit.example_image_path()], default_lm.transform())
    with torch.inference_mode():
        top5 = default_lm.model(x).topk(5).indices[0].tolist()
    assert 282 in top5 and 281 in top5  # tiger cat and tabby


def test_preprocessing_equals_timm_create_transform(default_lm):
    img = load_image(ttakit.example_image_path())
    ref = timm.data.create_transform(**timm.data.resolve_model_data_config(default_lm.model))(img)
    assert torch.equal(default_lm.transform()(img), ref)
    assert ref.shape == (3, 224, 224)


def test_map_by_order_checks_every_shape():
    a = {"x": torch.zeros(2, 3), "y": torch.zeros(4)}
    b = {"p": torch.zeros(2, 3), "q": torch.zeros(5)}
    with pytest.raises(WeightsError, match=r"y \(4,\) vs q \(5,\)"):
        map_state_dict_by_order(a, b)
    with pytest.raises(WeightsError, match="2 tensors for a model with 1"):
        map_state_dict_by_order(a, {"p": torch.zeros(2, 3)})


@pytest.mark.parametrize("fmt", ["pth_plain", "pth_wrapped", "pt_module_prefix", "safetensors"])
def test_local_weights_files(tmp_path, fmt):
    torch.manual_seed(3)
    src = timm.create_model("test_resnet", num_classes=7)
    sd = src.state_dict()
    if fmt == "pth_plain":
        path = tmp_path / "w.pth"
        torch.save(sd, path)
    elif fmt == "pth_wrapped":
        path = tmp_path / "w.pth"
        torch.save({"state_dict": sd, "epoch": 3}, path)
    elif fmt == "pt_module_prefix":
        path = tmp_path / "w.pt"
        torch.save({"model": {f"module.{k}": v for k, v in sd.items()}}, path)
    else:
        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    lm = load_model("test_resnet", weights=path)
    assert lm.num_classes == 7 and lm.class_names[0] == "class_0"  # classifier size read from the file
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(lm.model(x), src.eval()(x))


def test_weights_that_do_not_fit(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(timm.create_model("test_resnet").state_dict(), path)
    with pytest.raises(WeightsError, match="weights do not fit the model"):
        load_model("test_efficientnet", weights=path)
    bad = tmp_path / "junk.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read weights"):
        load_model("test_resnet", weights=bad)
    with pytest.raises(WeightsError, match="not found"):
        load_model("test_resnet", weights=tmp_path / "nope.pth")


def test_unknown_model_suggests_close_names():
    with pytest.raises(ModelLoadError, match="did you mean.*tf_efficientnet_lite0"):
        load_model("tf_efficientnet_lite")


def test_hub_weights_offline_fail_with_one_line(monkeypatch):
    import huggingface_hub.constants

    # What HF_HUB_OFFLINE=1 does, without waiting for this machine's closed network to time out.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsError, match=r"test_resnet: .*`weights=FILE`.*`weights='random'`"):
        load_model("test_resnet", weights="hub")


def test_labels_files(tmp_path):
    txt = tmp_path / "labels.txt"
    txt.write_text("\n".join(f"thing {i}" for i in range(10)) + "\n\n")
    assert load_model("test_resnet", weights="random", num_classes=10, labels=txt).class_names[9] == "thing 9"
    js = tmp_path / "labels.json"
    js.write_text(json.dumps([f"c{i}" for i in range(10)]))
    assert load_model("test_resnet", weights="random", num_classes=10, labels=js).class_names[0] == "c0"
    js.write_text("__import__('os').system('echo pwned')")
    with pytest.raises(ModelLoadError, match="labels JSON is not valid"):
        load_model("test_resnet", weights="random", num_classes=10, labels=js)
    with pytest.raises(ModelLoadError, match="3 class names for a model with 10 outputs"):
        load_model("test_resnet", weights="random", num_classes=10, labels=["a", "b", "c"])


# --------------------------------------------------------------------------- images
def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


@pytest.mark.parametrize("mode", ["L", "RGBA", "LA", "CMYK", "P", "P_transparent", "I;16", "I", "F", "1"])
def test_every_image_mode_becomes_rgb(tmp_path, mode):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8))
    if mode == "P_transparent":
        img = rgb.convert("P")
        img.info["transparency"] = 0
        path = _save(img, tmp_path / "x.png", transparency=0)
    elif mode == "I;16":
        arr = (np.random.default_rng(0).integers(0, 65535, (20, 30))).astype(np.uint16)
        path = _save(Image.fromarray(arr), tmp_path / "x.png")
        assert Image.open(path).mode.startswith("I;16")
    elif mode in ("I", "F"):
        path = _save(rgb.convert("L").convert(mode), tmp_path / "x.tiff")
    else:
        img = rgb.convert(mode)
        path = _save(img, tmp_path / ("x.jpg" if mode == "CMYK" else "x.png"))
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (30, 20)
    assert np.asarray(out).std() > 0  # content kept, not a flat conversion


def test_sixteen_bit_grey_keeps_its_range(tmp_path):
    arr = np.full((4, 4), 65535, dtype=np.uint16)
    arr[0, 0] = 0
    out = np.asarray(load_image(_save(Image.fromarray(arr), tmp_path / "g.png")))
    assert out[1, 1, 0] == 255 and out[0, 0, 0] == 0


def test_exif_orientation_is_honoured(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    path = _save(img, tmp_path / "o.jpg", exif=exif)
    assert load_image(path).size == (20, 40)


def test_bad_image_files(tmp_path):
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "missing.jpg")
    text = tmp_path / "notes.jpg"
    text.write_text("hello")
    with pytest.raises(ImageLoadError, match="not an image file"):
        load_image(text)
    data = ttakit.example_image_path().read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="truncated"):
        load_image(cut)


def test_decompression_bomb_guard_stays_on(tmp_path, monkeypatch):
    path = _save(Image.new("RGB", (300, 300)), tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # bombs are > 2x this
    with pytest.raises(ImageLoadError, match="decompression-bomb"):
        load_image(path)


def test_random_weights_only_when_asked_for_and_then_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lm = load_model("test_resnet", weights="random")
    assert lm.weights == "random"
