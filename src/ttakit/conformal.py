"""Split conformal prediction sets on class probabilities: scores, calibration, sets.

A :class:`Calibration` turns any classifier's probabilities into *sets* of classes that contain
the true class with probability at least ``1 - alpha`` (split conformal prediction; Vovk et al.
2005, Angelopoulos and Bates, "A Gentle Introduction to Conformal Prediction"). Three
non-conformity scores, each also in a randomised form (``*_rand``, which spends the guarantee
exactly instead of rounding up):

* ``thr`` (LAC; Sadinle et al. 2019): ``1 - p_y``; the smallest sets on average.
* ``aps`` (Romano et al., NeurIPS 2020): the probability mass of the classes ranked at or above
  ``y``; sets adapt to how hard the image is.
* ``raps`` (Angelopoulos et al., ICLR 2021): ``aps`` plus ``penalty * max(0, rank - kreg)``,
  which keeps the sets of uncertain images small.

Everything here is a pure function of probabilities ``(N, C)`` (a merged TTA policy's output
is one), so calibrating from stored logits costs no model time. The scores and the
finite-sample quantile match TorchCP 1.2.1 (``LAC``, ``APS``, ``RAPS`` with
``score_type="identity"``, ``calculate_conformal_value``) on the same probabilities.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from .errors import ConfigError, check_shape
from .registry import Registry

__all__ = [
    "SCORES",
    "Calibration",
    "Score",
    "calibrate",
    "conformal_quantile",
    "conformity_scores",
    "get_score",
    "min_calibration_size",
    "prediction_sets",
    "ranked_scores",
]


@dataclass(frozen=True)
class Score:
    """A non-conformity score (lower = the class conforms better).

    Attributes:
        kind: ``thr``, ``aps`` or ``raps``.
        randomized: subtract ``U * p`` (``U ~ Uniform(0, 1)``) from ``aps``/``raps`` scores, so
            coverage is ``1 - alpha`` exactly rather than at least (sets may then be empty).
        penalty: ``raps`` regularisation weight (lambda).
        kreg: ``raps``: ranks up to ``kreg`` go unpenalised.
    """

    kind: str
    randomized: bool = False
    penalty: float = 0.0
    kreg: int = 0


SCORES = Registry[Score]("conformal score", sort=False)
SCORES.add("thr", Score("thr"))
SCORES.add("aps", Score("aps"))
SCORES.add("raps", Score("raps", penalty=0.01, kreg=5))  # Angelopoulos et al.'s ImageNet-scale choice
SCORES.add("aps_rand", Score("aps", randomized=True))
SCORES.add("raps_rand", Score("raps", randomized=True, penalty=0.01, kreg=5))


def get_score(name: str | Score) -> Score:
    """The :class:`Score` named ``name`` (one of :data:`SCORES`), or ``name`` itself."""
    return name if isinstance(name, Score) else SCORES.get(name)


def conformity_scores(
    probs: Tensor,
    score: str | Score = "thr",
    labels: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Non-conformity scores of every class ``(N, C)``, or of the ``labels`` ``(N,)``.

    Args:
        probs: ``(N, C)`` class probabilities.
        score: a :data:`SCORES` name or a :class:`Score`.
        labels: ``(N,)`` class indices; given, only the label's score is returned.
        generator: the random draws of a randomised score (default: torch's global one);
            one draw per image for ``labels``, one per image and class otherwise, as TorchCP.

    Example:
        >>> probs = torch.tensor([[0.5, 0.3, 0.2]])
        >>> conformity_scores(probs, "thr")
        tensor([[0.5000, 0.7000, 0.8000]])
        >>> conformity_scores(probs, "aps", labels=torch.tensor([2]))
        tensor([1.])
    """
    check_shape("probs", probs.shape, "(N, C)")
    spec = get_score(score)
    n = probs.shape[0]
    if spec.kind == "thr":
        return 1 - (probs if labels is None else probs[torch.arange(n), labels])
    if labels is None:
        ranked, order = ranked_scores(probs, spec, generator)
        return ranked.gather(-1, torch.argsort(order, dim=-1))  # back to class order
    ordered, order = torch.sort(probs, dim=-1, descending=True)
    cumsum = torch.cumsum(ordered, dim=-1)
    u = torch.rand(n, generator=generator, dtype=probs.dtype) if spec.randomized else torch.zeros(n, dtype=probs.dtype)
    rank = torch.where(order == labels.view(-1, 1))  # (rows, 0-based rank of the label)
    out = cumsum[rank] - u * ordered[rank]
    if spec.kind == "raps":
        out = out + torch.clamp_min(spec.penalty * (rank[1] + 1 - spec.kreg), 0)
    return out


