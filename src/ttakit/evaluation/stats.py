"""Paired statistics: is a TTA policy really better than the plain model on the same images?

Both models are scored on the *same* images, so the comparison is paired: per-image
differences are resampled together (bootstrap), and for top-1 only the discordant images
count (McNemar: ``fixed`` = wrong before, right with TTA; ``broken`` = the reverse). This is
far more sensitive than comparing two unpaired accuracies.

Everything here is plain NumPy (torch tensors are accepted and copied to NumPy); SciPy is
deliberately not a dependency, so the binomial tail and the normal quantiles are computed
here (``math.lgamma`` and :class:`statistics.NormalDist`).

Example:
    >>> plain = [1, 0, 1, 1, 0, 1, 0, 1]
    >>> tta = [1, 1, 1, 1, 1, 1, 0, 0]
    >>> nll_plain = [0.2, 2.1, 0.3, 0.1, 1.9, 0.4, 2.5, 0.6]
    >>> nll_tta = [0.2, 0.9, 0.3, 0.1, 0.8, 0.4, 2.4, 1.2]
    >>> c = compare(plain, tta, nll_plain, nll_tta)
    >>> c.fixed, c.broken, c.delta_top1
    (2, 1, 0.125)
    >>> print(c.verdict("hflip"))  # doctest: +NORMALIZE_WHITESPACE
    hflip: +12.5 pt [-25.0, +50.0], p = 1: not significant; about 190 images would detect
    a gain this size, NLL -0.225 [-0.637, +0.137]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from ..errors import ConfigError, ShapeError

if TYPE_CHECKING:
    from numpy.typing import ArrayLike
    from torch import Tensor

    Values = Union[ArrayLike, Tensor]
else:
    Values = Any

__all__ = [
    "GainComparison",
    "PairedComparison",
    "compare",
    "compare_statistic",
    "images_needed",
    "mcnemar_exact",
    "paired_bootstrap",
    "resample_counts",
]

# Upper bound on resample indices held at once (~160 MB as int64, as much again for the gathered
# differences): resamples are drawn in chunks of at most this many indices. Chunking does not
# change the result: NumPy's generator yields the same index stream in one block or in rows.
_MAX_INDICES = 20_000_000


def _as_vector(x: Values, what: str, length: int | None = None) -> np.ndarray:
    """``x`` as a 1-D float64 array, checked for rank and (optionally) length."""
    if hasattr(x, "detach"):  # a torch tensor, possibly on an accelerator
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ShapeError(what, "(N,)", arr.shape)
    if length is not None and arr.shape[0] != length:
        raise ShapeError(what, f"({length},) to pair with the first array", arr.shape)
    return arr.astype(np.float64, copy=False)


def _as_correct(x: Values, what: str, length: int | None = None) -> np.ndarray:
    """Per-image correctness (bool or 0/1) as a 1-D bool array."""
    arr = _as_vector(x, what, length)
    if not np.isin(arr, (0.0, 1.0)).all():
        raise ConfigError(f"{what}: correctness must be bool or 0/1, got other values")
    return arr.astype(bool)


def paired_bootstrap(
    a: Values,
    b: Values,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """Mean paired difference ``mean(a - b)`` with a percentile bootstrap confidence interval.

    Images are resampled with replacement, the same images for ``a`` and ``b`` (that is what
    makes it paired), ``n_resamples`` times; the interval is the central ``level`` share of
    the resampled means. The result depends only on the data and ``seed``.

    Args:
        a: Per-image values of the policy (0/1 correctness or per-image NLL), shape ``(N,)``.
        b: The same values of the plain model on the same images, shape ``(N,)``.
        n_resamples: Number of bootstrap resamples.
        seed: Seed of the NumPy generator that draws the resamples.
        level: Confidence level of the interval, in ``(0, 1)``.

    Returns:
        ``(delta, low, high)``. With ``N == 1`` the interval is ``(delta, delta)``; with
        ``N == 0`` all three are ``nan`` (nothing to estimate, but an empty subset should not
        break a report that loops over subsets).

    Raises:
        ShapeError: when ``a`` or ``b`` is not 1-D or their lengths differ.
        ConfigError: when ``n_resamples < 1`` or ``level`` is outside ``(0, 1)``.

    Example:
        >>> delta, low, high = paired_bootstrap([1, 1, 0, 1, 1], [0, 1, 0, 1, 0], n_resamples=500)
        >>> delta, low <= delta <= high, paired_bootstrap([1], [0])
        (0.4, True, (1.0, 1.0, 1.0))
    """
    if n_resamples < 1:
        raise ConfigError(f"n_resamples must be at least 1, got {n_resamples}")
    if not 0.0 < level < 1.0:
        raise ConfigError(f"level must be in (0, 1), got {level}")
    a_ = _as_vector(a, "a")
    d = a_ - _as_vector(b, "b", a_.shape[0])
    n = d.shape[0]
    if n == 0:
        return math.nan, math.nan, math.nan
    delta = float(d.mean())
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples, dtype=np.float64)
    # Whole resamples per chunk so memory stays bounded; beyond 2e7 images it is one per chunk.
    per_chunk = max(1, _MAX_INDICES // n)
    for start in range(0, n_resamples, per_chunk):
        stop = min(start + per_chunk, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = d[idx].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return delta, float(low), float(high)


def _count(x: int, what: str) -> int:
    """``x`` as a non-negative Python int (NumPy integers accepted)."""
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < 0:
        raise ConfigError(f"{what} must be a non-negative integer, got {x!r}")
    return int(x)


def mcnemar_exact(fixed: int, broken: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts.

    Under the null hypothesis a discordant image is equally likely to be fixed or broken, so
    ``fixed ~ Binomial(fixed + broken, 1/2)`` and ``p = min(1, 2 P(X <= min(fixed, broken)))``.

    The tail is summed from its largest term down: that term comes from ``math.lgamma`` in log
    space (no overflow of the binomial coefficient), the smaller ones from ratios of
    consecutive terms, which are all <= 1 (no overflow, harmless underflow). This stays
    accurate to about 1e-8 relative for counts of a million and more.

    Args:
        fixed: Images the policy gets right and the plain model gets wrong.
        broken: Images the plain model gets right and the policy gets wrong.

    Returns:
        The p-value in ``[0, 1]``; ``1.0`` when both counts are 0 (no evidence either way).

    Raises:
        ConfigError: when a count is negative or not an integer.

    Example:
        >>> round(mcnemar_exact(8, 1), 10), mcnemar_exact(0, 0), mcnemar_exact(5, 5)
        (0.0390625, 1.0, 1.0)
    """
    fixed, broken = _count(fixed, "fixed"), _count(broken, "broken")
    n, m = fixed + broken, min(fixed, broken)
    if 2 * m == n:  # includes n == 0: the tail P(X <= n/2) is at least 1/2
        return 1.0
    log_top = math.lgamma(n + 1) - math.lgamma(m + 1) - math.lgamma(n - m + 1) - n * math.log(2)
    # term(k - 1) / term(k) = k / (n - k + 1), for k = m, m - 1, ..., 1
    k = np.arange(m, 0, -1, dtype=np.float64)
    ratios = np.cumprod(k / (n - k + 1.0))
    tail = math.exp(log_top) * (1.0 + float(ratios.sum()))
    return min(1.0, 2.0 * tail)


