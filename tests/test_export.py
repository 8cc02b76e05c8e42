"""``export_tta`` / ``ttakit export``: one ONNX graph per policy, answering as the TTA wrappers do
in ONNX Runtime and OpenVINO; refusals say why."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image, ImageOps

import ttakit
from ttakit.cli import main
from ttakit.errors import ConfigError, PolicyError, ShapeError
from ttakit.policy import Policy, parse_policy
from ttakit import export_tta

try:  # OpenVINO is checked where it is installed; the onnxruntime tests run without it
    import openvino as ov
except ImportError:
    ov = None

SIZE = (64, 64)
# Every exportable transform in one policy, with weights and a temperature.
ALL_VIEWS = "identity + hflip + rot90(1,2,3) + ten_crop(0.875) + scale(0.9,1.1) + resize(0.875,1.25) + " \
            "shift(8:-4) + rotate(10) + brightness(0.9) + contrast(1.2) + vflip|rot90=1"


def _ort():
    """ONNX Runtime: the tests that run a graph need it (they alone skip without it)."""
    return pytest.importorskip("onnxruntime")


def runtimes(path, input_name: str = "images") -> dict:
    """The graph loaded in both runtimes (OpenVINO where installed): ``{name: images (or photos) -> probs}``."""
    ort = _ort()
    so = ort.SessionOptions()
    so.log_severity_level = 3
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    arr = lambda x: np.asarray(x)  # noqa: E731 - torch tensors and numpy photos alike
    out = {"onnxruntime": lambda x: session.run(None, {input_name: arr(x)})[0]}
    if ov is not None:
        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        out["openvino"] = lambda x: np.asarray(compiled(arr(x))[0])
    return out


def run_onnx(path, x: torch.Tensor) -> dict[str, np.ndarray]:
    """The graph's output in both runtimes."""
    return {name: run(x) for name, run in runtimes(path).items()}


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("test_resnet", pretrained=False, num_classes=10).eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(3, 3, *SIZE, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def all_views_policy() -> Policy:
    views = parse_policy(ALL_VIEWS)
    weights = tuple(float(1 + i % 3) for i in range(len(views)))
    return Policy(views, weights=weights, temperature=1.5)


def test_every_transform_matches_classification_tta_in_both_runtimes(tiny, x, all_views_policy, tmp_path):
    _ort()  # exporting checks the graph in ONNX Runtime
    # tsharpen: the merge whose log-sum-exp needed an exportable stand-in (OpenVINO misreads ReduceLogSumExp).
    path = export_tta(tiny, all_views_policy, tmp_path / "g.onnx", merge="tsharpen", input_size=SIZE)
    ref = ttakit.ClassificationTTA(tiny, all_views_policy, "tsharpen")(x).numpy()
    for runtime, got in run_onnx(path, x).items():
        assert got.shape == (3, 10)
        assert np.abs(got - ref).max() <= 1e-4, runtime


@pytest.mark.parametrize("merge", ["mean", "gmean", "sum", "logit_mean", "max"])
def test_every_merge_and_dynamic_batch(tiny, merge, tmp_path):
    _ort()  # exporting checks the graph in ONNX Runtime
    pol = Policy(parse_policy("hflip*rot90(0,1)"), weights=(1.0, 2.0, 0.5, 1.0), temperature=0.8)
    path = export_tta(tiny, pol, tmp_path / "m.onnx", merge=merge, input_size=SIZE)
    graph = runtimes(path)
    for n in (1, 5):
        xb = torch.randn(n, 3, *SIZE)
        ref = ttakit.ClassificationTTA(tiny, pol, merge)(xb).numpy()
        for runtime, run in graph.items():
            assert np.abs(run(xb) - ref).max() <= 1e-4, (runtime, merge, n)


def test_views_of_one_size_share_one_model_call(tiny, tmp_path):
    _ort()  # exporting checks the graph in ONNX Runtime
    import onnx

    path = export_tta(tiny, "d4", tmp_path / "d4.onnx", input_size=SIZE, check=False)
    convs = sum(n.op_type == "Conv" for n in onnx.load(str(path)).graph.node)
    plain = export_tta(tiny, "none", tmp_path / "plain.onnx", input_size=SIZE, check=False)
    assert convs == sum(n.op_type == "Conv" for n in onnx.load(str(plain)).graph.node)  # the model once, not 8 times
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["ttakit.policy"])[:2] == ["identity", "rot90=1"] and meta["ttakit.merge"] == "mean"


