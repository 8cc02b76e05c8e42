"""Paired statistics (ttakit.evaluation.stats): hand-computed cases and SciPy references."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from ttakit.errors import ShapeError
from ttakit.evaluation import stats
from ttakit.evaluation.stats import (
    PairedComparison,
    compare,
    images_needed,
    mcnemar_exact,
    paired_bootstrap,
)



def _scipy_stats():
    """scipy.stats, the reference of the tests that compare with it (they alone skip without it)."""
    return pytest.importorskip("scipy.stats")


def _binom_two_sided(k: int, n: int) -> float:
    """Exact two-sided binomial p-value at p = 1/2, k <= n/2: twice the lower tail, capped at 1."""
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


# ---------------------------------------------------------------- McNemar


@pytest.mark.parametrize(
    ("fixed", "broken", "expected"),
    [
        (8, 1, 2 * (1 + 9) / 2**9),  # = 0.0390625
        (1, 8, 0.0390625),  # symmetric
        (0, 5, 2 / 2**5),
        (0, 1, 1.0),  # 2 * 1/2, capped at 1
        (3, 3, 1.0),
        (0, 0, 1.0),
        (10, 2, 2 * (1 + 12 + 66) / 2**12),
    ],
)
def test_mcnemar_hand_computed(fixed: int, broken: int, expected: float) -> None:
    assert mcnemar_exact(fixed, broken) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_matches_scipy_binomtest() -> None:
    rng = np.random.default_rng(0)
    pairs = [(int(f), int(b)) for f, b in rng.integers(0, 60, size=(150, 2))]
    pairs += [(int(f), int(b)) for f, b in rng.integers(0, 5000, size=(30, 2))]
    pairs += [(10**6, 10**6 - 3000), (500_000, 498_000), (1000, 1100), (40, 0)]
    for fixed, broken in pairs:
        n = fixed + broken
        ref = 1.0 if n == 0 else _scipy_stats().binomtest(min(fixed, broken), n, 0.5).pvalue
        assert mcnemar_exact(fixed, broken) == pytest.approx(ref, rel=1e-7, abs=1e-300), (
            fixed,
            broken,
        )


def test_mcnemar_huge_counts_are_finite() -> None:
    p = mcnemar_exact(10**6, 10**6 - 5000)
    assert 0.0 < p < 1e-3
    assert mcnemar_exact(10**6, 0) == 0.0  # underflows cleanly, no error or nan
    assert mcnemar_exact(np.int64(8), np.int64(1)) == pytest.approx(0.0390625)


@pytest.mark.parametrize(("fixed", "broken"), [(-1, 3), (2.5, 1), (True, 1)])
def test_mcnemar_rejects_bad_counts(fixed: object, broken: object) -> None:
    with pytest.raises(ValueError):
        mcnemar_exact(fixed, broken)  # type: ignore[arg-type]


# ---------------------------------------------------------------- bootstrap


def _slow_bootstrap(a, b, n_resamples, seed, level):
    """One resample at a time, as a plain loop: the reference for the vectorised version."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(n_resamples):
        idx = rng.integers(0, len(d), size=len(d))
        means.append(sum(d[i] for i in idx) / len(d))
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return sum(d) / len(d), low, high


