"""Generate each dvc.yaml stage's source deps from its script's import closure.

A stage depends on the files it runs, not on whole packages: editing ``steps/dedup/minhash.py`` must rerun dedup and
the stages downstream of its output, never the twelve stages that import nothing of it. This tool follows a
stage script's ``evolforge`` imports (at any depth of a file, function-level ones too) to every module it can
run, adds the data files beside them (report templates, task configs), and writes that list as the stage's
``src/evolforge/...`` deps, in place of the old ones. Other deps (the script, inputs, prompts) stay as written.
A module that is only a docstring (a package's ``__init__`` that documents it) runs nothing, so no output depends
on it: it is left out (once it holds code, ``--check`` asks for the deps to be written again).

    python tools/stage_deps.py --check   # exit 1 and show the difference when dvc.yaml is out of date
    python tools/stage_deps.py --write   # rewrite the deps in dvc.yaml (comments and order kept)

``tests/test_stage_deps.py`` runs ``--check``, so a new import without regenerating fails the suite.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import re
import shlex
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
# the package's docstring, version and typing marker: no stage's output depends on them
PACKAGE_ROOT = {"src/evolforge/__init__.py", "src/evolforge/py.typed"}
GENERATED = re.compile(r"^\s+- src/evolforge/\S+\s*$")


def imported_files(path: Path) -> set[Path]:
    """The evolforge modules and packages a file imports, at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] != "evolforge":
                continue
            for depth in range(1, len(parts) + 1):  # the module and every package above it
                stem = SRC.joinpath(*parts[:depth])
                found.update(c for c in (stem.with_suffix(".py"), stem / "__init__.py") if c.is_file())
    return found


def data_files(folder: Path) -> set[Path]:
    """Files a module may read beside it: everything in its folder that is not Python, down to (not into)
    the next Python package."""
    found = set()
    for path in folder.iterdir():
        if path.is_file() and path.suffix not in (".py", ".pyc"):
            found.add(path)
        elif path.is_dir() and path.name != "__pycache__" and not (path / "__init__.py").exists():
            found.update(data_files(path))
    return found


def runs_nothing(path: Path) -> bool:
    """A Python module whose whole body is its docstring."""
    if path.suffix != ".py":
        return False
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
               for n in body)


def closure(script: Path) -> list[str]:
    """Repository-relative paths of every source file ``script`` can run or read, sorted."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        for module in imported_files(todo.pop()):
            if module not in seen:
                seen.add(module)
                todo.append(module)
    for folder in {module.parent for module in seen}:
        seen |= data_files(folder)
    paths = {p.relative_to(REPO).as_posix() for p in seen if not runs_nothing(p)}
    return sorted(paths - PACKAGE_ROOT)


def stage_scripts(dvc_text: str) -> dict[str, str]:
    """``{stage name: script path}`` from dvc.yaml."""
    stages = yaml.safe_load(dvc_text)["stages"]
    return {name: shlex.split(spec.get("do", spec)["cmd"])[1] for name, spec in stages.items()}


def rewrite(dvc_text: str) -> str:
    """dvc.yaml with every stage's ``src/evolforge`` deps replaced by its script's closure, placed right after
    the script's own dep line."""
    scripts = stage_scripts(dvc_text)
    out, stage = [], None
    for line in dvc_text.splitlines(keepends=True):
        header = re.match(r"^  ([A-Za-z_][\w-]*):\s*$", line)
        if header:
            stage = header.group(1)
        if stage in scripts and GENERATED.match(line):
            continue
        out.append(line)
        dep = re.match(r"^(\s+)- (stages/\w+\.py)\s*$", line)
        if dep and stage in scripts and dep.group(2) == scripts[stage]:
            out.extend(f"{dep.group(1)}- {path}\n" for path in closure(REPO / scripts[stage]))
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="exit 1 when dvc.yaml's deps are out of date")
    mode.add_argument("--write", action="store_true", help="rewrite dvc.yaml's deps")
    ap.add_argument("--dvc-yaml", type=Path, default=REPO / "dvc.yaml")
    args = ap.parse_args(argv)
    text = args.dvc_yaml.read_text(encoding="utf-8")
    new = rewrite(text)
    if args.write:
        args.dvc_yaml.write_text(new, encoding="utf-8")
        return 0
    if new != text:
        sys.stdout.writelines(difflib.unified_diff(text.splitlines(keepends=True), new.splitlines(keepends=True),
                                                   "dvc.yaml", "dvc.yaml (generated deps)"))
        print("dvc.yaml's source deps are out of date: run python tools/stage_deps.py --write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
