"""Every merge mode: hand-computed values, extreme logits, weights, ties."""

from __future__ import annotations

import math

import pytest
import torch

from ttakit import PolicyError, list_merges, merge_logits


def test_known_values():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])  # (1, 2, 3)
    p = torch.softmax(logits, -1)[0]
    torch.testing.assert_close(merge_logits(logits, "mean")[0], (p[0] + p[1]) / 2)
    torch.testing.assert_close(merge_logits(logits, "sum")[0], torch.softmax(torch.tensor([2.0, 1.0, 0.0]), -1))
    torch.testing.assert_close(merge_logits(logits, "logit_mean")[0], torch.softmax(torch.tensor([1.0, 0.5, 0.0]), -1))
    g = (p[0] * p[1]).sqrt()
    torch.testing.assert_close(merge_logits(logits, "gmean")[0], g / g.sum())
    m = torch.maximum(p[0], p[1])
    torch.testing.assert_close(merge_logits(logits, "max")[0], m / m.sum())
    s = (p[0].sqrt() + p[1].sqrt()) / 2
    torch.testing.assert_close(merge_logits(logits, "tsharpen")[0], s / s.sum())


def test_vote_majority_and_tie_break():
    # Views vote class 0, 0, 1: class 0 wins even though class 1 has the larger mean probability.
    logits = torch.tensor([[[1.0, 0.0, 0.0], [1.0, 0.9, 0.0], [-5.0, 20.0, 0.0]]])
    assert merge_logits(logits, "vote").argmax().item() == 0
    # Tie 1-1: the class with the larger mean probability wins.
    tie = torch.tensor([[[1.0, 0.0, -9.0], [0.0, 3.0, -9.0]]])
    assert merge_logits(tie, "vote").argmax().item() == 1
    tie_flipped = torch.tensor([[[3.0, 0.0, -9.0], [0.0, 1.0, -9.0]]])
    assert merge_logits(tie_flipped, "vote").argmax().item() == 0


@pytest.mark.parametrize("merge", list_merges())
@pytest.mark.parametrize("magnitude", [1.0, 1e4, 1e15, 1e30])
def test_extreme_logits_give_finite_distributions(merge, magnitude):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 7, generator=g) * magnitude
    logits[0] = -magnitude  # all very negative
    logits[1] = magnitude  # all very positive
    for weights in (None, torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])):
        out = merge_logits(logits, merge, weights)
        assert out.shape == (3, 7)
        assert torch.isfinite(out).all()
        assert (out >= 0).all()
        torch.testing.assert_close(out.sum(-1), torch.ones(3))


@pytest.mark.parametrize("merge", list_merges())
def test_single_view_is_the_view_itself_for_probability_merges(merge):
    logits = torch.randn(4, 1, 6)
    out = merge_logits(logits, merge)
    assert torch.equal(out.argmax(-1), logits[:, 0].argmax(-1))
    if merge in ("mean", "sum", "logit_mean", "gmean", "max"):
        torch.testing.assert_close(out, torch.softmax(logits[:, 0], -1))


def test_weights_and_temperature():
    logits = torch.randn(2, 3, 5)
    w = torch.tensor([0.0, 0.0, 1.0])
    torch.testing.assert_close(merge_logits(logits, "mean", w), torch.softmax(logits[:, 2], -1))
    torch.testing.assert_close(merge_logits(logits, "mean", torch.tensor([2.0, 2.0, 2.0])), merge_logits(logits, "mean"))
    torch.testing.assert_close(merge_logits(logits, "logit_mean", temperature=2.0), torch.softmax(logits.mean(1) / 2, -1))
    assert math.isclose(float(merge_logits(logits, "max", w)[0].sum()), 1.0, rel_tol=1e-6)
    torch.testing.assert_close(merge_logits(logits, "max", w), torch.softmax(logits[:, 2], -1))


def test_unknown_merge_and_bad_shapes():
    with pytest.raises(PolicyError, match="unknown merge 'median'"):
        merge_logits(torch.zeros(1, 2, 3), "median")
    from ttakit import ShapeError

    with pytest.raises(ShapeError, match=r"expected shape \(B, V, C\), got \(2, 3\)"):
        merge_logits(torch.zeros(2, 3))
    with pytest.raises(ShapeError, match="weights"):
        merge_logits(torch.zeros(1, 2, 3), "mean", torch.ones(3))
