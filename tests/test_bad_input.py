"""Bad input at every public boundary gives one clear TTAKitError naming the parameter.

Property tests (hypothesis) feed wrong types and values to the public configs and
constructors; the named cases are the ones issue 31 found passing silently or as tracebacks.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import timm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ttakit
from ttakit.adapt import AdaptOptions, create_adapter
from ttakit.errors import TTAKitError
from ttakit.evaluation.classify_logits import ClassifyScoring
from ttakit.evaluation.scoring import EvalOptions
from ttakit.merge import list_merges, merge_logits
from ttakit.runtime.config import RunConfig
from ttakit.tasks.window import WindowConfig, sliding_window_tta
from ttakit.views import View

# Values of the wrong type or out of every range: strings, None, NaN, inf, negatives, bools, lists
# (of non-positive integers: [1, 1] is a valid (height, width) tile).
JUNK = st.one_of(st.text(max_size=3), st.none(), st.just(float("nan")), st.just(float("inf")),
                 st.just(-float("inf")), st.integers(max_value=-1), st.booleans(), st.lists(st.integers(max_value=0), max_size=2))
FAST = settings(max_examples=25, deadline=None)
SWITCHES = ("whole_photo", "strict", "channels_last", "quiet")  # fields for which True/False are valid


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("test_resnet", pretrained=False, num_classes=4).eval()


# --------------------------------------------------------------------------- configs (property tests)
def _check_refused(config: type, field: str, value: object, *, valid: bool = False, match: str | None = None) -> None:
    """``config(field=value)`` raises a TTAKitError naming the field, unless the value is a valid
    one: True/False for a switch, or ``valid`` (each config's own exceptions, said where given)."""
    if valid or (field in SWITCHES and isinstance(value, bool)):
        return
    with pytest.raises(TTAKitError, match=match or field):
        config(**{field: value})


@FAST
@given(field=st.sampled_from(["tile", "overlap", "sigma_scale", "batch", "padding_value", "whole_photo", "blend",
                              "padding_mode", "stitch_device"]), value=JUNK)
def test_window_config_refuses_junk(field, value):
    valid = ((field == "padding_value" and isinstance(value, int) and not isinstance(value, bool))  # a negative fill
             or (field == "stitch_device" and value is None))  # None: the input's device
    _check_refused(WindowConfig, field, value, valid=valid, match=field.split("_")[0])


@FAST
@given(field=st.sampled_from(["batch", "reset", "prior", "window", "lr", "depth", "entropy_margin",
                              "redundancy_margin", "fisher_alpha", "strict"]), value=JUNK)
def test_adapt_options_refuse_junk(field, value):
    valid = ((value is None and field in ("reset", "prior", "window", "lr", "depth"))  # None: the method's default
             or (field == "prior" and value == float("inf")))  # inf: the source statistics only
    _check_refused(AdaptOptions, field, value, valid=valid)


@FAST
@given(field=st.sampled_from(["micro_batch", "channels_last", "amp_dtype"]), value=JUNK)
def test_run_config_refuses_junk(field, value):
    _check_refused(RunConfig, field, value, valid=field == "amp_dtype" and value is None)


@FAST
@given(field=st.sampled_from(["batch_size", "workers", "limit", "strict", "quiet"]), value=JUNK)
def test_eval_options_refuse_junk(field, value):
    _check_refused(EvalOptions, field, value, valid=field == "limit" and value is None)


@FAST
@given(value=st.one_of(st.just(float("nan")), st.just(float("inf")), st.text(min_size=1, max_size=3)))
def test_adaptive_threshold_must_be_finite(value):
    """--adaptive nan silently turned adaptive TTA off (every comparison with NaN is False)."""
    with pytest.raises(TTAKitError, match="adaptive"):
        ClassifyScoring(adaptive=value)
    with pytest.raises(TTAKitError, match="adaptive"):
        ttakit.Plan("hflip", task="classify", adaptive=value)


@FAST
@given(scales=st.one_of(st.lists(st.sampled_from([0, -1, float("nan"), float("inf"), "a", None]), min_size=1,
                                 max_size=3), st.just([]), st.just("0.5")))
def test_ttach_scale_refuses_bad_factors(scales):
    import ttakit.compat.ttach as tta

    with pytest.raises(TTAKitError, match="Scale"):
        tta.Scale(scales)


@FAST
@given(weights=st.lists(st.sampled_from([float("nan"), float("inf"), -1.0]), min_size=1, max_size=1))
def test_policy_weights_must_be_finite(weights):
    with pytest.raises(TTAKitError, match="weights"):
        ttakit.Policy((View(), View()), weights=(1.0, *weights))


# --------------------------------------------------------------------------- named cases of issue 31
def test_window_given_as_int_or_dict_is_converted_or_refused():
    net = torch.nn.Conv2d(3, 2, 3, padding=1)
    x = torch.randn(1, 3, 20, 24)
    by_int = ttakit.SegmentationTTA(net, "hflip", window=8)
    by_dict = ttakit.SegmentationTTA(net, "hflip", window={"tile": 8})
    by_cfg = ttakit.SegmentationTTA(net, "hflip", window=WindowConfig(tile=8))
    assert by_int.window == by_dict.window == by_cfg.window
    torch.testing.assert_close(by_int(x), by_cfg(x))
    with pytest.raises(TTAKitError, match="unknown key 'tiles'.*valid keys: tile"):
        ttakit.SegmentationTTA(net, "hflip", window={"tiles": 8})
    with pytest.raises(TTAKitError, match="overlap"):
        WindowConfig(overlap="abc")
    with pytest.raises(TTAKitError, match="window"):
        ttakit.SegmentationTTA(net, "hflip", window="big")
    torch.testing.assert_close(sliding_window_tta(net, x, [View()], 8)[0], sliding_window_tta(net, x, [View()],
                                                                                             WindowConfig(8))[0])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_stitch_device_that_does_not_exist_is_refused():
    with pytest.raises(TTAKitError, match="stitch_device.*cuda"):
        WindowConfig(stitch_device="cuda")
    with pytest.raises(TTAKitError, match="stitch_device"):
        WindowConfig(stitch_device="gpu9")


def test_adapt_options_dict_converted_or_refused():
    net = _net()
    tta = ttakit.ClassificationTTA(net, "hflip", adapt="bn", adapt_options={"batch": 8})
    assert tta.adapt_options == AdaptOptions(batch=8)
    with pytest.raises(TTAKitError, match="unknown key 'size'.*valid keys: batch, reset"):
        ttakit.ClassificationTTA(net, "hflip", adapt="bn", adapt_options={"size": 2})
    with pytest.raises(TTAKitError, match="adapt_options"):
        ttakit.ClassificationTTA(net, "hflip", adapt="bn", adapt_options=2)


def test_plan_with_no_images_is_refused():
    plan = ttakit.Plan("hflip", task="classify")
    with pytest.raises(TTAKitError, match="no images"):
        plan.run(lambda x: x.mean((2, 3)), [])
    with pytest.raises(TTAKitError, match="empty batch"):
        plan.run(lambda x: x.mean((2, 3)), torch.zeros(0, 3, 8, 8))
    with pytest.raises(TTAKitError, match="runtime"):
        plan.run("not callable", torch.zeros(1, 3, 8, 8))
    with pytest.raises(TTAKitError, match="micro_batch"):
        ttakit.Plan("hflip", micro_batch=0.5)


def test_batch_put_tuple_outputs():
    """put documents tuple outputs: the raw task keeps them; classification names what it needs."""
    x = torch.randn(2, 3, 8, 8)
    raw = ttakit.Plan("hflip", task="outputs")
    for b in raw.batches(x):
        b.put((b.tensor.mean((2, 3)), b.tensor.sum((2, 3))))
    assert isinstance(raw.outputs()[0], tuple) and raw.outputs()[0][0].shape == (2, 3)
    plan = ttakit.Plan("hflip", task="classify")
    for b in plan.batches(x):
        b.put((b.tensor.mean((2, 3)), b.tensor.sum((2, 3))))
    with pytest.raises(TTAKitError, match="put the logits alone"):
        plan.result()


def test_ttach_wrapper_checks_merge_mode_when_built():
    import ttakit.compat.ttach as tta

    with pytest.raises(TTAKitError, match="merge type"):
        tta.ClassificationTTAWrapper(torch.nn.Identity(), tta.aliases.hflip_transform(), merge_mode="median")
    with pytest.raises(TTAKitError, match="multiples of 90"):
        tta.Rotate90([45])


def test_policy_json_with_nan_weight_is_refused(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('{"views": ["identity", "hflip"], "weights": [1, NaN]}')
    with pytest.raises(TTAKitError, match="weights"):
        ttakit.create_policy(str(path))
    path.write_text('{"views": ["identity", "hflip"], "weights": [1, "x"]}')
    with pytest.raises(TTAKitError, match="weights"):
        ttakit.create_policy(str(path))


# --------------------------------------------------------------------------- adaptation preconditions
class _NoNorm(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x).mean((2, 3))


@pytest.mark.parametrize("method, needle", [("bn", "no BatchNorm"), ("auto", "no BatchNorm"),
                                            ("tent", "has none"), ("eata", "has none")])
def test_adapting_a_model_with_nothing_to_adapt_is_refused(method, needle):
    with pytest.raises(TTAKitError, match=needle):
        create_adapter(method, _NoNorm())


@pytest.mark.parametrize("name", ["test_vit", "test_convnext"])
def test_tent_adapts_layernorm_models(name):
    """ViT/ConvNeXt have LayerNorm, no BatchNorm: bn is refused, tent steps the LayerNorm affine parameters."""
    torch.manual_seed(0)
    net = timm.create_model(name, pretrained=False, num_classes=4).eval()
    size = net.pretrained_cfg["input_size"][-2:]
    with pytest.raises(TTAKitError, match="no BatchNorm"):
        create_adapter("bn", net)
    adapter = create_adapter("tent", net, AdaptOptions(batch=8, lr=0.1))
    before = [p.detach().clone() for p in adapter.params]
    assert adapter.params and all(p.ndim == 1 for p in adapter.params)
    adapter.step(torch.randn(8, 3, *size))
    assert any(not torch.equal(a, b) for a, b in zip(before, adapter.params))


def test_gradient_steps_on_few_photos_warn_or_are_refused():
    net = _net()
    tta = ttakit.ClassificationTTA(net, "hflip", adapt="tent", adapt_options={"batch": 1})
    with pytest.warns(UserWarning, match="likely to collapse"):
        tta(torch.randn(1, 3, 32, 32))
    with pytest.raises(TTAKitError, match="collapse"):
        create_adapter("tent", net, AdaptOptions(batch=1, strict=True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a batch of 8 says nothing
        create_adapter("tent", net, AdaptOptions(batch=8)).step(torch.randn(8, 3, 32, 32))


# --------------------------------------------------------------------------- non-finite outputs and merges
@FAST
@given(scale=st.sampled_from([1e30, 3e38, -3e38]), temperature=st.sampled_from([1.0, 1e-30, 0.5]),
       merge=st.sampled_from(list_merges()), w0=st.sampled_from([0.0, 1.0]))
def test_merging_finite_logits_never_gives_nan(scale, temperature, merge, w0):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 2, 5, generator=g) * scale
    probs = merge_logits(logits.clamp(-3.4e38, 3.4e38), merge, torch.tensor([w0, 1.0]), temperature)
    assert torch.isfinite(probs).all()
    assert torch.allclose(probs.sum(-1), torch.ones(3), atol=1e-4)


def test_plan_warns_on_nonfinite_outputs():
    plan = ttakit.Plan("hflip", task="classify")
    with pytest.warns(RuntimeWarning, match="NaN or inf"):
        for b in plan.batches(torch.randn(2, 3, 8, 8)):
            out = b.tensor.mean((2, 3))
            out[0] = math.nan
            b.put(out)
    assert np.isfinite(plan.result().probs[1].numpy()).all()


def test_wrapper_and_plan_arguments_are_checked():
    net = torch.nn.Conv2d(3, 2, 3, padding=1)
    with pytest.raises(TTAKitError, match="model must be"):
        ttakit.ClassificationTTA("resnet", "hflip")
    with pytest.raises(TTAKitError, match="micro_batch"):
        ttakit.ClassificationTTA(net, "hflip", run_config={"micro_batch": 0})
    assert ttakit.ClassificationTTA(net, "hflip", run_config={"micro_batch": 2}).run_config.micro_batch == 2
    with pytest.raises(TTAKitError, match="output_size"):
        ttakit.SegmentationTTA(net, "hflip", output_size=(0, 5))
    with pytest.raises(TTAKitError, match="flip_pairs"):
        ttakit.KeypointsTTA(net, "hflip", flip_pairs=[(0,)])
    with pytest.raises(TTAKitError, match="does not take options"):
        ttakit.Plan("hflip", task="classify", mergee="mean")
    with pytest.raises(TTAKitError, match="task must be"):
        ttakit.Plan("hflip", task=5)
    with pytest.raises(TTAKitError, match="data_config"):
        ttakit.Plan("hflip", data_config=5)
    with pytest.raises(TTAKitError, match="finite"):
        ttakit.create_policy("brightness=inf")
