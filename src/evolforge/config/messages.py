"""The wording of params problems: a type in words, a given value shown, the closest allowed key.

Every problem line names the key's full path (:func:`dotted`), what was given (:func:`show`, which never
shows a secret) and what is allowed (:func:`describe`)::

    seed.limt: unknown key; did you mean `limit`? (seed keys: config, fields, format, limit, ...)
    evolve.assignment: got "round-robin" (text); allowed: one of "round_robin", "random"

Non-ASCII or invisible characters in keys are named with the character (a Cyrillic `е` in `brеadth`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
import unicodedata
from typing import Annotated, Any, Literal, Union

from annotated_types import Ge, Gt, Le, Lt, MinLen
from typing_extensions import is_typeddict  # also knows typing_extensions.TypedDict (pydantic's)

from evolforge.config.bounds import Described, annotation_at, field_names, secret_kind


def dotted(where: str, path: tuple | list) -> str:
    """``evolve`` + ('rounds', 'round_1', 'src') -> 'evolve.rounds.round_1.src'; list items as [i]."""
    out = where
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else str(step))
    return out


def problem(cls: type, data: dict, where: str, path: tuple, errors: list[dict]) -> str:
    """One line for pydantic's ``errors`` at ``path`` (data keys) below section ``where`` of class ``cls``."""
    name = dotted(where, path)
    error_type = errors[0]["type"]
    if "[key]" in errors[0]["loc"]:  # a mapping whose keys are a fixed set (evolve.elimination, seed.fields)
        allowed = field_names(annotation_at(cls, path[:-1]))
        return (f"{name}: unknown key{suggest(str(path[-1]), allowed)} "
                f"({dotted(where, path[:-1])} keys: {', '.join(allowed)})")
    if error_type == "extra_forbidden":
        allowed = field_names(annotation_at(cls, path[:-1]))
        return (f"{name}: unknown key{suggest(str(path[-1]), allowed)}"
                + (f" ({dotted(where, path[:-1])} keys: {', '.join(allowed)})" if allowed else ""))
    tp = annotation_at(cls, path)
    allowed = describe(tp) if tp is not None else "; ".join(dict.fromkeys(e["msg"] for e in errors))
    if error_type == "missing":
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


_BOUNDS = {Ge: (">=", "ge"), Gt: (">", "gt"), Le: ("<=", "le"), Lt: ("<", "lt")}


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
            for marker, (sign, attr) in _BOUNDS.items():
                if isinstance(meta, marker):
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
    return {bool: "true or false", int: "an integer", float: "a number",
            str: "text", Any: "any value"}.get(tp, getattr(tp, "__name__", str(tp)))


def _plural(words: str) -> str:
    for single, plural in (("an integer", "integers"), ("a number", "numbers"), ("true or false", "true/false values")):
        if words.startswith(single):
            return plural + words[len(single):]
    return words


def kind(value: Any) -> str:
    """What a given value is, in words: 'an integer', 'text', 'a list of 3'."""
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
    if isinstance(value, str) and secret_kind(value):
        return "(a value that looks like a secret; not shown)"
    if isinstance(value, (dict, list)):
        return kind(value)
    text = json.dumps(value, ensure_ascii=True)
    if len(text) > limit:
        text = text[: limit - 4] + '..."'
    return text if value is None or isinstance(value, bool) else f"{text} ({kind(value)})"


def show_key(key: Any) -> str:
    """A mapping key for a message: non-ASCII escaped (a look-alike shows), a non-text key as Python writes it."""
    return ascii(key) if isinstance(key, str) else repr(key)
