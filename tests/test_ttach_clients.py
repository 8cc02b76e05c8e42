"""ttach users' code runs unchanged on ttakit.compat.ttach: each client below is written as ttach
users write it (Grad-CAM's aug_smooth, segmentation_models_pytorch wrappers, a custom transform on
``ttach.functional``, a Merger loop over scales), run once with ``import ttach as tta`` and once
with ``import ttakit.compat.ttach as tta``, and must give ttach's outputs to 1e-4."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import ttakit.compat.ttach as dropin


def _both(client, *args):
    """The client's output with real ttach and with the drop-in (same code, module swapped)."""
    ttach = pytest.importorskip("ttach")
    import ttach.functional  # noqa: F401 - as users import it

    return client(ttach, *args), client(dropin, *args)


def _close(a, b, atol: float = 1e-4) -> None:
    a, b = (torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v for v in (a, b))
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.allclose(a.float(), b.float(), atol=atol), (a - b).abs().max()


def _segnet(classes: int = 3) -> torch.nn.Module:
    """A tiny encoder-decoder (output stride 1, a stride-2 stage inside), as smp's models are."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, stride=2, padding=1),
        torch.nn.ReLU(), torch.nn.Upsample(scale_factor=2, mode="bilinear"), torch.nn.Conv2d(8, classes, 3, padding=1),
    ).eval()


def _classifier(classes: int = 5) -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
                               torch.nn.Flatten(), torch.nn.Linear(24, classes), torch.nn.Softmax(-1)).eval()


def _images(b: int = 2, h: int = 32, w: int = 32) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(2))


# ----------------------------------------------------------------------------- Grad-CAM's aug_smooth
def _gradcam_aug_smooth(tta, x):
    """pytorch-grad-cam's forward_augmentation_smoothing, with a CAM from the last conv's
    activations (numpy in the middle, as the library has it)."""
    net = _segnet(4)

    def cam_of(t):
        with torch.no_grad():
            a = net[:4](t)
        return torch.relu(a.mean(1)).numpy()  # (B, h, w)

    transforms = tta.Compose([tta.HorizontalFlip(), tta.Multiply(factors=[0.9, 1, 1.1])])
    cams = []
    for transform in transforms:
        augmented_tensor = transform.augment_image(x)
        cam = cam_of(augmented_tensor)
        cam = cam[:, None, :, :]  # ttach expects B x C x H x W
        cam = torch.from_numpy(cam)
        cam = transform.deaugment_mask(cam)
        cam = cam.numpy()[:, 0, :, :]
        cams.append(cam)
    return np.mean(np.float32(cams), axis=0)


def test_gradcam_aug_smooth():
    _close(*_both(_gradcam_aug_smooth, _images()))


# ----------------------------------------------------------------------------- segmentation_models_pytorch
@pytest.mark.parametrize("policy", ["d4", "flip_scale_bilinear", "multiscale"])
def test_smp_segmentation_wrapper(policy):
    def client(tta, x):
        transforms = {
            "d4": lambda: tta.aliases.d4_transform(),
            # shrinking images (0.5) and shrinking masks back (2): no antialiasing, as in ttach
            "flip_scale_bilinear": lambda: tta.Compose([tta.HorizontalFlip(), tta.Scale(scales=[0.5, 1, 2], interpolation="bilinear")]),
            "multiscale": lambda: tta.aliases.multiscale_transform(scales=[0.5, 0.75, 1.5], interpolation="bilinear"),
        }[policy]()
        model = tta.SegmentationTTAWrapper(_segnet(), transforms, merge_mode="mean")
        with torch.no_grad():
            return torch.sigmoid(model(x))

    _close(*_both(client, _images()))


def test_classification_shrinking_scale_is_not_antialiased():
    # The drop-in antialiased a shrunk image: 0.0028 off in probability. Now it samples as ttach.
    def client(tta, x):
        model = tta.ClassificationTTAWrapper(_classifier(), tta.Compose([tta.Scale([0.5, 0.75], interpolation="bilinear")]))
        with torch.no_grad():
            return model(x)

    _close(*_both(client, _images(3, 32, 32)), atol=1e-6)


# ----------------------------------------------------------------------------- a user's own transforms
def _user_transforms(tta):
    """Transforms written against ttach's base classes and functional API."""
    F = tta.functional

    class RollCrop(tta.base.DualTransform):
        """Shift the image by ``shift`` pixels (reflect-padded crop); masks shift back."""

        identity_param = 0

        def __init__(self, shifts):
            super().__init__("shift", shifts)

        def apply_aug_image(self, image, shift=0, **kwargs):
            if shift == 0:
                return image
            h, w = image.shape[2:]
            padded = TF.pad(image, (shift, shift, shift, shift), mode="reflect")
            return F.crop(padded, x_min=0, x_max=w, y_min=0, y_max=h)

        def apply_deaug_mask(self, mask, shift=0, **kwargs):
            if shift == 0:
                return mask
            h, w = mask.shape[2:]
            padded = TF.pad(mask, (shift, shift, shift, shift), mode="replicate")
            return F.crop(padded, x_min=2 * shift, x_max=2 * shift + w, y_min=2 * shift, y_max=2 * shift + h)

        def apply_deaug_label(self, label, shift=0, **kwargs):
            return label

        def apply_deaug_keypoints(self, keypoints, shift=0, **kwargs):
            return keypoints

    class Gamma(tta.base.ImageOnlyTransform):
        identity_param = 1.0

        def __init__(self, gammas):
            super().__init__("gamma", [1.0, *gammas])

        def apply_aug_image(self, image, gamma=1.0, **kwargs):
            return image.clamp(min=0) ** gamma

    class HalfFlip(tta.HorizontalFlip):
        """A built-in transform with its augmentation overridden (must not be ignored)."""

        def apply_aug_image(self, image, apply=False, **kwargs):
            return F.hflip(image) * 0.5 if apply else image

    return RollCrop, Gamma, HalfFlip


