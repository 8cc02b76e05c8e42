"""Merge modes: per-view logits ``(B, V, C)`` -> class probabilities ``(B, C)``.

Every mode works in log space where it can, so that any finite logits, however large or
negative, give finite probabilities that sum to 1. Optional per-view weights ``(V,)`` (not
necessarily normalised) and a temperature (logits are divided by it first) apply to all.

============  ==================================================================
``mean``      mean of the views' probabilities (default)
``sum``       softmax of the summed logits (the reference tutorial's merge)
``logit_mean`` softmax of the mean logits
``gmean``     geometric mean of probabilities, renormalised (mean of log-probs)
``max``       per-class maximum probability over views, renormalised
``tsharpen``  mean of ``p ** 0.5``, renormalised (ttach's sharpening, on probabilities)
``vote``      majority vote of the views' top-1 classes; ties broken by mean probability
============  ==================================================================
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .errors import check_shape
from .registry import Registry

__all__ = ["MERGES", "get_merge", "list_merges", "merge_logits", "register_merge"]

MergeFn = Callable[[Tensor, Tensor], Tensor]  # (logits (B, V, C), weights (V,) summing to 1) -> probs (B, C)

MERGES = Registry[MergeFn]("merge", sort=False)  # listed in registration order: mean, the default, first


def register_merge(name: str) -> Callable[[MergeFn], MergeFn]:
    """Decorator that registers a merge function under ``name``.

    Raises:
        ValueError: ``name`` is already registered.
    """
    return MERGES.register(name)


def _w(weights: Tensor) -> Tensor:
    return weights.view(1, -1, 1)  # (1, V, 1)


def _renormalise_log(logp: Tensor) -> Tensor:
    return torch.softmax(logp, dim=-1)


@register_merge("mean")
def _mean(logits: Tensor, weights: Tensor) -> Tensor:
    return (torch.softmax(logits, dim=-1) * _w(weights)).sum(dim=1)


@register_merge("sum")
def _sum(logits: Tensor, weights: Tensor) -> Tensor:
    # Weighted sum with weights scaled so that equal weights give the plain sum of logits.
    return torch.softmax((logits * _w(weights * logits.shape[1])).sum(dim=1), dim=-1)


@register_merge("logit_mean")
def _logit_mean(logits: Tensor, weights: Tensor) -> Tensor:
    return torch.softmax((logits * _w(weights)).sum(dim=1), dim=-1)


@register_merge("gmean")
def _gmean(logits: Tensor, weights: Tensor) -> Tensor:
    return _renormalise_log((torch.log_softmax(logits, dim=-1) * _w(weights)).sum(dim=1))


@register_merge("max")
def _max(logits: Tensor, weights: Tensor) -> Tensor:
    # Weights scale each view's log-probabilities' ceiling: zero-weight views never win.
    logp = torch.log_softmax(logits, dim=-1)
    logp = torch.where(_w(weights) > 0, logp + torch.log(_w(weights) * weights.numel()), logp.new_tensor(-torch.inf))
    return _renormalise_log(logp.max(dim=1).values)


@register_merge("tsharpen")
def _tsharpen(logits: Tensor, weights: Tensor) -> Tensor:
    # mean_v w_v p_v^0.5 = exp(logsumexp_v(0.5 log p_v + log w_v)); renormalise in log space.
    half = 0.5 * torch.log_softmax(logits, dim=-1) + torch.log(_w(weights))
    return _renormalise_log(torch.logsumexp(half, dim=1))


@register_merge("vote")
def _vote(logits: Tensor, weights: Tensor) -> Tensor:
    B, V, C = logits.shape
    probs = torch.softmax(logits, dim=-1)
    votes = torch.zeros(B, C, dtype=probs.dtype, device=probs.device)
    votes.scatter_add_(1, logits.argmax(dim=-1), weights.to(probs.dtype).expand(B, V))  # (B, C) weighted counts
    mean = (probs * _w(weights)).sum(dim=1)  # (B, C)
    # Scale votes so one vote of the lightest voting view outweighs any mean probability.
    unit = weights[weights > 0].min()
    score = votes / unit + mean  # a class with more votes always scores higher; ties -> mean
    return score / score.sum(dim=-1, keepdim=True)


def list_merges() -> list[str]:
    """Names of the registered merge modes."""
    return MERGES.names()


def get_merge(name: str) -> MergeFn:
    """Resolve a merge name once, at the boundary.

    Raises:
        UnknownNameError: unknown name (a :class:`~ttakit.errors.PolicyError` too; the message
            lists the known ones).

    Example:
        >>> get_merge("gmaen")
        Traceback (most recent call last):
        ...
        ttakit.errors.UnknownNameError: unknown merge 'gmaen' (did you mean 'gmean'?); choose one of mean, sum, ...
    """
    return MERGES.get(name)


def merge_logits(
    logits: Tensor,
    merge: str | MergeFn = "mean",
    weights: Tensor | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """Merge per-view logits into probabilities.

    Args:
        logits: ``(B, V, C)`` per-view logits.
        merge: a merge name (see the module docstring) or a resolved merge function.
        weights: optional ``(V,)`` non-negative per-view weights.
        temperature: logits are divided by this before merging.

    Returns:
        ``(B, C)`` probabilities summing to 1.

    Example:
        >>> logits = torch.tensor([[[2.0, 0.0], [0.0, 2.0], [1.0, 0.0]]])  # (B=1, V=3, C=2)
        >>> merge_logits(logits, "vote")[0].argmax().item()                # two views of three say class 0
        0
        >>> merge_logits(logits, "sum").round(decimals=4)                  # softmax of [3, 2]
        tensor([[0.7311, 0.2689]])
    """
    check_shape("logits", logits.shape, "(B, V, C)")
    fn = get_merge(merge) if isinstance(merge, str) else merge
    V = logits.shape[1]
    logits = logits.float()
    if weights is None:
        w = logits.new_full((V,), 1.0 / V)
    else:
        w = torch.as_tensor(weights, dtype=logits.dtype, device=logits.device)
        check_shape("weights", w.shape, f"({V})")
        w = w / w.sum()
    raw = logits
    if temperature != 1.0:
        logits = logits / temperature
    out = fn(logits, w)
    # A finite input never merges into NaN: rows that overflowed float32 (huge logits, a tiny
    # temperature) are merged again in float64, whose range holds any float32 sum.
    lost = ~torch.isfinite(out).all(-1) & torch.isfinite(raw).flatten(1).all(1)
    if lost.any():
        again = fn(raw[lost].double() / temperature, w.double())
        out = out.clone()
        out[lost] = again.to(out.dtype).nan_to_num(nan=0.0)
    return out