def images_needed(
    delta: float,
    discordant_rate: float,
    alpha: float = 0.05,
    power: float = 0.8,
) -> int | None:
    """Approximate number of images a two-sided McNemar test needs to detect a top-1 change.

    Normal approximation of Connor (1987), with ``pd`` the discordant share
    ``(fixed + broken) / N`` and ``z`` standard normal quantiles::

        n = (z[1 - alpha/2] * sqrt(pd) + z[power] * sqrt(pd - delta**2))**2 / delta**2

    Args:
        delta: Top-1 change to detect, as a fraction (``0.014`` for 1.4 points); the sign is
            ignored.
        discordant_rate: Share of images on which the two models disagree about correctness.
        alpha: Two-sided significance level.
        power: Wanted probability of detecting the change.

    Returns:
        The number of images, rounded up; ``None`` when ``delta`` or ``discordant_rate`` is 0
        (or not finite): no change, or no disagreement, can never be detected.

    Raises:
        ConfigError: when ``alpha`` or ``power`` is outside ``(0, 1)``, the rate is outside
            ``[0, 1]``, or ``|delta|`` exceeds the rate (impossible: every change in top-1 is
            made by discordant images).

    Example:
        >>> images_needed(0.014, 0.1), images_needed(0.0, 0.1)
        (4003, None)
    """
    if not 0.0 < alpha < 1.0 or not 0.0 < power < 1.0:
        raise ConfigError(f"alpha and power must be in (0, 1), got {alpha} and {power}")
    if not (math.isfinite(delta) and math.isfinite(discordant_rate)):
        return None
    if not 0.0 <= discordant_rate <= 1.0:
        raise ConfigError(f"discordant_rate must be in [0, 1], got {discordant_rate}")
    delta = abs(delta)
    if delta == 0.0 or discordant_rate == 0.0:
        return None
    if delta > discordant_rate:
        raise ConfigError(f"|delta| = {delta} cannot exceed discordant_rate = {discordant_rate}")
    z = NormalDist()
    z_a, z_b = z.inv_cdf(1.0 - alpha / 2.0), z.inv_cdf(power)
    root = z_a * math.sqrt(discordant_rate) + z_b * math.sqrt(discordant_rate - delta**2)
    return math.ceil(root**2 / delta**2)


