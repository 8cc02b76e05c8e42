"""README's code blocks run as written, or say why they cannot run here.

Each fenced ```bash / ```python block of README.md is one test, named by its line and heading;
blocks marked ``<!-- readme-test: skip KIND -->`` are reported as skipped with the reason, and
other languages (sample outputs) are skipped as shown-not-run. The harness and the marker
convention: ``tests/readme_blocks.py``.
"""

from __future__ import annotations

import pytest

from readme_blocks import ROOT, Block, blocks, run_block

README = ROOT / "README.md"
BLOCKS = blocks(README)


@pytest.mark.parametrize("block", BLOCKS, ids=[f"README.md:{b.line} ({b.heading})" for b in BLOCKS])
def test_readme_block(block: Block, tmp_path):
    reason = block.skip_reason
    if reason:
        pytest.skip(reason)
    try:
        done = run_block(block, tmp_path)
    except FileNotFoundError as e:
        pytest.skip(str(e))
    assert done.returncode == 0, (
        f"README.md:{block.line} ({block.heading}) failed with exit code {done.returncode}:\n"
        f"--- code\n{block.code}--- stdout\n{done.stdout[-3000:]}--- stderr\n{done.stderr[-3000:]}")


def test_markers_are_known_and_placed():
    """Every readme-test marker is right before a fence and names a known kind."""
    lines = README.read_text(encoding="utf-8").splitlines()
    marked = {b.line - 1 for b in BLOCKS if b.marker}
    for i, line in enumerate(lines, 1):
        if "readme-test:" in line and line.startswith("<!--"):
            assert i in marked, f"README.md:{i}: readme-test marker not right before a code fence"
    for b in BLOCKS:
        if b.lang in ("bash", "python") and b.marker:
            assert b.small_data or b.skip_reason, f"README.md:{b.line}: unknown marker {b.marker!r}"
