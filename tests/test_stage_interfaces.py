"""Every dvc.yaml command agrees with its stage script's arguments.

A stage script run by hand must not quietly read another input than ``dvc repro`` gives it (a default of
``data/responses`` where dvc.yaml passes ``data/clean``), so every path flag is required: the only defaults
left are ``--params`` and ``--prompts``, the repository's own configuration. The scripts' arguments are read
from their source (``ap.add_argument(...)`` calls), so no script runs.
"""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG_FLAGS = {"--params", "--prompts"}  # the repository's configuration, the same for every stage
OUTPUT_FLAGS = {"--out", "--metrics", "--plot", "--plots", "--samples", "--live"}


def script_flags(script: Path) -> dict[str, dict]:
    """``{flag: {"required": bool, "default": value}}`` from the script's ``add_argument`` calls."""
    flags = {}
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            name = node.args[0].value
            keywords = {k.arg: k.value for k in node.keywords}
            flags[name] = {"required": isinstance(keywords.get("required"), ast.Constant) and keywords["required"].value,
                           "default": ast.literal_eval(keywords["default"]) if "default" in keywords else None}
    return flags


def stage_commands() -> list[tuple[str, dict]]:
    """``(stage name, stage)`` for every stage, a ``foreach`` stage once with its ``do`` template."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return [(name, stage.get("do", stage)) for name, stage in stages.items()]


def command_flags(cmd: str) -> tuple[str, dict[str, str]]:
    words = shlex.split(cmd)
    assert words[0] == "python" and words[1].startswith("stages/"), cmd
    flags = dict(zip(words[2::2], words[3::2]))
    assert len(words[2:]) % 2 == 0 and all(f.startswith("--") for f in flags), f"not --flag value pairs: {cmd}"
    return words[1], flags


def declared_paths(stage: dict) -> set[str]:
    """Every path a stage declares as an output, metric or plot."""
    paths = set()
    for key in ("outs", "metrics", "plots"):
        for entry in stage.get(key, []):
            paths.update(entry if isinstance(entry, dict) else [entry])
    return paths


@pytest.mark.parametrize("name,stage", stage_commands(), ids=[name for name, _ in stage_commands()])
def test_command_matches_script(name, stage):
    script, given = command_flags(stage["cmd"])
    flags = script_flags(REPO / script)
    assert not set(given) - set(flags), f"{name}: dvc.yaml passes flags {script} does not take: {set(given) - set(flags)}"
    missing = {f for f, spec in flags.items() if spec["required"]} - set(given)
    assert not missing, f"{name}: dvc.yaml does not pass {script}'s required {missing}"
    defaulted = {f for f, spec in flags.items() if isinstance(spec["default"], str) and f not in CONFIG_FLAGS}
    assert not defaulted, f"{name}: {script} has default paths for {defaulted}; make them required"
    declared = declared_paths(stage)
    for flag in OUTPUT_FLAGS & set(given):
        value = given[flag]
        assert any(value == p or value.startswith(p.rstrip("/") + "/") or p.startswith(value.rstrip("/") + "/")
                   for p in declared), f"{name}: {flag} {value} is not among the stage's outs, metrics or plots"


def test_every_stage_script_is_a_stage():
    """A script under stages/ is either a dvc.yaml stage or says it is run by hand."""
    used = {command_flags(stage["cmd"])[0] for _, stage in stage_commands()}
    for script in sorted((REPO / "stages").glob("*.py")):
        rel = f"stages/{script.name}"
        assert rel in used or "run by hand" in script.read_text(), f"{rel} is in no dvc.yaml stage"
