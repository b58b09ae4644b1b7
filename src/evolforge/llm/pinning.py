"""Which model a role names, pinned without loading it: a local folder's weights hash, a hub revision's
commit sha, or the model id a server serves. The models stage records it (:mod:`evolforge.llm.identity`),
with the kernels a llamacpp role's model runs with on this machine (:func:`resolved_kernels`)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from evolforge.config.backend_specs import spec_of
from evolforge.config.roles import Role
from evolforge.core.models import model_identity


def resolve_identity(role: Role, memo: str | Path | None = None) -> dict[str, Any]:
    """Pin the model a role names, without loading it: weights hash or hub commit sha, or for a server the
    model id it serves (asked with ``GET /models``; the URL is not part of it)."""
    if role.served:
        # by name, as the registry imports backends: the stage's deps name the openai package through params
        served = importlib.import_module("evolforge.llm.backends.openai.served")
        return served.served_model_identity(role)
    return model_identity(role.model, role.revision, memo=memo)


def resolved_kernels(role: Role) -> dict[str, Any]:
    """A llamacpp role that leaves ``extra.extra_bufts`` unset: ``{"extra_bufts": False}`` where llama.cpp's
    extra buffer types crashed its model on this machine (the kernel probe, in a child process:
    :mod:`evolforge.llm.backends.llamacpp.probe`), else nothing (every other role, too)."""
    if not spec_of(role.backend).probes_kernels or "extra_bufts" in role.extra:
        return {}
    # by name, as the registry imports backends: a stage's deps name the llamacpp package through params
    probe = importlib.import_module("evolforge.llm.backends.llamacpp.probe")
    return {} if probe.probed_extra_bufts(role) else {"extra_bufts": False}
