"""Stream adapters: an adapted copy of a model that learns from each test batch it predicts.

Every method adapts a *copy*: the caller's model (its parameters, buffers, train flag and
``requires_grad``) is never touched. A stream is cut into batches, in order;
:meth:`StreamAdapter.step` adapts on one batch and returns its logits, after which
:attr:`StreamAdapter.views_model` normalises every view of that batch the same way.

* ``bn``: batch normalisation with test statistics blended with the source statistics by a
  prior (Schneider et al., NeurIPS 2020).
* ``tent``: ``bn`` with pure batch statistics plus one entropy-minimisation step on the
  normalisation layers' affine parameters per batch (Wang et al., ICLR 2021).
* ``eata``: Tent on the reliable, non-redundant images only, weighted by their certainty, with
  a Fisher-weighted anti-forgetting penalty (Niu et al., ICML 2022).

Resets every ``reset`` batches (RDumb, Press et al., NeurIPS 2023) restore the copy's weights.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import Registry
from ..validate import as_config
from .norm import convert_norms, stream_norms
from .options import MIN_STEP_BATCH, AdaptOptions

__all__ = ["ADAPTERS", "BNAdapter", "EATAAdapter", "StreamAdapter", "TentAdapter", "check_adaptable", "create_adapter",
           "entropy", "frozen_copy", "list_adapters"]


def entropy(logits: Tensor) -> Tensor:
    """Shannon entropy (nats) of each row's softmax: ``(B, C) -> (B,)``."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode with every parameter frozen (the caller's model is not touched)."""
    clone = copy.deepcopy(model).eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


_NORMS = (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)  # what tent and eata step (their affine parameters)


def check_adaptable(name: str, model: Any, batchnorm: bool | None = None) -> None:
    """Refuse, in one line, a model on which method ``name`` would change nothing: ``bn`` and
    ``auto`` adapt BatchNorm statistics, ``tent`` and ``eata`` the affine parameters of
    BatchNorm, LayerNorm or GroupNorm layers (``batchnorm`` overrides which, for a new method).

    Example:
        >>> check_adaptable("bn", torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)))
        Traceback (most recent call last):
        ...
        ttakit.errors.ConfigError: adapt='bn' adapts BatchNorm statistics, and this model has no BatchNorm layer (nothing would change); use adapt='tent' or 'eata' for LayerNorm/GroupNorm models
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"adapt={name!r} adapts a torch nn.Module, got {type(model).__name__}")
    if batchnorm is None:
        batchnorm = getattr(ADAPTERS.get(name), "needs_batchnorm", True)
    if batchnorm and not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        raise ConfigError(f"adapt={name!r} adapts BatchNorm statistics, and this model has no BatchNorm "
                          "layer (nothing would change); use adapt='tent' or 'eata' for LayerNorm/GroupNorm models")
    if not batchnorm and not any(isinstance(m, _NORMS) and getattr(m, "weight", None) is not None
                                 for m in model.modules()):
        raise ConfigError(f"adapt={name!r} steps the affine parameters of normalisation layers (BatchNorm, "
                          "LayerNorm, GroupNorm), and this model has none (nothing would change)")


class StreamAdapter:
    """Base of the adapters: ``bn`` (statistics only). Subclasses add a gradient step.

    Args:
        model: the classifier; it is copied, never changed.
        options: batch size, reset period, prior, window, learning rate.

    Example:
        >>> net = timm.create_model("test_resnet", num_classes=10).eval()
        >>> adapter = create_adapter("bn", net)
        >>> adapter.step(torch.randn(4, 3, 64, 64)).shape     # adapts on the batch, returns its logits
        torch.Size([4, 10])
        >>> net.training, all(p.requires_grad for p in net.parameters())   # the caller's model as it was
        (False, True)
    """

    name = "bn"
    default_prior = 16.0  # Schneider et al.'s N for small batches
    default_window = 0
    default_depth = 1.0
    needs_batchnorm = True  # adapts BatchNorm statistics: a model without any is refused

    def __init__(self, model: nn.Module, options: AdaptOptions = AdaptOptions()) -> None:
        check_adaptable(self.name, model, self.needs_batchnorm)
        options = as_config(AdaptOptions, options, "adapt_options")
        self.options = options
        self.model = frozen_copy(model)
        self.prior = self.default_prior if options.prior is None else float(options.prior)
        self.window = self.default_window if options.window is None else int(options.window)
        self.n_norms = convert_norms(self.model, self.prior, self.window)
        depth = self.default_depth if options.depth is None else options.depth
        for i, m in enumerate(stream_norms(self.model)):  # modules() order: from the input
            if i >= round(depth * self.n_norms):
                m.prior = float("inf")  # deep layers keep the source statistics
        self._initial = copy.deepcopy(self.model.state_dict())  # what a reset restores
        self.batches = 0  # batches seen since the stream began
        self.resets = 0

    @property
    def views_model(self) -> nn.Module:
        """The model every view of the last batch runs through (statistics frozen)."""
        return self.model

    def _collect(self, on: bool) -> None:
        for m in stream_norms(self.model):
            m.collecting = on

    def reset(self) -> None:
        """Restore the copy's original weights and forget the stream's statistics."""
        self.model.load_state_dict(self._initial)
        for m in stream_norms(self.model):
            m.forget()
        self.resets += 1

    def step(self, x: Tensor) -> Tensor:
        """Adapt on one stream batch ``(B, C, H, W)`` and return its logits ``(B, classes)``."""
        if self.options.reset and self.batches and self.batches % self.options.reset == 0:
            self.reset()
        self.batches += 1
        with torch.inference_mode(False):
            x = x.clone()  # an inference tensor cannot be saved for backward
            self._collect(True)
            try:
                return self._step(x).detach()
            finally:
                self._collect(False)

    __call__ = step

    def _step(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.model(x)


class TentAdapter(StreamAdapter):
    """Tent: pure batch statistics and one entropy step on the affine parameters per batch.

    The logits returned are those of the forward the step learns from (as in Tent).
    """

    name = "tent"
    default_prior = 0.0
    needs_batchnorm = False  # LayerNorm and GroupNorm affine parameters are adapted too (ViT, ConvNeXt, Swin)

    def __init__(self, model: nn.Module, options: AdaptOptions = AdaptOptions()) -> None:
        super().__init__(model, options)
        self.params = [p for m in stream_norms(self.model) for p in (m.bn.weight, m.bn.bias) if p is not None]
        self.params += [p for m in self.model.modules() if isinstance(m, (nn.LayerNorm, nn.GroupNorm))
                        for p in (m.weight, m.bias) if p is not None]
        if self.options.strict and self.options.batch < MIN_STEP_BATCH:
            raise ConfigError(f"adapt batch {self.options.batch}: {self.name} gradient steps on fewer than "
                              f"{MIN_STEP_BATCH} photos tend to collapse the model (strict); use a batch >= {MIN_STEP_BATCH}")
        for p in self.params:
            p.requires_grad_(True)
        self.optimizer = self._new_optimizer()
        self._warned_small = False

    def _new_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.params, lr=self.options.step_lr, momentum=0.9)

    def reset(self) -> None:
        super().reset()
        self.optimizer = self._new_optimizer()

    def _loss(self, logits: Tensor) -> Tensor | None:
        return entropy(logits).mean()

    def _check_batch(self, n: int) -> None:
        if n >= MIN_STEP_BATCH:
            return
        text = (f"adapt={self.name!r}: a gradient step on a batch of {n} photo(s) (fewer than {MIN_STEP_BATCH}) is "
                "likely to collapse the model onto a few classes; adapt on batches of at least "
                f"{MIN_STEP_BATCH} photos")
        if self.options.strict:
            raise ConfigError(text + " (strict)")
        if not self._warned_small:
            warnings.warn(text, stacklevel=4)
            self._warned_small = True

    def _step(self, x: Tensor) -> Tensor:
        self._check_batch(x.shape[0])
        with torch.enable_grad():
            logits = self.model(x)
            loss = self._loss(logits)
            if loss is not None:
                loss.backward()
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return logits


