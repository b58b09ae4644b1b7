"""Reading ``params.yaml``: the file read strictly, and the sections a stage uses typed, defaults filled in
(a role: :func:`evolforge.config.roles.load_role`).

:func:`read_yaml` reads the file strictly (a key written twice, a non-text key, an anchor that holds itself
or expands into a YAML bomb are refused with their line); :func:`read_params` also refuses secret-shaped values
and control characters anywhere in it. A stage then types only the sections it reads, with the settings class
its step imports: unknown keys, non-ASCII (look-alike) keys, wrong types and values out of range are reported
at once, each naming the key's full path, what was given and what is allowed::

    params.yaml: 2 problems
      seed.limt: unknown key; did you mean `limit`? (seed keys: config, fields, format, limit, ...)
      seed.format: got "alpacca" (text); allowed: one of "auto", "alpaca", ...

Checking the whole file (every section, unknown sections, rules across sections) is
:func:`evolforge.schema.load_params`'s job (``evolforge check`` and the models stage), so a stage imports
no other step's settings.

>>> from evolforge.steps.seed.settings import SeedSettings
>>> settings = load_section({"seed": {"source": "data/seeds/demo.jsonl", "limit": 5}}, "seed", SeedSettings)
>>> type(settings).__name__, settings.limit, settings.split   # the defaults filled in
('SeedSettings', 5, 'train')

Values are checked strictly, as YAML typed them: ``"5"`` is not an integer, ``1`` is not ``true``,
``2.5`` is not an integer (an integer is accepted where a number is).

One section is checked by :func:`check_section` (its problems) and typed by :func:`parse` (the settings
dataclass, defaults filled in). A settings class is a dataclass (or a ``TypedDict`` for a nested mapping) with
typed fields; a strict pydantic model is built from it once per class. pydantic's errors become one line per
key path, worded by :mod:`evolforge.config.messages`; a class's own ``__post_init__`` rules (``select``:
top_fraction or threshold) run in the check too.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml
from pydantic import ConfigDict, Field, ValidationError, create_model

from evolforge.config.bounds import DEFAULT_FILE, ParamsError, secret_problems, settable
from evolforge.config.messages import kind, non_ascii_keys, problem, show_key

Settings = TypeVar("Settings")

# ---------------------------------------------------------------------------------------------------
# reading the file


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load keeps the last of two equal keys without a word; a typo'd copy must not win silently."""


MERGE_TAG = "tag:yaml.org,2002:merge"
MAX_VALUES = 100_000  # the shipped file holds a few hundred; anchors repeated into millions are a YAML bomb


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == MERGE_TAG:  # `<<: *anchor` (a merge key); an explicit key may override what it brings
            continue
        line = key_node.start_mark.line + 1
        key = loader.construct_object(key_node, deep=deep)
        if not isinstance(key, str):
            shown = (f"the key `{key_node.value}` reads as {kind(key)}" if isinstance(key_node, yaml.ScalarNode)
                     else f"a key is {'a list' if isinstance(key, list) else 'a mapping'}")
            quote = (" (YAML reads an unquoted on/off/yes/no/true/false as true/false: quote it)"
                     if isinstance(key, bool) else " (quote it)" if isinstance(key_node, yaml.ScalarNode) else "")
            raise ParamsError([f"line {line}: {shown}, not text; keys are plain names" + quote])
        if key in seen:
            raise ParamsError([f"line {line}: key {show_key(key)} appears twice in one mapping "
                               f"(first on line {seen[key]}); YAML would silently keep the last"])
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def _count_values(node: yaml.Node, sizes: dict[int, int], open_: set[int]) -> int:
    """How many values ``node`` expands to once aliases are copied out (memoised per node, so a YAML bomb
    -- nine anchors of nine aliases each -- is counted in microseconds, not built). A node that holds
    itself (``a: &a [*a]``) would make every reader loop forever."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:
        mark = node.start_mark
        raise ParamsError([f"line {mark.line + 1}, column {mark.column + 1}: an anchor holds an alias of itself "
                           "(a value that contains itself); params are plain trees"])
    open_.add(key)
    total = 1
    if isinstance(node, yaml.SequenceNode):
        total += sum(_count_values(item, sizes, open_) for item in node.value)
    elif isinstance(node, yaml.MappingNode):
        total += sum(_count_values(k, sizes, open_) + _count_values(v, sizes, open_) for k, v in node.value)
    open_.discard(key)
    sizes[key] = total
    return total


def read_yaml(path: str | Path) -> dict[str, Any]:
    if not str(path).strip():
        raise ParamsError(["is not a file name: the params file's path is empty"], repr(str(path)))
    path = Path(path)
    if not path.is_file():
        raise ParamsError(["not found (or not a regular file)"], path)
    try:
        with open(path, encoding="utf-8-sig") as fh:
            loader = _UniqueKeyLoader(fh)
            try:
                node = loader.get_single_node()
                if node is not None and _count_values(node, {}, set()) > MAX_VALUES:
                    raise ParamsError([f"expands to more than {MAX_VALUES:,} values (anchors and aliases repeated "
                                       "inside each other); write the settings out"])
                data = loader.construct_document(node) if node is not None else None
            finally:
                loader.dispose()
        data = {} if data is None else data
    except ParamsError as err:
        raise ParamsError(err.problems, path) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ParamsError([f"{where}not valid YAML ({getattr(err, 'problem', None) or err})"], path) from None
    except UnicodeDecodeError as err:
        raise ParamsError([f"byte {err.start}: the file is not UTF-8 text"], path) from None
    except RecursionError:
        raise ParamsError(["values are nested too deeply to read (thousands of levels)"], path) from None
    if not isinstance(data, dict):
        raise ParamsError([f"the top level is {kind(data)}; expected a mapping of sections"], path)
    return data


def read_params(path: str | Path = DEFAULT_FILE) -> dict[str, Any]:
    """Read ``path`` strictly and refuse secret-shaped values (first, so no other message can echo one) and
    control characters anywhere in it; raises :class:`ParamsError` listing every problem. Returns the mapping
    as written (no defaults added): the sections a stage uses come typed from :func:`load_section`."""
    params = read_yaml(path)
    problems = secret_problems(params)
    if problems:  # stop here: the messages below show the values they refuse
        raise ParamsError(problems, path)
    problems = control_character_problems(params)
    if problems:
        raise ParamsError(problems, path)
    return params


# C0 controls but tab, newline and carriage return; DEL; C1 controls. No setting holds them: a NUL in a path
# is refused by the OS only later, and an ESC sequence in a value rewrites the terminal that shows it.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def control_character_problems(value: Any, where: str = "") -> list[str]:
    """One line per text value (at any depth) holding a control character, naming the character."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in control_character_problems(v, f"{where}.{k}" if where else str(k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in control_character_problems(v, f"{where}[{i}]")]
    m = _CONTROL.search(value) if isinstance(value, str) else None
    if m is None:
        return []
    return [f"{where}: holds the control character U+{ord(m.group()):04X} at character {m.start() + 1}; "
            "allowed: text without control characters (tab and newlines are fine)"]


