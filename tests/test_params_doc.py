"""The params reference is generated from the settings dataclasses (tools/params_doc.py), and params.yaml's
keys and comments agree with the schema: a figure written once."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import typing

import yaml
from typing_extensions import is_typeddict

from evolforge.config.backend_specs import BACKEND_NAMES, SPECS
from evolforge.schema import SECTIONS


def _tool(repo):
    spec = importlib.util.spec_from_file_location("params_doc", repo / "tools" / "params_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_params_reference_is_generated_and_current(repo, capsys):
    assert _tool(repo).main(["--check"]) == 0, capsys.readouterr().err


def test_every_settings_field_has_help(repo):
    tool = _tool(repo)
    assert tool.missing_help() == []
    page = tool.render()
    for name, cls in SECTIONS.items():
        for f in tool.settings_fields(cls):
            where = "roles.<name>" if name == "roles" else name
            assert f"| `{where}.{f.name}` |" in page


def test_a_field_without_help_fails_the_check(repo, monkeypatch, capsys):
    tool = _tool(repo)

    @dataclasses.dataclass
    class Bare:
        """``bare``."""

        size: int = 3

    monkeypatch.setitem(tool.SECTIONS, "bare", Bare)
    assert tool.missing_help() == ["bare.size"]
    assert tool.main(["--check"]) == 1
    assert "bare.size" in capsys.readouterr().err


def _keys(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _unknown_keys(node, tp, path: str) -> list[str]:
    """Keys of ``node`` (as params.yaml holds it) that type ``tp`` does not declare."""
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        fields = {f.name for f in dataclasses.fields(tp) if f.metadata.get("params", True)}
        if not isinstance(node, dict):
            return []
        return [f"{path}.{k}" for k in node if k not in fields] + [
            bad for k, v in node.items() if k in fields for bad in _unknown_keys(v, hints[k], f"{path}.{k}")]
    if is_typeddict(tp):
        hints = typing.get_type_hints(tp)
        return [f"{path}.{k}" for k in (node or {}) if k not in hints] + [
            bad for k, v in (node or {}).items() if k in hints for bad in _unknown_keys(v, hints[k], f"{path}.{k}")]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or type(tp).__name__ == "UnionType":
        found = [_unknown_keys(node, a, path) for a in args if a is not type(None)]
        return min(found, key=len) if found else []
    if origin is dict and isinstance(node, dict) and len(args) == 2:
        return [bad for k, v in node.items() for bad in _unknown_keys(v, args[1], f"{path}.{k}")]
    return []


def test_every_key_of_params_yaml_is_in_the_schema(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    unknown = [name for name in params if name not in SECTIONS]
    for name, data in params.items():
        if name == "roles":  # a role's keys: the common ones and those of its backend's settings class
            for role, fields in data.items():
                own = SPECS[fields["backend"]].settings
                unknown += _unknown_keys({k: v for k, v in fields.items() if k not in _keys(own)},
                                         SECTIONS["roles"], f"roles.{role}")
                unknown += _unknown_keys({k: v for k, v in fields.items() if k in _keys(own)}, own, f"roles.{role}")
        elif name in SECTIONS:
            unknown += _unknown_keys(data, SECTIONS[name], name)
    assert not unknown, f"params.yaml keys the schema does not declare: {unknown}"


def test_the_roles_comment_names_every_backend(repo):
    """params.yaml's comment above `roles:` lists the backends a role can name: every one config declares."""
    text = (repo / "params.yaml").read_text()
    comment = re.search(r"((?:^#.*\n)+)roles:", text, re.M).group(1)
    backends = {name.split(":")[0] for name in SPECS}  # openai:<server> specs are the openai backend's
    assert backends == set(BACKEND_NAMES)
    missing = [b for b in sorted(backends) if not re.search(rf"\b{b}\b", comment)]
    assert not missing, f"params.yaml's roles comment does not name the backends {missing}"


def test_the_paper_values_in_params_yaml_comments_match_the_metadata(repo):
    """A `# paper: X` comment beside a key of params.yaml states the value the field's metadata holds."""
    lines = (repo / "params.yaml").read_text().splitlines()
    section, checked = None, 0
    for line in lines:
        top = re.match(r"^([a-z_]+):", line)
        if top:
            section = top.group(1)
        key = re.match(r"^  ([a-z_]+): [^#]*#\s*(?:[^#]*;\s*)?papers?: ([\d.-][^(;]*?)\s*(?:\(|;|$)", line)
        if not key or section not in SECTIONS or section == "roles":
            continue
        fields = {f.name: f for f in dataclasses.fields(SECTIONS[section])}
        paper = fields[key.group(1)].metadata.get("paper")
        if paper is not None:
            checked += 1
            assert str(paper).split(" ")[0] == key.group(2).split(" ")[0], (
                f"params.yaml {section}.{key.group(1)}: comment says paper {key.group(2)!r}, the field {paper!r}")
    assert checked >= 5


def test_every_sandbox_memory_setting_is_labelled_in_the_unit_the_sandbox_applies(repo):
    """The sandbox caps a process's address space at ``memory_mb * 1024 * 1024`` bytes: mebibytes, so every
    ``*memory_mb`` setting says MiB (its key keeps the name params.yaml has always used)."""
    child = (repo / "src/evolforge/eval/sandbox_os_layers.py").read_text(encoding="utf-8")
    assert 'cfg["memory_mb"] * 1024 * 1024' in child
    tool = _tool(repo)
    units = {f"{name}.{f.name}": f.metadata.get("unit") for name, cls in SECTIONS.items() if name != "roles"
             for f in tool.settings_fields(cls) if f.name.endswith("memory_mb")}
    assert set(units) >= {"verify.memory_mb", "autoif.memory_mb", "evaluate.sandbox_memory_mb"}
    assert units == dict.fromkeys(units, "MiB")
