"""The arguments ``dvc repro`` gives a stage script, read from dvc.yaml, for tests that run a script as it does."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def dvc_args(script: str, stage: str | None = None) -> list[str]:
    """The arguments after ``python stages/<script>`` in dvc.yaml's command of ``stage`` (default: the one
    stage that runs ``script``), e.g. ``dvc_args("dedup.py") == ["--items", "data/pool", ...]``."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    commands = {name: shlex.split(spec.get("do", spec)["cmd"]) for name, spec in stages.items()}
    matches = [name for name, words in commands.items() if words[1] == f"stages/{script}"]
    name = stage or (matches[0] if len(matches) == 1 else None)
    if name is None:
        raise ValueError(f"stages/{script} runs in {len(matches)} stages ({matches}): name the stage")
    return commands[name][2:]
