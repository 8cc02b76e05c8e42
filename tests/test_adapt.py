"""Test-time adaptation: statistics move, the caller's model stays, resets restore, auto falls back."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

from ttakit.adapt import AdaptOptions, create_adapter, list_adapters
from ttakit.adapt.norm import StreamNorm, stream_norms
from ttakit.errors import ConfigError, UnknownNameError


def _net() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("test_resnet", num_classes=10).eval()


def _brightness_net() -> nn.Module:
    """Class 1 when the photo is bright, class 0 when it is dark: the class lives in the mean
    of the one normalised feature, which test-batch statistics wipe out on a one-class batch."""
    net = nn.Sequential(nn.Conv2d(3, 1, 1, bias=False), nn.BatchNorm2d(1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(1, 2))
    with torch.no_grad():
        net[0].weight.fill_(1 / 3)  # the mean of the three channels
        net[1].running_mean.zero_()
        net[1].running_var.fill_(1.0)
        net[4].weight.copy_(torch.tensor([[-4.0], [4.0]]))
        net[4].bias.zero_()
    return net.eval()


def _state(model: nn.Module) -> dict[str, object]:
    return {
        "params": {k: v.detach().clone() for k, v in model.named_parameters()},
        "buffers": {k: v.detach().clone() for k, v in model.named_buffers()},
        "training": [m.training for m in model.modules()],
        "grad": [p.requires_grad for p in model.parameters()],
        "types": [type(m) for m in model.modules()],
    }


def _same(a: dict[str, object], b: dict[str, object]) -> bool:
    return (a["training"] == b["training"] and a["grad"] == b["grad"] and a["types"] == b["types"]
            and all(torch.equal(a["params"][k], b["params"][k]) for k in a["params"])  # type: ignore[index]
            and all(torch.equal(a["buffers"][k], b["buffers"][k]) for k in a["buffers"]))  # type: ignore[index]


def test_bn_statistics_move_towards_a_shifted_batch() -> None:
    net = _net()
    first_bn = next(m for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    source = first_bn.running_mean.clone()
    captured: dict[str, torch.Tensor] = {}
    x = torch.randn(8, 3, 64, 64) * 3 + 2  # shifted photos
    handle = first_bn.register_forward_pre_hook(lambda m, i: captured.setdefault("in", i[0].clone()))
    with torch.no_grad():
        net(x)  # the layer's input on this batch, through the unadapted model
    handle.remove()
    batch_mean = captured["in"].mean(dim=(0, 2, 3))
    adapter = create_adapter("bn", net, AdaptOptions(prior=8.0))
    adapter.step(x)
    used = next(stream_norms(adapter.model)).used_mean
    # half way (8 source + 8 test images), up to float rounding
    torch.testing.assert_close(used, (source + batch_mean) / 2, rtol=1e-4, atol=1e-4)
    assert (used - batch_mean).abs().sum() < (source - batch_mean).abs().sum()


def test_an_infinite_prior_is_the_plain_model() -> None:
    net = _net()
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(create_adapter("bn", net, AdaptOptions(prior=float("inf"))).step(x), net(x))


def test_prior_zero_is_plain_batch_statistics() -> None:
    # parity with torch's own BatchNorm in training mode (batch statistics), a reference not ours
    bn = nn.BatchNorm2d(3).eval()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    x = torch.randn(5, 3, 4, 4) * 2 + 1
    ours = StreamNorm(copy.deepcopy(bn), prior=0.0)(x)
    ref = copy.deepcopy(bn).train()(x)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["bn", "tent", "eata", "auto"])
@pytest.mark.parametrize("train_mode", [False, True])
def test_callers_model_is_never_changed(method: str, train_mode: bool) -> None:
    net = _net().train(train_mode)
    for p in list(net.parameters())[:2]:
        p.requires_grad_(False)  # a caller's own choice, kept
    before = _state(net)
    adapter = create_adapter(method, net, AdaptOptions(batch=4, lr=0.1, reset=2))
    for s in range(3):
        adapter.step(torch.randn(4, 3, 64, 64) * 2 + s)
    assert _same(before, _state(net))
    assert not any(isinstance(m, StreamNorm) for m in net.modules())


def test_tent_learns_and_reset_restores_the_weights() -> None:
    net = _net()
    adapter = create_adapter("tent", net, AdaptOptions(lr=0.5, reset=2))
    start = copy.deepcopy(adapter.model.state_dict())
    x = torch.randn(6, 3, 64, 64) * 3 + 1
    adapter.step(x)
    moved = {k for k, v in adapter.model.state_dict().items() if not torch.equal(v, start[k])}
    assert any(k.endswith("bn.weight") or k.endswith("bn.bias") for k in moved)  # the affine parameters learnt
    adapter.step(x)
    adapter.step(x)  # the third batch begins with a reset (every 2 batches)
    assert adapter.resets == 1
    adapter.reset()
    assert all(torch.equal(v, start[k]) for k, v in adapter.model.state_dict().items())


def test_tent_lowers_the_entropy_it_minimises() -> None:
    from ttakit.adapt import entropy

    net = _net()
    x = torch.randn(16, 3, 64, 64) * 2 + 1
    adapter = create_adapter("tent", net, AdaptOptions(lr=1.0))
    first = entropy(adapter.step(x)).mean()
    for _ in range(5):
        last = entropy(adapter.step(x)).mean()
    assert last < first


def test_auto_falls_back_on_a_stream_built_to_fool_it() -> None:
    """Label-shifted batches (all bright, then all dark photos): test statistics erase the
    class, so bn loses half the photos; auto must keep the plain model's predictions."""
    net = _brightness_net()
    g = torch.Generator().manual_seed(0)
    level = torch.rand(128, 1, 1, 1, generator=g) * 1.6 + 0.2  # each photo's own brightness, 0.2 to 1.8
    bright = torch.randn(128, 3, 8, 8, generator=g) * 0.3 + level
    dark = torch.randn(128, 3, 8, 8, generator=g) * 0.3 - level
    stream = [(bright[:64], 1), (bright[64:], 1), (dark[:64], 0), (dark[64:], 0)]
    with torch.no_grad():
        assert all((net(x).argmax(-1) == y).all() for x, y in stream)  # plain: every photo right

    def accuracy(method: str) -> float:
        adapter = create_adapter(method, net, AdaptOptions(batch=64))
        right = [(adapter.step(x).argmax(-1) == y).float().mean() for x, y in stream]
        return float(torch.stack(right).mean())

    assert accuracy("bn") < 0.8  # the stream does fool plain test-time statistics
    assert accuracy("auto") == 1.0