def ranked_scores(probs: Tensor, score: str | Score = "thr",
                  generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Every class's score in rank order ``(N, C)`` (most probable class first) and the class
    at each rank ``(N, C)``. A set's size is the number of ranks scoring at most the threshold;
    for the fixed scores the ranked scores never decrease, so sets are top-ranked prefixes.

    Example:
        >>> ranked, order = ranked_scores(torch.tensor([[0.2, 0.5, 0.3]]), "aps")
        >>> ranked, order
        (tensor([[0.5000, 0.8000, 1.0000]]), tensor([[1, 2, 0]]))
    """
    spec = get_score(score)
    ordered, order = torch.sort(probs, dim=-1, descending=True)  # (N, C), class at each rank
    if spec.kind == "thr":
        return 1 - ordered, order
    cumsum = torch.cumsum(ordered, dim=-1)
    u = torch.rand(probs.shape, generator=generator, dtype=probs.dtype) if spec.randomized else torch.zeros_like(probs)
    out = cumsum - ordered * u
    if spec.kind == "raps":
        out = out + torch.clamp_min(spec.penalty * (torch.arange(1, probs.shape[1] + 1) - spec.kreg), 0)
    return out, order


def _rank(n: int, alpha: float) -> int:
    """The finite-sample quantile's rank: ``ceil((n + 1)(1 - alpha))``."""
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha}")
    return math.ceil((n + 1) * (1 - alpha))


def min_calibration_size(alpha: float) -> int:
    """The fewest calibration images for which ``alpha`` has a finite threshold.

    Example:
        >>> min_calibration_size(0.1), min_calibration_size(0.05)
        (9, 19)
    """
    n = max(1, math.floor((1 - alpha) / alpha) - 1)
    while _rank(n, alpha) > n:
        n += 1
    return n


def conformal_quantile(scores: Tensor, alpha: float) -> float:
    """The ``ceil((n + 1)(1 - alpha))``-th smallest of ``n`` calibration scores.

    Raises:
        ConfigError: ``n`` is too small for ``alpha`` (the rank would exceed ``n``).

    Example:
        >>> conformal_quantile(torch.arange(1.0, 20.0), 0.1)   # n = 19: the 18th smallest
        18.0
    """
    n = scores.shape[0]
    k = _rank(n, alpha)
    if k > n:
        raise ConfigError(
            f"{n} calibration images are too few for alpha={alpha}: need at least "
            f"{min_calibration_size(alpha)} (add images or raise alpha)")
    return float(torch.kthvalue(scores, k, dim=0).values)


@dataclass(frozen=True)
class Calibration:
    """A calibrated conformal predictor: sets are the classes whose score is ``<= threshold``.

    Attributes:
        alpha: miscoverage level; sets hold the true class with probability >= ``1 - alpha``.
        score: the :data:`SCORES` name.
        threshold: the calibrated quantile of the calibration images' label scores (q-hat).
        n: number of calibration images.
    """

    alpha: float
    score: str
    threshold: float
    n: int

    @property
    def coverage(self) -> float:
        """The guaranteed coverage ``1 - alpha``."""
        return 1 - self.alpha

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        """Inverse of :meth:`to_dict` (the score name is checked)."""
        try:
            cal = cls(float(d["alpha"]), str(d["score"]), float(d["threshold"]), int(d["n"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"a calibration needs alpha, score, threshold and n, got {d!r}") from e
        get_score(cal.score)
        _rank(cal.n, cal.alpha)
        return cal


def calibrate(probs: Tensor, labels: Tensor, alpha: float, score: str = "thr",
              generator: torch.Generator | None = None) -> Calibration:
    """Calibrate on held-out images: the threshold whose sets cover ``1 - alpha`` of new images.

    Args:
        probs: ``(N, C)`` probabilities of the calibration images (the same model and policy
            that will make the sets).
        labels: ``(N,)`` their true classes.
        alpha: miscoverage level in (0, 1).
        score: a :data:`SCORES` name.
        generator: random draws of a randomised score.

    Raises:
        ConfigError: alpha out of range, or ``N`` too small for it.

    Example:
        >>> probs = torch.softmax(torch.randn(50, 4, generator=torch.Generator().manual_seed(0)), -1)
        >>> cal = calibrate(probs, torch.zeros(50, dtype=torch.long), 0.1)
        >>> prediction_sets(probs, cal)[:, 0].float().mean() >= 0.9
        tensor(True)
    """
    if labels.shape != probs.shape[:1]:
        raise ConfigError(f"labels must be ({probs.shape[0]},), got {tuple(labels.shape)}")
    get_score(score)
    q = conformal_quantile(conformity_scores(probs, score, labels, generator), alpha)
    return Calibration(alpha, score, q, int(labels.shape[0]))


def prediction_sets(probs: Tensor, calibration: Calibration, generator: torch.Generator | None = None) -> Tensor:
    """``(N, C)`` bool: the classes in each image's conformal set.

    Example:
        >>> cal = Calibration(alpha=0.1, score="thr", threshold=0.75, n=100)
        >>> prediction_sets(torch.tensor([[0.7, 0.25, 0.05]]), cal)
        tensor([[ True,  True, False]])
    """
    return conformity_scores(probs, calibration.score, None, generator) <= calibration.threshold
