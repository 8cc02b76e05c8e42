"""Every docstring example in the package runs and prints what it says."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest
import timm
import torch

import ttakit

MODULES = sorted(m.name for m in pkgutil.walk_packages(ttakit.__path__, "ttakit.") if not m.name.endswith("__main__"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    # The public API is in scope, as after `import ttakit` in a user's session.
    extra = {"torch": torch, "timm": timm, "ttakit": ttakit, **{k: getattr(ttakit, k) for k in ttakit.__all__}}
    torch.manual_seed(0)
    res = doctest.testmod(module, extraglobs=extra, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.failed == 0, f"{res.failed} of {res.attempted} examples failed in {name}"
