"""The backends a role can name, built on demand (heavy imports happen only for the backend in use), and one
loaded model shared by the roles that load it alike."""

from __future__ import annotations

import dataclasses
import importlib
import json
from typing import Any, Callable

from evolforge.config.backend_specs import BACKEND_NAMES, CONTROL_NAMES, SPECS
from evolforge.config.roles import Role
from evolforge.llm.types import Backend


def make_backend(role: Role) -> Backend:
    """Build the backend a role names; heavy imports happen only for the backend in use."""
    return BACKENDS[role.backend](role)


# Fields of a role that only shape requests or batching; roles equal in every other field share one
# loaded model within a process (one GPU rarely holds two copies; loading twice wastes minutes).
_REQUEST_FIELDS = {"name", "temperature", "top_p", "max_tokens", "seed", "batch_size",
                   "price_per_mtok_prompt", "price_per_mtok_completion", "price_per_mtok_cached_prompt",
                   "thinking_tags", "thinking_budget", *CONTROL_NAMES}
_LOADED: dict[str, Backend] = {}


def _loading_key(role: Role) -> str:
    every = {**dataclasses.asdict(role), **dataclasses.asdict(role.settings)}  # the backend's settings beside the rest
    fields = {k: v for k, v in every.items() if k not in _REQUEST_FIELDS and k != "settings"}
    return json.dumps(fields, sort_keys=True, default=str)


def loads_nothing_more(role: Role, other: Role) -> bool:
    """True when a stage that already uses ``other`` can use ``role`` too without loading another model in
    its process: ``role`` is a server (``openai``), or both load the same model with the same settings
    (they share one backend, see :func:`shared_backend`)."""
    return role.served or _loading_key(role) == _loading_key(other)


def shared_backend(role: Role) -> Backend:
    """The backend for ``role``; one already loaded for another role with the same loading fields is reused."""
    key = _loading_key(role)
    if key not in _LOADED:
        _LOADED[key] = make_backend(role)
    return _LOADED[key]


# Each backend's class is imported by name (its spec's `runs`), on purpose: a stage's dvc.yaml deps name the
# package of each of its roles' backends through params (tools/stage_deps.py), so the import graph that the deps
# follow statically must not reach every backend from every LLM stage.


def backend_attribute(module: str, name: str) -> Any:
    """``name`` from ``evolforge.llm.backends.<module>``, imported on first use."""
    return getattr(importlib.import_module(f"evolforge.llm.backends.{module}"), name)


def _factory(runs: str) -> Callable[[Role], Backend]:
    module, cls = runs.split(":")
    return lambda role: backend_attribute(module, cls).from_role(role)


BACKENDS: dict[str, Callable[[Role], Backend]] = {name: _factory(SPECS[name].runs) for name in BACKEND_NAMES}
