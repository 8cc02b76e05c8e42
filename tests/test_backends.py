"""Backends: ONNX Runtime and OpenVINO answer as torch does, exports are cached across
processes, missing packages and unsupported precisions fail with what to do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch

import ttakit
from ttakit.errors import BackendError, ConfigError, UnknownNameError
from ttakit.runtime.backends import BACKENDS, TorchBackend, create_backend
from ttakit.runtime.onnx_cache import CachedExport, weights_digest
from ttakit.runtime.config import tune_run_config
from ttakit.runtime.precision import CPU_PRECISIONS_ENV, PRECISIONS, ParityFigures, cpu_precisions, parity, parity_inputs

SIZE = (64, 64)
RUNTIMES = ("onnxruntime", "openvino")


def _needs(*runtimes: str) -> None:
    """Skip this test where a runtime it runs is not installed (the others run without them)."""
    for name in runtimes:
        pytest.importorskip(name)


def _tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("test_resnet", pretrained=False, num_classes=10).eval()


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A fresh ttakit cache for this module (exports land in it)."""
    root = tmp_path_factory.mktemp("cache")
    old = os.environ.get("TTAKIT_CACHE")
    os.environ["TTAKIT_CACHE"] = str(root)
    yield root
    if old is None:
        os.environ.pop("TTAKIT_CACHE", None)
    else:
        os.environ["TTAKIT_CACHE"] = old


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    return _tiny()


@pytest.fixture(scope="module")
def backends(cache, tiny) -> dict:
    _needs(*RUNTIMES)
    return {name: create_backend(name, tiny, input_size=SIZE, key="test_resnet") for name in RUNTIMES}


@pytest.mark.parametrize("name", RUNTIMES)
def test_backend_matches_torch_for_channels_last_and_other_sizes(backends, tiny, name):
    be = backends[name]
    assert len(be.exported) == 1 and be.exported[0].parent.name == "backends"  # exported once, into the cache
    for shape in [(3, 3, 64, 64), (2, 3, 56, 72), (1, 3, 96, 48)]:
        x = torch.randn(*shape).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            ref = tiny(x)
            out = be(x)
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == ref.shape
        assert (out - ref).abs().max() < 1e-4


def test_second_process_reuses_the_cached_export(backends, cache):
    path = backends["onnxruntime"].exported[0]
    stamp = path.stat().st_mtime_ns
    code = textwrap.dedent(f"""
        import timm, torch
        from ttakit.runtime.backends import create_backend
        torch.manual_seed(0)
        net = timm.create_model("test_resnet", pretrained=False, num_classes=10).eval()
        be = create_backend("onnxruntime", net, input_size={SIZE}, key="test_resnet")
        print(len(be.exported), float(be(torch.zeros(1, 3, 64, 64)).abs().sum()))
    """)
    env = {**os.environ, "TTAKIT_CACHE": str(cache)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    n_exported, _ = res.stdout.split()
    assert n_exported == "0"  # found the file: no export in the second process
    assert path.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in (cache / "backends").glob("*.onnx")) == sorted(
        p.name for b in backends.values() for p in b.exported)


def test_other_weights_are_another_export(backends, cache):
    net = _tiny()
    with torch.no_grad():
        net.fc.bias += 1.0
    assert weights_digest(net) != weights_digest(_tiny())
    be = create_backend("onnxruntime", net, input_size=SIZE, key="test_resnet")
    assert len(be.exported) == 1 and be.exported[0] != backends["onnxruntime"].exported[0]
    x = torch.randn(2, 3, *SIZE)
    with torch.inference_mode():
        assert (be(x) - net(x)).abs().max() < 1e-4


def test_size_specialised_model_is_exported_per_size(cache):
    _needs("onnxruntime")
    class FixedPool(torch.nn.Module):  # its trace bakes the input size into the pooling kernel
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            return torch.nn.functional.avg_pool2d(y, (int(y.shape[-2]), int(y.shape[-1]))).flatten(1)

    net = FixedPool().eval()
    be = create_backend("onnxruntime", net, input_size=SIZE, key="fixed-pool", cache=False)
    for shape in [(2, 3, 64, 64), (2, 3, 48, 80)]:
        x = torch.randn(*shape)
        with torch.inference_mode():
            assert (be(x) - net(x)).abs().max() < 1e-5
    # The first file (checked at 64x64 only) serves that size; 48x80 got its own export.
    assert len(be.exported) == 2 and be.exported[1].name.endswith("-48x80.onnx")


