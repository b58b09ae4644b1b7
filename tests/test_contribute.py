"""docs/how-to/contribute.md names only what exists: every path (``<name>`` standing for any one), make target,
tool option, test file and test node (``tests/test_x.py::test_y``), and every name of the code it puts in
backticks (a function, a class, a constant, a field or a key the code spells)."""

from __future__ import annotations

import ast
import builtins
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs/how-to/contribute.md"
ROOTS = ("src/", "tests/", "docs/", "stages/", "tools/", "bench/", "prompts/", "requirements/", "data/")
TOP = ("dvc.yaml", "params.yaml", "README.md", "Makefile", "pyproject.toml")


def spans(text: str) -> list[str]:
    """The page's inline code spans."""
    return re.findall(r"`([^`\n]+)`", text)


def paths(text: str) -> list[str]:
    """Repository paths named in code spans (``a/b.py``, ``tests/test_x.py::test_y``, ``src/x/<name>/y.py``, a
    top-level file) and in links (resolved from the page's folder)."""
    found = []
    for span in spans(text):
        for word in span.split():
            word = word.rstrip(",;:)")
            if word.startswith(ROOTS) or word in TOP:
                found.append(word)
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            found.append((PAGE.parent / target).resolve().relative_to(REPO).as_posix())
    return found


def missing_path(path: str, repo: Path = REPO) -> str | None:
    """Why ``path`` names nothing (None when it names something): no file, no folder, no such test function."""
    file, _, node = path.partition("::")
    matches = list(repo.glob(re.sub(r"<\w+>", "*", file))) if "<" in file else [repo / file]
    matches = [m for m in matches if m.exists()]
    if not matches:
        return f"{file}: no such file or folder"
    if node and not any(re.search(rf"^def {re.escape(node)}\(", m.read_text(encoding="utf-8"), flags=re.M)
                        for m in matches):
        return f"{path}: {file} has no test {node}"
    return None


def make_targets(text: str) -> list[str]:
    return re.findall(r"`make ([\w-]+)`", text)


def code_names(repo: Path = REPO) -> set[str]:
    """Every name the code defines or spells: functions, classes, assigned names and fields, attributes, and string
    constants that are identifiers (a rule's switch, a metadata key, a dvc.yaml key)."""
    names = set(dir(builtins))
    files = [p for root in ("src", "tests", "tools", "stages") for p in (repo / root).rglob("*.py")]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name):
                names.add(node.id)
            elif isinstance(node, ast.Attribute):
                names.add(node.attr)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.keyword) and node.arg:
                names.add(node.arg)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.isidentifier():
                names.add(node.value)
    return names


def named_code(text: str) -> list[str]:
    """The names of the code in the page's code spans: a bare identifier, or the callee of a call written out
    (``run(...)``, ``Completion.failure(reason, message)`` -> ``failure``); not paths, commands or dotted keys."""
    found = []
    for span in spans(text):
        call = re.fullmatch(r"([A-Za-z_][\w.]*)\(.*\)", span)
        if call:
            found.append(call.group(1).rsplit(".", 1)[-1])
        elif re.fullmatch(r"[A-Za-z_]\w*", span) and span not in TOP:
            found.append(span)
    return found


def test_every_path_the_page_names_exists():
    text = PAGE.read_text(encoding="utf-8")
    named = paths(text)
    assert len(named) > 30 and any("::" in p for p in named), "the page's paths were not found"
    problems = sorted({p for p in (missing_path(n) for n in named) if p})
    assert not problems, "docs/how-to/contribute.md names what does not exist:\n" + "\n".join(problems)


def test_every_make_target_the_page_names_exists():
    targets = make_targets(PAGE.read_text(encoding="utf-8"))
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert {"regen", "test"} <= set(targets)
    missing = [t for t in targets if not re.search(rf"^{re.escape(t)}:", makefile, flags=re.M)]
    assert not missing, f"docs/how-to/contribute.md names make targets the Makefile lacks: {missing}"


def test_every_name_of_the_code_the_page_puts_in_backticks_exists():
    names = named_code(PAGE.read_text(encoding="utf-8"))
    assert {"load_section", "instruction_failure", "SECTIONS", "run"} <= set(names)
    known = code_names()
    missing = sorted(set(names) - known)
    assert not missing, f"docs/how-to/contribute.md names code that does not exist: {missing}"


@pytest.mark.parametrize("path,why", [
    ("tests/test_contribute.py::test_every_path_the_page_names_exists", None),
    ("src/evolforge/steps/<name>/settings.py", None),
    ("src/evolforge/steps/<name>/nothing_here.py", "src/evolforge/steps/<name>/nothing_here.py: no such file or folder"),
    ("tests/test_contribute.py::test_gone", "tests/test_contribute.py::test_gone: tests/test_contribute.py has no test "
                                           "test_gone"),
    ("tests/test_gone.py", "tests/test_gone.py: no such file or folder"),
])
def test_the_check_sees_a_missing_file_or_test(path, why):
    assert missing_path(path) == why


def test_the_page_is_read_for_paths_targets_and_names():
    text = ("| `src/a.py` | `run(...)`, `make regen`, `Completion.failure(reason, message)`, `params.yaml` "
            "`evolve.elimination`, `tests/t.py::test_x` (and [x](../reference/params.md)) |")
    assert paths(text) == ["src/a.py", "params.yaml", "tests/t.py::test_x", "docs/reference/params.md"]
    assert make_targets(text) == ["regen"]
    assert named_code(text) == ["run", "failure"]
