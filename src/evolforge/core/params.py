"""Reading ``params.yaml``: plain ``yaml.safe_load`` (no DVC needed), so stages stay testable anywhere.

>>> params = load_params("params.yaml")              # doctest: +SKIP
>>> role = load_role(params, "evolver")              # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from evolforge.core.roles import Role


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: params file not found")
    with open(path, encoding="utf-8") as fh:
        params = yaml.safe_load(fh) or {}
    if not isinstance(params, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return params


def section(params: dict[str, Any], name: str) -> dict[str, Any]:
    if name not in params:
        raise KeyError(f"params.yaml: section '{name}' is missing")
    return params[name] or {}


def load_role(params: dict[str, Any], name: str) -> Role:
    roles = section(params, "roles")
    if name not in roles:
        raise KeyError(f"params.yaml roles: role '{name}' is missing; roles present: {sorted(roles)}")
    return Role.from_params(name, roles[name])


def typed_section(cls: type, cfg: dict[str, Any] | None, path: str) -> Any:
    """Build the dataclass ``cls`` from one params section, refusing unknown keys with their full path.

    Defaults live on the dataclass; range checks live in its ``__post_init__``.

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class C:
    ...     threshold: float = 0.5
    >>> typed_section(C, {"treshold": 0.7}, "dedup")
    Traceback (most recent call last):
    ...
    ValueError: params.yaml dedup.treshold: unknown key (did you mean 'threshold'?); allowed: threshold
    """
    import dataclasses
    import difflib

    cfg = cfg or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"params.yaml {path}: expected a mapping, got {type(cfg).__name__}")
    allowed = [f.name for f in dataclasses.fields(cls)]
    for key in cfg:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"params.yaml {path}.{key}: unknown key{hint}; allowed: {', '.join(allowed)}")
    return cls(**cfg)


def check_number(path: str, value: Any, low: float | None = None, high: float | None = None,
                 integer: bool = False, optional: bool = False) -> None:
    """Refuse a params value that is not a number in [low, high] (an int where ``integer``), naming its key.

    >>> check_number("dedup.shingle_size", 2.5, low=1, integer=True)
    Traceback (most recent call last):
    ...
    ValueError: params.yaml dedup.shingle_size: 2.5 is not an integer >= 1
    """
    if optional and value is None:
        return
    kinds = (int,) if integer else (int, float)
    wanted = ("an integer" if integer else "a number") + (f" >= {low}" if low is not None else "") + \
        (f" and <= {high}" if low is not None and high is not None else f" <= {high}" if high is not None else "")
    if isinstance(value, bool) or not isinstance(value, kinds) or value != value \
            or (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"params.yaml {path}: {value!r} is not {wanted}")