def test_wrappers_run_the_backend_without_registering_it(backends, tiny):
    x = torch.randn(3, 3, *SIZE)
    ref = ttakit.ClassificationTTA(tiny, "d4", merge="gmean")(x)
    for name in RUNTIMES:
        tta = ttakit.ClassificationTTA(tiny, "d4", merge="gmean", backend=backends[name])
        assert (tta(x) - ref).abs().max() < 1e-5
        assert set(tta.state_dict()) == {f"model.{k}" for k in tiny.state_dict()}
        assert all("backend" not in n for n, _ in tta.named_modules())
        assert tta.with_run_config(micro_batch=16).backend is tta.backend
    seg_net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(),
                                  torch.nn.Conv2d(6, 4, 3, stride=2, padding=1)).eval()
    cfg = {"input_size": (3, *SIZE), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    seg_ref = ttakit.SegmentationTTA(seg_net, "flip*scale(1,1.25)", data_config=cfg)(x)
    seg = ttakit.SegmentationTTA(seg_net, "flip*scale(1,1.25)", data_config=cfg, backend="openvino")
    assert seg.backend.name == "openvino"
    assert (seg(x) - seg_ref).abs().max() < 1e-5


def test_graph_backends_default_to_nchw_batches(backends, tiny):
    # The runtimes take NCHW arrays: a channels-last batch would only be copied back.
    for name in RUNTIMES:
        assert backends[name].run_config("cpu").channels_last is False
        assert ttakit.ClassificationTTA(tiny, "hflip", backend=backends[name]).run_config.channels_last is False
    assert ttakit.ClassificationTTA(tiny, "hflip").run_config.channels_last is True  # torch keeps its default
    assert backends["onnxruntime"].spinning is False


def test_tune_run_config_takes_a_backend(backends):
    cfg = tune_run_config(backends["onnxruntime"], SIZE, candidates=(2, 4), cache=False)
    assert cfg.micro_batch in (2, 4) and cfg.channels_last is False


def test_names_precisions_and_missing_packages_fail_with_what_to_do(tiny, monkeypatch):
    _needs(*RUNTIMES)
    assert list(BACKENDS) == ["torch", "onnxruntime", "openvino"]
    with pytest.raises(UnknownNameError, match="unknown backend 'tensorflow'.*; choose one of torch, onnxruntime, openvino"):
        create_backend("tensorflow", tiny, input_size=SIZE, key="t")
    with pytest.raises(ConfigError, match="precision must be one of fp32, bf16, fp16, int8"):
        create_backend("onnxruntime", tiny, input_size=SIZE, key="t", precision="int4")
    with pytest.raises(BackendError, match="onnxruntime backend cannot run bf16: ONNX Runtime's CPU provider has no bf16"):
        create_backend("onnxruntime", tiny, input_size=SIZE, key="t", precision="bf16")
    with pytest.raises(BackendError, match="torch backend cannot run int8: use backend onnxruntime or openvino"):
        create_backend("torch", tiny, input_size=SIZE, key="t", precision="int8")
    if "int8" in cpu_precisions():
        with pytest.raises(ConfigError, match="int8 needs calibration images"):
            create_backend("openvino", tiny, input_size=SIZE, key="t", precision="int8")
    with pytest.raises(BackendError, match="no CUDAExecutionProvider"):
        create_backend("onnxruntime", tiny, input_size=SIZE, key="t", providers=("cuda",))
    with pytest.raises(BackendError, match="openvino backend runs on the CPU"):
        create_backend("openvino", tiny, input_size=SIZE, key="t", device="cuda")
    assert isinstance(create_backend("torch", tiny, input_size=SIZE, key="t"), TorchBackend)
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(BackendError, match=r"needs the onnx package: pip install 'ttakit\[onnx\]'"):
        create_backend("openvino", tiny, input_size=SIZE, key="t", cache=False)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(BackendError, match=r"pip install 'ttakit\[onnx\]'"):
        create_backend("onnxruntime", tiny, input_size=SIZE, key="t")
    with pytest.raises(BackendError, match=r"pip install 'ttakit\[openvino\]'"):
        ttakit.ClassificationTTA(tiny, "hflip", backend="openvino")


def _calibration(n: int = 16) -> torch.Tensor:
    """Real-looking model inputs: the bundled photo's views, and the same flipped."""
    x = parity_inputs(SIZE, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    return torch.cat([x, x.flip(-1)])[:n]


def _forced(monkeypatch, have: bool, precision: str) -> None:
    """Tell ttakit which precisions this CPU has ($TTAKIT_CPU_PRECISIONS narrows the real answer:
    it can take a precision away, never add one the CPU lacks)."""
    if have:
        monkeypatch.delenv(CPU_PRECISIONS_ENV, raising=False)
        if precision not in cpu_precisions():
            pytest.skip(f"this CPU has no {precision}: the absent side is checked by the other parameter")
    else:
        monkeypatch.setenv(CPU_PRECISIONS_ENV, "fp32")


@pytest.mark.parametrize("have", [True, False], ids=["cpu-has-it", "cpu-lacks-it"])
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_openvino_reduced_precision_runs_and_agrees_or_is_refused(tiny, cache, monkeypatch, capsys, have, precision):
    _needs("openvino")
    _forced(monkeypatch, have, precision)
    if not have:
        with pytest.raises(BackendError, match=f"this CPU has no native {precision} for openvino .*use precision fp32") as e:
            create_backend("openvino", tiny, input_size=SIZE, key="test_resnet", precision=precision)
        assert "\n" not in str(e.value)  # one line
        return
    be = create_backend("openvino", tiny, input_size=SIZE, key="test_resnet", precision=precision, verbose=True)
    assert be.label == f"openvino:{precision}" and be.config(precision)["INFERENCE_PRECISION_HINT"] in ("bf16", "f16")
    # Checked against fp32 torch on the bundled photo's views; the figures are printed once and kept.
    assert f"openvino:{precision} checked against fp32 torch: top-1 agreement" in capsys.readouterr().err
    fig, limits = be.check["figures"], PRECISIONS.get(precision)
    assert fig["n"] == 8 and fig["decided_agreement"] >= limits.min_top1_agreement
    assert fig["max_prob_diff"] <= limits.max_prob_diff
    again = create_backend("openvino", tiny, input_size=SIZE, key="test_resnet", precision=precision, verbose=True)
    assert again.check == be.check and capsys.readouterr().err == ""  # the second time: read back, not printed
    x = _calibration(8)
    with torch.inference_mode():
        ref, out = tiny(x), be(x)
    assert 0 < (ref - out).abs().max() < 0.05 * ref.abs().max()  # close to fp32, and really not fp32


@pytest.mark.parametrize("have", [True, False], ids=["cpu-has-it", "cpu-lacks-it"])
@pytest.mark.parametrize("name", RUNTIMES)
def test_int8_calibrated_on_photos_agrees_or_is_refused(tiny, cache, monkeypatch, have, name):
    _needs(name)
    _forced(monkeypatch, have, "int8")
    calibration = _calibration()
    if not have:
        with pytest.raises(BackendError, match=f"this CPU has no native int8 for {name}"):
            create_backend(name, tiny, input_size=SIZE, key="test_resnet", precision="int8", calibration=calibration)
        return
    be = create_backend(name, tiny, input_size=SIZE, key="test_resnet", precision="int8", calibration=calibration)
    files = sorted((cache / "backends").glob(f"*{name}*-int8-*.onnx"))
    assert be.label == f"{name}:int8" and len(files) == 1
    assert be.check["figures"]["n"] == 8 + 8  # the bundled photo's views plus 8 calibration photos
    x = _calibration(8).flip(-2)  # other inputs than the calibration's
    with torch.inference_mode():
        ref, out, out3 = tiny(x), be(x), be(x[:3])
    assert (out[:3] - out3).abs().max() < 1e-4  # the batch does not change an image's answer
    assert 0 < (ref - out).abs().max() < 0.1 * ref.abs().max()
    y = torch.nn.functional.interpolate(x, size=(48, 80), mode="bilinear")  # another size
    with torch.inference_mode():
        assert (tiny(y) - be(y)).abs().max() < 0.15 * tiny(y).abs().max()
    # The same photos again: the quantised file is reused, not made anew.
    stamp = files[0].stat().st_mtime_ns
    create_backend(name, tiny, input_size=SIZE, key="test_resnet", precision="int8", calibration=calibration)
    assert sorted((cache / "backends").glob(f"*{name}*-int8-*.onnx")) == files and files[0].stat().st_mtime_ns == stamp


def test_a_precision_that_misses_its_limits_is_refused_in_one_line_with_its_figures():
    ref = torch.tensor([[3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 1.0]])
    assert parity(ref, ref) == ParityFigures(4, 1.0, 3, 1.0, 0.0, 0.0)
    swapped = ref[:, [1, 0, 2]]  # rows 0 and 1 change class; row 3 is a tie, left out
    fig = parity(ref, swapped, tie=0.05)
    assert (fig.top1_agreement, fig.decided, fig.decided_agreement) == (0.5, 3, pytest.approx(1 / 3))
    with pytest.raises(BackendError) as e:
        PRECISIONS.get("int8").check(fig, "openvino")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("openvino int8 fails its check against fp32 torch (top-1 agreement 33.3% < 80.0%")
    assert "probability difference" in msg and msg.endswith("use precision fp32 for this model")
    with pytest.raises(BackendError, match=r"fp32 fails.*output difference 0.01 > 0.001.*use backend='torch'"):
        PRECISIONS.get("fp32").check(ParityFigures(2, 1.0, 2, 1.0, 0.0, 0.01), "onnxruntime")
    PRECISIONS.get("fp32").check(ParityFigures(2, 1.0, 2, 1.0, 0.0, 0.01), "onnxruntime", tolerance=0.02)  # GPU


def test_torch_backend_bf16_autocasts(tiny):
    out = TorchBackend(tiny, "bf16")(torch.randn(2, 3, *SIZE))
    assert out.dtype == torch.bfloat16


def test_export_check_rejects_a_wrong_runtime_answer(tiny):
    export = CachedExport(tiny, key="test_resnet", input_size=SIZE, tag="test 0", cache=False)

    def broken(path):  # a runtime that answers something else
        return lambda x: [torch.zeros(x.shape[0], 10).numpy() + 1.0]

    with pytest.raises(BackendError, match="differs from torch"):
        export.path_for(SIZE, broken)


@pytest.mark.slow
def test_real_photos_same_answers_as_torch(sample_dir, default_lm, cache):
    _needs(*RUNTIMES)
    lm = default_lm
    files = sorted(sample_dir.glob("*.JPEG"))[:6]  # the 500-photo figure comes from bench_backends.py
    x = ttakit.preprocess(files, lm.transform())
    # hflip and d4: one input size (other sizes through the backends: the tiny-model tests above)
    policies = {p: ttakit.create_policy(p).views for p in ("hflip", "d4")}
    union = list(dict.fromkeys(v for views in policies.values() for v in views))  # d4 holds hflip's views
    logits = {}
    for name in ("torch", *RUNTIMES):
        tta = ttakit.ClassificationTTA(lm.model, "none", norm=lm.normalization, data_config=lm.data_config,
                                       backend=name, run_config=ttakit.RunConfig(micro_batch=16, channels_last=False))
        logits[name] = tta.forward_views(x, union)  # (6, 8, 1000)
    for name in RUNTIMES:
        assert (logits[name] - logits["torch"]).abs().max() <= 1e-3, name
        for policy, views in policies.items():
            cols = [union.index(v) for v in views]
            top1 = {k: ttakit.merge_logits(v[:, cols]).argmax(-1) for k, v in logits.items()}
            assert torch.equal(top1[name], top1["torch"]), (name, policy)


@pytest.mark.slow
def test_cli_evaluate_with_a_backend_keeps_torch_fingerprints(sample_dir, cache, tmp_path, capsys):
    from ttakit.cli import main

    runs = {}
    for name in ("torch", "onnxruntime"):  # the default model's onnxruntime export is cached by the test above
        out = tmp_path / name
        code = main(["evaluate", str(sample_dir), "--limit", "4", "--batch-size", "4", "--workers", "0", "--quiet",
                     "--tta", "hflip", "--backend", name, "--out", str(out)])
        assert code == 0, capsys.readouterr().err
        runs[name] = json.loads((out / "logits" / "run.json").read_text())
    assert "backend" not in runs["torch"] and runs["onnxruntime"]["backend"] == "onnxruntime"
    assert {k: v for k, v in runs["onnxruntime"].items() if k not in ("backend", "backend_check")} == runs["torch"]
    check = runs["onnxruntime"]["backend_check"]  # the precision check's figures, kept with the run
    assert check["backend"] == "onnxruntime" and check["figures"]["max_logit_diff"] <= 1e-3
    code = main(["evaluate", str(sample_dir), "--limit", "4", "--batch-size", "4", "--workers", "0", "--quiet",
                 "--tta", "hflip", "--out", str(tmp_path / "onnxruntime")])  # torch on an onnxruntime run folder
    assert code == 2 and "differs in: backend" in capsys.readouterr().err
