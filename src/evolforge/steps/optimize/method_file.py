"""Candidate methods from a file (``optimize.candidates_file``): evolving methods the optimizer did not write -- a
stronger model's, the paper's published ones, hand-written ones -- measured beside the initial method.

The file is YAML, a mapping whose ``methods`` list holds one entry per method (``about``: free text on the whole
file), or JSONL, one entry per line. Each entry names the method (``name``, unique in the file), says where it comes
from (``source``) and holds its text (``method``): the method as ``prompts/optimize/evolve_with_method.j2`` sends it,
before the ``#Instruction#:`` heading that template adds.

>>> entry = {"name": "mine", "source": "written by hand", "method": "Rewrite it.\\n#Finally Rewritten Instruction#:"}
>>> parse_methods([entry], "f.yaml")[0].name
'mine'
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from evolforge.config.bounds import Refusal
from evolforge.core.prompts import PromptLibrary
from evolforge.steps.optimize.settings import OptimizeSettings

FIELDS = ("name", "source", "method")
_HEADING = "#Instruction#:"  # what the method template adds after the method text


@dataclass(frozen=True)
class FileMethod:
    """One candidate method read from the file."""

    name: str  # unique in the file; names the candidate in the log and the metrics
    source: str  # where it comes from (a model and run, a paper's file at a commit, a person)
    method: str  # the method text


def parse_methods(entries: Any, where: str) -> list[FileMethod]:
    """The entries of a candidates file (``where`` names it in errors), each checked: one error names the entry,
    the field and the rule."""
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{where}: expected a non-empty list of methods, each {{name, source, method}}")
    methods, seen = [], set()
    for k, entry in enumerate(entries, start=1):
        at = f"{where}: method {k}"
        if not isinstance(entry, dict):
            raise ValueError(f"{at}: expected a mapping {{name, source, method}}, got {type(entry).__name__}")
        if unknown := sorted(set(entry) - set(FIELDS)):
            raise ValueError(f"{at}: unknown field(s) {', '.join(map(str, unknown))} (fields: {', '.join(FIELDS)})")
        for name in FIELDS:
            if not isinstance(entry.get(name), str) or not entry[name].strip():
                raise ValueError(f"{at}: field {name!r} must be a non-empty string")
        if entry["name"] in seen:
            raise ValueError(f"{at}: field 'name': {entry['name']!r} is used by an earlier method (names are unique)")
        if entry["method"].rstrip().endswith(_HEADING):
            raise ValueError(f"{at}: field 'method' ends in {_HEADING!r}, which prompts/optimize/evolve_with_method.j2 "
                             f"adds itself: end the method before it")
        seen.add(entry["name"])
        methods.append(FileMethod(entry["name"], entry["source"].strip(), entry["method"].strip()))
    return methods


def read_methods(path: str | Path) -> list[FileMethod]:
    """The candidate methods of ``path`` (.yaml / .yml: a mapping with ``methods``; .jsonl: one method a line)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ValueError(f"{path}: cannot read the candidates file (params.yaml optimize.candidates_file): "
                         f"{err.strerror or err}") from None
    if path.suffix == ".jsonl":
        entries = []
        for line_no, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    entries.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}: line {line_no}: not JSON ({err.msg})") from None
        return parse_methods(entries, str(path))
    if path.suffix not in (".yaml", ".yml"):
        raise ValueError(f"{path}: a candidates file is .yaml, .yml or .jsonl")
    try:
        found = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not YAML: {err}") from None
    if not isinstance(found, dict) or "methods" not in found:
        raise ValueError(f"{path}: expected a mapping with a 'methods' list (and an optional 'about')")
    if unknown := sorted(set(found) - {"about", "methods"}):
        raise ValueError(f"{path}: unknown key(s) {', '.join(map(str, unknown))} (keys: about, methods)")
    return parse_methods(found["methods"], str(path))


def candidate_methods(settings: OptimizeSettings, prompts: PromptLibrary) -> list[FileMethod] | None:
    """``optimize.candidates_file``'s methods (None: no file), refused outside ``prompts/optimize/``: the folder
    dvc.yaml lists as the stage's dependency, so that DVC reruns the stage when the file changes."""
    if settings.candidates_file is None:
        return None
    path, tracked = Path(settings.candidates_file), prompts.root / "optimize"
    if not path.resolve().is_relative_to(tracked.resolve()):
        raise Refusal(f"params.yaml optimize.candidates_file: {path} lies outside {tracked}/, the folder the optimize "
                      f"stage depends on (dvc.yaml), so DVC would not rerun the stage when it changes: move it under "
                      f"{tracked}/candidates/")
    return read_methods(path)