def test_user_transforms_in_the_segmentation_wrapper():
    def client(tta, x):
        RollCrop, Gamma, HalfFlip = _user_transforms(tta)
        transforms = tta.Compose([HalfFlip(), RollCrop([0, 2]), Gamma([0.8]), tta.Rotate90([0, 180])])
        model = tta.SegmentationTTAWrapper(_segnet(), transforms, merge_mode="mean")
        with torch.no_grad():
            return model(x)

    ours, theirs = _both(client, _images())
    _close(ours, theirs)
    # The override counts: a plain flip gives another answer.
    with torch.no_grad():
        plain = dropin.SegmentationTTAWrapper(_segnet(), dropin.Compose([dropin.HorizontalFlip()]))(_images())
        half = dropin.SegmentationTTAWrapper(_segnet(), dropin.Compose([_user_transforms(dropin)[2]()]))(_images())
    assert not torch.allclose(plain, half, atol=1e-3)


def test_user_transforms_in_classification_and_keypoints_loops():
    def client(tta, x):
        RollCrop, Gamma, _ = _user_transforms(tta)
        net = _classifier()
        labels, points = [], []
        for t in tta.Compose([RollCrop([1]), Gamma([0.5, 2.0]), tta.VerticalFlip()]):
            with torch.no_grad():
                labels.append(t.deaugment_label(net(t.augment_image(x))))
            points.append(t.deaugment_keypoints(torch.tensor([[[0.25, 0.75]]]).repeat(x.shape[0], 1, 1)))
        return torch.cat([torch.stack(labels).flatten(), torch.stack(points).flatten()])

    _close(*_both(client, _images(2, 24, 24)))


