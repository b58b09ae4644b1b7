"""The params.yaml sections each dvc.yaml stage's code reads, against the ``params:`` the stage declares.

A stage reruns when a declared param changes; a section its code reads but does not declare leaves an output
that states old settings (the dataset card, written by select, quotes seven sections). This tool reads the
code a stage runs -- its script's import closure, as ``tools/stage_deps.py`` finds it -- and collects every
section it reads:

- ``load_section(params, "seed", ...)``, ``section(params, "evolve")``: that section;
- ``load_role(params, "judge")``: ``roles.judge``; ``load_llm_params(params, ("responder", "judge"))`` (the roles
  a stage opens LLMs for): ``roles.responder`` and ``roles.judge``;
- ``params.get("cache")``, ``params["seed"]``: that section, also where the key is a loop variable over a
  literal tuple (``params.get(k) for k in ("seed", "evolve")``);
- a function that passes its own parameter on as the name (``def open_one(params, name)`` calling
  ``load_role(params, name)``) reads what its callers name.

A read whose section cannot be told (a computed name) is a problem: name it literally. Sections are compared
whole (a stage that declares ``evolve.strategy`` declares the ``evolve`` section) and roles one by one; the
runtime sections ``cache``, ``llm`` and ``data`` (where completions are kept, when they are committed, how many
rows a chunk holds: docs/how-to/scale.md shows the outputs do not depend on them) are not declared by design.

    python tools/stage_params.py            # every stage: what it reads, what it declares, the differences
    python tools/stage_params.py --check    # exit 1 when a stage's declared sections differ from what it reads

``tests/test_stage_params.py`` runs the check.
"""

from __future__ import annotations

import argparse
import ast
import functools
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stage_deps  # noqa: E402  (the import closure of a stage's script)

REPO = stage_deps.REPO
RUNTIME = {"cache", "llm", "data"}  # read by every stage's machinery; no output depends on them
# the functions that read one section (or role) named by an argument: {name: (argument index, kind)}
READERS = {"load_section": (1, "section"), "section": (1, "section"), "load_role": (1, "role"),
           "load_llm_params": (1, "role")}
# the whole-file checks (`evolforge check`, the models stage) read every section to refuse a bad file; no output
# is made from what they read
CHECKS = "src/evolforge/schema.py"
NOT_A_FILE = "models/identity.json"  # a stage's params from this file are the models it pins, not settings


@functools.lru_cache(maxsize=None)
def _parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def _functions(tree: ast.Module) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _literal_strings(node: ast.AST) -> list[str] | None:
    """The strings of a literal tuple or list of strings, else None."""
    if isinstance(node, (ast.Tuple, ast.List)) and all(isinstance(e, ast.Constant) and isinstance(e.value, str)
                                                     for e in node.elts):
        return [e.value for e in node.elts]
    return None


def _loop_values(function: ast.AST) -> dict[str, list[str]]:
    """``{variable: strings}`` for the loop variables (``for`` and comprehensions) that run over a literal
    tuple or list of strings inside ``function``."""
    found = {}
    for node in ast.walk(function):
        pairs = [(node.target, node.iter)] if isinstance(node, ast.For) else \
            [(g.target, g.iter) for g in node.generators] if isinstance(node, (ast.ListComp, ast.SetComp, ast.DictComp,
                                                                               ast.GeneratorExp)) else []
        for target, source in pairs:
            values = _literal_strings(source)
            if isinstance(target, ast.Name) and values is not None:
                found[target.id] = values
    return found


