"""`make regen` writes every generated file again, and the suite fails while one is stale.

The generators are the tools with a ``--write`` mode (tools/stage_deps.py: dvc.yaml's source deps;
tools/params_doc.py: docs/reference/params.md; tools/staleness.py: docs/reference/staleness.json). The Makefile's
``regen`` target runs each of them; each has a ``--check`` mode that exits 1 when its file differs from what
``--write`` would write, and this test runs those checks, so a change that needs a regeneration fails here with
the command that fixes it.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def regen_tools(makefile: str | None = None) -> list[str]:
    """The tools the Makefile's (or ``makefile``'s) ``regen`` recipe runs with ``--write``, in its order."""
    makefile = makefile if makefile is not None else (REPO / "Makefile").read_text(encoding="utf-8")
    recipe = re.search(r"^regen:.*\n((?:\t.*\n)+)", makefile, flags=re.M)
    assert recipe, "the Makefile has no regen target"
    return re.findall(r"^\t\$\(PY\) (tools/\w+\.py) --write$", recipe.group(1), flags=re.M)


def generators() -> set[str]:
    """The tools with a ``--write`` mode: the ones that write a file of the repository from the code."""
    return {p.relative_to(REPO).as_posix() for p in (REPO / "tools").glob("*.py")
            if re.search(r"add_argument\(\s*\"--write\"", p.read_text(encoding="utf-8"))}


def tool(path: str):
    spec = importlib.util.spec_from_file_location(Path(path).stem, REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_regen_runs_every_generator_dvc_yaml_first():
    found = regen_tools()
    assert sorted(found) == sorted(generators()) and len(found) >= 3
    # the staleness figures read the stages' deps from dvc.yaml: those are written first
    assert found.index("tools/stage_deps.py") < found.index("tools/staleness.py")


@pytest.mark.parametrize("path", regen_tools())
def test_no_generated_file_is_stale(path, capsys):
    assert tool(path).main(["--check"]) == 0, capsys.readouterr()


def test_the_recipe_is_read_to_its_end():
    makefile = ("regen: setup\n\t$(PY) tools/a.py --write\n\t$(PY) tools/b.py --write\n\n"
                "bench: setup\n\t$(PY) tools/c.py --write\n")
    assert regen_tools(makefile) == ["tools/a.py", "tools/b.py"]


def test_a_stale_file_fails_its_check(tmp_path, monkeypatch, capsys):
    staleness = tool("tools/staleness.py")
    stale = tmp_path / "staleness.json"
    stale.write_text('{"stages": 0}\n', encoding="utf-8")
    monkeypatch.setattr(staleness, "FIGURES_FILE", str(stale))  # an absolute path: REPO / it is itself
    assert staleness.main(["--check"]) == 1
    assert "make regen" in capsys.readouterr().err


def test_regen_writes_the_staleness_figures_into_the_pages_that_quote_them(tmp_path):
    staleness = tool("tools/staleness.py")
    page = tmp_path / "docs" / "explanation" / "quoting.md"
    page.parent.mkdir(parents=True)
    mark = "<!--= docs/reference/staleness.json"
    page.write_text(f"on average 4.39{mark} mean_all --> of the 26{mark} stages --> stages, 3 others\n", encoding="utf-8")
    assert staleness.requote({"mean_all": 4.381, "stages": 27}, tmp_path) == [page.relative_to(tmp_path).as_posix()]
    assert page.read_text(encoding="utf-8") == f"on average 4.38{mark} mean_all --> of the 27{mark} stages --> stages, 3 others\n"
    assert staleness.requote({"mean_all": 4.381, "stages": 27}, tmp_path) == []
