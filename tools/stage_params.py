"""The params.yaml sections and fields each dvc.yaml stage's code reads, against the ``params:`` the stage declares.

A stage reruns when a declared param changes; a setting its code reads but does not declare leaves an output
made with other settings than its lock says, and a declared one it does not read reruns it for nothing. This tool
reads the code a stage runs -- its script's import closure, as ``tools/stage_deps.py`` finds it -- and collects
every section it reads:

- ``load_section(params, "seed", ...)``, ``section(params, "evolve")``: that section;
- ``load_role(params, "judge")``: ``roles.judge``; ``load_llm_params(params, ("responder", "judge"))`` (the roles
  a stage opens LLMs for): ``roles.responder`` and ``roles.judge``;
- ``params.get("cache")``, ``params["seed"]``: that section, also where the key is a loop variable over a
  literal tuple (``params.get(k) for k in ("seed", "evolve")``);
- a function that passes its own parameter on as the name (``def open_one(params, name)`` calling
  ``load_role(params, name)``) reads what its callers name.

A read whose section cannot be told (a computed name) is a problem: name it literally. Sections are compared
whole and roles one by one; the runtime sections ``cache``, ``llm`` and ``data`` (where completions are kept, when
they are committed, how many rows a chunk holds: docs/how-to/scale.md shows the outputs do not depend on them) are
not declared by design.

Where a stage declares a section field by field (``evolve.strategy``, ``respond.temperature``), the fields are
compared too: the typed settings object ``load_section(params, "respond", RespondSettings)`` returns is followed
through the code -- its attributes that are fields of its class, what the class's methods read of ``self``, what
the functions it is handed to read of their parameter -- so verify, which hands ``respond`` to
``response_sampling``, reads ``respond.temperature`` and ``respond.max_tokens`` and declares those two. An object
handed where its reads cannot be followed (``dataclasses.asdict``, ``getattr``, a function defined outside the
stage's code) reads every field of its class, which the stage must then declare.

    python tools/stage_params.py            # every stage: what it reads, what it declares, the differences
    python tools/stage_params.py --check    # exit 1 when a stage's declared params differ from what it reads

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


def declared_keys(spec: dict) -> list[list[str]]:
    """Each key a dvc.yaml stage declares under ``params:`` (from params.yaml or another params file, not from
    :data:`NOT_A_FILE`), split at its dots."""
    keys = []
    for entry in spec.get("params") or []:
        keys += [k for file, ks in entry.items() if file != NOT_A_FILE for k in ks] if isinstance(entry, dict) \
            else [entry]
    return [key.split(".") for key in keys]


def declared(spec: dict) -> set[str]:
    """The sections (and roles) a dvc.yaml stage declares."""
    return {".".join(parts[:2]) if parts[0] == "roles" and len(parts) > 1 else parts[0]
            for parts in declared_keys(spec)}


# ---------------------------------------------------------------------------------------------------
# fields: which fields of a typed section a stage reads, against the fields it declares


ALL = "*"  # every field of the section: the settings object went where its reads cannot be followed


def _classes(paths: tuple[Path, ...]) -> dict[str, ast.ClassDef]:
    return {n.name: n for path in paths for n in ast.walk(_parsed(path)) if isinstance(n, ast.ClassDef)}


def class_fields(name: str, classes: dict[str, ast.ClassDef]) -> set[str]:
    """The annotated fields of class ``name`` and of its bases that ``classes`` define (a settings dataclass)."""
    node = classes.get(name)
    if node is None:
        return set()
    own = {s.target.id for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}
    return own.union(*(class_fields(b.id, classes) for b in node.bases if isinstance(b, ast.Name)))


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _uses(function: ast.AST, name: str) -> list[ast.Name]:
    return [n for n in ast.walk(function) if isinstance(n, ast.Name) and n.id == name and isinstance(n.ctx, ast.Load)]


def _callee_parameter(call: ast.Call, arg: ast.AST, function: ast.FunctionDef) -> str | None:
    """The parameter of ``function`` that ``arg`` (an argument of ``call``) binds; None for ``*args``-like. A
    method's (or class method's) first parameter is bound by the call's object."""
    positional = [a.arg for a in function.args.posonlyargs + function.args.args]
    if positional[:1] in (["self"], ["cls"]):
        positional = positional[1:]
    if arg in call.args:
        i = call.args.index(arg)
        starred = any(isinstance(a, ast.Starred) for a in call.args[:i + 1])
        return positional[i] if i < len(positional) and not starred else None
    keyword = next((k.arg for k in call.keywords if k.value is arg), None)
    return keyword if keyword in positional + [a.arg for a in function.args.kwonlyargs] else None


