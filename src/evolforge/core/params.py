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
