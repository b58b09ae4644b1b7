"""The backends a role can name, built on demand (heavy imports happen only for the backend in use), and one
loaded model shared by the roles that load it alike."""

from __future__ import annotations

import dataclasses
import json

from evolforge.config.roles import CONTROL_NAMES, Role
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
    fields = {k: v for k, v in dataclasses.asdict(role).items() if k not in _REQUEST_FIELDS}
    return json.dumps(fields, sort_keys=True, default=str)


def loads_nothing_more(role: Role, other: Role) -> bool:
    """True when a stage that already uses ``other`` can use ``role`` too without loading another model in
    its process: ``role`` is a server (``openai``), or both load the same model with the same settings
    (they share one backend, see :func:`shared_backend`)."""
    return role.backend == "openai" or _loading_key(role) == _loading_key(other)


def shared_backend(role: Role) -> Backend:
    """The backend for ``role``; one already loaded for another role with the same loading fields is reused."""
    key = _loading_key(role)
    if key not in _LOADED:
        _LOADED[key] = make_backend(role)
    return _LOADED[key]


def _hf(role: Role) -> Backend:
    from evolforge.llm.backends.hf import HFBackend

    return HFBackend.from_role(role)


def _llamacpp(role: Role) -> Backend:
    from evolforge.llm.backends.llamacpp import LlamaCppBackend

    return LlamaCppBackend.from_role(role)


def _vllm(role: Role) -> Backend:
    from evolforge.llm.backends.vllm import VLLMBackend

    return VLLMBackend.from_role(role)


def _openai(role: Role) -> Backend:
    from evolforge.llm.backends.openai.client import OpenAIBackend

    return OpenAIBackend.from_role(role)


def _ray(role: Role) -> Backend:
    from evolforge.llm.backends.ray import RayBackend

    return RayBackend.from_role(role)


BACKENDS = {"hf": _hf, "llamacpp": _llamacpp, "vllm": _vllm, "openai": _openai, "ray": _ray}
