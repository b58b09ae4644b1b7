"""Which model a role names, pinned without loading it: a local folder's weights hash, a hub revision's
commit sha, or the model id a server serves. The models stage records it (:mod:`evolforge.llm.identity`)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from evolforge.config.roles import Role
from evolforge.core.models import model_identity


def resolve_identity(role: Role, memo: str | Path | None = None) -> dict[str, Any]:
    """Pin the model a role names, without loading it: weights hash or hub commit sha, or for a server the
    model id it serves (asked with ``GET /models``; the URL is not part of it)."""
    if role.backend == "openai":
        # by name, as the registry imports backends: the stage's deps name the openai package through params
        served = importlib.import_module("evolforge.llm.backends.openai.served")
        return served.served_model_identity(role)
    return model_identity(role.model, role.revision, memo=memo)
