"""The package's shape: modules small enough to hold one thing, and layers that import one way.

A module over ``MAX_MODULE_LINES`` or a function over ``MAX_FUNCTION_LINES`` usually holds two things (split it at
the seam); a step imports other steps only through ``steps/common``; an import cycle between
modules means a layer reaches back up (move what both need below them). Imports are read with ``ast`` from
every ``src/evolforge`` module: those run when the module is imported (outside functions and classes, inside
top-level ``if`` / ``try`` included), so no function-level import dodges the check by running later.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_MODULE_LINES = 360
MAX_FUNCTION_LINES = 60


def modules(src: Path = SRC) -> dict[str, Path]:
    """``{dotted module name: file}`` for every module of the package (a package is its ``__init__``)."""
    found = {}
    for path in sorted((src / "evolforge").rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """The import statements that run when the module is imported: not inside a function or a class."""
    found, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            todo.extend(child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt))
    return found


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """``{module: the package modules it imports at module level}``. ``from a.b import c`` is an edge to
    ``a.b.c`` when that is a module, else to ``a.b``; a relative import counts from the module's package."""
    names = modules(src)

    def owner(name: str) -> str | None:
        while name and name not in names:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in names.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in module_level_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in names else base for alias in node.names]
            edges |= {owner(t) for t in targets if t.split(".")[0] == "evolforge"}
        graph[name] = edges - {None, name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_module_over_the_limit():
    sizes = {path.relative_to(SRC).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
             for path in modules().values()}
    over = {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES}
    assert not over, f"modules over {MAX_MODULE_LINES} lines (split each at its seam): {over}"


def test_no_import_cycle():
    found = cycles(import_graph())
    shown = ["; ".join(f"{m} -> {sorted(set(import_graph()[m]) & set(c))}" for m in c) for c in found]
    assert not found, "import cycles (move what both sides need below them):\n" + "\n".join(shown)


def test_the_checks_see_a_cycle_and_where_imports_run(tmp_path):
    package = tmp_path / "evolforge"
    (package / "low").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "low" / "__init__.py").write_text("from evolforge.low import a\n")
    (package / "low" / "a.py").write_text("import json\ntry:\n    from evolforge.high import run\nexcept ImportError:\n    pass\n")
    (package / "high.py").write_text("from .low import a\n\ndef run():\n    from evolforge import low\n")
    graph = import_graph(tmp_path)
    assert graph == {"evolforge": set(), "evolforge.low": {"evolforge.low.a"}, "evolforge.low.a": {"evolforge.high"},
                     "evolforge.high": {"evolforge.low.a"}}
    assert cycles(graph) == [["evolforge.high", "evolforge.low.a"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def reexport_imports(files: list[Path], src: Path = SRC) -> list[str]:
    """``from <package> import name`` anywhere in ``files`` where the package's ``__init__`` only imports
    ``name`` from elsewhere: the importer should name the module that defines it."""
    names = modules(src)
    imported = {}
    for name, path in names.items():
        if path.name == "__init__.py":
            tree = ast.parse(path.read_text(encoding="utf-8"))
            imported[name] = {alias.asname or alias.name for node in module_level_imports(tree)
                              if isinstance(node, ast.ImportFrom) for alias in node.names}
    found = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and not node.level and node.module in imported:
                found += [f"{path.name}:{node.lineno} from {node.module} import {alias.name}" for alias in node.names
                          if f"{node.module}.{alias.name}" not in names and alias.name in imported[node.module]]
    return found


def test_names_are_imported_from_the_module_that_defines_them():
    root = SRC.parent
    files = [p for folder in ("src", "stages", "tests", "tools", "bench") for p in sorted((root / folder).rglob("*.py"))]
    found = reexport_imports(files)
    assert not found, "import these from the module that defines them, not the package:\n" + "\n".join(found)


def test_the_reexport_check_sees_one(tmp_path):
    package = tmp_path / "evolforge" / "low"
    package.mkdir(parents=True)
    (tmp_path / "evolforge" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("from evolforge.low.a import thing\n\nOWN = 1\n")
    (package / "a.py").write_text("thing = 1\n")
    user = tmp_path / "user.py"
    user.write_text("from evolforge.low import OWN, a\n\ndef f():\n    from evolforge.low import thing\n")
    assert reexport_imports([user], tmp_path) == ["user.py:4 from evolforge.low import thing"]


def all_imports(path: Path) -> set[str]:
    """Every module named by an import anywhere in the file, function-level ones included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_steps_never_import_the_report():
    # the report reads what the steps wrote (and their constants); a step's output never depends on the page
    found = {name: sorted(i for i in all_imports(path) if i.startswith("evolforge.report"))
             for name, path in modules().items() if name.startswith("evolforge.steps")}
    assert not {name: found_ for name, found_ in found.items() if found_}


def step_of(module: str) -> str | None:
    """The step a module belongs to (``evolforge.steps.<step>.*`` -> ``<step>``), None outside the steps."""
    parts = module.split(".")
    return parts[2] if len(parts) > 3 and parts[:2] == ["evolforge", "steps"] else None


def is_settings(name: str) -> bool:
    """``evolforge.steps.<step>.settings`` or a name imported from it."""
    return name.split(".")[3:4] == ["settings"]


def cross_step_imports(src: Path = SRC) -> dict[str, list[str]]:
    """``{step module: the other steps' modules it imports}``: a step reads in one folder and shares only
    through ``steps/common``, so a step's behaviour never changes because another step's file did. Another
    step's ``settings`` (the class of a params section the step reads too) imports only the config: allowed."""
    found = {}
    for name, path in modules(src).items():
        mine = step_of(name)
        if mine is None or mine == "common":
            continue
        other = sorted(i for i in all_imports(path) if step_of(i) not in (None, "common", mine) and not is_settings(i))
        if other:
            found[name] = other
    return found


def test_steps_share_only_through_common():
    assert not cross_step_imports(), "a step imports another step (move what both need to steps/common)"


def is_leaf(module: str) -> bool:
    """A module (not a package's ``__init__``) that imports nothing of evolforge: a leaf of names or types."""
    path = modules().get(module)
    return path is not None and path.name != "__init__.py" and not any(
        i.startswith("evolforge") for i in all_imports(path))


def test_settings_modules_import_only_the_config():
    # evolforge.schema imports every steps/<step>/settings.py: one that reached further would load step code
    # (or a model) to check params.yaml; a leaf of types (score/choices.py) loads nothing
    found = {name: sorted(i for i in all_imports(path) if i.startswith("evolforge") and not i.startswith("evolforge.config")
                          and not is_leaf(i) and not is_leaf(i.rpartition(".")[0]))  # a leaf, or a name from one
             for name, path in modules().items() if name.startswith("evolforge.steps.") and name.endswith(".settings")}
    assert len(found) >= 10 and not {name: f for name, f in found.items() if f}


def test_every_step_is_a_folder_with_a_run():
    steps = SRC / "evolforge" / "steps"
    assert not [p.name for p in steps.glob("*.py") if p.name != "__init__.py"], "a step module outside a step folder"
    for folder in sorted(p for p in steps.iterdir() if p.is_dir() and p.name not in ("common", "__pycache__")):
        runs = [p.name for p in folder.glob("*.py") if "def run(" in p.read_text(encoding="utf-8")]
        assert runs, f"steps/{folder.name} has no module with a run()"


def long_functions(src: Path = SRC, limit: int = MAX_FUNCTION_LINES) -> dict[str, int]:
    """``{module:function: lines}`` for every function (methods and nested functions included) longer than
    ``limit`` lines, from its ``def`` (decorators excluded) to its last line."""
    found = {}
    for name, path in modules(src).items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found[f"{name}:{node.name}"] = lines
    return found


def test_no_function_over_the_limit():
    over = long_functions()
    assert not over, f"functions over {MAX_FUNCTION_LINES} lines (split each at its seam): {over}"


def test_the_checks_see_a_long_function_and_a_cross_step_import(tmp_path):
    pkg = tmp_path / "evolforge" / "steps"
    for folder in ("a", "b", "common"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg.parent / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "common" / "shared.py").write_text("X = 1\n")
    (pkg / "b" / "step.py").write_text("def run():\n    pass\n")
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    (pkg / "a" / "step.py").write_text("from evolforge.steps.common.shared import X\nfrom evolforge.steps.b.step import run\n\n\n"
                                       f"def long():\n{body}")
    assert cross_step_imports(tmp_path) == {"evolforge.steps.a.step": ["evolforge.steps.b.step", "evolforge.steps.b.step.run"]}
    assert long_functions(tmp_path) == {"evolforge.steps.a.step:long": MAX_FUNCTION_LINES + 1}


def test_the_typed_lineage_is_the_records_lineage():
    """evolforge.io.columns types the lineage columns that evolforge.io.records names: the same, in order."""
    from evolforge.io.columns import LINEAGE_TYPES
    from evolforge.io.records import LINEAGE

    assert list(LINEAGE_TYPES) == LINEAGE