def test_segmentation_graph_matches_segmentation_tta(x, tmp_path):
    _ort()  # exporting checks the graph in ONNX Runtime
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(6, 4, 3, stride=2, padding=1)).eval()
    cfg = {"input_size": (3, 64, 48), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    xs = torch.randn(2, 3, 64, 48)
    pol = Policy(parse_policy("d4"), weights=(1, 2, 1, 1, 3, 1, 1, 1))
    path = export_tta(net, pol, tmp_path / "seg.onnx", task="segment", data_config=cfg)
    ref = ttakit.SegmentationTTA(net, pol, data_config=cfg)(xs).numpy()  # mean of softmax maps
    for runtime, got in run_onnx(path, xs).items():
        assert got.shape == (2, 4, 32, 24)
        assert np.abs(got - ref).max() <= 1e-4, runtime


def test_refusals_say_why(tiny, tmp_path):
    _ort()  # export_tta looks for ONNX Runtime (its check) before it reads the policy
    out = tmp_path / "x.onnx"
    with pytest.raises(PolicyError, match="input stage 'input=256:1'.*preprocessed images"):
        export_tta(tiny, "identity + input=256:1.0", out, input_size=SIZE)
    with pytest.raises(PolicyError, match="merge 'vote' cannot be exported"):
        export_tta(tiny, "hflip", out, merge="vote", input_size=SIZE)
    with pytest.raises(PolicyError, match="flips and quarter turns only.*scale=1.1"):
        export_tta(tiny, "hflip*scale(1,1.1)", out, task="segment", input_size=SIZE)
    with pytest.raises(ShapeError, match="`task='segment'`"):
        export_tta(tiny, "hflip", out, task="segment", input_size=SIZE)
    assert not out.exists()


# ----------------------------------------------------------------- photo graphs
PHOTO_CFG = {"input_size": (3, *SIZE), "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406),
             "std": (0.229, 0.224, 0.225), "crop_pct": 0.875, "crop_mode": "center"}
# A searched-style policy: the plain view, input stages (whole square, higher resolution, a corner)
# and tensor views on them, weighted, with a temperature.
PHOTO_POLICY = "identity + hflip + input=64:1 + input=72:1|hflip + input=64:0.9:tl|rot90=1 + input=80:1|scale=1.1"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    """The bundled cat at odd sizes and aspect ratios (upsampled, thin, tall, square, tiny), as PNG."""
    cat = ttakit.load_image(ttakit.example_image_path())
    folder = tmp_path_factory.mktemp("photos")
    out = []
    for w, h in [(500, 375), (97, 300), (301, 77), (120, 120), (33, 20), (1000, 751)]:
        out.append(folder / f"cat_{w}x{h}.png")
        cat.resize((w, h), Image.BILINEAR).save(out[-1])
    return out


def test_photo_graph_matches_ttakit_on_photos_of_any_size_in_both_runtimes(tiny, photos, tmp_path):
    _ort()  # exporting checks the graph in ONNX Runtime
    pol = Policy(parse_policy(PHOTO_POLICY), weights=(2, 1, 1, 1, 0.5, 1), temperature=1.5)
    path = export_tta(tiny, pol, tmp_path / "photo.onnx", merge="gmean", input="photo", data_config=PHOTO_CFG)
    ref = ttakit.ClassificationTTA(tiny, pol, "gmean", data_config=PHOTO_CFG)(photos).numpy()  # PIL rendering
    graph = runtimes(path, "photos")
    for i, photo in enumerate(photos):
        pixels = np.asarray(ttakit.load_image(photo))[None]  # (1, H, W, 3) uint8
        for runtime, run in graph.items():
            got = run(pixels)
            assert got.shape == (1, 10) and np.abs(got[0] - ref[i]).max() <= 1e-3, (runtime, photo.name)
    two = np.stack([np.asarray(ttakit.load_image(photos[0]))] * 2)
    assert graph["onnxruntime"](two).shape == (2, 10)  # dynamic batch


def test_photo_graph_without_input_stages_is_the_tensor_graph_after_preprocessing(tiny, photos, tmp_path):
    _ort()  # exporting checks the graph in ONNX Runtime
    path = export_tta(tiny, "hflip*rot90(0,1)", tmp_path / "p.onnx", input="photo", data_config=PHOTO_CFG)
    ref = ttakit.ClassificationTTA(tiny, "hflip*rot90(0,1)", data_config=PHOTO_CFG)(photos).numpy()
    for i, photo in enumerate(photos):
        pixels = np.asarray(ttakit.load_image(photo))[None]
        for runtime, run in runtimes(path, "photos").items():
            assert np.abs(run(pixels)[0] - ref[i]).max() <= 1e-4, (runtime, photo.name)


def test_photo_graph_metadata_and_refusals(tiny, tmp_path):
    _ort()  # exporting checks the graph in ONNX Runtime
    import onnx

    path = export_tta(tiny, "none+input=72:1|hflip", tmp_path / "m.onnx", merge="sum", input="photo",
                      data_config=PHOTO_CFG)
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["ttakit.input"] == "photo" and json.loads(meta["ttakit.policy"]) == ["identity", "input=72:1|hflip"]
    stages = json.loads(meta["ttakit.preprocessing"])["stages"]
    assert [(s["name"], s["short_side"], s["size"]) for s in stages.values()] == [("identity", 73, 64),
                                                                                ("input=72:1", 72, 72)]
    assert [i.name for i in proto.graph.input] == ["photos"]
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    out = tmp_path / "x.onnx"
    with pytest.raises(ConfigError, match="bicubic, bilinear, not 'nearest'"):
        export_tta(tiny, "hflip", out, input="photo", data_config={**PHOTO_CFG, "interpolation": "nearest"})
    with pytest.raises(ConfigError, match="centre-cropped.*`input='tensor'`"):
        export_tta(tiny, "hflip", out, input="photo", data_config={**PHOTO_CFG, "crop_mode": "squash"})
    with pytest.raises(PolicyError, match="photo corrections have no ONNX form.*autocontrast"):
        export_tta(tiny, "identity + input=72:1|autocontrast", out, input="photo", data_config=PHOTO_CFG)
    with pytest.raises(ConfigError, match="input must be one of tensor, photo"):
        export_tta(tiny, "hflip", out, input="jpeg", data_config=PHOTO_CFG)
    assert not out.exists()


def test_serve_example_runs_without_torch(tiny, photos, tmp_path):
    _ort()  # the example serves with ONNX Runtime
    path = export_tta(tiny, "none+input=72:1|hflip", tmp_path / "s.onnx", merge="sum", input="photo",
                      data_config=PHOTO_CFG, metadata={"ttakit.class_names": [f"class{i}" for i in range(10)]})
    example = Path(__file__).parents[1] / "examples" / "serve_onnx.py"
    code = (f"import runpy, sys; sys.argv = ['serve', {str(path)!r}, {str(photos[1])!r}, '--json', '--topk', '10']; "
            f"runpy.run_path({str(example)!r}, run_name='__main__')\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'ttakit', 'torchvision', 'timm')]\n"
            "assert not bad, bad")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    served = {t["class"]: t["prob"] for t in doc["images"][0]["top"]}
    ref = ttakit.ClassificationTTA(tiny, "none+input=72:1|hflip", "sum", data_config=PHOTO_CFG)([photos[1]])[0]
    assert max(abs(served[f"class{i}"] - float(ref[i])) for i in range(10)) <= 1e-3


def test_cli_export_writes_one_graph_with_its_metadata(tmp_path, capsys):
    ort = _ort()
    out = tmp_path / "hflip.onnx"
    code = main(["export", "--model", "test_resnet", "--weights", "random", "--tta", "hflip", "--merge", "gmean", "--input-size", "64",
                 "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "wrote" in captured.out and "(N, 3, 64, 64)" in captured.out and "merge gmean" in captured.out
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    assert len(json.loads(meta["ttakit.class_names"])) == 1000 and meta["ttakit.merge"] == "gmean"
    assert json.loads(meta["ttakit.data_config"])["input_size"] == [3, 64, 64]
    probs = sess.run(["probs"], {"images": np.zeros((2, 3, 64, 64), np.float32)})[0]
    assert probs.shape == (2, 1000) and np.allclose(probs.sum(-1), 1, atol=1e-5)
    code = main(["export", "--model", "test_resnet", "--weights", "random", "--tta", "input=256:1.0", "--out",
                 str(tmp_path / "y.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("ttakit: error: ") and err.count("\n") == 1 and "preprocessed images" in err
    code = main(["export", "--model", "test_resnet", "--weights", "random", "--tta", "input=72:1.0|hflip", "--input-size", "64",
                 "--input", "photo", "--out", str(tmp_path / "p.onnx")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "photos (N, H, W, 3) uint8" in captured.out and "input=72:1" in captured.out
    meta = ort.InferenceSession(str(tmp_path / "p.onnx")).get_modelmeta().custom_metadata_map
    assert meta["ttakit.input"] == "photo" and meta["ttakit.model"] == "test_resnet"


def _numpy_preprocess(path, cfg) -> np.ndarray:
    """The README's serving preprocessing: PIL and numpy only."""
    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}
    img = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    size = cfg["input_size"][-1]
    short = math.floor(size / cfg["crop_pct"])
    w, h = img.size
    new = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    img = img.resize(new, resample[cfg["interpolation"]])
    left, top = int(round((new[0] - size) / 2.0)), int(round((new[1] - size) / 2.0))
    img = img.crop((left, top, left + size, top + size))
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = (arr - np.array(cfg["mean"], np.float32)) / np.array(cfg["std"], np.float32)
    return arr.transpose(2, 0, 1)


@pytest.mark.slow
def test_default_model_graph_on_photos(sample_dir, default_lm, tmp_path):
    _ort()  # exporting checks the graph in ONNX Runtime
    lm = default_lm
    files = sorted(sample_dir.glob("*.JPEG"))[:4]
    x = ttakit.preprocess(files, lm.transform())
    served = np.stack([_numpy_preprocess(f, lm.data_config) for f in files])
    assert np.abs(served - x.numpy()).max() < 1e-5  # the README's numpy preprocessing is the model's
    path = export_tta(lm.model, "hflip", tmp_path / "hflip.onnx", data_config=lm.data_config)
    ref = ttakit.ClassificationTTA(lm.model, "hflip", norm=lm.normalization, data_config=lm.data_config)(x).numpy()
    for runtime, got in run_onnx(path, torch.from_numpy(served)).items():
        assert np.abs(got - ref).max() <= 1e-4, runtime
        assert (got.argmax(-1) == ref.argmax(-1)).all()


@pytest.mark.slow
def test_default_model_photo_graph_on_real_photos(sample_dir, default_lm, tmp_path):
    _ort()  # exporting checks the graph in ONNX Runtime
    lm = default_lm
    policy = "identity + input=256:1|hflip + input=224:0.875:tl"
    files = sorted(sample_dir.glob("*.JPEG"))[:4]  # the 500-photo figure comes from bench_photo_graph.py
    odd = tmp_path / "odd_150x400.png"
    ttakit.load_image(files[0]).resize((150, 400), Image.BICUBIC).save(odd)
    files.append(odd)
    path = export_tta(lm.model, policy, tmp_path / "photo.onnx", input="photo", data_config=lm.data_config)
    ref = ttakit.ClassificationTTA(lm.model, policy, data_config=lm.data_config)(files).numpy()
    for runtime, run in runtimes(path, "photos").items():
        for i, f in enumerate(files):
            got = run(np.asarray(ttakit.load_image(f))[None])[0]
            assert got.argmax() == ref[i].argmax() and np.abs(got - ref[i]).max() <= 0.02, (runtime, f.name)