def test_auto_adapts_on_a_shifted_mixed_stream() -> None:
    """The same model on photos made brighter, labels mixed in every batch: the source
    statistics put every photo in one class, the stream's statistics put them right."""
    net = _brightness_net()
    torch.manual_seed(1)
    y = torch.arange(128) % 2
    x = torch.randn(128, 3, 8, 8) * 0.3 + (y * 2.0 - 1.0)[:, None, None, None] + 1.5  # every photo 1.5 brighter
    with torch.no_grad():
        plain = float((net(x).argmax(-1) == y).float().mean())
    adapter = create_adapter("auto", net, AdaptOptions(batch=16))
    right = torch.cat([adapter.step(x[i:i + 16]).argmax(-1) == y[i:i + 16] for i in range(0, 128, 16)])
    assert plain == 0.5 and float(right.float().mean()) > 0.8
    assert adapter.decisions.count("adapted") >= 6  # the guard let the later batches adapt


def test_names_and_options_are_checked() -> None:
    assert list_adapters()[:3] == ["bn", "tent", "eata"] and "auto" in list_adapters()
    with pytest.raises(UnknownNameError, match="tent"):
        create_adapter("tnet", _net())
    with pytest.raises(ConfigError, match="reset"):
        AdaptOptions(reset=0)
