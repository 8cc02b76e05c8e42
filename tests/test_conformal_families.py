"""Set-size selection across shift families: every family counts, and the left-out one is only measured."""

from __future__ import annotations

import torch

from ttakit.evaluation.conformal import greedy_set_size
from ttakit.evaluation.conformal_families import greedy_set_size_families, leave_one_family_out


def _family_logits(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Family 0 (460 photos): view 1 is sharp, view 2 useless. Families 1 and 2 (20 each):
    view 1 is *wrong* (it backs another class), view 2 sharp. Plain (view 0) is noisy everywhere."""
    g = torch.Generator().manual_seed(seed)
    fams = torch.cat([torch.zeros(460), torch.ones(20), torch.full((20,), 2)]).long()
    labels = torch.randint(0, 5, (500,), generator=g)
    one = torch.nn.functional.one_hot(labels, 5).float()
    wrong = torch.nn.functional.one_hot((labels + 1) % 5, 5).float()
    plain = one * 2 + torch.randn(500, 5, generator=g) * 1.5
    big = fams == 0
    view1 = torch.where(big[:, None], one * 6, wrong * 6) + torch.randn(500, 5, generator=g) * 0.5
    view2 = torch.where(big[:, None], torch.randn(500, 5, generator=g), one * 6 + torch.randn(500, 5, generator=g) * 0.5)
    return torch.stack([plain, view1, view2], 1), labels, fams


def test_families_weigh_equally_where_pooling_follows_the_biggest():
    logits, labels, fams = _family_logits()
    pooled = greedy_set_size(logits, labels, 0.1, "thr", budget=1)[0]
    per_family = greedy_set_size_families(logits, labels, fams, 0.1, "thr", budget=1)[0]
    assert pooled == (1,)  # the big family's view wins the pooled objective
    assert per_family == (2,)  # the view that shrinks the sets in most families


def test_left_out_family_never_chooses_its_own_policy():
    logits, labels, fams = _family_logits(1)
    out = leave_one_family_out(logits, labels, fams, 0.1, "thr", budget=1)
    assert set(out) == {0, 1, 2}
    # family 0 left out: the others (1, 2) choose view 2, useless on family 0: no gain there
    assert out[0]["cols"] == [2] and out[0]["ratio"] > 1
    # family 1 left out: families 0 and 2 disagree; whatever is chosen is measured on family 1 only
    assert all(r["plain_set_size"] > 0 for r in out.values())