def _finite_or_none(x: float) -> float | None:
    """A plain float, or ``None`` for nan/inf (which JSON cannot hold)."""
    return float(x) if math.isfinite(x) else None


def _round_sig(n: int, digits: int = 2) -> int:
    """``n`` rounded to ``digits`` significant figures (2347 -> 2300)."""
    return int(float(f"{n:.{digits}g}"))


@dataclass(frozen=True)
class PairedComparison:
    """A TTA policy against the plain model on the same images (see :func:`compare`).

    Deltas are policy minus plain: a positive ``delta_top1`` is a gain, a negative
    ``delta_nll`` an improvement.
    """

    n: int  # images compared
    delta_top1: float  # top-1 change as a fraction (0.014 = +1.4 points)
    ci_top1: tuple[float, float]  # bootstrap confidence interval of delta_top1
    p_value: float  # two-sided exact McNemar p-value
    fixed: int  # wrong before, right with the policy
    broken: int  # right before, wrong with the policy
    delta_nll: float  # change of the mean per-image NLL
    ci_nll: tuple[float, float]  # bootstrap confidence interval of delta_nll
    significant: bool  # p_value < alpha
    images_needed: int | None  # images for an 80%-power test of a change of delta_top1

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (plain floats; ``nan`` becomes ``None``).

        Example:
            >>> PairedComparison(100, 0.02, (0.0, 0.04), 0.2, 3, 1, -0.01, (-0.02, 0.0),
            ...                  False, 1900).to_dict()  # doctest: +NORMALIZE_WHITESPACE
            {'delta_top1': 0.02, 'ci_top1': [0.0, 0.04], 'p_value': 0.2, 'delta_nll': -0.01,
             'ci_nll': [-0.02, 0.0], 'significant': False, 'images_needed': 1900}
        """
        return {
            "delta_top1": _finite_or_none(self.delta_top1),
            "ci_top1": [_finite_or_none(v) for v in self.ci_top1],
            "p_value": _finite_or_none(self.p_value),
            "delta_nll": _finite_or_none(self.delta_nll),
            "ci_nll": [_finite_or_none(v) for v in self.ci_nll],
            "significant": bool(self.significant),
            "images_needed": None if self.images_needed is None else int(self.images_needed),
        }

    def verdict(self, name: str) -> str:
        """One line for people: the change in points, its interval, p and what it means.

        Args:
            name: Name of the policy, put first on the line.

        Example:
            >>> c = PairedComparison(1000, 0.014, (-0.004, 0.032), 0.11, 30, 16, -0.006,
            ...                      (-0.012, 0.001), False, 2347)
            >>> print(c.verdict("hflip"))  # doctest: +NORMALIZE_WHITESPACE
            hflip: +1.4 pt [-0.4, +3.2], p = 0.11: not significant; about 2,300 images would
            detect a gain this size, NLL -0.006 [-0.012, +0.001]
        """
        if self.n == 0:
            return f"{name}: no images to compare"
        low, high = self.ci_top1
        # Below 0.001 two significant figures say nothing more useful than the bound.
        p = "p < 0.001" if self.p_value < 0.001 else f"p = {self.p_value:.2g}"
        line = f"{name}: {100 * self.delta_top1:+.1f} pt [{100 * low:+.1f}, {100 * high:+.1f}], {p}"
        direction = "gain" if self.delta_top1 >= 0 else "loss"
        if self.significant:
            line += f": significant {direction}"
        else:
            line += ": not significant"
            if self.images_needed is not None:
                line += (
                    f"; about {_round_sig(self.images_needed):,} images would detect a "
                    f"{direction} this size"
                )
        if math.isfinite(self.delta_nll):
            lo, hi = self.ci_nll
            line += f", NLL {self.delta_nll:+.3f} [{lo:+.3f}, {hi:+.3f}]"
        return line


def compare(
    plain_correct: Values,
    tta_correct: Values,
    plain_nll: Values,
    tta_nll: Values,
    n_resamples: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> PairedComparison:
    """Compare a TTA policy with the plain model from per-image results on the same images.

    Top-1 and NLL are bootstrapped with the same seed, hence the same resamples of images.

    Args:
        plain_correct: Per-image top-1 correctness of the plain model (bool or 0/1), ``(N,)``.
        tta_correct: The same for the policy, on the same images in the same order.
        plain_nll: Per-image negative log-likelihood of the plain model, ``(N,)``.
        tta_nll: The same for the policy.
        n_resamples: Bootstrap resamples for both confidence intervals.
        seed: Bootstrap seed.
        alpha: Significance level of the McNemar test (also used for ``images_needed``);
            the intervals are at level ``1 - alpha``.

    Returns:
        The :class:`PairedComparison`. With no images the deltas are ``nan``, ``p_value`` is
        1 and the verdict says there is nothing to compare.

    Raises:
        ShapeError: when an array is not 1-D or the lengths differ.
        ConfigError: when a correctness array holds values other than 0/1.

    Example:
        >>> c = compare([0, 0, 1, 1], [1, 1, 1, 0], [2.0, 1.5, 0.1, 0.4], [0.9, 0.8, 0.1, 1.0])
        >>> c.n, c.fixed, c.broken, c.delta_top1, round(c.delta_nll, 3), c.p_value
        (4, 2, 1, 0.25, -0.3, 1.0)
    """
    plain = _as_correct(plain_correct, "plain_correct")
    n = plain.shape[0]
    tta = _as_correct(tta_correct, "tta_correct", n)
    p_nll = _as_vector(plain_nll, "plain_nll", n)
    t_nll = _as_vector(tta_nll, "tta_nll", n)

    fixed = int(np.count_nonzero(tta & ~plain))
    broken = int(np.count_nonzero(plain & ~tta))
    level = 1.0 - alpha
    d_top1, lo_top1, hi_top1 = paired_bootstrap(tta, plain, n_resamples, seed, level)
    d_nll, lo_nll, hi_nll = paired_bootstrap(t_nll, p_nll, n_resamples, seed, level)
    p_value = mcnemar_exact(fixed, broken)
    needed = images_needed(d_top1, (fixed + broken) / n, alpha) if n else None
    return PairedComparison(
        n=n,
        delta_top1=d_top1,
        ci_top1=(lo_top1, hi_top1),
        p_value=p_value,
        fixed=fixed,
        broken=broken,
        delta_nll=d_nll,
        ci_nll=(lo_nll, hi_nll),
        significant=p_value < alpha,
        images_needed=needed,
    )


# --------------------------------------------------------------------------- any statistic
def resample_counts(n: int, n_resamples: int = 2000, seed: int = 0) -> Iterator[np.ndarray]:
    """Bootstrap resamples of ``n`` images as counts: blocks of ``(r, n)`` rows, row ``j``
    holding how often each image is drawn in resample ``j`` (each row sums to ``n``).

    Statistics that are not a mean of per-image values (mIoU from summed confusion matrices,
    COCO mAP) are recomputed on weighted images: an image drawn twice weighs 2. Blocks keep
    memory bounded; the stream depends only on ``n``, ``n_resamples`` and ``seed``.

    Example:
        >>> block = next(resample_counts(4, 3))
        >>> block.shape, block.sum(1).tolist()
        ((3, 4), [4.0, 4.0, 4.0])
    """
    if n_resamples < 1:
        raise ConfigError(f"n_resamples must be at least 1, got {n_resamples}")
    rng = np.random.default_rng(seed)
    per_block = max(1, _MAX_INDICES // max(n, 1))
    for start in range(0, n_resamples, per_block):
        r = min(per_block, n_resamples - start)
        idx = rng.integers(0, n, size=(r, n))
        counts = np.zeros((r, n), dtype=np.float64)
        np.add.at(counts, (np.arange(r)[:, None], idx), 1.0)
        yield counts


@dataclass(frozen=True)
class GainComparison:
    """A policy against the plain model on one headline statistic of the same images (see
    :func:`compare_statistic`); ``delta`` is policy minus plain, higher is better."""

    metric: str  # name of the statistic (miou, map, ...)
    n: int  # images compared
    delta: float  # policy minus plain on all the images
    ci: tuple[float, float]  # percentile bootstrap interval of delta
    significant: bool  # the interval excludes 0

    def to_dict(self) -> dict[str, Any]:
        """``delta_<metric>``, ``ci_<metric>`` and ``significant`` (``nan`` as ``None``).

        Example:
            >>> GainComparison("miou", 50, 0.012, (0.004, 0.02), True).to_dict()
            {'delta_miou': 0.012, 'ci_miou': [0.004, 0.02], 'significant': True}
        """
        return {
            f"delta_{self.metric}": _finite_or_none(self.delta),
            f"ci_{self.metric}": [_finite_or_none(v) for v in self.ci],
            "significant": bool(self.significant),
        }

    def verdict(self, name: str, label: str | None = None) -> str:
        """One line for people, in points (hundredths) of the statistic.

        Example:
            >>> print(GainComparison("miou", 50, -0.012, (-0.03, 0.004), False).verdict("hflip", "mIoU"))
            hflip: mIoU -1.2 pt [-3.0, +0.4] over 50 images: not significant
        """
        if self.n == 0 or not math.isfinite(self.delta):
            return f"{name}: no images to compare"
        low, high = self.ci
        line = (f"{name}: {label or self.metric} {100 * self.delta:+.1f} pt [{100 * low:+.1f}, {100 * high:+.1f}] "
                f"over {self.n} images")
        direction = "gain" if self.delta >= 0 else "loss"
        return line + (f": significant {direction}" if self.significant else ": not significant")


def compare_statistic(
    delta_of: Callable[[np.ndarray], np.ndarray],
    n: int,
    metric: str,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> GainComparison:
    """Paired bootstrap of any statistic of weighted images: ``delta_of(w)`` maps image
    weights ``(r, n)`` to the policy-minus-plain statistic of each row ``(r,)``. Both models
    see the same resampled images (that is what makes it paired); the interval is the central
    ``level`` share of the resampled deltas, ``significant`` when it excludes 0.

    Example:
        >>> tp_plain, tp_tta = np.array([3., 1., 4., 2.]), np.array([4., 2., 4., 2.])
        >>> total = np.array([5., 5., 5., 5.])   # a ratio of sums, not a mean of ratios
        >>> c = compare_statistic(lambda w: (w @ tp_tta - w @ tp_plain) / (w @ total), 4, "acc", 500)
        >>> c.delta, c.ci[0] <= c.delta <= c.ci[1]
        (0.1, True)
    """
    if not 0.0 < level < 1.0:
        raise ConfigError(f"level must be in (0, 1), got {level}")
    if n == 0:
        return GainComparison(metric, 0, math.nan, (math.nan, math.nan), False)
    delta = float(delta_of(np.ones((1, n)))[0])
    draws = np.concatenate([np.asarray(delta_of(w), dtype=np.float64) for w in resample_counts(n, n_resamples, seed)])
    draws = draws[np.isfinite(draws)]  # a resample without any scored class or box says nothing
    if not len(draws):
        return GainComparison(metric, n, delta, (math.nan, math.nan), False)
    tail = (1.0 - level) / 2.0
    low, high = (float(v) for v in np.quantile(draws, [tail, 1.0 - tail]))
    return GainComparison(metric, n, delta, (low, high), bool(low > 0.0 or high < 0.0))
