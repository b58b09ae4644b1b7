"""Which model a role names, pinned without loading it: a local folder's weights hash, a hub revision's
commit sha, or the model id a server serves. The models stage records it (:mod:`evolforge.llm.identity`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evolforge.config.roles import Role
from evolforge.core.models import model_identity


def resolve_identity(role: Role, memo: str | Path | None = None) -> dict[str, Any]:
    """Pin the model a role names, without loading it: weights hash or hub commit sha, or for a server the
    model id it serves (asked with ``GET /models``; the URL is not part of it)."""
    if role.backend == "openai":
        from evolforge.llm.backends.openai.served import served_model_identity

        return served_model_identity(role)
    return model_identity(role.model, role.revision, memo=memo)
