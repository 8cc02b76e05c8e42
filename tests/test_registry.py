"""One registry for every family of named things: an unknown name raises UnknownNameError naming the known ones."""

from __future__ import annotations

import importlib
import pkgutil

import numpy as np
import pytest
import torch

import ttakit
from ttakit import ClassificationTTA, ConfigError, PolicyError, Registry, SegmentationTTA, UnknownNameError
from ttakit.evaluation.classify_logits import ClassifyScoring


def _registries() -> dict[str, Registry]:
    """Every module-level Registry in the package, by the family it names."""
    found: dict[str, Registry] = {}
    for info in pkgutil.walk_packages(ttakit.__path__, "ttakit."):
        if not info.name.endswith("__main__"):
            module = importlib.import_module(info.name)
            for value in vars(module).values():
                if isinstance(value, Registry):
                    assert found.setdefault(value.kind, value) is value, f"two registries of {value.kind}"
    return found


REGISTRIES = _registries()


def test_the_families_are_registries():
    kinds = {r.kind for r in REGISTRIES.values()}
    assert {"merge", "preset", "transform", "view family", "confidence", "dense merge", "activation", "uncertainty"} <= kinds


@pytest.mark.parametrize("kind", sorted(REGISTRIES))
def test_unknown_name_lists_the_known_ones(kind):
    reg = REGISTRIES[kind]
    assert len(reg) > 0
    with pytest.raises(UnknownNameError) as info:
        reg.get("no_such_name")
    err = info.value
    assert err.kind == reg.kind and err.name == "no_such_name" and err.known == reg.names()
    assert f"unknown {reg.kind} 'no_such_name'" in str(err)
    assert all(n in str(err) for n in reg.names())
    assert isinstance(err, ConfigError) and isinstance(err, PolicyError)  # old except clauses still catch it


def _net():
    return torch.nn.Conv2d(3, 4, 1)


@pytest.mark.parametrize(
    "call,kind",
    [
        (lambda: ttakit.merge_logits(torch.zeros(1, 2, 3), "bogus"), "merge"),
        (lambda: ttakit.create_policy("bogus"), "preset"),
        (lambda: ttakit.parse_policy("bogus(1,2)"), "transform"),
        (lambda: ClassificationTTA(_net(), "hflip", confidence="bogus"), "confidence"),
        (lambda: ClassifyScoring(confidence="bogus"), "confidence"),
        (lambda: SegmentationTTA(_net(), "hflip", merge="bogus"), "dense merge"),
        (lambda: SegmentationTTA(_net(), "hflip", activation="bogus"), "activation"),
        (lambda: SegmentationTTA(_net(), "hflip", uncertainty="bogus"), "uncertainty"),
    ],
    ids=["merge", "preset", "transform", "confidence", "scoring-confidence", "dense-merge", "activation", "uncertainty"],
)
def test_public_entry_points_raise_the_one_error(call, kind):
    with pytest.raises(UnknownNameError, match=f"unknown {kind} 'bogus'") as info:
        call()
    assert info.value.kind == kind and "bogus" not in info.value.known


def test_close_names_are_suggested():
    with pytest.raises(UnknownNameError, match="did you mean 'gmean'"):
        ttakit.get_merge("gmaen")


# --------------------------------------------------------------------------- each entry behaves
def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _normalised(x: np.ndarray) -> np.ndarray:
    return x / x.sum(-1, keepdims=True)


# Each merge as the module docstring of ttakit.merge describes it, in float64 numpy: logits
# (B, V, C) and weights (V,) summing to 1 -> probabilities (B, C). vote is checked by its rule below.
MERGE_FORMULAS = {
    "mean": lambda l, w: np.einsum("bvc,v->bc", _softmax(l), w),
    "sum": lambda l, w: _softmax(np.einsum("bvc,v->bc", l, w * len(w))),  # equal weights: the plain sum
    "logit_mean": lambda l, w: _softmax(np.einsum("bvc,v->bc", l, w)),
    "gmean": lambda l, w: _normalised(np.prod(_softmax(l) ** w[None, :, None], axis=1)),
    "max": lambda l, w: _normalised((_softmax(l) * w[None, :, None]).max(axis=1)),
    "tsharpen": lambda l, w: _normalised(np.einsum("bvc,v->bc", np.sqrt(_softmax(l)), w)),
    "vote": None,
}


def test_every_merge_has_a_formula_here():
    assert set(MERGE_FORMULAS) == set(ttakit.list_merges()), "a new merge needs its formula in MERGE_FORMULAS"


