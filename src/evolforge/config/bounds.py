"""The leaf of the configuration: the bounds params fields are typed with, :class:`ParamsError`, and the
helpers that read a settings class's annotations. It imports nothing of evolforge, so every other module
(the settings classes, the roles, the loader, the messages) can build on it without a cycle.

The bounds are ``Annotated`` types whose ``annotated_types`` markers pydantic reads (``PositiveInt`` is an
``int >= 1``, ``Fraction`` a share ``0 < x <= 1``); :class:`Described` words a constraint that no marker
can (a pattern). :func:`annotation_at` and :func:`field_names` find the declared type and the allowed keys
below a settings class, for the messages that name them.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from annotated_types import Ge, Gt, Le, MinLen
from typing_extensions import is_typeddict  # also knows typing_extensions.TypedDict (pydantic's)

from evolforge.config.refusal import Refusal

# Bounds for section fields (pydantic reads these annotated_types markers).
PositiveInt = Annotated[int, Ge(1)]
NonNegativeInt = Annotated[int, Ge(0)]
NonNegativeFloat = Annotated[float, Ge(0)]
PositiveFloat = Annotated[float, Gt(0)]
Fraction = Annotated[float, Gt(0), Le(1)]  # a share of the items: 0 < x <= 1
Probability = Annotated[float, Ge(0), Le(1)]
NonEmptyStr = Annotated[str, MinLen(1)]

DEFAULT_FILE = "params.yaml"


class ParamsError(Refusal, ValueError):
    """params.yaml breaks the schema. ``problems`` holds one line per problem: ``path: what is wrong``."""

    def __init__(self, problems: list[str], file: str | Path = DEFAULT_FILE):
        self.file, self.problems = str(file), list(problems)
        if len(self.problems) == 1:
            super().__init__(f"{self.file} {self.problems[0]}")
        else:
            super().__init__(f"{self.file}: {len(self.problems)} problems\n"
                             + "\n".join(f"  {p}" for p in self.problems))


@dataclasses.dataclass(frozen=True)
class Described:
    """``Annotated`` metadata: how :func:`evolforge.config.messages.describe` words a constraint it cannot
    read (a pattern)."""

    words: str


# ---------------------------------------------------------------------------------------------------
# reading a settings class's annotations


def settable(cls: type) -> list[dataclasses.Field]:
    """The fields params may set: a field with metadata ``{"params": False}`` is set by code (a role's name)."""
    return [f for f in dataclasses.fields(cls) if f.init and f.metadata.get("params", True)]


def strip_optional(tp: Any) -> list[Any]:
    """The members of a union other than None (``int | None`` -> [int]); any other type as a list of one."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        return [a for a in typing.get_args(tp) if a is not type(None)]
    return [tp]


def base(tp: Any) -> Any:
    """The type under an ``Annotated`` (its bounds dropped)."""
    return typing.get_args(tp)[0] if typing.get_origin(tp) is Annotated else tp


def annotation_at(cls: Any, path: tuple) -> Any:
    """The declared type at ``path`` below ``cls`` (None when it cannot be told)."""
    tp = cls
    for step in path:
        nxt = None
        for member in strip_optional(base(tp)):
            member = base(member)
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
    """The keys params may write in a mapping of type ``tp`` (a settings class, a TypedDict, a dict keyed by a
    Literal), sorted; [] when the keys are free."""
    for member in strip_optional(base(tp)) if tp is not None else []:
        member = base(member)
        if dataclasses.is_dataclass(member):
            return sorted(f.name for f in settable(member))
        if is_typeddict(member):
            return sorted(typing.get_type_hints(member))
        if typing.get_origin(member) is dict and typing.get_origin(typing.get_args(member)[0]) is Literal:
            return sorted(typing.get_args(typing.get_args(member)[0]))
    return []

