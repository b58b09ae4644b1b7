"""Which model a role names, as the models stage recorded it in ``models/identity.json`` (resolving it is
:mod:`evolforge.llm.pinning`'s job: a stage that only reads the record imports no backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evolforge.core.models import ModelError
from evolforge.config.roles import Role

IDENTITY_FILE = Path("models/identity.json")  # written by the models stage; every LLM stage reads it


def identity_entry(role: Role, identity: dict[str, Any], engine: dict[str, Any] | None = None) -> dict[str, Any]:
    """One role's entry of ``models/identity.json``: what params say, and what that resolved to (the model's
    identity, and with ``engine`` the options its cache keys carry, ``auto`` resolved)."""
    entry = {"backend": role.backend, "model": role.model, "revision": role.revision, "identity": identity}
    if engine is not None:
        entry["engine"] = engine
    return entry


def recorded_identity(role: Role, path: str | Path = IDENTITY_FILE) -> dict[str, Any] | None:
    """The identity the models stage recorded for ``role``, or None when there is no such file (a stage run
    outside the pipeline resolves it itself). An entry written for another model is refused."""
    entry = recorded_entry(role, path)
    return None if entry is None else entry["identity"]


def recorded_entry(role: Role, path: str | Path = IDENTITY_FILE) -> dict[str, Any] | None:
    """``role``'s whole entry of ``models/identity.json`` (see :func:`recorded_identity`)."""
    path = Path(path)
    if not path.is_file():
        return None
    from evolforge.io.jsonfiles import read_json  # (polars: not for every importer of the LLM layer)

    found = read_json(path)
    entry = found.get(role.name) if isinstance(found, dict) else None
    expected = identity_entry(role, {})
    if entry is None or any(entry.get(k) != expected[k] for k in ("backend", "model", "revision")):
        raise ModelError(f"{path} does not pin roles.{role.name} as params.yaml names it "
                         f"({role.backend}: {role.model}); run the models stage first (`dvc repro models`)")
    return entry