class _FieldReads:
    """The fields of a settings object that the code of ``paths`` reads: its attributes that are fields, what its
    class's methods read of ``self``, and what the functions of ``paths`` it is handed to (by name, union over
    functions of one name) read of their parameter; anything else it is handed to (``asdict``, ``getattr``, a
    container, a function defined elsewhere) reads :data:`ALL`."""

    def __init__(self, paths: tuple[Path, ...]):
        self.functions: dict[str, list[ast.FunctionDef]] = {}
        self.parents: dict[ast.AST, ast.AST] = {}
        self.classes = _classes(paths)
        for path in paths:
            tree = _parsed(path)
            self.parents.update(_parents(tree))
            for function in _functions(tree):
                self.functions.setdefault(function.name, []).append(function)
        self.seen: set[tuple[int, str]] = set()

    def methods(self, cls: str) -> dict[str, ast.FunctionDef]:
        node = self.classes.get(cls)
        if node is None:
            return {}
        inherited = [self.methods(b.id) for b in node.bases if isinstance(b, ast.Name)]
        own = {f.name: f for f in node.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}
        return {k: v for d in inherited for k, v in d.items()} | own

    def of(self, name: str, function: ast.AST, cls: str) -> set[str]:
        if (id(function), name) in self.seen:
            return set()
        self.seen.add((id(function), name))
        return set().union(*(self.use(node, cls) for node in _uses(function, name)))

    def use(self, node: ast.AST, cls: str) -> set[str]:
        parent, fields = self.parents.get(node), class_fields(cls, self.classes)
        if isinstance(parent, ast.Attribute) and parent.value is node:
            method = self.methods(cls).get(parent.attr)
            if method is not None and method.args.args:  # what the method reads of self
                return self.of(method.args.args[0].arg, method, cls)
            return {parent.attr} if parent.attr in fields else {ALL}
        if isinstance(parent, ast.keyword):
            node, parent = parent.value, self.parents.get(parent)
        callee = _called(parent) if isinstance(parent, ast.Call) and node is not parent.func else None
        if callee not in self.functions:
            return {ALL}
        found: set[str] = set()
        for function in self.functions[callee]:
            parameter = _callee_parameter(parent, node, function)
            found |= self.of(parameter, function, cls) if parameter else {ALL}
        return found


def field_reads(paths: list[Path]) -> dict[str, set[str]]:
    """``{section: the fields read}`` for every ``load_section(params, "S", Class)`` in the modules of ``paths``
    whose result is bound to a name or used at once (``load_section(...).embedder``); every field of the class
    where the object goes where its reads cannot be followed (:data:`ALL` when the class is not in ``paths``). A
    section read otherwise has no entry."""
    modules = tuple(p for p in paths if p.suffix == ".py" and p != REPO / CHECKS)
    reads_ = _FieldReads(modules)
    out: dict[str, set[str]] = {}
    for path in modules:
        for function in _functions(_parsed(path)):
            for call in ast.walk(function):
                if not (isinstance(call, ast.Call) and _called(call) == "load_section" and len(call.args) == 3
                        and isinstance(call.args[1], ast.Constant) and isinstance(call.args[2], ast.Name)):
                    continue
                cls = call.args[2].id
                reads_.seen = set()  # each object followed on its own
                found = _bound_reads(call, function, cls, reads_)
                fields = class_fields(cls, reads_.classes)
                if ALL in found and fields:
                    found = (found - {ALL}) | fields
                out.setdefault(call.args[1].value, set()).update(found)
    return out


def _bound_reads(call: ast.Call, function: ast.AST, cls: str, reads_: _FieldReads) -> set[str]:
    """The fields read of the object ``call`` (a ``load_section`` of class ``cls``) returns in ``function``."""
    parent = reads_.parents.get(call)
    if isinstance(parent, ast.Tuple):  # a, b = load_section(...), load_section(...)
        target = reads_.parents.get(parent)
        i = parent.elts.index(call)
        if isinstance(target, ast.Assign) and isinstance(target.targets[0], ast.Tuple) \
                and isinstance(target.targets[0].elts[i], ast.Name):
            return reads_.of(target.targets[0].elts[i].id, function, cls)
        return {ALL}
    if isinstance(parent, ast.Assign) and isinstance(parent.targets[0], ast.Name):
        return reads_.of(parent.targets[0].id, function, cls)
    return reads_.use(call, cls)


def declared_fields(spec: dict) -> dict[str, set[str]]:
    """``{section: fields}`` for the sections a dvc.yaml stage declares field by field (``evolve.strategy``,
    ``evolve.rounds.${key}``: field ``rounds``); a section declared whole has :data:`ALL`."""
    found: dict[str, set[str]] = {}
    for parts in declared_keys(spec):
        if parts[0] != "roles":
            found.setdefault(parts[0], set()).add(parts[1] if len(parts) > 1 else ALL)
    return found


def field_differences(paths: list[Path], spec: dict) -> tuple[list[str], list[str]]:
    """(``section.field`` for each field the code reads of a section the stage declares field by field but not that
    field; each declared field the code does not read), over the sections it reads typed."""
    declared_, read = declared_fields(spec), field_reads(paths)
    undeclared, unread = [], []
    for section in sorted(set(read) & set(declared_) - RUNTIME):
        fields, wanted = read[section], declared_[section]
        if ALL in wanted:
            continue  # declared whole
        undeclared += [f"{section}.{f}" if f != ALL else f"{section} (its settings object goes where its reads "
                       "cannot be followed: declare the section whole)" for f in sorted(fields - wanted)]
        unread += [f"{section}.{f}" for f in sorted(wanted - fields)] if ALL not in fields else []
    return undeclared, unread


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
        fields_undeclared, fields_unread = field_differences(paths, spec)
        differences = {"undeclared": sorted(read - covered) + fields_undeclared,
                       "unread": sorted(w for w in wanted - read if not (w == "roles" and some_role)) + fields_unread,
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
