"""ttakit.Plan: views for any runtime, outputs put back and undone without a model; the wrappers give the model back as given."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import ttakit
from ttakit.errors import ConfigError, ShapeError

CFG = {"input_size": (3, 64, 64), "interpolation": "bilinear", "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.25, 0.3),
       "crop_pct": 0.875, "crop_mode": "center"}


def _photos() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((70, 90), (96, 72), (80, 80))]


def _tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("test_resnet", pretrained=False, num_classes=10).eval()


def test_plan_through_a_bare_onnxruntime_session_equals_the_wrapper(tmp_path, monkeypatch):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    monkeypatch.setenv("TTAKIT_CACHE", str(tmp_path / "cache"))
    net = _tiny()
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 64, 64),), str(path), dynamo=False, input_names=["images"],
                      output_names=["logits"], dynamic_axes={"images": {0: "n", 2: "h", 3: "w"}, "logits": {0: "n"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    policy = "hflip*input(64:1,80:1)"
    photos = _photos()

    plan = ttakit.Plan(policy, task="classify", data_config=CFG, micro_batch=5)
    seen = []
    for batch in plan.batches(photos):
        assert isinstance(batch.array, np.ndarray) and batch.array.dtype == np.float32
        seen += list(zip(batch.views, batch.rows))
        batch.put(session.run(None, {"images": batch.array}))  # numpy in, numpy out
    got = plan.result()
    assert sorted(seen) == [(v, b) for v in range(4) for b in range(3)]  # every view of every photo, once

    want = ttakit.ClassificationTTA(net, policy, data_config=CFG, backend="onnxruntime").predict(photos)
    assert torch.allclose(got.probs, want.probs, atol=1e-5)
    assert torch.allclose(got.view_logits, want.view_logits, atol=1e-4)
    # ... and both are the torch model's answer.
    ref = ttakit.ClassificationTTA(net, policy, data_config=CFG)(photos)
    assert torch.allclose(got.probs, ref, atol=1e-4)


def test_segment_plan_undoes_every_view_of_an_equivariant_model():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 4, 1)  # pointwise: every flip and quarter turn commutes with it
    x = torch.randn(2, 3, 16, 24)
    plan = ttakit.Plan("flip*rot90(0,1)", task="segment", micro_batch=3, activation="softmax", uncertainty="variance")
    for batch in plan.batches(x.numpy()):
        batch.put(net(torch.from_numpy(batch.array)).detach().numpy())
    res = plan.result()
    assert len(plan.views) == 8
    assert torch.allclose(res.output, torch.softmax(net(x), 1), atol=1e-5)
    assert res.uncertainty.abs().max() < 1e-8 and torch.equal(res.coverage, torch.full((1, 1, 16, 24), 8.0))


def test_keypoints_and_detect_plans_map_back_to_where_the_thing_is():
    img = torch.zeros(1, 3, 20, 30)
    img[0, :, 5:9, 7:12] = 1.0

    def brightest(a: np.ndarray) -> np.ndarray:  # one keypoint: the brightest pixel (x, y)
        i = a.sum(1).reshape(len(a), -1).argmax(1)
        return np.stack([i % a.shape[-1], i // a.shape[-1]], -1)[:, None].astype(np.float32)

    def boxes(a: np.ndarray) -> list[dict]:  # the box of the pixels brighter than 0.5
        out = []
        for im in a:
            ys, xs = np.nonzero(im.mean(0) > 0.5)
            out.append({"boxes": np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32),
                        "scores": np.ones(1, np.float32), "labels": np.zeros(1, np.int64)})
        return out

    kp = ttakit.Plan("flip", task="keypoints")
    pts, scores = kp.run(brightest, img, numpy=True)
    assert scores is None
    # each view finds the bright block's first pixel in its own frame; mapped back, all are in the block
    assert 7 <= pts[0, 0, 0] <= 11 and 5 <= pts[0, 0, 1] <= 8

    det = ttakit.Plan("hflip*rot90(0,1)", task="detect", merge="wbf", keep_views=True)
    for batch in det.batches(img):
        batch.put([{k: torch.from_numpy(v) for k, v in r.items()} for r in boxes(batch.array)])
    res = det.result()
    assert torch.equal(res.detections[0]["boxes"], torch.tensor([[7.0, 5.0, 12.0, 9.0]]))
    assert all(torch.equal(v["boxes"], torch.tensor([[7.0, 5.0, 12.0, 9.0]])) for v in res.views[0])


def test_adaptive_classify_plan_sends_only_unsure_images_to_the_other_views():
    net = _tiny()
    x = torch.randn(4, 3, 32, 32)
    counts = {}
    for threshold in (0.0, 1.01):  # nobody unsure / everybody unsure
        plan = ttakit.Plan("d4", task="classify", adaptive=threshold, micro_batch=64)
        n = 0
        for batch in plan.batches(x):
            n += len(batch)
            batch.put(net(batch.tensor))
        counts[threshold] = (n, plan.result())
    assert counts[0.0][0] == 4 and counts[1.01][0] == 4 * 8
    assert torch.allclose(counts[0.0][1].probs, torch.softmax(net(x), -1), atol=1e-6)
    assert torch.allclose(counts[1.01][1].probs, ttakit.ClassificationTTA(net, "d4")(x), atol=1e-5)


def test_plan_refuses_what_it_cannot_use():
    plan = ttakit.Plan("hflip", task="classify", micro_batch=2)
    x = torch.randn(3, 3, 8, 8)
    it = plan.batches(x)
    batch = next(it)
    with pytest.raises(ShapeError, match="batch dimension 2"):
        batch.put(np.zeros((5, 10), np.float32))
    with pytest.raises(ConfigError, match="not put"):
        next(it)
    with pytest.raises(ConfigError, match="no finished run"):
        plan.result()
    with pytest.raises(ConfigError, match="data_config"):
        list(ttakit.Plan("hflip").batches(_photos()))
    with pytest.raises(ttakit.UnknownNameError, match="segment"):
        ttakit.Plan("hflip", task="segmentt")


class _Detector(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 3, padding=1)

    def forward(self, x):
        s = torch.sigmoid(self.conv(x).mean((1, 2, 3)))
        return [{"boxes": torch.tensor([[1.0, 2.0, 6.0, 7.0]]), "scores": si[None], "labels": torch.zeros(1, dtype=torch.long)}
                for si in s]


class _Points(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x):
        return self.conv(x).mean((2, 3))[:, None, :]  # (B, 1, 2)


WRAPPERS = {
    "classify": lambda m: ttakit.ClassificationTTA(
        torch.nn.Sequential(m, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()), "hflip*scale(1,1.25)", data_config=CFG),
    "segment": lambda m: ttakit.SegmentationTTA(torch.nn.Sequential(m, torch.nn.Conv2d(3, 2, 1)), "flip", data_config=CFG),
    "keypoints": lambda m: ttakit.KeypointsTTA(torch.nn.Sequential(m, _Points()), "flip", data_config=CFG),
    "detect": lambda m: ttakit.DetectionTTA(torch.nn.Sequential(m, _Detector()), "hflip", data_config=CFG),
}


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.parametrize("task", list(WRAPPERS))
def test_every_wrapper_gives_the_model_back_as_given(task, channels_last):
    torch.manual_seed(0)
    body = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.BatchNorm2d(3), torch.nn.Dropout(0.1))
    body.train()
    body[1].eval()  # mixed modes must come back mixed
    body[0].bias.requires_grad_(False)
    if channels_last:
        body.to(memory_format=torch.channels_last)
    before = ([m.training for m in body.modules()], [p.requires_grad for p in body.parameters()],
              [p.is_contiguous(memory_format=torch.channels_last) for p in body.parameters() if p.ndim == 4],
              [p.is_contiguous() for p in body.parameters() if p.ndim == 4])
    tta = WRAPPERS[task](body)
    assert tta.run_config.channels_last  # the wrapper feeds channels-last images...
    tta(torch.randn(2, 3, 32, 32))
    tta(_photos()[:1])
    after = ([m.training for m in body.modules()], [p.requires_grad for p in body.parameters()],
             [p.is_contiguous(memory_format=torch.channels_last) for p in body.parameters() if p.ndim == 4],
             [p.is_contiguous() for p in body.parameters() if p.ndim == 4])
    assert after == before  # ... and the model comes back as it was given
    assert not any(p.is_inference() for p in body.parameters())  # still trainable
    body(torch.randn(1, 3, 8, 8)).sum().backward()