def _correctness(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Correlated plain/policy correctness, the policy about 2 points better."""
    rng = np.random.default_rng(seed)
    plain = rng.random(n) < 0.75
    flip = rng.random(n)
    tta = np.where(plain, flip > 0.04, flip < 0.16)  # breaks ~3 %, fixes ~4 % of all images
    return plain, tta


def test_bootstrap_matches_slow_loop() -> None:
    plain, tta = _correctness(57, seed=1)
    got = paired_bootstrap(tta, plain, n_resamples=300, seed=7, level=0.9)
    ref = _slow_bootstrap(tta, plain, 300, 7, 0.9)
    assert got == pytest.approx(ref, abs=1e-12)


def test_bootstrap_chunking_does_not_change_result(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=101), rng.normal(size=101)
    whole = paired_bootstrap(a, b, n_resamples=250, seed=5)
    monkeypatch.setattr(stats, "_MAX_INDICES", 3 * 101 + 17)  # 3 resamples per chunk
    assert paired_bootstrap(a, b, n_resamples=250, seed=5) == whole
    monkeypatch.setattr(stats, "_MAX_INDICES", 1)  # below N: one resample per chunk
    assert paired_bootstrap(a, b, n_resamples=250, seed=5) == whole


def test_bootstrap_matches_scipy_percentile() -> None:
    rng = np.random.default_rng(11)
    nll_plain = rng.gamma(2.0, 0.5, size=400)
    nll_tta = nll_plain - 0.05 + rng.normal(0, 0.2, size=400)
    delta, low, high = paired_bootstrap(nll_tta, nll_plain, n_resamples=4000, seed=0)
    ref = _scipy_stats().bootstrap(
        (nll_tta - nll_plain,),
        np.mean,
        n_resamples=4000,
        method="percentile",
        confidence_level=0.95,
        random_state=np.random.default_rng(1),
    ).confidence_interval
    se = np.std(nll_tta - nll_plain, ddof=1) / math.sqrt(400)
    assert delta == pytest.approx(np.mean(nll_tta - nll_plain), abs=1e-12)
    # Different random streams: agree up to Monte Carlo error, a small share of the SE.
    assert low == pytest.approx(ref.low, abs=0.15 * se)
    assert high == pytest.approx(ref.high, abs=0.15 * se)
    assert high - low == pytest.approx(2 * 1.96 * se, rel=0.1)


def test_bootstrap_is_deterministic_and_seeded() -> None:
    plain, tta = _correctness(500, seed=2)
    first = paired_bootstrap(tta, plain, seed=3)
    assert paired_bootstrap(tta, plain, seed=3) == first
    other = paired_bootstrap(tta, plain, seed=4)
    assert other[0] == first[0]  # delta does not depend on the seed
    assert other[1:] != first[1:]


def test_bootstrap_ci_contains_delta_and_shrinks_with_n() -> None:
    widths = []
    for n in (200, 20_000):
        plain, tta = _correctness(n, seed=n)
        delta, low, high = paired_bootstrap(tta, plain, n_resamples=500)
        assert delta == pytest.approx(tta.mean() - plain.mean())
        assert low < delta < high
        widths.append(high - low)
    assert widths[1] < widths[0] / 5  # 1/sqrt(N): about 10 times narrower


def test_bootstrap_tiny_inputs() -> None:
    assert paired_bootstrap([0.25], [1.0]) == (-0.75, -0.75, -0.75)
    assert all(math.isnan(v) for v in paired_bootstrap([], []))


def test_bootstrap_accepts_torch_tensors() -> None:
    a = torch.tensor([1, 0, 1, 1, 0, 1], dtype=torch.bool)
    b = torch.tensor([0, 0, 1, 0, 0, 1], dtype=torch.bool)
    assert paired_bootstrap(a, b, n_resamples=100) == paired_bootstrap(
        a.numpy().astype(int), b.numpy().astype(int), n_resamples=100
    )


def test_bootstrap_shape_errors_and_bad_arguments() -> None:
    with pytest.raises(ShapeError, match="b: expected shape"):
        paired_bootstrap([1, 0, 1], [1, 0])
    with pytest.raises(ShapeError, match=r"got \(2, 2\)"):
        paired_bootstrap(np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="level"):
        paired_bootstrap([1], [0], level=1.0)
    with pytest.raises(ValueError, match="n_resamples"):
        paired_bootstrap([1], [0], n_resamples=0)


# ---------------------------------------------------------------- images_needed


def test_images_needed_hand_computed() -> None:
    z_a, z_b = 1.959963984540054, 0.8416212335729143  # z(0.975), z(0.8)
    pd, delta = 0.1, 0.014
    expected = math.ceil((z_a * math.sqrt(pd) + z_b * math.sqrt(pd - delta**2)) ** 2 / delta**2)
    assert expected == 4003
    assert images_needed(delta, pd) == expected
    assert images_needed(-delta, pd) == expected  # a loss needs as many images as a gain
    z_a01 = 2.5758293035489004  # z(0.995)
    assert images_needed(0.05, 0.2, alpha=0.01) == math.ceil(
        (z_a01 * math.sqrt(0.2) + z_b * math.sqrt(0.2 - 0.05**2)) ** 2 / 0.05**2
    )
    assert images_needed(0.03, 0.1) < images_needed(0.01, 0.1)
    assert images_needed(0.01, 0.1, power=0.9) > images_needed(0.01, 0.1)


def test_images_needed_none_and_errors() -> None:
    assert images_needed(0.0, 0.1) is None
    assert images_needed(0.01, 0.0) is None
    assert images_needed(math.nan, 0.1) is None
    with pytest.raises(ValueError):
        images_needed(0.2, 0.1)  # |delta| cannot exceed the discordant share
    with pytest.raises(ValueError):
        images_needed(0.01, 0.1, power=1.0)


# ---------------------------------------------------------------- PairedComparison / compare


def _comparison(**changes: object) -> PairedComparison:
    base = PairedComparison(
        n=1000,
        delta_top1=0.014,
        ci_top1=(-0.004, 0.032),
        p_value=0.11,
        fixed=30,
        broken=16,
        delta_nll=-0.006,
        ci_nll=(-0.012, 0.001),
        significant=False,
        images_needed=2347,
    )
    return dataclasses.replace(base, **changes)


def test_verdict_not_significant_gain() -> None:
    assert _comparison().verdict("hflip") == (
        "hflip: +1.4 pt [-0.4, +3.2], p = 0.11: not significant; "
        "about 2,300 images would detect a gain this size, NLL -0.006 [-0.012, +0.001]"
    )


def test_verdict_significant_gain() -> None:
    c = _comparison(delta_top1=0.022, ci_top1=(0.009, 0.035), p_value=0.003, significant=True)
    assert c.verdict("hflip") == (
        "hflip: +2.2 pt [+0.9, +3.5], p = 0.003: significant gain, NLL -0.006 [-0.012, +0.001]"
    )


def test_verdict_losses() -> None:
    sig = _comparison(
        delta_top1=-0.018,
        ci_top1=(-0.03, -0.006),
        p_value=0.0004,
        fixed=5,
        broken=23,
        delta_nll=0.004,
        ci_nll=(0.001, 0.007),
        significant=True,
    )
    assert sig.verdict("five_crop") == (
        "five_crop: -1.8 pt [-3.0, -0.6], p < 0.001: significant loss, NLL +0.004 [+0.001, +0.007]"
    )
    weak = _comparison(delta_top1=-0.004, ci_top1=(-0.012, 0.004), p_value=0.4, images_needed=12345)
    assert "not significant; about 12,000 images would detect a loss this size" in weak.verdict("x")


def test_verdict_rounds_image_count_to_two_significant_figures() -> None:
    assert "about 1,000 images" in _comparison(images_needed=996).verdict("x")
    assert "about 15 images" in _comparison(images_needed=15).verdict("x")
    assert "images would" not in _comparison(images_needed=None).verdict("x")


def test_compare_end_to_end_significant_gain() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    plain = rng.random(n) < 0.7
    tta = plain.copy()
    tta[np.flatnonzero(~plain)[:80]] = True  # 80 fixed
    tta[np.flatnonzero(plain)[:20]] = False  # 20 broken
    plain_nll = rng.gamma(2.0, 0.5, size=n)
    tta_nll = plain_nll - 0.01
    c = compare(plain, tta, plain_nll, tta_nll)
    assert (c.n, c.fixed, c.broken) == (n, 80, 20)
    assert c.delta_top1 == pytest.approx(60 / n)
    assert c.p_value == pytest.approx(_binom_two_sided(20, 100), rel=1e-9)  # McNemar: 20 broken of 100 changed
    assert c.significant is True
    assert c.ci_top1[0] > 0 and c.ci_top1[0] < c.delta_top1 < c.ci_top1[1]
    assert c.delta_nll == pytest.approx(-0.01) and c.ci_nll == pytest.approx((-0.01, -0.01))
    assert c.images_needed == images_needed(60 / n, 100 / n)
    assert c.verdict("hflip").startswith("hflip: +3.0 pt [+")
    assert "significant gain" in c.verdict("hflip")
    # Same inputs as 0/1 ints and as torch tensors give the same comparison.
    as_ints = compare(plain.astype(int), tta.astype(int), plain_nll, tta_nll)
    as_torch = compare(*(torch.from_numpy(x) for x in (plain, tta, plain_nll, tta_nll)))
    assert as_ints == c and as_torch == c


def test_compare_to_dict_is_json_ready() -> None:
    plain, tta = _correctness(300, seed=9)
    c = compare(plain, tta, np.where(plain, 0.3, 2.0), np.where(tta, 0.3, 2.0), n_resamples=200)
    d = c.to_dict()
    assert list(d) == [
        "delta_top1",
        "ci_top1",
        "p_value",
        "delta_nll",
        "ci_nll",
        "significant",
        "images_needed",
    ]
    assert isinstance(d["ci_top1"], list) and len(d["ci_top1"]) == 2
    assert isinstance(d["ci_nll"], list) and len(d["ci_nll"]) == 2
    assert d["significant"] == (c.p_value < 0.05)
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.n = 3  # type: ignore[misc]


def test_compare_empty_and_bad_inputs() -> None:
    empty = compare([], [], [], [])
    assert empty.n == 0 and empty.p_value == 1.0 and not empty.significant
    assert empty.images_needed is None
    assert empty.verdict("hflip") == "hflip: no images to compare"
    d = empty.to_dict()  # nothing to measure: nan became None, not 0 (JSON cannot hold nan)
    assert d == {"delta_top1": None, "ci_top1": [None, None], "p_value": 1.0, "delta_nll": None,
                 "ci_nll": [None, None], "significant": False, "images_needed": None}
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    with pytest.raises(ShapeError, match="tta_nll"):
        compare([1, 0], [1, 1], [0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match="0/1"):
        compare([1, 2], [1, 1], [0.1, 0.2], [0.1, 0.2])