@pytest.mark.parametrize("weights", [None, [0.1, 0.4, 0.2, 0.3]], ids=["equal", "weighted"])
@pytest.mark.parametrize("name", sorted(MERGE_FORMULAS))
def test_every_merge_gives_probabilities_by_its_formula(name, weights):
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(16, 4, 5, generator=g) * 3
    probs = ttakit.merge_logits(logits, name, None if weights is None else torch.tensor(weights))
    assert probs.shape == (16, 5) and bool((probs >= 0).all())
    torch.testing.assert_close(probs.sum(-1), torch.ones(16), atol=1e-5, rtol=0)
    lg = logits.double().numpy()
    w = np.full(4, 0.25) if weights is None else np.asarray(weights) / np.sum(weights)
    if name == "vote":  # the most (weighted) top-1 votes wins; a tie goes to the larger mean probability
        votes = np.zeros((16, 5))
        for v in range(4):
            np.add.at(votes, (np.arange(16), lg[:, v].argmax(-1)), w[v])
        mean = MERGE_FORMULAS["mean"](lg, w)
        winner = [max(range(5), key=lambda c: (round(votes[b, c], 9), mean[b, c])) for b in range(16)]
        assert probs.argmax(-1).tolist() == winner
        return
    np.testing.assert_allclose(probs.double().numpy(), MERGE_FORMULAS[name](lg, w), atol=1e-5)


def _documented_preset_views() -> dict[str, int]:
    """README's preset table (section "Policies"): name -> number of views, as documented."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    table = text[text.index("| preset | views | meaning |"):].split("\n\n")[0]
    counts: dict[str, int] = {}
    for line in table.splitlines()[2:]:
        names, views = (cell.split("/") for cell in line.split("|")[1:3])
        views = views * len(names) if len(views) == 1 else views  # "`hflip` / `vflip` | 2": 2 each
        for name, n in zip(names, views, strict=True):
            counts[name.strip().strip("`")] = int(n)
    return counts


def test_every_preset_has_its_documented_views():
    documented = _documented_preset_views()
    assert set(documented) == set(ttakit.list_presets()), "README's preset table and the registry disagree"
    # The model-dependent presets as README counts them: for the default model (224 px, crop 0.875).
    data_config = {"input_size": (3, 224, 224), "interpolation": "bicubic", "mean": (0.5, 0.5, 0.5),
                   "std": (0.5, 0.5, 0.5), "crop_pct": 0.875, "crop_mode": "center"}
    for name, n in documented.items():
        policy = ttakit.create_policy(name, data_config)
        assert len(policy.views) == n, f"{name}: {len(policy.views)} views, README says {n}"
        assert len(set(policy.view_names)) == n, f"{name} repeats a view"
    assert ttakit.create_policy("none").view_names == ["identity"]
    assert ttakit.create_policy("d4").view_names[:2] == ["identity", "rot90=1"]  # flips x quarter turns
    assert ttakit.create_policy("tutorial").merge == "sum"  # "logits summed (`sum` merge)"


def test_every_confidence_is_its_formula():
    from ttakit.tasks.classify import CONFIDENCE

    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 1.0]])
    p = torch.softmax(logits, -1)
    top2 = p.sort(-1, descending=True).values[:, :2]
    formulas = {"max_prob": p.max(-1).values, "margin": top2[:, 0] - top2[:, 1]}
    assert set(formulas) == set(CONFIDENCE.names())
    for name, want in formulas.items():
        torch.testing.assert_close(CONFIDENCE.get(name)(logits), want)


def test_every_view_family_makes_its_crops():
    from ttakit.policy_text import FAMILIES

    counts = {"center_crop": 1, "five_crop": 5, "ten_crop": 10}
    assert set(counts) == set(FAMILIES.names())
    x = torch.arange(64.0).view(1, 1, 8, 8)
    for name, n in counts.items():
        views = ttakit.parse_policy(f"{name}(0.5)")
        assert len(views) == n and len({v.name for v in views}) == n, name
        crops = [v.apply(x, ttakit.Normalization()) for v in views]
        assert all(c.shape[-2:] == (4, 4) for c in crops), name  # half of each side
    centre = ttakit.parse_policy("center_crop(0.5)")[0].apply(x, ttakit.Normalization())
    assert torch.equal(centre, x[..., 2:6, 2:6])
    five = [v.apply(x, ttakit.Normalization()) for v in ttakit.parse_policy("five_crop(0.5)")]
    ten = [v.apply(x, ttakit.Normalization()) for v in ttakit.parse_policy("ten_crop(0.5)")]
    assert all(any(torch.equal(t, f) for f in five) or any(torch.equal(t, f.flip(-1)) for f in five) for t in ten)
    corners = {(0, 0), (0, 4), (4, 0), (4, 4), (2, 2)}
    assert {(int(c[0, 0, 0, 0]) // 8, int(c[0, 0, 0, 0]) % 8) for c in five} == corners
