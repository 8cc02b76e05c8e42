"""Classification metrics, as plain functions and as a streaming accumulator.

All functions take ``probs`` ``(N, C)`` (rows sum to 1) and integer ``labels`` ``(N,)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["ECE_BINS", "TEMPERATURES", "MetricAccumulator", "ece", "nll", "topk_accuracy"]

ECE_BINS = 15
# Temperatures tried when calibrating (log-spaced from 0.4 to 2.5, 1 included).
TEMPERATURES = tuple(float(t) for t in torch.logspace(math.log10(0.4), math.log10(2.5), 17).tolist()) + (1.0,)
_EPS = 1e-12  # probabilities are floored here in the NLL so a confident mistake stays finite


def topk_accuracy(probs: Tensor, labels: Tensor, k: int = 1) -> float:
    """Share of rows whose label is among the ``k`` largest probabilities."""
    k = min(k, probs.shape[-1])
    return (probs.topk(k, dim=-1).indices == labels[:, None]).any(dim=-1).float().mean().item()


def nll(probs: Tensor, labels: Tensor) -> float:
    """Mean negative log-likelihood of the labels."""
    return -probs.gather(1, labels[:, None]).clamp_min(_EPS).log().mean().item()


def _bin_stats(probs: Tensor, labels: Tensor, bins: int) -> tuple[Tensor, Tensor, Tensor]:
    conf, pred = probs.max(dim=-1)
    # Bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of 0 goes to bin 0.
    idx = (conf * bins).ceil().long().clamp(1, bins) - 1
    count = torch.bincount(idx, minlength=bins).double()
    conf_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, idx, conf.double())
    correct = torch.zeros(bins, dtype=torch.float64).index_add_(0, idx, (pred == labels).double())
    return count, conf_sum, correct


def ece(probs: Tensor, labels: Tensor, bins: int = ECE_BINS) -> float:
    """Expected calibration error with ``bins`` equal-width confidence bins:
    ``sum_b |B_b|/N * |accuracy(B_b) - confidence(B_b)|``."""
    count, conf_sum, correct = _bin_stats(probs, labels, bins)
    return float((conf_sum - correct).abs().sum() / count.sum())


@dataclass
class MetricAccumulator:
    """Streaming top-1/top-5/NLL/ECE and fixed/broken counts against the plain model.

    Example:
        >>> acc = MetricAccumulator(bins=10)
        >>> _ = acc.update(torch.tensor([[0.9, 0.1], [0.3, 0.7]]), torch.tensor([0, 0]))
        >>> acc.compute()["top1"], round(acc.compute()["ece"], 3)
        (0.5, 0.4)
    """

    bins: int = ECE_BINS
    n: int = 0
    top1: float = 0.0
    top5: float = 0.0
    nll_sum: float = 0.0
    fixed: int = 0
    broken: int = 0
    # Per confidence bin: images, summed confidence, correct predictions (sized in __post_init__).
    count: Tensor = field(init=False)
    conf_sum: Tensor = field(init=False)
    correct: Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.count, self.conf_sum, self.correct = (torch.zeros(self.bins, dtype=torch.float64) for _ in range(3))

    def update(self, probs: Tensor, labels: Tensor, plain_correct: Tensor | None = None) -> Tensor:
        """Add a batch; returns the per-row top-1 correctness ``(N,)``."""
        probs, labels = probs.float(), labels.long()
        right = probs.argmax(-1) == labels
        top5 = (probs.topk(min(5, probs.shape[-1]), dim=-1).indices == labels[:, None]).any(-1)
        self.n += len(labels)
        self.top1 += float(right.sum())
        self.top5 += float(top5.sum())
        self.nll_sum += float(-probs.gather(1, labels[:, None]).clamp_min(_EPS).log().sum())
        c, s, k = _bin_stats(probs, labels, self.bins)
        self.count += c
        self.conf_sum += s
        self.correct += k
        if plain_correct is not None:
            self.fixed += int((right & ~plain_correct).sum())
            self.broken += int((~right & plain_correct).sum())
        return right

    def compute(self) -> dict[str, float | int]:
        n = max(self.n, 1)
        return {
            "top1": self.top1 / n,
            "top5": self.top5 / n,
            "nll": self.nll_sum / n,
            "ece": float((self.conf_sum - self.correct).abs().sum() / n),
            "fixed": self.fixed,
            "broken": self.broken,
        }
