"""Generate each dvc.yaml stage's source deps from its script's import closure.

A stage depends on the files it runs, not on whole packages: editing ``steps/dedup/minhash.py`` must rerun dedup and
the stages downstream of its output, never the twelve stages that import nothing of it. This tool follows a
stage script's ``evolforge`` imports (at any depth of a file, function-level ones too) to every module it can
run, adds the data files beside them (report templates, task configs), and writes that list as the stage's
``src/evolforge/...`` deps, in place of the old ones. Other deps (the script, inputs, prompts) stay as written.
A module that is only a docstring (a package's ``__init__`` that documents it) runs nothing, so no output depends
on it: it is left out (once it holds code, ``--check`` asks for the deps to be written again). Files a module runs as
text instead of importing them (the sandbox child's source, :data:`READS_AS_TEXT`) are followed as imports are.

The backends are the exception: which one runs is for params to say, so the registry and pinning import them by
name (:data:`BY_NAME`), out of the closure's sight. A stage that builds backends (reaches the registry) lists what
the backends import outside their own packages, plus one dep per role it declares,
``src/evolforge/llm/backends/${roles.<name>.backend}``: DVC resolves it from params.yaml (``-S`` included), so an
edit of a backend stales only the stages whose roles use it. A stage that reaches only pinning (the models stage)
lists the one module pinning imports by name, ``openai/served.py``, with what it imports: not whole backends.

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
from typing import Iterable

import yaml

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
# the package's docstring, version, polars' allocator setting (how much memory a process keeps, never what it
# writes), its import hook (how long importing transformers takes) and typing marker: no stage's output depends on them
PACKAGE_ROOT = {"src/evolforge/__init__.py", "src/evolforge/import_hooks.py", "src/evolforge/py.typed"}
# glibc's malloc settings of a stage process (how much freed memory it keeps, never what it writes)
MEMORY_ONLY = {"src/evolforge/core/heap.py"}
BACKENDS = SRC / "evolforge/llm/backends"
# modules that import backends by name -> the modules they import (None: every backend package), so their
# stages depend on their roles' backends through params: the registry builds any backend, pinning asks a
# server (openai) which model it serves
REGISTRY = "src/evolforge/llm/registry.py"
BY_NAME = {REGISTRY: None, "src/evolforge/llm/pinning.py": ("openai/served.py",)}
GENERATED = re.compile(r"^\s+- src/evolforge/\S+\s*$")
# modules that run other modules' text rather than importing them -> those modules: the sandbox's parent passes
# its child's source files to `python -c` (eval/sandbox_process.py CHILD_FILES)
READS_AS_TEXT = {"src/evolforge/eval/sandbox_process.py": ("sandbox_roles.py", "sandbox_os_layers.py",
                                                            "sandbox_child.py")}


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


def _reach(starts: Iterable[Path]) -> set[Path]:
    """Every module the files ``starts`` import (or run as text: :data:`READS_AS_TEXT`), followed to the end,
    with the data files beside them."""
    seen: set[Path] = set()
    todo = list(starts)
    while todo:
        path = todo.pop()
        read = READS_AS_TEXT.get(path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else "", ())
        for module in imported_files(path) | {path.with_name(name) for name in read}:
            if module not in seen:
                seen.add(module)
                todo.append(module)
    for folder in {module.parent for module in seen}:
        seen |= data_files(folder)
    return seen


def _listed(found: Iterable[Path]) -> list[str]:
    paths = {p.relative_to(REPO).as_posix() for p in found if not runs_nothing(p)}
    return sorted(paths - PACKAGE_ROOT - MEMORY_ONLY)


def closure(script: Path) -> list[str]:
    """Repository-relative paths of every source file ``script`` can run or read, sorted."""
    return _listed(_reach([script]))


def backend_packages() -> list[Path]:
    """The folders of the backends a role can name (``llm/backends/<name>/``)."""
    return sorted(p for p in BACKENDS.iterdir() if p.is_dir() and (p / "__init__.py").is_file())


def by_name(root: str) -> list[Path]:
    """The backend modules ``root`` (a :data:`BY_NAME` key) imports by name."""
    if BY_NAME[root] is None:
        return [m for package in backend_packages() for m in package.rglob("*.py")]
    return [BACKENDS / module for module in BY_NAME[root]]


def backend_support(roots: Iterable[str]) -> list[str]:
    """What the backend modules that ``roots`` import by name import outside their own packages (the LLM
    layer's decoding, choices, threads...): a static dep, since which backends run is for params to say."""
    found: set[Path] = set()
    for module in (m for root in roots for m in by_name(root)):
        package = BACKENDS / module.relative_to(BACKENDS).parts[0]
        found |= {p for p in _reach([module]) if package not in p.parents}
    return _listed(found)


def role_deps(stage: dict) -> list[str]:
    """One dep per role the stage declares: that role's backend package, named through params, so DVC reads
    the backend from params.yaml (``dvc exp run -S roles.judge.backend=openai`` reruns the judge, and an edit
    of the openai backend then stales it; an edit of a backend no role of a stage uses stales nothing)."""
    params = [p for p in stage.get("do", stage).get("params") or [] if isinstance(p, str)]
    roles = sorted({p.split(".")[1] for p in params if p.startswith("roles.")})
    if "roles" in params:  # the whole section: every role params.yaml names
        roles = sorted(yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))["roles"])
    return [f"{BACKENDS.relative_to(REPO).as_posix()}/${{roles.{role}.backend}}" for role in roles]


def stage_scripts(dvc_text: str) -> dict[str, str]:
    """``{stage name: script path}`` from dvc.yaml."""
    stages = yaml.safe_load(dvc_text)["stages"]
    return {name: shlex.split(spec.get("do", spec)["cmd"])[1] for name, spec in stages.items()}


def stage_deps(spec: dict, script: Path) -> list[str]:
    """A stage's source deps: its script's closure; where it builds backends, what they import outside their
    packages and each of its roles' backend package; where it only imports a few backend modules by name
    (pinning), those modules and what they import."""
    found = closure(script)
    roots = set(BY_NAME) & set(found)
    if not roots:
        return found
    if REGISTRY in roots:  # it builds backends: each of its roles' package, through params
        return sorted(set(found) | set(backend_support(roots))) + role_deps(spec)
    named = [module for root in roots for module in by_name(root)]  # a few modules, not whole backends
    return sorted(set(found) | set(_listed(set(named) | _reach(named))))


def rewrite(dvc_text: str) -> str:
    """dvc.yaml with every stage's ``src/evolforge`` deps replaced by :func:`stage_deps`, placed right after
    the script's own dep line."""
    specs = yaml.safe_load(dvc_text)["stages"]
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
            found = stage_deps(specs[stage], REPO / scripts[stage])
            out.extend(f"{dep.group(1)}- {path}\n" for path in found)
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
        print("dvc.yaml's source deps are out of date: run python tools/stage_deps.py --write (or make regen)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