class EATAAdapter(TentAdapter):
    """EATA: Tent on reliable (low-entropy), non-redundant images, weighted by certainty,
    with a Fisher penalty keeping the affine parameters near their start."""

    name = "eata"

    def __init__(self, model: nn.Module, options: AdaptOptions = AdaptOptions()) -> None:
        super().__init__(model, options)
        self.mean_probs: Tensor | None = None  # running mean prediction of the images learnt from
        self.fisher: list[Tensor] | None = None
        self.anchor = [p.detach().clone() for p in self.params]
        self.selected = 0  # images that took part in a step

    def reset(self) -> None:
        super().reset()
        self.mean_probs = None

    def _fisher(self, x: Tensor) -> list[Tensor]:
        # EATA's Fisher: squared gradients of the cross-entropy with the model's own predictions.
        with torch.enable_grad():
            logits = self.model(x)
            F.cross_entropy(logits, logits.argmax(-1)).backward()
        fisher = [p.grad.detach() ** 2 if p.grad is not None else torch.zeros_like(p) for p in self.params]
        self.optimizer.zero_grad(set_to_none=True)
        return fisher

    def _step(self, x: Tensor) -> Tensor:
        if self.fisher is None:
            self.fisher = self._fisher(x)
        return super()._step(x)

    def _loss(self, logits: Tensor) -> Tensor | None:
        ent = entropy(logits)  # (B,)
        e0 = self.options.entropy_margin * math.log(logits.shape[-1])
        keep = ent < e0
        probs = torch.softmax(logits.detach().float(), -1)
        if self.mean_probs is not None and keep.any():
            cos = F.cosine_similarity(self.mean_probs[None], probs, dim=-1)  # (B,)
            keep &= cos.abs() < 1 - self.options.redundancy_margin
        if not keep.any():
            return None
        chosen = probs[keep].mean(0)
        self.mean_probs = chosen if self.mean_probs is None else 0.9 * self.mean_probs + 0.1 * chosen
        self.selected += int(keep.sum())
        weight = torch.exp(-(ent[keep].detach() - e0))  # certain images count more
        loss = (ent[keep] * weight).mean()
        assert self.fisher is not None
        penalty = sum((f * (p - a) ** 2).sum() for f, p, a in zip(self.fisher, self.params, self.anchor))
        return loss + self.options.fisher_alpha * penalty


ADAPTERS = Registry[Callable[[nn.Module, AdaptOptions], StreamAdapter]]("adaptation method", sort=False)
BNAdapter = StreamAdapter  # the base adapter is the bn method
ADAPTERS.add("bn", BNAdapter)
ADAPTERS.add("tent", TentAdapter)
ADAPTERS.add("eata", EATAAdapter)


def list_adapters() -> list[str]:
    """The adaptation methods' names."""
    return ADAPTERS.names()


def create_adapter(name: str, model: nn.Module, options: AdaptOptions = AdaptOptions()) -> StreamAdapter:
    """The adapter called ``name`` (``bn``, ``tent``, ``eata``, ``auto``) around a copy of ``model``.

    Raises:
        UnknownNameError: for an unknown name, listing the known ones.
    """
    return ADAPTERS.get(name)(model, options)
