"""ttakit.compat.ttach: ttach's own test suite passes through it, it answers as ttach 0.0.3 does, and where ttach is wrong it is right."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ttakit.compat.ttach as tta

ROOT = Path(__file__).resolve().parents[1]
_CANDIDATES = [Path(os.environ["TTACH_TESTS"])] if os.environ.get("TTACH_TESTS") else []
_CANDIDATES += [ROOT / "shared/reference/ttach-tests", ROOT.parent / "shared/reference/ttach-tests"]
TTACH_TESTS = next((p for p in _CANDIDATES if (p / "test_base.py").exists()), None)
IMPORT = "import ttach as tta"


def test_ttachs_own_suite_passes_through_the_drop_in(tmp_path):
    if TTACH_TESTS is None:
        pytest.skip("ttach's test suite is not here (../shared/reference/ttach-tests; or set TTACH_TESTS)")
    for name in ("test_base.py", "test_transforms.py"):
        lines = (TTACH_TESTS / name).read_text().splitlines(keepends=True)
        assert sum(line.rstrip("\n") == IMPORT for line in lines) == 1, name  # exactly one line changes
        (tmp_path / name).write_text("".join("import ttakit.compat.ttach as tta\n" if line.rstrip("\n") == IMPORT
                                             else line for line in lines))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert " passed" in res.stdout and "failed" not in res.stdout and "error" not in res.stdout.lower()


try:  # the parity reference: only the tests that compare with it skip without it
    import ttach
except ImportError:
    ttach = None
needs_ttach = pytest.mark.skipif(ttach is None, reason="the parity reference ttach (pip install ttach==0.0.3) is missing")


def _net(out: int, classify: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    layers = [torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(6, out, 3, padding=1)]
    if classify:
        layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Softmax(-1)]
    return torch.nn.Sequential(*layers).eval()


def _both(build):
    return build(tta), build(ttach)


POLICIES = {
    "d4": lambda m: m.aliases.d4_transform(),
    "flip": lambda m: m.aliases.flip_transform(),
    "multiscale": lambda m: m.aliases.multiscale_transform([1, 2, 0.5]),
    "scale_bilinear": lambda m: m.Compose([m.HorizontalFlip(), m.Scale([2], interpolation="bilinear")]),
    "resize": lambda m: m.Compose([m.Resize([(16, 16), (24, 20)], original_size=(16, 16))]),
    "add_multiply": lambda m: m.Compose([m.Add([0.1, -0.2]), m.Multiply([0.9, 1.1]), m.VerticalFlip()]),
}
CLASSIFY_ONLY = {
    "five_crop": lambda m: m.aliases.five_crop_transform(6, 10),  # even margins: see the centre-crop test
    "ten_crop": lambda m: m.aliases.ten_crop_transform(8, 8),
}


@needs_ttach
@pytest.mark.parametrize("merge", ["mean", "gmean", "max", "min", "sum", "tsharpen"])
@pytest.mark.parametrize("policy", list(POLICIES) + list(CLASSIFY_ONLY))
def test_classification_equals_ttach(policy, merge):
    net, x = _net(5, classify=True), torch.rand(3, 3, 16, 16)
    ours, theirs = _both(lambda m: m.ClassificationTTAWrapper(net, {**POLICIES, **CLASSIFY_ONLY}[policy](m), merge))
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-6)


class _DictOut(torch.nn.Module):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return {"mask": self.net(x), "other": x.mean()}


class _Fixed(torch.nn.Module):
    """A model returning a cached tensor."""

    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.out = out

    def forward(self, x):
        return self.out


@needs_ttach
@pytest.mark.parametrize("merge", ["mean", "max"])
@pytest.mark.parametrize("policy", list(POLICIES))  # shrinking back too: not antialiased, as in ttach
def test_segmentation_equals_ttach(policy, merge):
    net, x = _net(4, classify=False), torch.randn(2, 3, 16, 16)
    dict_net = _DictOut(net)
    ours, theirs = _both(lambda m: m.SegmentationTTAWrapper(dict_net, POLICIES[policy](m), merge, output_mask_key="mask"))
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert list(a) == ["mask"] and torch.allclose(a["mask"], b["mask"], atol=1e-5)


class _Brightest(torch.nn.Module):
    """Keypoints [x, y] (pixel edges at 0 and W) of the brightest pixel's centre, twice."""

    def forward(self, x):
        i = x.sum(1).flatten(1).argmax(1)
        xy = torch.stack([i % x.shape[-1] + 0.5, i // x.shape[-1] + 0.5], -1).float()
        return torch.cat([xy, xy], -1)  # (B, 4)


@needs_ttach
@pytest.mark.parametrize("policy", ["d4", "flip"])
def test_keypoints_equal_ttach_on_square_images(policy):
    x = torch.zeros(2, 3, 12, 12)
    x[0, :, 3, 8] = 1.0
    x[1, :, 10, 1] = 1.0
    ours, theirs = _both(lambda m: m.KeypointsTTAWrapper(_Brightest(), POLICIES[policy](m)))
    assert torch.allclose(ours(x), theirs(x), atol=1e-5)
    assert torch.allclose(ours(x)[:, :2], torch.tensor([[8.5, 3.5], [1.5, 10.5]]), atol=1e-5)


@needs_ttach
def test_where_ttach_is_wrong_the_drop_in_is_right():
    net = _net(2, classify=False)
    x = torch.randn(1, 3, 10, 10)
    # Scale: ttach makes 10 x 0.75 = 7 pixels with int() and maps the mask back to int(7 / 0.75) = 9,
    # so its merge fails; the drop-in rounds (8 pixels) and maps back onto the 10 x 10 grid.
    with pytest.raises(RuntimeError):
        ttach.SegmentationTTAWrapper(net, ttach.aliases.multiscale_transform([0.75]))(x)
    assert tta.SegmentationTTAWrapper(net, tta.aliases.multiscale_transform([0.75]))(x).shape == (1, 2, 10, 10)
    # Resize without original_size: ttach cannot undo masks; the wrappers know the image's size.
    resize = lambda m: m.Compose([m.Resize([(16, 16)])])  # noqa: E731
    with pytest.raises(ValueError, match="original image size"):
        ttach.SegmentationTTAWrapper(net, resize(ttach))(x)
    assert tta.SegmentationTTAWrapper(net, resize(tta))(x).shape == (1, 2, 10, 10)
    # Rotate90: ttach turns 45 degrees into 0 without a word.
    with pytest.raises(ValueError, match="multiples of 90"):
        tta.Rotate90([45])
    # Keypoints after a quarter turn of a non-square image: ttach divides by the original width.
    x = torch.zeros(1, 3, 10, 16)
    x[0, :, 2, 13] = 1.0
    want = torch.tensor([[13.5, 2.5, 13.5, 2.5]])
    assert torch.allclose(tta.KeypointsTTAWrapper(_Brightest(), tta.aliases.d4_transform())(x), want, atol=1e-5)
    assert not torch.allclose(ttach.KeypointsTTAWrapper(_Brightest(), ttach.aliases.d4_transform())(x), want, atol=1e-2)


@needs_ttach
def test_an_odd_centre_margin_is_split_as_ttakit_splits_it():
    # (16 - 7) / 2 = 4.5 rows: ttakit's centre crop starts at row 4 (the odd pixel below), ttach's at row 5.
    x = torch.arange(16 * 16.0).view(1, 1, 16, 16)
    ours, theirs = tta.FiveCrops(7, 9), ttach.FiveCrops(7, 9)
    assert torch.equal(ours.apply_aug_image(x, crop_fn=ours.params[-1]), x[..., 4:11, 3:12])
    assert torch.equal(theirs.apply_aug_image(x, crop_fn=theirs.params[-1]), x[..., 5:12, 4:13])


def test_the_model_and_its_output_come_back_as_given():
    out = torch.tensor([[4.0, 2.0]])
    model = torch.nn.Linear(1, 1).train()
    model.weight.requires_grad_(False)
    tta.KeypointsTTAWrapper(_Fixed(out), tta.aliases.hflip_transform())(torch.zeros(1, 3, 8, 8))
    assert torch.equal(out, torch.tensor([[4.0, 2.0]]))  # ttach divides it in place
    tta.ClassificationTTAWrapper(torch.nn.Sequential(torch.nn.Flatten(), model), tta.aliases.hflip_transform())(
        torch.zeros(2, 1, 1, 1))
    assert model.training and not model.weight.requires_grad and model.bias.requires_grad
