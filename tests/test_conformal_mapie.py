"""Conformal sets against MAPIE 1.6.0 (a wheel, in the test extra: runs on every machine).

MAPIE is given the probabilities themselves through a fitted "classifier" whose features are
its probabilities, so both libraries see the same numbers. LAC (ttakit's ``thr``) agrees end
to end: calibration and sets. APS: MAPIE always randomises the calibration scores
(``cumsum - U * p_y``); with its draws ``U`` reproduced, ttakit's ``aps`` scores minus the same
term are MAPIE's, ttakit's finite-sample quantile of them is MAPIE's, and the sets differ only
by the documented rule for the class that crosses the threshold.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mapie.classification import SplitConformalClassifier
from sklearn.base import BaseEstimator, ClassifierMixin

from ttakit.conformal import Calibration, calibrate, conformal_quantile, conformity_scores, prediction_sets
from ttakit.evaluation.conformal import ConformalOptions, conformal_metrics, random_splits


class GivenProbs(ClassifierMixin, BaseEstimator):
    """A fitted classifier whose features are its class probabilities (what a TTA merge gives)."""

    def fit(self, X, y):  # noqa: N803 - sklearn's names
        self.classes_ = np.arange(np.asarray(X).shape[1])
        return self

    def predict_proba(self, X):  # noqa: N803
        return np.asarray(X, dtype=np.float64)

    def predict(self, X):  # noqa: N803
        return np.asarray(X).argmax(1)


def _data(n: int, c: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(n, c, generator=g, dtype=torch.float64) * 2, -1)
    return probs, torch.multinomial(probs, 1, generator=g)[:, 0]


def _mapie(probs, labels, alpha, score, seed=7) -> SplitConformalClassifier:
    est = GivenProbs().fit(probs.numpy(), labels.numpy())
    m = SplitConformalClassifier(est, confidence_level=1 - alpha, conformity_score=score, prefit=True, random_state=seed)
    return m.conformalize(probs.numpy(), labels.numpy())


@pytest.mark.parametrize(("n", "c", "alpha"), [(40, 3, 0.2), (200, 6, 0.1), (500, 10, 0.05), (97, 5, 0.1)])
def test_lac_calibration_and_sets_equal_mapie(n, c, alpha):
    probs, labels = _data(2 * n, c, seed=n + c)
    cal, test = slice(0, n), slice(n, 2 * n)
    ours = prediction_sets(probs[test], calibrate(probs[cal], labels[cal], alpha, "thr"))
    _, theirs = _mapie(probs[cal], labels[cal], alpha, "lac").predict_set(probs[test].numpy())
    assert theirs.shape == (n, c, 1)
    np.testing.assert_array_equal(ours.numpy(), theirs[:, :, 0])
    assert 0 < ours.sum() < ours.numel()


@pytest.mark.parametrize(("n", "c", "alpha"), [(200, 6, 0.1), (200, 6, 0.2), (300, 4, 0.05)])
def test_aps_scores_quantile_and_sets_against_mapie(n, c, alpha):
    probs, labels = _data(2 * n, c, seed=3 * n + c)
    cal, test = slice(0, n), slice(n, 2 * n)
    m = _mapie(probs[cal], labels[cal], alpha, "aps", seed=7)
    _, with_last = m.predict_set(probs[test].numpy(), conformity_score_params={"include_last_label": True})
    _, without_last = m.predict_set(probs[test].numpy(), conformity_score_params={"include_last_label": False})
    fitted = m._mapie_classifier  # noqa: SLF001 - MAPIE 1.6.0 keeps its scores and quantile here (pinned)
    mapie_scores = np.asarray(fitted.conformity_scores_, dtype=np.float64).ravel()
    q = float(np.asarray(fitted.conformity_score_function_.quantiles_).ravel()[0])
    # 1. scores: MAPIE's draws U reproduced (one uniform per calibration image, from its seed).
    u = np.random.RandomState(7).uniform(size=n)
    p_y = probs[cal][torch.arange(n), labels[cal]].numpy()
    ours = conformity_scores(probs[cal], "aps", labels[cal]).numpy() - u * p_y
    np.testing.assert_allclose(ours, mapie_scores, rtol=0, atol=1e-12)
    # 2. the finite-sample quantile of those scores.
    assert conformal_quantile(torch.from_numpy(mapie_scores), alpha) == pytest.approx(q, abs=1e-12)
    # 3. sets at that threshold: ttakit keeps the classes whose cumulative mass is <= q; MAPIE's
    # include_last_label=True adds the next-ranked class (the one crossing q), False keeps ttakit's
    # set but never an empty one (the top class instead).
    sets = prediction_sets(probs[test], Calibration(alpha, "aps", q, n)).numpy()
    order = torch.argsort(probs[test], -1, descending=True).numpy()
    rows = np.arange(n)
    crossing = np.zeros_like(sets)
    crossing[rows, order[rows, np.minimum(sets.sum(1), c - 1)]] = True
    np.testing.assert_array_equal(sets | crossing, with_last[:, :, 0])
    top = np.zeros_like(sets)
    top[rows, order[:, 0]] = True
    np.testing.assert_array_equal(np.where(sets.any(1, keepdims=True), sets, top), without_last[:, :, 0])
    assert (~sets.any(1)).any() and sets.any(1).any()  # both rules are exercised


@pytest.mark.parametrize("alpha", [0.1, 0.2])
def test_evaluation_metrics_equal_mapie_on_its_splits(alpha):
    """``conformal_metrics`` (the evaluation's set scores): on each of its random splits, the
    threshold, coverage, mean size, singleton and empty rates of MAPIE's LAC sets."""
    probs, labels = _data(300, 5, seed=11)
    opts = ConformalOptions(alpha=alpha, score="thr", splits=3, seed=4, bootstrap=0)
    got = conformal_metrics({"row": probs.float()}, labels, opts)["row"]
    per_split = []
    for cal, test in random_splits(len(labels), opts):
        m = _mapie(probs[cal].float().double(), labels[cal], alpha, "lac")
        _, sets = m.predict_set(probs[test].float().double().numpy())
        sets = sets[:, :, 0]
        sizes = sets.sum(1)
        q = float(np.asarray(m._mapie_classifier.conformity_score_function_.quantiles_).ravel()[0])  # noqa: SLF001
        per_split.append((q, sets[np.arange(len(test)), labels[test].numpy()].mean(), sizes.mean(),
                          (sizes == 1).mean(), (sizes == 0).mean()))
    q, cov, size, single, empty = np.mean(per_split, axis=0)
    assert got["threshold"] == pytest.approx(q, abs=1e-6)
    assert got["coverage"] == pytest.approx(cov, abs=1e-12) and got["set_size"] == pytest.approx(size, abs=1e-12)
    assert got["singleton_rate"] == pytest.approx(single, abs=1e-12)
    assert got["empty_rate"] == pytest.approx(empty, abs=1e-12)