def test_custom_crops_with_ttach_functional():
    """A classification TTA of corner and centre crops written with ttach.functional, the
    crops' outputs merged by a Merger (the style of competition solutions)."""

    def client(tta, x):
        F = tta.functional
        net = _classifier()
        crops = [F.crop_lt(x, 24, 20), F.crop_lb(x, 24, 20), F.crop_rt(x, 24, 20), F.crop_rb(x, 24, 20),
                 F.center_crop(x, 23, 21), F.crop(x, x_min=2, x_max=30, y_min=1, y_max=29)]
        merger = tta.base.Merger(type="gmean", n=2 * len(crops))
        with torch.no_grad():
            for c in crops:
                merger.append(net(c))
                merger.append(net(F.vflip(F.hflip(F.rot90(c, k=2)))))
        kps = torch.rand(2, 5, 2, generator=torch.Generator().manual_seed(3))
        moved = [F.keypoints_hflip(kps), F.keypoints_vflip(kps)] + [F.keypoints_rot90(kps, k) for k in range(4)]
        sizes = torch.tensor([F.scale(x, s).shape[-1] for s in (0.3, 0.77, 1.5)] + list(F.resize(x, (9, 7)).shape))
        return torch.cat([merger.result.flatten(), torch.stack(moved).flatten(), sizes.float(),
                          F.add(x, 0.1).sum(0).flatten(), F.multiply(x, 2).mean().view(1),
                          F.max(x, x.flip(0)).flatten(), F.min(x, x.flip(0)).flatten(), F.sum(x, x).flatten()])

    _close(*_both(client, _images(2, 32, 30)))


# ----------------------------------------------------------------------------- a Merger over scales
@pytest.mark.parametrize("merge", ["mean", "gmean", "tsharpen", "max"])
def test_merger_loop_over_multiscale_inputs(merge):
    """Multi-scale inference by hand: resize the input, predict, resize the map back, merge."""

    def client(tta, x):
        F = tta.functional
        net = _segnet()
        scales = [0.5, 0.75, 1.0, 1.25]
        merger = tta.base.Merger(type=merge, n=len(scales))
        with torch.no_grad():
            for s in scales:
                out = torch.softmax(net(F.scale(x, s, interpolation="bilinear", align_corners=False)), 1)
                merger.append(F.resize(out, x.shape[-2:], interpolation="bilinear", align_corners=False))
        return merger.result

    _close(*_both(client, _images(2, 32, 32)))


def test_keypoints_wrapper_on_square_images():
    class Peak(torch.nn.Module):
        def forward(self, x):
            i = x.sum(1).flatten(1).argmax(1)
            return torch.stack([i % x.shape[-1] + 0.5, i // x.shape[-1] + 0.5], -1).float()

    def client(tta, x):
        return tta.KeypointsTTAWrapper(Peak(), tta.aliases.d4_transform(), merge_mode="mean")(x)

    x = torch.zeros(2, 3, 16, 16)
    x[0, :, 3, 11] = 1.0
    x[1, :, 12, 2] = 1.0
    _close(*_both(client, x))


def test_functional_has_ttachs_names_and_signatures():
    import inspect

    theirs = pytest.importorskip("ttach.functional")
    names = [n for n, f in vars(theirs).items() if inspect.isfunction(f) and f.__module__ == theirs.__name__]
    assert len(names) >= 20
    for n in names:
        ours = getattr(dropin.functional, n)
        assert [(p.name, p.default) for p in inspect.signature(ours).parameters.values()] == \
            [(p.name, p.default) for p in inspect.signature(getattr(theirs, n)).parameters.values()], n


def test_antialias_is_there_when_asked():
    x = _images(1, 32, 32)
    plain = dropin.Scale([0.5], interpolation="bilinear")
    smooth = dropin.Scale([0.5], interpolation="bilinear", antialias=True)
    a, b = plain.apply_aug_image(x, scale=0.5), smooth.apply_aug_image(x, scale=0.5)
    assert torch.equal(a, TF.interpolate(x, size=(16, 16), mode="bilinear"))
    assert torch.allclose(b, TF.interpolate(x, size=(16, 16), mode="bilinear", antialias=True), atol=1e-6)
    assert not torch.allclose(a, b, atol=1e-3)
