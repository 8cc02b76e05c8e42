"""Conformal prediction sets scored from stored probabilities: random splits, paired with plain.

Each row's merged probabilities ``(N, C)`` (no model time: they come from the stored logits)
are split ``R`` times (fixed seed) into calibration and test halves; on every split the row is
calibrated (:func:`ttakit.conformal.calibrate`) and its sets scored on the test half:
coverage (mean, spread and Monte Carlo error over the splits, against the guarantee
``[1 - alpha, 1 - alpha + 1/(n_cal + 1)]``), mean set size, singleton and empty rates, the
coverage of the worst decile of classes, coverage by set size and a set-size histogram.

Every row uses the *same* splits as plain, so set sizes are compared pairwise. The 95%
intervals of ``delta_set_size`` (and of the relative change) come from a bootstrap of the
images (the same resamples for every row): in each resample the first splits are scored again
with every image weighted by how often it was drawn, so an interval covers the sampling of
both the calibration and the test images, not just the choice of split.

:func:`greedy_set_size` chooses views (and a temperature) that minimise the mean set size: the
objective of ``ttakit search --objective set_size``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..conformal import (
    calibrate,
    conformal_quantile,
    conformity_scores,
    get_score,
    min_calibration_size,
    prediction_sets,
    ranked_scores,
)
from ..errors import ConfigError
from ..merge import merge_logits
from ..policy import Policy

__all__ = [
    "SIZE_BINS",
    "ConformalOptions",
    "ConformalScorer",
    "bootstrap_counts",
    "conformal_metrics",
    "conformal_verdict",
    "greedy_mean_merge",
    "greedy_set_size",
    "random_splits",
    "set_size_objective",
    "set_size_policy",
]

SIZE_BINS: tuple[tuple[str, int, int], ...] = (
    ("0", 0, 0), ("1", 1, 1), ("2", 2, 2), ("3", 3, 3), ("4-5", 4, 5), ("6-10", 6, 10),
    ("11-20", 11, 20), ("21-50", 21, 50), ("51+", 51, 10**9),
)  # (label, smallest size, largest size) of the histogram / coverage-by-size bins
INTERVAL_SPLITS = 10  # splits averaged in each bootstrap resample (the intervals' cost)


@dataclass(frozen=True)
class ConformalOptions:
    """How sets are scored.

    Attributes:
        alpha: miscoverage level in (0, 1): sets must cover ``1 - alpha``.
        score: a :data:`ttakit.conformal.SCORES` name (``thr``, ``aps``, ``raps``, ``*_rand``).
        splits: number of random calibration/test splits (R).
        cal_fraction: share of the images used for calibration in each split.
        seed: seed of the splits, the bootstrap draws and a randomised score's draws.
        bootstrap: resamples of the images for the 95% intervals (0: no intervals).

    Example:
        >>> ConformalOptions(alpha=1.5)
        Traceback (most recent call last):
        ...
        ttakit.errors.ConfigError: conformal alpha must be in (0, 1), got 1.5
    """

    alpha: float = 0.1
    score: str = "thr"
    splits: int = 100
    cal_fraction: float = 0.5
    seed: int = 0
    bootstrap: int = 200

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ConfigError(f"conformal alpha must be in (0, 1), got {self.alpha}")
        get_score(self.score)  # an unknown score fails before any work
        if self.splits < 1:
            raise ConfigError(f"splits must be at least 1, got {self.splits}")
        if self.bootstrap < 0:
            raise ConfigError(f"bootstrap must be >= 0, got {self.bootstrap}")
        if not 0 < self.cal_fraction < 1:
            raise ConfigError(f"cal_fraction must be in (0, 1), got {self.cal_fraction}")


def random_splits(n: int, options: ConformalOptions) -> list[tuple[Tensor, Tensor]]:
    """``R`` random ``(calibration, test)`` index pairs of ``n`` images (fixed by the seed).

    Raises:
        ConfigError: the calibration half is too small for alpha, or the test half is empty.
    """
    n_cal = int(round(n * options.cal_fraction))
    if n_cal < min_calibration_size(options.alpha) or n - n_cal < 1:
        raise ConfigError(
            f"{n} images give {n_cal} for calibration: alpha={options.alpha} needs at least "
            f"{min_calibration_size(options.alpha)} and a test image (use more images or a larger alpha)")
    g = torch.Generator().manual_seed(options.seed)
    out = []
    for _ in range(options.splits):
        perm = torch.randperm(n, generator=g)
        out.append((perm[:n_cal], perm[n_cal:]))
    return out


class _Scores:
    """One row's probabilities and score: the scores of any calibration/test split."""

    def __init__(self, probs: Tensor, labels: Tensor, options: ConformalOptions) -> None:
        self.probs, self.labels, self.options = probs, labels, options
        self.random = get_score(options.score).randomized
        if not self.random:  # fixed scores: computed once for every split
            self.label_scores = conformity_scores(probs, options.score, labels)
            self.all_scores = conformity_scores(probs, options.score)

    def split(self, cal: Tensor, test: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """The calibration images' label scores ``(n_cal,)`` and the test images' class scores ``(n_test, C)``."""
        if self.random:
            o = self.options
            return (conformity_scores(self.probs[cal], o.score, self.labels[cal], gen),
                    conformity_scores(self.probs[test], o.score, None, gen))
        return self.label_scores[cal], self.all_scores[test]


def bootstrap_counts(n: int, resamples: int, seed: int = 0) -> Tensor:
    """``(B, n)``: how often each of ``n`` images is drawn in each of ``B`` bootstrap resamples."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(n, (resamples, n), generator=g)
    return torch.zeros(resamples, n, dtype=torch.float64).scatter_add_(1, idx, torch.ones(resamples, n, dtype=torch.float64))


def _weighted_set_size(cal_scores: Tensor, test_scores: Tensor, w_cal: Tensor, w_test: Tensor, alpha: float) -> Tensor:
    """``(B,)`` mean set size of one split under ``B`` bootstrap weightings of its images: the
    threshold is the conformal quantile of the calibration scores each repeated by its weight,
    the mean is weighted by the test weights (a resample never puts an image in both halves)."""
    order = cal_scores.argsort()
    cum = w_cal[:, order].cumsum(1)  # (B, n_cal)
    n_eff = cum[:, -1]
    k = torch.ceil((n_eff + 1) * (1 - alpha))  # the finite-sample rank in each resample
    pos = torch.searchsorted(cum, k[:, None].contiguous()).squeeze(1).clamp_max(len(order) - 1)
    q = torch.where(k <= n_eff, cal_scores[order][pos], torch.full_like(n_eff, math.inf))  # (B,)
    sizes = torch.searchsorted(test_scores.sort(-1).values.contiguous(),
                               q.to(test_scores.dtype).expand(len(test_scores), -1).contiguous(), right=True)  # (n_test, B)
    return (w_test * sizes.T.double()).sum(1) / w_test.sum(1).clamp_min(1)


def _percentiles(x: Tensor) -> list[float] | None:
    if not len(x):
        return None
    return [float(v) for v in torch.quantile(x.double(), torch.tensor([0.025, 0.975], dtype=torch.float64))]


def conformal_metrics(probs: Mapping[str, Tensor], labels: Tensor, options: ConformalOptions = ConformalOptions(),
                      baseline: str = "plain", counts: Tensor | None = None) -> dict[str, dict[str, Any]]:
    """Score every row's conformal sets over the same random splits.

    Args:
        probs: row key -> ``(N, C)`` probabilities of the same images (e.g. each policy's merge).
        labels: ``(N,)`` true classes.
        options: alpha, score, number of splits and bootstrap resamples, seed.
        baseline: the row the others are compared with (``delta_set_size``, ``ci_set_size``,
            ``rel_set_size``, ``ci_rel_set_size``, ``delta_coverage``); absent: no comparison.
        counts: ``(B, N)`` bootstrap multiplicities of the images (default:
            :func:`bootstrap_counts` with ``options.bootstrap`` and the seed); pass the same
            draw to pool intervals over several subsets of one data set.

    Returns:
        Per row: alpha, score, splits, n_cal, n_test, coverage, coverage_std,
        coverage_mc_error, coverage_bounds, set_size, set_size_std, singleton_rate,
        empty_rate, worst_class_coverage (mean over the worst decile of classes, pooled over
        splits), threshold (mean), coverage_by_size and size_histogram (share of test sets
        per :data:`SIZE_BINS` bin), and ``set_size_replicates``: the mean set size in each
        bootstrap resample (averaged over the first ``INTERVAL_SPLITS`` splits).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> labels = torch.randint(0, 5, (200,), generator=g)
        >>> logits = torch.randn(200, 5, generator=g) + 2 * torch.nn.functional.one_hot(labels, 5)
        >>> m = conformal_metrics({"plain": logits.softmax(-1)}, labels, ConformalOptions(0.1, splits=20))
        >>> 0.85 < m["plain"]["coverage"] < 0.97, m["plain"]["n_cal"]
        (True, 100)
    """
    keys = list(probs)
    n, c = next(iter(probs.values())).shape
    splits = random_splits(n, options)
    rows = {k: _Scores(probs[k].double(), labels, options) for k in keys}
    gen = torch.Generator().manual_seed(options.seed + 1)
    w = bootstrap_counts(n, options.bootstrap, options.seed + 2) if counts is None else counts.double()
    R, K = len(splits), len(keys)
    cov, size, single, empty, thr = (torch.zeros(K, R, dtype=torch.float64) for _ in range(5))
    boot = torch.zeros(K, len(w), dtype=torch.float64)
    class_hits = torch.zeros(K, c, dtype=torch.float64)
    class_seen = torch.zeros(c, dtype=torch.float64)
    bin_n = torch.zeros(K, len(SIZE_BINS), dtype=torch.float64)
    bin_hit = torch.zeros(K, len(SIZE_BINS), dtype=torch.float64)
    lows = torch.tensor([lo for _, lo, _ in SIZE_BINS])
    for r, (cal, test) in enumerate(splits):
        y = labels[test]
        class_seen += torch.bincount(y, minlength=c).double()
        for i, k in enumerate(keys):
            cal_scores, test_scores = rows[k].split(cal, test, gen)
            q = conformal_quantile(cal_scores, options.alpha)
            sets = test_scores <= q  # (n_test, C)
            hit = sets[torch.arange(len(test)), y]
            sizes = sets.sum(-1)
            cov[i, r], size[i, r], thr[i, r] = hit.double().mean(), sizes.double().mean(), q
            single[i, r], empty[i, r] = (sizes == 1).double().mean(), (sizes == 0).double().mean()
            class_hits[i] += torch.bincount(y, weights=hit.double(), minlength=c)
            b = torch.bucketize(sizes, lows, right=True) - 1  # bin index of each set's size
            bin_n[i] += torch.bincount(b, minlength=len(SIZE_BINS)).double()
            bin_hit[i] += torch.bincount(b, weights=hit.double(), minlength=len(SIZE_BINS))
            if r < INTERVAL_SPLITS:  # the bootstrap: the same resamples for every row (paired)
                boot[i] += _weighted_set_size(cal_scores, test_scores, w[:, cal], w[:, test], options.alpha)
    boot /= min(R, INTERVAL_SPLITS)
    n_cal = len(splits[0][0])
    seen = class_seen > 0
    out: dict[str, dict[str, Any]] = {}
    for i, k in enumerate(keys):
        per_class = (class_hits[i][seen] / class_seen[seen]).sort().values
        worst = per_class[: max(1, math.ceil(0.1 * len(per_class)))]
        m: dict[str, Any] = {
            "alpha": options.alpha, "score": options.score, "splits": R, "n_cal": n_cal, "n_test": n - n_cal,
            "coverage": float(cov[i].mean()), "coverage_std": float(cov[i].std()) if R > 1 else 0.0,
            "coverage_mc_error": float(cov[i].std() / math.sqrt(R)) if R > 1 else 0.0,
            "coverage_bounds": [1 - options.alpha, 1 - options.alpha + 1 / (n_cal + 1)],
            "set_size": float(size[i].mean()), "set_size_std": float(size[i].std()) if R > 1 else 0.0,
            "singleton_rate": float(single[i].mean()), "empty_rate": float(empty[i].mean()),
            "worst_class_coverage": float(worst.mean()), "threshold": float(thr[i].mean()),
            "coverage_by_size": {label: {"share": float(bin_n[i, j] / bin_n[i].sum()),
                                         "coverage": float(bin_hit[i, j] / bin_n[i, j]) if bin_n[i, j] else None}
                                 for j, (label, _, _) in enumerate(SIZE_BINS)},
            "size_histogram": {label: float(bin_n[i, j] / bin_n[i].sum()) for j, (label, _, _) in enumerate(SIZE_BINS)},
            "set_size_replicates": boot[i].tolist(),
        }
        if baseline in probs and k != baseline:
            b = keys.index(baseline)
            m.update({
                "delta_set_size": float((size[i] - size[b]).mean()), "ci_set_size": _percentiles(boot[i] - boot[b]),
                "rel_set_size": float(size[i].mean() / size[b].mean() - 1) if float(size[b].mean()) else None,
                "ci_rel_set_size": _percentiles(boot[i] / boot[b].clamp_min(1e-12) - 1),
                "delta_coverage": float((cov[i] - cov[b]).mean()),
            })
        out[k] = m
    return out


def conformal_verdict(key: str, m: Mapping[str, Any]) -> str:
    """One line: coverage against the guarantee, set size and (vs the baseline) its change.

    Example:
        >>> conformal_verdict("hflip", {"alpha": 0.1, "score": "thr", "coverage": 0.904, "coverage_mc_error": 0.002,
        ...     "set_size": 2.5, "rel_set_size": -0.12, "ci_rel_set_size": [-0.2, -0.05]})
        'hflip: thr sets at alpha 0.1 cover 90.4% (+/- 0.2, guaranteed >= 90%), mean size 2.50, -12.0% vs plain [-20.0, -5.0]'
    """
    line = (f"{key}: {m['score']} sets at alpha {m['alpha']:g} cover {100 * m['coverage']:.1f}% "
            f"(+/- {100 * m['coverage_mc_error']:.1f}, guaranteed >= {100 * (1 - m['alpha']):g}%), "
            f"mean size {m['set_size']:.2f}")
    if m.get("rel_set_size") is not None:
        line += f", {100 * m['rel_set_size']:+.1f}% vs plain"
        if m.get("ci_rel_set_size"):
            lo, hi = m["ci_rel_set_size"]
            line += f" [{100 * lo:+.1f}, {100 * hi:+.1f}]"
    return line


@dataclass(frozen=True)
class ConformalScorer:
    """The conformal columns of an evaluation: called with every row's merged probabilities
    ``{key: (N, C)}`` and the labels, returns ``{key: {"conformal": metrics}}`` (the metrics
    of :func:`conformal_metrics` without the bootstrap replicates, plus a one-line
    ``verdict``). Pass it as one of :func:`~ttakit.evaluation.evaluate.evaluate`'s ``extras``.

    Example:
        >>> labels = torch.arange(40) % 4
        >>> probs = {"plain": torch.full((40, 4), 0.25)}
        >>> ConformalScorer(ConformalOptions(0.1, splits=5))(probs, labels)["plain"]["conformal"]["set_size"]
        4.0
    """

    options: ConformalOptions = ConformalOptions()

    def __call__(self, probs: Mapping[str, Tensor], labels: Tensor) -> dict[str, dict[str, Any]]:
        metrics = conformal_metrics(probs, labels, self.options)
        out = {}
        for key, m in metrics.items():
            m.pop("set_size_replicates")
            out[key] = {"conformal": {**m, "verdict": conformal_verdict(key, m)}}
        return out


# --------------------------------------------------------------------------- search
def set_size_objective(probs: Tensor, labels: Tensor, alpha: float, score: str = "thr") -> float:
    """Cross-fitted mean set size: calibrate on one half, size the sets of the other, and the
    reverse (the sizes are not those of sets calibrated on themselves).

    Example:
        >>> labels = torch.arange(40) % 4
        >>> sharp = torch.nn.functional.one_hot(labels, 4).double() * 0.9 + 0.025
        >>> set_size_objective(sharp, labels, 0.1)
        1.0
    """
    n = len(labels)
    halves = (torch.arange(0, n, 2), torch.arange(1, n, 2))  # fixed and interleaved: every candidate sees the same
    spec = get_score(score)
    if spec.randomized:  # choose with the fixed form; randomisation only trims the boundary
        score = score.removesuffix("_rand")
    if spec.kind == "thr":  # no ranking needed
        full = conformity_scores(probs, score)
        lab = full[torch.arange(n), labels]
    else:
        full, order = ranked_scores(probs, score)  # (N, C) in rank order: sizes need no class order
        lab = full[order == labels[:, None]]  # the label's score, one per row
    total = 0.0
    for cal, test in (halves, halves[::-1]):
        total += float((full[test] <= conformal_quantile(lab[cal], alpha)).sum())
    return total / n


def greedy_set_size(logits: Tensor, labels: Tensor, alpha: float, score: str = "thr", budget: int = 5,
                    temperatures: Sequence[float] = (0.5, 0.7, 1.0, 1.4, 2.0),
                    weights: Sequence[float] | None = None) -> tuple[tuple[int, ...], float, tuple[float, ...]]:
    """Greedy view selection (with replacement) minimising :func:`set_size_objective` of the
    mean merge, over ``temperatures``; stops when no view lowers it (plain is a candidate).

    With ``weights`` (one per column, e.g. learned by NLL), only the temperature is chosen, for
    the weighted merge of all the columns.

    Returns:
        ``(chosen columns, temperature, objective after each step)``.

    Example:
        >>> labels = torch.arange(40) % 4
        >>> good = torch.nn.functional.one_hot(labels, 4).float() * 4
        >>> noisy = good + 3 * torch.randn(40, 4, generator=torch.Generator().manual_seed(0))
        >>> logits = torch.stack([noisy, torch.randn(40, 4), good], dim=1)   # (N, U=3, C): plain, bad, good
        >>> greedy_set_size(logits, labels, 0.1)[0][0]   # the good view first
        2
    """
    if budget < 1:
        raise ConfigError(f"budget must be at least 1 view, got {budget}")
    if weights is not None:
        w = torch.tensor(list(weights))
        sizes = [set_size_objective(merge_logits(logits, "mean", w, t).double(), labels, alpha, score) for t in temperatures]
        best = min(range(len(temperatures)), key=sizes.__getitem__)
        return tuple(range(logits.shape[1])), temperatures[best], (sizes[best],)
    return greedy_mean_merge(logits, lambda probs: set_size_objective(probs, labels, alpha, score), budget, temperatures)


def greedy_mean_merge(logits: Tensor, objective: Callable[[Tensor], float], budget: int,
                      temperatures: Sequence[float]) -> tuple[tuple[int, ...], float, tuple[float, ...]]:
    """Greedy view selection (with replacement) minimising ``objective`` of the mean merge of
    the chosen columns' probabilities ``(N, C)``, over ``temperatures``; stops when no view
    lowers it. Returns ``(chosen columns, temperature, objective after each step)``.

    Example:
        >>> logits = torch.tensor([[[0.0, 1.0], [2.0, 0.0]]])            # (N=1, U=2, C=2)
        >>> greedy_mean_merge(logits, lambda p: float(1 - p[0, 0]), 3, (1.0,))[0]   # column 1 backs class 0
        (1,)
    """
    probs = [torch.softmax(logits.double() / t, dim=-1) for t in temperatures]  # T x (N, U, C)
    running = [torch.zeros_like(p[:, 0]) for p in probs]  # sum of the chosen views' probabilities
    cols: list[int] = []
    trace: list[float] = []
    temperature, current = 1.0, math.inf
    for step in range(budget):
        cand = [(objective((running[t] + probs[t][:, u]) / (step + 1)), t, u)
                for t in range(len(temperatures)) for u in range(logits.shape[1])]
        value, t, u = min(cand)
        if value >= current - 1e-12:
            break
        current, temperature = value, temperatures[t]
        cols.append(u)
        trace.append(value)
        for i in range(len(temperatures)):
            running[i] += probs[i][:, u]
    return tuple(cols), temperature, tuple(trace)



def set_size_policy(
    pool: Policy,
    logits: Tensor,
    labels: Tensor,
    options: ConformalOptions,
    budget: int = 5,
    fit_weights: Callable[[Tensor, Tensor, Sequence[int]], tuple[tuple[float, ...], float]] | None = None,
    heldout: tuple[Tensor, Tensor] | None = None,
    name: str = "searched",
    provenance: Mapping[str, Any] | None = None,
) -> Policy:
    """Choose views (and a temperature; with ``fit_weights``, per-view weights too) that
    minimise the mean conformal set size, then calibrate on images kept apart.

    The images are split once (``options.seed``): ``options.cal_fraction`` of them only
    calibrate the chosen policy, the rest only choose it, so the coverage guarantee holds for
    the returned calibration. ``meta["conformal"]`` holds it (the policy is a calib.json).

    Args:
        pool: candidate views; ``logits`` ``(N, U, C)`` has one column per pool view (0: plain).
        labels: ``(N,)`` labels.
        options: alpha, score, cal_fraction and seed (``splits`` is not used here).
        budget: maximum number of views.
        fit_weights: ``(logits, labels, cols) -> (weights of the distinct cols, temperature)``
            (e.g. :func:`~ttakit.evaluation.search.learn_weights`); the weights are kept only
            where they lower the set size on the choosing images.
        heldout: other images ``(logits, labels)`` to report the calibrated sets on.
        name, provenance: the policy's name and extra ``meta`` entries.

    Example:
        >>> from ttakit.transforms import HFlip
        >>> from ttakit.views import View
        >>> pool = Policy((View(), View((HFlip(),))))
        >>> labels = torch.arange(60) % 3
        >>> logits = torch.nn.functional.one_hot(labels, 3).float()[:, None].repeat(1, 2, 1) * 3
        >>> set_size_policy(pool, logits, labels, ConformalOptions(alpha=0.2)).meta["conformal"]["n"]
        30
    """
    n = len(labels)
    cal, fit = random_splits(n, ConformalOptions(options.alpha, options.score, 1, options.cal_fraction, options.seed))[0]
    need = min_calibration_size(options.alpha)
    if len(fit) // 2 < need:  # the choosing part is itself cross-fitted in two halves
        raise ConfigError(f"{n} images are too few for a set-size search at alpha={options.alpha}: {len(fit)} choose "
                          f"the policy (cross-fitted in halves of at least {need}) and {len(cal)} calibrate it; "
                          "use more images or a larger alpha")
    cols, temperature, trace = greedy_set_size(logits[fit], labels[fit], options.alpha, options.score, budget)
    weights: tuple[float, ...] | None = None
    how = f"greedy set-size search ({options.score}, alpha {options.alpha:g}, budget {budget})"
    if fit_weights is not None:
        distinct = list(dict.fromkeys(cols))
        w, _ = fit_weights(logits[fit], labels[fit], cols)
        _, t_w, (size_w,) = greedy_set_size(logits[fit][:, distinct], labels[fit], options.alpha, options.score, weights=w)
        if size_w < trace[-1]:
            cols, weights, temperature = distinct, w, t_w
            how += " + learned weights"
    wt = None if weights is None else torch.tensor(weights)
    probs = merge_logits(logits[cal][:, list(cols)], "mean", wt, temperature).double()
    calibration = calibrate(probs, labels[cal], options.alpha, options.score)
    meta: dict[str, Any] = {
        **(provenance or {}), "how": how, "conformal": calibration.to_dict(),
        "trace": [{"view": pool.views[c].name, "objective": v} for c, v in zip(cols, trace)],
        "chosen_on": len(fit), "calibrated_on": len(cal),
    }
    if heldout is not None:
        z, y = heldout
        sets = prediction_sets(merge_logits(z[:, list(cols)], "mean", wt, temperature).double(), calibration)
        plain = calibrate(torch.softmax(logits[cal][:, 0].double(), -1), labels[cal], options.alpha, options.score)
        plain_sets = prediction_sets(torch.softmax(z[:, 0].double(), -1), plain)
        meta["heldout"] = {"coverage": float(sets[torch.arange(len(y)), y].double().mean()),
                           "set_size": float(sets.sum(-1).double().mean()),
                           "plain": {"coverage": float(plain_sets[torch.arange(len(y)), y].double().mean()),
                                     "set_size": float(plain_sets.sum(-1).double().mean())}}
    return Policy(tuple(pool.views[c] for c in cols), weights=weights, merge="mean", temperature=temperature,
                  name=name, meta=meta)