def _name(node: ast.AST, loops: dict[str, list[str]]) -> list[str] | str | None:
    """The section names an argument can hold: a literal string or tuple of them, or the name of the parameter
    it is."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if _literal_strings(node) is not None:
        return _literal_strings(node)
    if isinstance(node, ast.Name) and node.id in loops:
        return loops[node.id]
    if isinstance(node, ast.Name):
        return node.id  # resolved when it is a parameter of the function
    return None


def _called(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Name):
        return node.func.id
    return node.func.attr if isinstance(node.func, ast.Attribute) else None


@functools.lru_cache(maxsize=None)
def _hand_ons(path: Path) -> tuple[tuple[str, tuple[str, ...], tuple[tuple[str, int, str], ...]], ...]:
    """Per function of ``path``: (its name, its parameters, the calls that pass a parameter on: (callee, the
    argument's position, the parameter))."""
    out = []
    for function in _functions(_parsed(path)):
        parameters = tuple(a.arg for a in function.args.args)
        calls = tuple((_called(call), i, arg.id) for call in ast.walk(function) if isinstance(call, ast.Call)
                      for i, arg in enumerate(call.args) if isinstance(arg, ast.Name) and arg.id in parameters)
        out.append((function.name, parameters, calls))
    return tuple(out)


def _readers(paths: list[Path]) -> dict[str, tuple[int, str]]:
    """:data:`READERS` and the functions of ``paths`` that hand their own parameter on to one as the name."""
    readers = dict(READERS)
    changed = True
    while changed:
        changed = False
        for path in paths:
            for name, parameters, calls in _hand_ons(path):
                for callee, position, parameter in calls:
                    if name not in readers and callee in readers and readers[callee][0] == position:
                        readers[name] = (parameters.index(parameter), readers[callee][1])
                        changed = True
    return readers


def reads(paths: list[Path]) -> tuple[set[str], list[str]]:
    """(the sections the modules of ``paths`` read, problems: reads whose section cannot be told)."""
    modules = [p for p in paths if p.suffix == ".py" and p != REPO / CHECKS]
    readers = tuple(sorted(_readers(modules).items()))
    found: set[str] = set()
    problems: list[str] = []
    for path in modules:
        here, trouble = _file_reads(path, readers)
        found |= here
        problems += trouble
    return found, problems


@functools.lru_cache(maxsize=None)
def _file_reads(path: Path, readers_items: tuple) -> tuple[frozenset[str], tuple[str, ...]]:
    readers = dict(readers_items)
    found: set[str] = set()
    problems = []
    for function in _functions(_parsed(path)):
        if function.name in READERS:  # the loader's own functions: what they read, their callers name
            continue
        loops, parameters = _loop_values(function), {a.arg for a in function.args.args}
        here, unknown = set(), []
        for node in ast.walk(function):
            kind, argument = _read_at(node, readers)
            if argument is None:
                continue
            names = _name(argument, loops)
            if isinstance(names, list):
                here |= {f"roles.{n}" if kind == "role" else n for n in names}
            elif not (isinstance(names, str) and names in parameters and function.name in readers):
                unknown.append((kind, f"{_shown(path)}:{node.lineno} ({function.name})"))
        found |= here
        # a role named by a variable is one of all the roles when the function reads them all
        problems += [f"{where}: reads a params {kind} whose name cannot be told" for kind, where in unknown
                     if not (kind == "role" and "roles" in here)]
    return frozenset(found), tuple(problems)


def _shown(path: Path) -> str:
    return path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else str(path)


def _read_at(node: ast.AST, readers: dict[str, tuple[int, str]]) -> tuple[str, ast.AST | None]:
    """(``"section"`` or ``"role"``, the argument naming it) when ``node`` reads params, else (``""``, None)."""
    if isinstance(node, ast.Call):
        reader = readers.get(_called(node))
        if reader and len(node.args) > reader[0] and not _is_other_object(node):
            return reader[1], node.args[reader[0]]
        method = node.func.attr if isinstance(node.func, ast.Attribute) else None
        if method == "get" and _is_params(node.func.value) and node.args:
            return "section", node.args[0]
    if isinstance(node, ast.Subscript) and _is_params(node.value) and isinstance(node.ctx, ast.Load) \
            and not (isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, int)):  # a tuple's item
        return "section", node.slice
    return "", None


def _is_params(node: ast.AST) -> bool:
    return isinstance(node, ast.Name) and node.id == "params"


def _is_other_object(call: ast.Call) -> bool:
    """``x.section(...)`` on something that is not a module: not the loader's function."""
    return isinstance(call.func, ast.Attribute) and not (isinstance(call.func.value, ast.Name)
                                                         and call.func.value.id in ("loader", "roles", "cached"))


def declared(spec: dict) -> set[str]:
    """The sections (and roles) a dvc.yaml stage declares under ``params:``, from any params file."""
    found = set()
    for entry in spec.get("params") or []:
        if isinstance(entry, dict):
            keys = [k for file, ks in entry.items() if file != NOT_A_FILE for k in ks]
        else:
            keys = [entry]
        for key in keys:
            parts = key.split(".")
            found.add(".".join(parts[:2]) if parts[0] == "roles" and len(parts) > 1 else parts[0])
    return found


def compare(dvc_text: str) -> dict[str, dict[str, list[str]]]:
    """``{stage: {"undeclared": [...], "unread": [...], "unknown": [...]}}`` for every stage that differs."""
    stages = yaml.safe_load(dvc_text)["stages"]
    out = {}
    for name, script in stage_deps.stage_scripts(dvc_text).items():
        spec = stages[name].get("do", stages[name])
        paths = [REPO / script] + [REPO / p for p in stage_deps.closure(REPO / script)]
        read, problems = reads(paths)
        read -= RUNTIME
        wanted = declared(spec)
        covered = {r for r in read if r in wanted or (r.startswith("roles.") and "roles" in wanted)}
        some_role = any(r.startswith("roles.") for r in read)
        differences = {"undeclared": sorted(read - covered),
                       "unread": sorted(w for w in wanted - read if not (w == "roles" and some_role)),
                       "unknown": problems}
        if any(differences.values()):
            out[name] = differences
        else:
            out.setdefault(name, {})
    return {k: v for k, v in out.items() if v}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true",
                    help="exit 1 when a stage's declared params differ from what it reads")
    ap.add_argument("--dvc-yaml", type=Path, default=REPO / "dvc.yaml")
    args = ap.parse_args(argv)
    text = args.dvc_yaml.read_text(encoding="utf-8")
    stages = yaml.safe_load(text)["stages"]
    differences = compare(text)
    if not args.check:
        for name, script in stage_deps.stage_scripts(text).items():
            read, _ = reads([REPO / script] + [REPO / p for p in stage_deps.closure(REPO / script)])
            print(f"{name}: reads {', '.join(sorted(read - RUNTIME)) or '-'}; declares "
                  f"{', '.join(sorted(declared(stages[name].get('do', stages[name])))) or '-'}")
    for name, found in differences.items():
        for what, items in found.items():
            if items:
                print(f"{name}: {what}: {'; '.join(items)}", file=sys.stderr)
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
