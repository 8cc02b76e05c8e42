"""Batch normalisation with test statistics: source statistics blended with the stream's.

:class:`StreamNorm` replaces a ``BatchNorm2d`` inside an adapted *copy* of a model. It keeps
the layer's weights and training (source) statistics and normalises with

    mean = (N * mean_source + n * mean_test) / (N + n)        (Schneider et al., NeurIPS 2020)

where ``N`` is the prior (a pseudo-count of source images) and ``n`` the number of test
images behind ``mean_test``: the current batch alone (``window=0``, the published method) or
the current batch pooled with the last ``window`` images of the stream (the batch's labels
matter less the more images the estimate pools). Variances blend the same way.

A layer either *collects* (normalises with, and remembers, the blend computed from the
batch it sees; gradients flow through the batch statistics, as Tent needs) or is *frozen*
(normalises with the blend it last collected, so every view and micro-batch of one stream
batch is normalised alike).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

__all__ = ["StreamNorm", "convert_norms", "stream_norms"]


class StreamNorm(nn.Module):
    """One ``BatchNorm2d`` normalising with source statistics blended with test statistics.

    Args:
        bn: the layer (its weight, bias and running statistics are kept as they are; timm's
            ``BatchNormAct2d`` keeps its dropout and activation, applied after).
        prior: ``N``, the pseudo-count of source images (``inf``: the source statistics only).
        window: test images remembered across batches (``0``: the current batch only).

    Example:
        >>> bn = nn.BatchNorm2d(2).eval()                 # source statistics: mean 0, var 1
        >>> norm = StreamNorm(bn, prior=8.0, window=0)
        >>> _ = norm(torch.full((8, 2, 3, 3), 4.0))        # a batch of 8 with mean 4
        >>> norm.used_mean.tolist()                        # halfway: 8 source, 8 test images
        [2.0, 2.0]
    """

    def __init__(self, bn: nn.BatchNorm2d, prior: float, window: int = 0) -> None:
        super().__init__()
        self.bn = bn
        self.prior = float(prior)
        self.window = int(window)
        self.collecting = True  # False: frozen, normalise with the last collected statistics
        c = bn.num_features
        src_mean = bn.running_mean if bn.running_mean is not None else torch.zeros(c)
        src_var = bn.running_var if bn.running_var is not None else torch.ones(c)
        self.register_buffer("source_mean", src_mean.detach().clone().float())
        self.register_buffer("source_var", src_var.detach().clone().float())
        # the stream's remembered first and second moments and how many images they pool
        self.register_buffer("memory_mean", torch.zeros(c))
        self.register_buffer("memory_sq", torch.zeros(c))
        self.register_buffer("memory_n", torch.zeros(()))
        # the statistics the last forward normalised with, and the test statistics behind them
        self.register_buffer("used_mean", self.source_mean.clone())
        self.register_buffer("used_var", self.source_var.clone())
        self.register_buffer("test_mean", self.source_mean.clone())
        self.register_buffer("test_var", self.source_var.clone())

    def forget(self) -> None:
        """Drop the remembered test statistics (back to the source statistics)."""
        self.memory_mean.zero_()
        self.memory_sq.zero_()
        self.memory_n.zero_()
        for buf in (self.used_mean, self.test_mean):
            buf.copy_(self.source_mean)
        for buf in (self.used_var, self.test_var):
            buf.copy_(self.source_var)

    def shift(self) -> Tensor:
        """How far the last test statistics are from the source ones: the symmetric KL
        divergence between the two per-channel Gaussians, averaged over channels (0: none)."""
        v0, v1 = self.source_var + self.bn.eps, self.test_var + self.bn.eps
        d2 = (self.test_mean - self.source_mean) ** 2
        return (0.25 * (v1 / v0 + v0 / v1 - 2) + 0.25 * d2 * (1 / v0 + 1 / v1)).mean()

    def _blend(self, x: Tensor) -> tuple[Tensor, Tensor]:
        n = float(x.shape[0])
        xf = x.float()
        mean = xf.mean(dim=(0, 2, 3))  # (C,)
        sq = (xf * xf).mean(dim=(0, 2, 3))  # (C,)
        if self.window > 0 and float(self.memory_n) > 0:  # pool with the remembered images
            m = min(float(self.memory_n), max(self.window - n, 0.0))
            mean = (m * self.memory_mean + n * mean) / (m + n)
            sq = (m * self.memory_sq + n * sq) / (m + n)
            n = m + n
        if self.window > 0:
            self.memory_mean.copy_(mean.detach())
            self.memory_sq.copy_(sq.detach())
            self.memory_n.fill_(n)
        var = (sq - mean * mean).clamp_min(0)
        self.test_mean.copy_(mean.detach())
        self.test_var.copy_(var.detach())
        if self.prior == float("inf"):
            return self.source_mean, self.source_var
        w = self.prior / (self.prior + n)  # the source's share
        return w * self.source_mean + (1 - w) * mean, w * self.source_var + (1 - w) * var

    def forward(self, x: Tensor) -> Tensor:
        if self.collecting:
            mean, var = self._blend(x)
            self.used_mean.copy_(mean.detach())
            self.used_var.copy_(var.detach())
        else:
            mean, var = self.used_mean, self.used_var
        bn = self.bn
        scale = torch.rsqrt(var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -mean * scale + (bn.bias if bn.bias is not None else 0)
        y = x * scale.to(x.dtype)[None, :, None, None] + shift.to(x.dtype)[None, :, None, None]
        for extra in ("drop", "act"):  # timm's BatchNormAct2d: normalise, then dropout, activation
            module = getattr(bn, extra, None)
            if isinstance(module, nn.Module):
                y = module(y)
        return y


def convert_norms(model: nn.Module, prior: float, window: int) -> int:
    """Replace every ``BatchNorm2d`` of ``model`` (in place: pass a copy) by a
    :class:`StreamNorm`; returns how many were replaced."""
    count = 0
    for name, child in list(model.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            setattr(model, name, StreamNorm(child, prior, window))
            count += 1
        elif not isinstance(child, StreamNorm):
            count += convert_norms(child, prior, window)
    return count


def stream_norms(model: nn.Module) -> Iterator[StreamNorm]:
    """Every :class:`StreamNorm` of ``model``."""
    return (m for m in model.modules() if isinstance(m, StreamNorm))
