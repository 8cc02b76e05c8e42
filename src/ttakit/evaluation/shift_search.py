"""Choosing views and adaptation together by what transfers: leave one shift family out.

A candidate is an adaptation method (``none``, ``bn``, ``auto``, ...) with the views a search
picks for it. Every candidate is scored on the same shifted photos (:mod:`.shift_streams`),
and the choice is judged the way it will be used, on a shift nobody searched on: each family
in turn is left out, the views are chosen on the others, and the left-out family's photos
only measure them. The method whose left-out estimate is best wins; its views are then chosen
on every family. The same selection serves every objective:

- ``top1`` and ``nll``: greedy policy search (:func:`~.search.greedy_search`) on the other
  families' photos pooled; each left-out photo's correctness and NLL, paired with the plain
  model's (the unadapted identity view) for the interval (:func:`~.stats.compare`).
- ``set_size``: the family-balanced set-size search (:func:`~.conformal_families.leave_one_family_out`):
  on the left-out family, sets calibrated on that family's own photos (cross-fitted halves),
  relative to plain's; the interval is a bootstrap over families.

Example:
    >>> labels = torch.arange(90) % 3
    >>> good = torch.nn.functional.one_hot(labels, 3).float() * 3
    >>> noisy = good + 2 * torch.randn(90, 3, generator=torch.Generator().manual_seed(0))
    >>> logits = {"none": torch.stack([noisy, good], 1), "bn": torch.stack([noisy, noisy], 1)}
    >>> out = choose_across_families(logits, labels, torch.arange(90) % 3, "top1", budget=2)
    >>> out["method"], out["cols"]
    ('none', [1])
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..conformal import calibrate, min_calibration_size
from ..errors import ConfigError
from ..merge import merge_logits
from ..policy import Policy
from .conformal import set_size_objective
from .conformal_families import greedy_set_size_families, leave_one_family_out
from .search import correct_and_nll, calibrated_temperature, choice_probs, greedy_search
from .shift_streams import StreamLogits
from .stats import compare

__all__ = ["choose_across_families", "shift_policy"]


def _lofo_accuracy(logits: Tensor, plain: Tensor, labels: Tensor, families: Tensor, objective: str,
                   budget: int) -> dict[str, Any]:
    """Left-out correctness and NLL of every photo under the views chosen without its family,
    and the plain model's (``plain`` ``(N, C)``; its temperature fitted on the same photos as
    the views: the fair baseline for a calibrated NLL)."""
    n = len(labels)
    rows = torch.zeros(n, 4, dtype=torch.float64)
    per_family: dict[int, dict[str, Any]] = {}
    for f in families.unique().tolist():
        held, rest = families == f, families != f
        res = greedy_search(logits[rest], labels[rest], budget, objective)
        t_plain = calibrated_temperature(plain[rest], labels[rest]) if objective == "nll" else 1.0
        rows[held, :2] = correct_and_nll(choice_probs(logits[held], res.cols, res.temperature), labels[held])
        rows[held, 2:] = correct_and_nll(torch.softmax(plain[held].double() / t_plain, -1), labels[held])
        per_family[int(f)] = {"cols": list(res.cols), "temperature": res.temperature,
                              "top1": float(rows[held, 0].mean()), "plain_top1": float(rows[held, 2].mean()),
                              "nll": float(rows[held, 1].mean()), "plain_nll": float(rows[held, 3].mean())}
    cmp = compare(rows[:, 2].numpy(), rows[:, 0].numpy(), rows[:, 3].numpy(), rows[:, 1].numpy())
    score = -float(rows[:, 0].mean()) if objective == "top1" else float(rows[:, 1].mean())
    return {"score": score, "top1": float(rows[:, 0].mean()), "plain_top1": float(rows[:, 2].mean()),
            "nll": float(rows[:, 1].mean()), "plain_nll": float(rows[:, 3].mean()),
            "paired": cmp.to_dict(), "per_family": per_family}


def _lofo_set_size(logits: Tensor, plain: Tensor, labels: Tensor, families: Tensor, alpha: float, score: str,
                   budget: int, seed: int = 0) -> dict[str, Any]:
    """Left-out set size relative to plain's, per family (both calibrated on that family's own
    photos), their mean, and a bootstrap interval over families."""
    out = leave_one_family_out(logits, labels, families, alpha, score, budget)
    per_family: dict[int, dict[str, Any]] = {}
    for f, r in out.items():
        held = families == f
        base = set_size_objective(torch.softmax(plain[held].double(), -1), labels[held], alpha, score)
        per_family[f] = {"cols": r["cols"], "temperature": r["temperature"], "set_size": r["set_size"],
                         "plain_set_size": base, "ratio": r["set_size"] / base if base > 0 else float("nan")}
    ratios = np.array([r["ratio"] for r in per_family.values()])
    boot = np.random.default_rng(seed).choice(ratios, (2000, len(ratios))).mean(1)
    return {"score": float(ratios.mean()), "ratio": float(ratios.mean()),
            "ci_ratio": [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))],
            "set_size": float(np.mean([r["set_size"] for r in per_family.values()])),
            "plain_set_size": float(np.mean([r["plain_set_size"] for r in per_family.values()])),
            "per_family": per_family}


def choose_across_families(logits: dict[str, Tensor], labels: Tensor, families: Tensor, objective: str,
                           budget: int = 5, alpha: float | None = None, score: str = "thr") -> dict[str, Any]:
    """Pick the adaptation method and views that do best on families left out (module doc).

    Args:
        logits: ``{method: (N, U, C)}`` per-view logits of the same photos, in the same order;
            ``none`` (the plain model; its column 0 is the reference) must be there.
        labels: ``(N,)``.
        families: ``(N,)`` integer family of each photo; at least 3 families.
        objective: ``top1``, ``nll`` or ``set_size`` (with ``alpha``).

    Returns:
        ``method``, ``cols`` and ``temperature`` chosen on every family, ``lofo``: the left-out
        estimate of every method (``candidates``) and of the chosen one, and ``in_sample``:
        the chosen views measured on the photos that chose them.
    """
    if "none" not in logits:
        raise ConfigError("logits must hold the plain model's as 'none' (the reference of every candidate)")
    if objective not in ("top1", "nll", "set_size"):
        raise ConfigError(f"objective must be top1, nll or set_size, got {objective!r}")
    if (objective == "set_size") != (alpha is not None):
        raise ConfigError("the set_size objective and a conformal alpha go together")
    if len(families.unique()) < 3:
        raise ConfigError(f"leaving one family out needs at least 3 families, got {len(families.unique())}")
    if objective == "set_size":
        need, smallest = 2 * min_calibration_size(alpha), int(families.unique(return_counts=True)[1].min())  # type: ignore[arg-type]
        if smallest < need:
            raise ConfigError(f"the set_size objective at alpha={alpha} needs at least {need} photos in each shift "
                              f"family (each family's sets are calibrated on half of them); the smallest has {smallest}: "
                              "use more photos, fewer families or a larger alpha")
    plain = logits["none"][:, 0]
    candidates = {}
    for m, z in logits.items():
        if objective == "set_size":
            candidates[m] = _lofo_set_size(z, plain, labels, families, alpha, score, budget)  # type: ignore[arg-type]
        else:
            candidates[m] = _lofo_accuracy(z, plain, labels, families, objective, budget)
    method = min(candidates, key=lambda m: (candidates[m]["score"], m != "none"))  # ties: no adaptation
    z = logits[method]
    if objective == "set_size":
        cols, temperature, _ = greedy_set_size_families(z, labels, families, alpha, score, budget)  # type: ignore[arg-type]
        probs = merge_logits(z[:, list(cols)], "mean", None, temperature).double()
        in_sample = {"set_size": set_size_objective(probs, labels, alpha, score),  # type: ignore[arg-type]
                     "plain_set_size": set_size_objective(torch.softmax(plain.double(), -1), labels, alpha, score)}  # type: ignore[arg-type]
    else:
        res = greedy_search(z, labels, budget, objective)
        cols, temperature = res.cols, res.temperature
        probs = choice_probs(z, cols, temperature)
        right = (probs.argmax(-1) == labels).double()
        plain_right = (plain.argmax(-1) == labels).double()
        in_sample = {"top1": float(right.mean()), "plain_top1": float(plain_right.mean())}
    return {"method": method, "cols": list(cols), "temperature": temperature, "objective": objective,
            "lofo": candidates[method], "candidates": candidates, "in_sample": in_sample, "probs": probs}


def shift_policy(pool: Policy, streams: StreamLogits, objective: str, budget: int = 5, alpha: float | None = None,
                 score: str = "thr", adapt_batch: int = 64, name: str = "searched",
                 provenance: dict[str, Any] | None = None) -> Policy:
    """The policy :func:`choose_across_families` picks on ``streams``, with its adaptation in
    ``meta["adapt"]`` (``{"method", "batch"}``; absent for ``none``), the left-out estimate of
    every candidate in ``meta["shifts"]`` and, for ``set_size``, a calibration in
    ``meta["conformal"]`` (on every searched photo pooled: recalibrate on deployment photos
    with ``ttakit calibrate``)."""
    out = choose_across_families(streams.logits, streams.labels, streams.families, objective, budget, alpha, score)
    names = streams.names

    def named(per_family: dict[int, Any]) -> dict[str, Any]:
        return {names[f]: {**r, "views": [pool.views[c].name for c in r["cols"]]} for f, r in per_family.items()}

    candidates = {m: {**c, "per_family": named(c["per_family"])} for m, c in out["candidates"].items()}
    meta: dict[str, Any] = {
        **(provenance or {}),
        "how": f"views and adaptation chosen leaving one shift family out ({objective}, budget {budget})",
        "shifts": {"families": list(names), "photos": int(len(streams.labels)), "objective": objective,
                   "method": out["method"], "lofo": candidates[out["method"]], "candidates": candidates,
                   "in_sample": out["in_sample"]},
    }
    if out["method"] != "none":
        meta["adapt"] = {"method": out["method"], "batch": adapt_batch}
    if objective == "set_size":
        meta["conformal"] = calibrate(out["probs"], streams.labels, alpha, score).to_dict()  # type: ignore[arg-type]
    views = tuple(pool.views[c] for c in out["cols"])
    return Policy(views, merge="mean", temperature=out["temperature"], name=name, meta=meta)
