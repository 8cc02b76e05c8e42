"""Every docstring example in the package runs and prints what it says, and every library module has some."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest
import timm
import torch

import ttakit

MODULES = sorted(m.name for m in pkgutil.walk_packages(ttakit.__path__, "ttakit.") if not m.name.endswith("__main__"))

# Modules allowed to have no example. The command line's examples are its --help and the README;
# bare package folders hold no code. The rest have none yet: give them one and drop them here.
WITHOUT_EXAMPLES = {
    "ttakit.cli", "ttakit.evaluation", "ttakit.runtime", "ttakit.tasks",
    "ttakit.datasets", "ttakit.errors", "ttakit.predict", "ttakit.viz", "ttakit.tasks.base",
    "ttakit.runtime.distributed", "ttakit.evaluation.pipeline", "ttakit.tasks.boxes.engine",
    "ttakit.tasks.boxes.ops",
    "ttakit.evaluation.evaluate", "ttakit.evaluation.report",  # their examples need a dataset: skipped
}


def _needs_examples(name: str) -> bool:
    return not name.startswith("ttakit.cli.") and name not in WITHOUT_EXAMPLES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    # The public API is in scope, as after `import ttakit` in a user's session.
    extra = {"torch": torch, "timm": timm, "ttakit": ttakit, **{k: getattr(ttakit, k) for k in ttakit.__all__}}
    torch.manual_seed(0)
    res = doctest.testmod(module, extraglobs=extra, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert res.failed == 0, f"{res.failed} of {res.attempted} examples failed in {name}"
    if _needs_examples(name):
        assert res.attempted >= 1, f"{name} has no docstring example; add a short one (or list it in WITHOUT_EXAMPLES)"
