"""Every published table says where it came from.

A table is a block of lines starting with ``|``. Each one in BENCHMARKS.md, and each one in
README.md that holds measurements, is followed within 3 lines by a provenance line::

    <sub>measured DATE on CPU (or "CPU not recorded"), load L: `COMMAND`, commit SHA</sub>

README's reference tables (presets, transforms, options, the module map ...) are not
measurements; they are listed below by their first header line.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# README tables that are reference, not measurement: their first header line.
REFERENCE_TABLES = {
    "| preset | views | meaning |",
    "| transform | values | example |",
    "| method | what it does |",
    "| ttach 0.0.3 | the drop-in |",
    "| module | one idea (its docstring's first line) |",
}
PROVENANCE = re.compile(
    r"^<sub>measured (?P<date>\d{4}-\d{2}-\d{2}) on (?P<cpu>[^:]*?(?:Intel|AMD|ARM|Apple|CPU not recorded)[^:]*?), "
    r"load [^:]+: `(?P<command>(?:python|ttakit|torchrun|flock|bash) [^`]+)`(?:[^<]*)?, commit (?P<commit>[0-9a-f]{7,40})</sub>$")
WITHIN = 3  # lines after a table's last line where its provenance line must be


def tables(path: Path) -> list[tuple[int, int, str]]:
    """(first line, last line, header) of every block of lines starting with '|' (1-based)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        if lines[i].startswith("|"):
            j = i
            while j + 1 < len(lines) and lines[j + 1].startswith("|"):
                j += 1
            out.append((i + 1, j + 1, lines[i].strip()))
            i = j
        i += 1
    return out


def missing_provenance(path: Path, skip: set[str] = frozenset()) -> list[str]:
    """'file:line header' of each table not followed by a provenance line."""
    lines = path.read_text(encoding="utf-8").splitlines()
    bad = []
    for first, last, header in tables(path):
        if header in skip:
            continue
        after = lines[last:last + WITHIN]
        if not any(PROVENANCE.match(line) for line in after):
            bad.append(f"{path.name}:{first} {header[:60]}")
    return bad


@pytest.mark.parametrize("name, skip", [("BENCHMARKS.md", set()), ("README.md", REFERENCE_TABLES)])
def test_every_measured_table_says_where_it_came_from(name, skip):
    path = ROOT / name
    assert tables(path), f"no tables found in {name}"
    bad = missing_provenance(path, skip)
    assert not bad, ("tables without a provenance line (<sub>measured DATE on CPU, load L: `COMMAND`, "
                     "commit SHA</sub>) within 3 lines:\n" + "\n".join(bad))


def test_reference_tables_still_exist():
    """The allow-list names README tables that exist (a renamed header must be re-listed)."""
    headers = {h for _, _, h in tables(ROOT / "README.md")}
    assert REFERENCE_TABLES <= headers, f"allow-listed but absent: {sorted(REFERENCE_TABLES - headers)}"


def test_provenance_line_format():
    good = ("<sub>measured 2026-12-05 on Intel Xeon with AMX (avx512_bf16, amx_bf16), load 2.8: "
            "`python benchmarks/bench_precision.py`, commit abc1234</sub>")
    assert PROVENANCE.match(good)
    assert PROVENANCE.match(good.replace("Intel Xeon with AMX (avx512_bf16, amx_bf16)", "CPU not recorded"))
    assert not PROVENANCE.match(good.replace("`python benchmarks/bench_precision.py`", "a benchmark"))
    assert not PROVENANCE.match(good.replace("Intel Xeon with AMX (avx512_bf16, amx_bf16)", "a machine"))
    assert not PROVENANCE.match(good.replace(", commit abc1234", ""))