def section(params: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The raw mapping of one section ({} when absent or empty)."""
    return dict(params.get(name) or {})


def load_section(params: Mapping[str, Any], name: str, settings: type[Settings]) -> Settings:
    """Section ``name`` as an instance of its ``settings`` class (the one its step imports), defaults filled in."""
    return parse(settings, params.get(name) or {}, name)


# ---------------------------------------------------------------------------------------------------
# one section checked and typed


@functools.lru_cache(maxsize=None)
def _model(cls: type):
    """A strict pydantic model with the dataclass's fields (strict: YAML types are taken as written)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {}
    for f in settable(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = Field(default_factory=f.default_factory)
        else:
            default = ...
        fields[f.name] = (hints[f.name], default)
    # allow_inf_nan=False: `.inf` and `.nan` are YAML numbers, but no setting means them
    return create_model(cls.__name__, __config__=ConfigDict(extra="forbid", strict=True, allow_inf_nan=False), **fields)


def parse(cls: type, data: Any, where: str, *, file: str | Path = DEFAULT_FILE, **fixed: Any) -> Any:
    """``data`` (one section) as an instance of dataclass ``cls``; ``fixed`` gives the fields that code sets,
    not params (a role's ``name``). Raises :class:`ParamsError` naming every problem under ``where``."""
    problems = check_section(cls, data, where)
    if problems:
        raise ParamsError(problems, file)
    model = _model(cls)
    values = model.model_validate(data or {})
    return cls(**{k: getattr(values, k) for k in model.model_fields}, **fixed)


def check_section(cls: type, data: Any, where: str) -> list[str]:
    """Problems of one section (empty when it is fine); each line is ``path: what is wrong``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        return [f"{where}: got {kind(data)}; expected a mapping of settings"]
    problems = non_ascii_keys(data, where, cls)
    reported = {p.split(":", 1)[0] for p in problems}
    values = None
    try:
        values = _model(cls).model_validate(data)
    except ValidationError as err:
        by_path: dict[tuple, list[dict]] = {}
        for e in err.errors():
            by_path.setdefault(_data_path(data, e), []).append(e)
        for path, errors in by_path.items():
            line = problem(cls, data, where, path, errors)
            if line.split(":", 1)[0] not in reported:
                problems.append(line)
    if values is not None and not problems and hasattr(cls, "__post_init__"):
        # the section's own rules between its fields (``select``: top_fraction or threshold), so that
        # `evolforge check` and every stage refuse what the stage that reads the section would
        try:
            cls(**{k: getattr(values, k) for k in _model(cls).model_fields})
        except ParamsError as err:
            problems += err.problems
        except TypeError:  # a field that code sets, not params (a role's name): its own checks run later
            pass
    return problems


def _data_path(data: Any, error: dict) -> tuple:
    """The error's location as keys that exist in ``data``: pydantic adds union member tags
    (``'constrained-int'``, ``'none'``) that are no keys; a missing key is kept as the last step."""
    path, node = [], data
    loc = error["loc"]
    for i, step in enumerate(loc):
        if isinstance(node, dict) and step in node:
            path.append(step)
            node = node[step]
        elif isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node):
            path.append(step)
            node = node[step]
        elif error["type"] == "missing" and i == len(loc) - 1:
            path.append(step)
    return tuple(path)
