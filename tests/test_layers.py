"""The packages import one way, down the layers, and no two packages import each other.

    config  <-  io  <-  core  <-  llm / score / eval / train  <-  steps  <-  report / plan / schema / cli

Every import counts, the ones inside functions too (they run when the function does, and tools/stage_deps.py
makes them a stage's deps). Packages of one layer may import each other, never both ways: the package graph
has no cycle. The package root (``evolforge/__init__.py``) is outside the layers, with the one module it runs
(``import_hooks.py``): it sets polars' allocator before anything imports polars, and the hook before anything
imports transformers.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
LAYERS = (("config",), ("io",), ("core",), ("llm", "score", "eval", "train"), ("steps",),
          ("report", "plan", "schema", "cli"))
RANK = {package: rank for rank, layer in enumerate(LAYERS) for package in layer}
ROOT = {"import_hooks"}  # the package root's own modules, outside the layers as the root is; they import no evolforge


def package_of(module: str) -> str | None:
    """``evolforge.llm.backends.hf.backend`` -> ``llm``; None for the package root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "evolforge" else None


def imports(src: Path = SRC) -> list[tuple[str, str, str]]:
    """(importing module, imported evolforge module or name, "file:line") for every import of the package."""
    found = []
    for path in sorted((src / "evolforge").rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            else:
                continue
            found += [(module, name, f"{path.relative_to(src).as_posix()}:{node.lineno}") for name in names
                      if name.split(".")[0] == "evolforge"]
    return found


def against_the_layers(src: Path = SRC) -> list[str]:
    """Imports of a package from a layer above the importer's (or of a package no layer names)."""
    found = []
    for module, name, where in imports(src):
        mine, theirs = package_of(module), package_of(name)
        if mine is None or theirs is None or mine == theirs:
            continue
        if mine not in RANK or theirs not in RANK:
            found.append(f"{where}: {module} -> {name}: a package no layer names")
        elif RANK[theirs] > RANK[mine]:
            found.append(f"{where}: {module} ({mine}) imports {name} ({theirs}), a layer above")
    return found


def package_cycles(src: Path = SRC) -> list[list[str]]:
    """Groups of packages that import each other, directly or round a loop."""
    graph: dict[str, set[str]] = {}
    for module, name, _ in imports(src):
        mine, theirs = package_of(module), package_of(name)
        if mine and theirs and mine != theirs:
            graph.setdefault(mine, set()).add(theirs)

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    reachable = {package: reach(package) for package in graph}
    groups = {frozenset({p} | {q for q in reachable[p] if p in reachable.get(q, ())}) for p in graph}
    return sorted(sorted(g) for g in groups if len(g) > 1)


def test_every_package_has_a_layer():
    packages = {p.name for p in (SRC / "evolforge").iterdir() if (p / "__init__.py").exists()}
    modules = {p.stem for p in (SRC / "evolforge").glob("*.py") if p.name != "__init__.py"}
    assert packages | modules == set(RANK) | ROOT


def test_no_import_against_the_layers():
    found = against_the_layers()
    assert not found, "imports against the layer order (move what both need down a layer):\n" + "\n".join(found)


def test_no_package_cycle():
    assert package_cycles() == []


def test_the_checks_see_an_upward_import_and_a_cycle(tmp_path):
    package = tmp_path / "evolforge"
    for name in ("config", "llm", "score"):
        (package / name).mkdir(parents=True)
        (package / name / "__init__.py").write_text("")
    (package / "__init__.py").write_text("from evolforge.core import memory\n")  # the root: outside the layers
    (package / "config" / "a.py").write_text("def late():\n    from evolforge.llm import b\n")
    (package / "llm" / "b.py").write_text("import evolforge.score.c\n")
    (package / "score" / "c.py").write_text("from evolforge.llm.b import X\n")
    assert against_the_layers(tmp_path) == [
        "evolforge/config/a.py:2: evolforge.config.a (config) imports evolforge.llm (llm), a layer above"]
    assert package_cycles(tmp_path) == [["llm", "score"]]
