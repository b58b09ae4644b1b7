"""Opening what a stage's LLM roles need: the call cache and the models.

>>> role, llm = open_role(load_params("params.yaml"), "evolver", open_cache(params))   # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from evolforge.cache import DEFAULT_CACHE_PATH, CallCache
from evolforge.llm import LLM, Role, open_llm
from evolforge.params import load_role


def repo_root(cwd: Path | None = None) -> Path:
    """The repository a stage belongs to. ``dvc exp run --queue`` / ``--temp`` run stages in a copy under
    ``<repo>/.dvc/tmp/exps/``, without git-ignored files: resolving against the original repository lets
    every queued experiment share (and fill) the one call cache."""
    cwd = (cwd or Path.cwd()).resolve()
    parts = cwd.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return cwd


def open_cache(params: dict[str, Any]) -> CallCache:
    """The call cache named by ``cache.path`` (env ``EVOLFORGE_CACHE`` wins, for tests and shared boxes);
    a relative path is relative to the repository root."""
    path = Path(os.environ.get("EVOLFORGE_CACHE") or (params.get("cache") or {}).get("path") or DEFAULT_CACHE_PATH)
    return CallCache(path if path.is_absolute() else repo_root() / path)


def open_role(params: dict[str, Any], name: str, cache: CallCache | None) -> tuple[Role, LLM]:
    role = load_role(params, name)
    return role, open_llm(role, cache)
