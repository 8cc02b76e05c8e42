"""What a script in benchmarks/ or examples/ may import from ttakit, checked on its source (ast).

The rule: a name taken from ttakit is public when it is listed in the ``__all__`` of the module
it is imported from and does not start with ``_``; so ``from ttakit.M import a`` needs
``a in ttakit.M.__all__``, and ``ttakit.a`` (after ``import ttakit``) needs
``a in ttakit.__all__``. A script may also import a sibling module of its own folder (the
helpers benchmarks/ owns, or another script there), but only names that sibling defines at
its top level and that do not start with ``_``. Everything else (stdlib, third party) is not
checked. :func:`violations` lists what breaks the rule, one line per import, with its line.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

__all__ = ["violations"]


def _top_level_names(path: Path) -> set[str]:
    """Names a module binds at its top level (functions, classes, assignments, imports)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def _public(module: str, name: str) -> str | None:
    """Why ``name`` of ttakit module ``module`` is not public (None when it is)."""
    if name.startswith("_"):
        return f"{name} is private"
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        return f"module {module} cannot be imported ({e})"
    exported = getattr(mod, "__all__", None)
    if exported is None:
        return f"{module} has no __all__"
    if name not in exported:
        return f"{name} is not in {module}.__all__"
    return None


def violations(script: Path) -> list[str]:
    """Every import of ``script`` that takes a non-public ttakit name or a private sibling name."""
    tree = ast.parse(script.read_text(), str(script))
    siblings = {p.stem: p for p in script.parent.glob("*.py") if p != script}
    out: list[str] = []
    ttakit_aliases: set[str] = set()  # names bound to the ttakit package itself

    def bad(node: ast.AST, why: str) -> None:
        out.append(f"{script.name}:{node.lineno}: {why}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "ttakit":
                    if any(p.startswith("_") for p in parts):
                        bad(node, f"import of private module {a.name}")
                    if a.asname is None or a.name == "ttakit":
                        ttakit_aliases.add(a.asname or "ttakit")
                elif parts[0] in siblings and len(parts) == 1:
                    bad(node, f"import {a.name}: take names from a sibling with 'from {a.name} import ...'")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                bad(node, "relative import")
                continue
            mod = node.module or ""
            if mod.split(".")[0] == "ttakit":
                for a in node.names:
                    if a.name == "*":
                        bad(node, f"from {mod} import *")
                    elif (why := _public(mod, a.name)) is not None:
                        bad(node, f"from {mod} import {a.name}: {why}")
            elif mod in siblings:
                defined = _top_level_names(siblings[mod])
                for a in node.names:
                    if a.name.startswith("_"):
                        bad(node, f"from {mod} import {a.name}: {a.name} is private")
                    elif a.name not in defined:
                        bad(node, f"from {mod} import {a.name}: {mod}.py defines no {a.name}")
    for node in ast.walk(tree):  # ttakit.<name> after `import ttakit`
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in ttakit_aliases:
            if (why := _public("ttakit", node.attr)) is not None:
                bad(node, f"ttakit.{node.attr}: {why}")
    return out
