"""One registry for every family of named things: an unknown name raises UnknownNameError naming the known ones."""

from __future__ import annotations

import importlib
import pkgutil

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
