"""Set-size policies that transfer to shifts nobody searched on: selection across families, left-one-out checks.

A policy chosen to shrink conformal sets on one family of shifted photos need not shrink them
on another (chosen on one corruption family it grew the sets by 23% on ImageNet-C). Here the
objective weighs every family equally, as the set size relative to plain's, and
:func:`leave_one_family_out` measures the transfer honestly: each family in turn is left out
of the choice and only measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from ..merge import merge_logits
from .conformal import greedy_mean_merge, set_size_objective

__all__ = ["greedy_set_size_families", "leave_one_family_out"]


def greedy_set_size_families(logits: Tensor, labels: Tensor, families: Tensor, alpha: float, score: str = "thr",
                             budget: int = 5, temperatures: Sequence[float] = (0.5, 0.7, 1.0, 1.4, 2.0),
                             ) -> tuple[tuple[int, ...], float, tuple[float, ...]]:
    """:func:`greedy_set_size` across several shift families at once: the objective is the
    mean over families of each family's cross-fitted set size *relative to plain's* (column 0
    at temperature 1), so every family counts equally and a policy is kept only where it
    shrinks the sets across the board, not on the one family with the most photos or the
    largest sets (the selection that transfers to a family nobody searched on; check it with
    :func:`leave_one_family_out`).

    Args:
        logits: ``(N, U, C)`` one column per candidate view (0: plain).
        labels: ``(N,)``.
        families: ``(N,)`` integer family of each photo (a corruption, a camera, a site).

    Returns:
        ``(chosen columns, temperature, objective after each step)``; objective 1.0 = plain.

    Example:
        >>> labels = torch.arange(80) % 4
        >>> good = torch.nn.functional.one_hot(labels, 4).float() * 4
        >>> noisy = good + 3 * torch.randn(80, 4, generator=torch.Generator().manual_seed(0))
        >>> logits = torch.stack([noisy, torch.randn(80, 4), good], dim=1)
        >>> greedy_set_size_families(logits, labels, torch.arange(80) % 2, 0.1)[0][0]
        2
    """
    if budget < 1:
        raise ConfigError(f"budget must be at least 1 view, got {budget}")
    groups = [(families == f).nonzero().flatten() for f in families.unique()]
    plain = torch.softmax(logits[:, 0].double(), -1)
    base = [max(set_size_objective(plain[g], labels[g], alpha, score), 1e-9) for g in groups]

    def objective(probs: Tensor) -> float:
        return sum(set_size_objective(probs[g], labels[g], alpha, score) / b for g, b in zip(groups, base)) / len(groups)

    return greedy_mean_merge(logits, objective, budget, temperatures)


def leave_one_family_out(logits: Tensor, labels: Tensor, families: Tensor, alpha: float, score: str = "thr",
                         budget: int = 5) -> dict[int, dict[str, Any]]:
    """For each family: choose the policy on all the *other* families
    (:func:`greedy_set_size_families`), then on the left-out family compare its cross-fitted
    set size with plain's (both calibrated on that family's own photos, so both cover
    ``1 - alpha``). ``{family: {"cols", "temperature", "set_size", "plain_set_size", "ratio"}}``.

    Example:
        >>> labels = torch.arange(120) % 4
        >>> good = torch.nn.functional.one_hot(labels, 4).float() * 4
        >>> noisy = good + 3 * torch.randn(120, 4, generator=torch.Generator().manual_seed(0))
        >>> out = leave_one_family_out(torch.stack([noisy, good], 1), labels, torch.arange(120) % 3, 0.1)
        >>> all(r["ratio"] < 1 for r in out.values())
        True
    """
    out: dict[int, dict[str, Any]] = {}
    for f in families.unique().tolist():
        held, rest = families == f, families != f
        cols, t, _ = greedy_set_size_families(logits[rest], labels[rest], families[rest], alpha, score, budget)
        z, y = logits[held], labels[held]
        size = set_size_objective(merge_logits(z[:, list(cols)], "mean", None, t).double(), y, alpha, score)
        plain = set_size_objective(torch.softmax(z[:, 0].double(), -1), y, alpha, score)
        out[int(f)] = {"cols": list(cols), "temperature": t, "set_size": size, "plain_set_size": plain,
                       "ratio": size / plain if plain > 0 else float("nan")}
    return out
