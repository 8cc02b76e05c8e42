"""README's module map is generated from the modules' docstrings: it lists every module and cannot go stale."""

from __future__ import annotations

from readme_map import COMMAND, PACKAGE, README, current, first_line, modules, render


def test_readme_map_is_the_generated_one():
    have = current(README.read_text(encoding="utf-8"))
    assert have, f"README.md has no module map; add its markers and run `{COMMAND}`"
    assert have == render(), f"README.md's module map is stale: run `{COMMAND}`"


def test_every_module_says_what_it_holds_in_one_line():
    """The first docstring line is the module's row in the map: a whole sentence, not a stub."""
    bad = {p.relative_to(PACKAGE).as_posix(): first_line(p) for p in modules()}
    bad = {name: line for name, line in bad.items() if len(line) < 25 or not line.endswith((".", "?"))}
    assert not bad, f"write a one-sentence first docstring line for: {bad}"


def test_the_map_lists_every_module():
    table = render()
    for path in PACKAGE.rglob("*.py"):
        assert f"| `{path.relative_to(PACKAGE).as_posix()}` |" in table
