"""One params section checked and typed: :func:`check_section` lists its problems, :func:`parse` returns
the settings dataclass with the defaults filled in.

A settings class is a dataclass (or a ``TypedDict`` for a nested mapping) with typed fields; a strict
pydantic model is built from it once per class, so values are taken as YAML typed them: ``"5"`` is not an
integer, ``1`` is not ``true``, ``2.5`` is not an integer (an integer is accepted where a number is).
pydantic's errors become one line per key path, worded by :mod:`evolforge.config.messages`; a class's own
``__post_init__`` rules (``select``: top_fraction or threshold) run in the check too.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, ValidationError, create_model

from evolforge.config.bounds import DEFAULT_FILE, ParamsError, settable
from evolforge.config.messages import kind, non_ascii_keys, problem


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

