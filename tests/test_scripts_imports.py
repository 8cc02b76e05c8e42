"""Benchmarks and examples import only public ttakit names (see tests/script_imports.py for the rule)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from script_imports import violations

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted([*ROOT.glob("benchmarks/*.py"), *ROOT.glob("examples/*.py")])


def test_scripts_found() -> None:
    assert len(SCRIPTS) >= 20, SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_imports_are_public(script: Path) -> None:
    assert violations(script) == []


def test_the_rule_catches_each_kind(tmp_path: Path) -> None:
    (tmp_path / "helper.py").write_text("def shown():\n    pass\n\n\ndef _hidden():\n    pass\n")
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""\
        import json
        import ttakit
        from ttakit import load_model, _LAZY
        from ttakit.datasets import _collate, detect_dataset
        from ttakit.evaluation.store import load_logits
        from ttakit.evaluation.classify_logits import load_logits
        from helper import shown, _hidden, missing
        ttakit.create_policy("hflip")
        ttakit.preprocess
        ttakit.__version__
    """))
    got = violations(script)
    assert got == [
        "script.py:3: from ttakit import _LAZY: _LAZY is private",
        "script.py:4: from ttakit.datasets import _collate: _collate is private",
        "script.py:5: from ttakit.evaluation.store import load_logits: load_logits is not in "
        "ttakit.evaluation.store.__all__",
        "script.py:7: from helper import _hidden: _hidden is private",
        "script.py:7: from helper import missing: helper.py defines no missing",
        "script.py:10: ttakit.__version__: __version__ is private",
    ]
