"""Reading ``params.yaml``: one typed schema for the whole file, checked before any stage does work.

Every section is a dataclass next to the code that uses it (``roles`` -> :class:`~evolforge.core.roles.Role`,
``evolve`` -> ``EvolveSettings``, ...); :mod:`evolforge.core.schema` lists them. The dataclass holds the
section's defaults (the one place they live) and its types; ``Literal`` types give the allowed values and
the bounds below (``PositiveInt``, ``Fraction``...) the ranges. :func:`load_params` reads the file and
checks all of it: unknown sections and keys, non-ASCII (look-alike) keys, duplicate keys, wrong types,
values out of range, and secret-shaped values anywhere. Every problem is reported at once, each naming
the key's full path, what was given and what is allowed::

    params.yaml: 2 problems
      seed.limt: unknown key; did you mean `limit`? (seed keys: config, fields, format, limit, ...)
      evolve.assignment: got "round-robin" (text); allowed: one of "round_robin", "random"

>>> params = load_params("params.yaml")              # doctest: +SKIP
>>> settings = load_section({"seed": {"source": "data/seeds/demo.jsonl", "limit": 5}}, "seed")
>>> type(settings).__name__, settings.limit, settings.split   # the defaults filled in
('SeedSettings', 5, 'train')
>>> load_role({"roles": {"evolver": {"backend": "hf", "model": "m"}}}, "evolver").batch_size
8

Values are checked strictly, as YAML typed them: ``"5"`` is not an integer, ``1`` is not ``true``,
``2.5`` is not an integer (an integer is accepted where a number is).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import types
import typing
import unicodedata
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Union

import yaml
from typing_extensions import is_typeddict  # also knows typing_extensions.TypedDict (pydantic's)
from annotated_types import Ge, Gt, Le, Lt, MinLen

# Bounds for section fields (pydantic reads these annotated_types markers).
PositiveInt = Annotated[int, Ge(1)]
NonNegativeInt = Annotated[int, Ge(0)]
NonNegativeFloat = Annotated[float, Ge(0)]
PositiveFloat = Annotated[float, Gt(0)]
Fraction = Annotated[float, Gt(0), Le(1)]  # a share of the items: 0 < x <= 1
Probability = Annotated[float, Ge(0), Le(1)]
NonEmptyStr = Annotated[str, MinLen(1)]

DEFAULT_FILE = "params.yaml"


class ParamsError(ValueError):
    """params.yaml breaks the schema. ``problems`` holds one line per problem: ``path: what is wrong``."""

    def __init__(self, problems: list[str], file: str | Path = DEFAULT_FILE):
        self.file, self.problems = str(file), list(problems)
        if len(self.problems) == 1:
            super().__init__(f"{self.file} {self.problems[0]}")
        else:
            super().__init__(f"{self.file}: {len(self.problems)} problems\n" + "\n".join(f"  {p}" for p in self.problems))


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
            shown = (f"the key `{key_node.value}` reads as {_kind(key)}" if isinstance(key_node, yaml.ScalarNode)
                     else f"a key is {'a list' if isinstance(key, list) else 'a mapping'}")
            raise ParamsError([f"line {line}: {shown}, not text; keys are plain names"
                               + (" (YAML reads an unquoted on/off/yes/no/true/false as true/false: quote it)"
                                  if isinstance(key, bool) else " (quote it)" if isinstance(key_node, yaml.ScalarNode) else "")])
        if key in seen:
            raise ParamsError([f"line {line}: key {_show_key(key)} appears twice in one mapping "
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
        raise ParamsError([f"the top level is {_kind(data)}; expected a mapping of sections"], path)
    return data


def load_params(path: str | Path = DEFAULT_FILE) -> dict[str, Any]:
    """Read ``path`` and check the whole file against the schema (every section, not only the caller's);
    raises :class:`ParamsError` listing every problem. Returns the mapping as written (no defaults added):
    typed sections come from :func:`load_section`."""
    params = read_yaml(path)
    from evolforge.core.schema import check_params  # the registry imports the sections' modules

    check_params(params, path)
    return params


def section(params: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The raw mapping of one section ({} when absent or empty)."""
    return dict(params.get(name) or {})


def load_section(params: Mapping[str, Any], name: str) -> Any:
    """Section ``name`` as its typed dataclass, defaults filled in."""
    from evolforge.core.schema import SECTIONS

    return parse(SECTIONS[name], params.get(name) or {}, name)


def load_role(params: Mapping[str, Any], name: str):
    """Role ``name`` (a :class:`~evolforge.core.roles.Role`)."""
    from evolforge.core.roles import Role

    roles = params.get("roles") or {}
    if name not in roles:
        raise ParamsError([f"roles.{name}: the role is missing; roles present: {sorted(roles)}"])
    return Role.from_params(name, roles[name])


# ---------------------------------------------------------------------------------------------------
# checking one section


@functools.lru_cache(maxsize=None)
def _model(cls: type):
    """A strict pydantic model with the dataclass's fields (strict: YAML types are taken as written)."""
    from pydantic import ConfigDict, Field, create_model

    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {}
    for f in _settable(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = Field(default_factory=f.default_factory)
        else:
            default = ...
        fields[f.name] = (hints[f.name], default)
    # allow_inf_nan=False: `.inf` and `.nan` are YAML numbers, but no setting means them
    return create_model(cls.__name__, __config__=ConfigDict(extra="forbid", strict=True, allow_inf_nan=False), **fields)


def _settable(cls: type) -> list[dataclasses.Field]:
    """The fields params may set: a field with metadata ``{"params": False}`` is set by code (a role's name)."""
    return [f for f in dataclasses.fields(cls) if f.init and f.metadata.get("params", True)]


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
    from pydantic import ValidationError

    if data is None:
        data = {}
    if not isinstance(data, dict):
        return [f"{where}: got {_kind(data)}; expected a mapping of settings"]
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
            line = _problem(cls, data, where, path, errors)
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


def dotted(where: str, path: tuple | list) -> str:
    """``evolve`` + ('rounds', 'round_1', 'src') -> 'evolve.rounds.round_1.src'; list items as [i]."""
    out = where
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else str(step))
    return out


def _problem(cls: type, data: dict, where: str, path: tuple, errors: list[dict]) -> str:
    name = dotted(where, path)
    kind = errors[0]["type"]
    if "[key]" in errors[0]["loc"]:  # a mapping whose keys are a fixed set (evolve.elimination, seed.fields)
        allowed = field_names(annotation_at(cls, path[:-1]))
        return f"{name}: unknown key{suggest(str(path[-1]), allowed)} ({dotted(where, path[:-1])} keys: {', '.join(allowed)})"
    if kind == "extra_forbidden":
        allowed = field_names(annotation_at(cls, path[:-1]))
        return f"{name}: unknown key{suggest(str(path[-1]), allowed)}" + (f" ({dotted(where, path[:-1])} keys: {', '.join(allowed)})" if allowed else "")
    tp = annotation_at(cls, path)
    allowed = describe(tp) if tp is not None else "; ".join(dict.fromkeys(e["msg"] for e in errors))
    if kind == "missing":
        return f"{name}: required; allowed: {allowed}"
    return f"{name}: got {show(errors[0]['input'])}; allowed: {allowed}"


def suggest(key: str, allowed: list[str]) -> str:
    """'; did you mean `x`?' for the closest allowed name, or ''."""
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    return f"; did you mean `{close[0]}`?" if close else ""


# ---------------------------------------------------------------------------------------------------
# keys that look like other keys


def non_ascii_problem(where: str, key: str, allowed: list[str]) -> str:
    odd = [f"{ascii(c)[1:-1]} {unicodedata.name(c, 'unnamed')} at position {i + 1}"
           for i, c in enumerate(key) if not (c.isascii() and c.isprintable())]
    return (f"{where}: the key {ascii(key)} holds non-ASCII or invisible characters ({'; '.join(odd)}); "
            f"keys are plain ASCII{suggest(key, allowed)}")


def non_ascii_keys(data: Any, where: str, cls: type | None = None, path: tuple = ()) -> list[str]:
    """Every key holding a non-ASCII or invisible character, named with the character: a Cyrillic `е` in
    `brеadth` reads as `breadth` but is another key, so the real setting would silently keep its default."""
    problems = []
    if isinstance(data, dict):
        for key, value in data.items():
            here = path + (key,)
            if isinstance(key, str) and not (key.isascii() and key.isprintable()):
                allowed = field_names(annotation_at(cls, path)) if cls is not None else []
                problems.append(non_ascii_problem(dotted(where, here), key, allowed))
            problems += non_ascii_keys(value, where, cls, here)
    elif isinstance(data, list):
        for i, value in enumerate(data):
            problems += non_ascii_keys(value, where, cls, path + (i,))
    return problems


# ---------------------------------------------------------------------------------------------------
# types in words


def _strip_optional(tp: Any) -> list[Any]:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return [a for a in typing.get_args(tp) if a is not type(None)]
    return [tp]


def _base(tp: Any) -> Any:
    return typing.get_args(tp)[0] if typing.get_origin(tp) is Annotated else tp


def annotation_at(cls: Any, path: tuple) -> Any:
    """The declared type at ``path`` below ``cls`` (None when it cannot be told)."""
    tp = cls
    for step in path:
        nxt = None
        for member in _strip_optional(_base(tp)):
            member = _base(member)
            origin = typing.get_origin(member)
            if dataclasses.is_dataclass(member) or is_typeddict(member):
                nxt = typing.get_type_hints(member, include_extras=True).get(step)
            elif origin is dict:
                nxt = typing.get_args(member)[1]
            elif origin is list and isinstance(step, int):
                nxt = typing.get_args(member)[0]
            if nxt is not None:
                break
        if nxt is None:
            return None
        tp = nxt
    return tp


def field_names(tp: Any) -> list[str]:
    for member in _strip_optional(_base(tp)) if tp is not None else []:
        member = _base(member)
        if dataclasses.is_dataclass(member):
            return sorted(f.name for f in _settable(member))
        if is_typeddict(member):
            return sorted(typing.get_type_hints(member))
        if typing.get_origin(member) is dict and typing.get_origin(typing.get_args(member)[0]) is Literal:
            return sorted(typing.get_args(typing.get_args(member)[0]))
    return []


_BOUNDS = {Ge: (">=", "ge"), Gt: (">", "gt"), Le: ("<=", "le"), Lt: ("<", "lt")}


@dataclasses.dataclass(frozen=True)
class Described:
    """``Annotated`` metadata: how :func:`describe` words a constraint it cannot read (a pattern)."""

    words: str


def describe(tp: Any) -> str:
    """A type in words: ``PositiveInt | None`` -> 'an integer >= 1, or null'."""
    if tp is type(None):
        return "null"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        for meta in args[1:]:
            if isinstance(meta, Described):
                return meta.words
        bounds = []
        for meta in args[1:]:
            for kind, (sign, attr) in _BOUNDS.items():
                if isinstance(meta, kind):
                    bounds.append(f"{sign} {getattr(meta, attr)}")
            if isinstance(meta, MinLen):
                bounds.append("(not empty)")
        return " ".join([describe(args[0]), " and ".join(bounds)]).strip()
    if origin in (Union, types.UnionType):
        return ", or ".join(describe(a) for a in args)
    if origin is Literal:
        return json.dumps(args[0]) if len(args) == 1 else "one of " + ", ".join(json.dumps(a) for a in args)
    if origin is list:
        return f"a list of {_plural(describe(args[0]))}"
    if origin is dict:
        return f"a mapping of {_plural(describe(args[0]))} to {_plural(describe(args[1]))}"
    if dataclasses.is_dataclass(tp) or is_typeddict(tp):
        return f"a mapping with keys {', '.join(field_names(tp))}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "text", Any: "any value"}.get(tp, getattr(tp, "__name__", str(tp)))


def _plural(words: str) -> str:
    for single, plural in (("an integer", "integers"), ("a number", "numbers"), ("true or false", "true/false values")):
        if words.startswith(single):
            return plural + words[len(single):]
    return words


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def show(value: Any, limit: int = 60) -> str:
    """A given value for an error message: JSON with non-ASCII escaped (look-alikes show), long text cut,
    and never a secret (values are checked for secrets before any section is)."""
    from evolforge.core.secrets import secret_kind

    if isinstance(value, str) and secret_kind(value):
        return "(a value that looks like a secret; not shown)"
    if isinstance(value, (dict, list)):
        return _kind(value)
    text = json.dumps(value, ensure_ascii=True)
    if len(text) > limit:
        text = text[: limit - 4] + '..."'
    return text if value is None or isinstance(value, bool) else f"{text} ({_kind(value)})"


def _show_key(key: Any) -> str:
    return ascii(key) if isinstance(key, str) else repr(key)

