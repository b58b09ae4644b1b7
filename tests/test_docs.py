"""Docs that cannot drift: the README's stage table, commands and file map against the repository."""

from __future__ import annotations

import re

import yaml


def readme(repo) -> str:
    return (repo / "README.md").read_text(encoding="utf-8")


def test_stage_table_matches_dvc_yaml(repo):
    stages = set(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])
    table = re.search(r"\| stage \| reads \| writes \| what \|\n\|[-|]+\|\n((?:\|.*\|\n)+)", readme(repo)).group(1)
    documented = {re.match(r"\| `([a-z_]+)", row).group(1) for row in table.splitlines()}
    assert documented == stages


def test_quick_start_commands_exist(repo):
    text = readme(repo)
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^make (\w+)", quick, flags=re.M)
    assert commands == ["run", "test"]
    makefile = (repo / "Makefile").read_text()
    for target in commands:
        assert re.search(rf"^{target}:", makefile, flags=re.M), f"Makefile has no '{target}' target"
    assert "make test" in (repo / ".ci/run").read_text()


def test_file_map_names_real_files(repo):
    block = readme(repo).split("## File map", 1)[1].split("```", 2)[1]
    roots = [repo, repo / "src/evolforge", *(p for p in (repo / "src/evolforge").rglob("*") if p.is_dir()), repo / "prompts"]
    names = re.findall(r"(?<![\w/.-])((?:[\w.-]+/)+|[\w.-]+\.(?:py|yaml|lock|jsonl))(?![\w/])", block)
    assert len(names) > 20
    missing = [n for n in names if not any((root / n.rstrip("/")).exists() for root in roots)]
    assert not missing, f"README file map names files that do not exist: {missing}"


def test_params_mentioned_in_readme_exist(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for dotted in set(re.findall(r"^dvc exp run .*?-S ([a-z_.]+)=", readme(repo), flags=re.M)):
        node = params
        for part in dotted.split("."):
            assert part in node, f"README uses -S {dotted}, which params.yaml lacks"
            node = node[part]


def test_stage_scripts_shadow_no_module(repo):
    """Python puts stages/ first on sys.path, so a script named like a module (select, evaluate) breaks imports."""
    import importlib.util
    import sys

    for script in (repo / "stages").glob("*.py"):
        name = script.stem
        assert name not in sys.stdlib_module_names, f"stages/{script.name} shadows the standard library"
        assert importlib.util.find_spec(name) is None, f"stages/{script.name} shadows the installed module {name}"


def test_respond_depends_on_every_round_it_answers(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    names = {r["index"]: name for name, r in params["evolve"]["rounds"].items()}
    deps = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]["respond"]["deps"]
    for index in params["respond"]["rounds"]:
        assert f"data/evolved/{names[index]}" in deps, f"respond answers round {index} but does not depend on it"
