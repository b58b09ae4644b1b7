"""What evolforge changes in how other packages import, installed by importing the package (before any of them).

Two changes to transformers' import utilities, each made once they are loaded:

- transformers' generation module imports ``sklearn.metrics`` whenever scikit-learn is installed, for one feature
  (assisted generation's adaptive confidence threshold, which needs ``roc_curve``); lm-eval requires scikit-learn,
  so every process that loads a transformers model paid the import: about 2.5 s on two AVX2 cores, about a dozen
  times in ``make run`` (``bench/import_cost.py``). evolforge never runs assisted generation, so transformers'
  answer to "is scikit-learn available" is no. Nothing else in transformers asks; lm-eval and every other package
  import scikit-learn themselves as before. ``EVOLFORGE_TRANSFORMERS_SKLEARN=1`` leaves it as it is.
- importing transformers reads every file of its ``models`` folder (about a thousand) to learn which names each
  module exports, twice (once for the package, once for ``transformers.models``): about a second a process. The
  result depends only on those files, so it is kept on disk (:func:`kept_on_disk`), per transformers version,
  install folder and the folder's modification time, and read back by every later process; anything unexpected
  (another result type, an unreadable file) falls back to transformers' own scan.
  ``EVOLFORGE_TRANSFORMERS_IMPORT_CACHE=0`` scans every time.

The hook costs nothing in a process that never imports transformers.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.abc
import importlib.machinery
import json
import os
import sys
import tempfile
from pathlib import Path

TARGET = "transformers.utils.import_utils"
KEEP_VAR = "EVOLFORGE_TRANSFORMERS_SKLEARN"
CACHE_VAR = "EVOLFORGE_TRANSFORMERS_IMPORT_CACHE"
CACHE_FOLDER = "transformers-imports"  # under $XDG_CACHE_HOME/evolforge or ~/.cache/evolforge


def _no_sklearn() -> bool:
    """transformers' ``is_sklearn_available`` under the hook."""
    return False


class _TransformersImportUtils(importlib.abc.MetaPathFinder):
    """Finds transformers' import utilities as the path finder does, and after they run sets their
    ``is_sklearn_available`` to :func:`_no_sklearn` (``transformers.utils`` re-exports that name from them) and
    their ``define_import_structure`` to :func:`kept_on_disk`'s, each unless its variable turns it off."""

    def find_spec(self, fullname, path, target=None):
        if fullname != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            if os.environ.get(KEEP_VAR) != "1":
                module.is_sklearn_available = _no_sklearn
            if os.environ.get(CACHE_VAR) != "0":
                module.define_import_structure = kept_on_disk(module.define_import_structure)

        spec.loader.exec_module = exec_module  # this spec's loader object only
        return spec


def cache_file(module_path: str | os.PathLike, prefix: str | None) -> Path | None:
    """Where the import structure of ``module_path`` (transformers' ``models`` folder or its ``__init__.py``) is
    kept, or None for any other path (the other folders hold a few files each: scanned as before) and for a
    development install of transformers (its files change without its version)."""
    from importlib.metadata import version

    folder = Path(module_path)
    folder = folder.parent if folder.name == "__init__.py" else folder
    if folder.name != "models" or folder.parent.name != "transformers":
        return None
    release = version("transformers")
    if "dev" in release:
        return None
    key = json.dumps([release, str(folder.resolve()), folder.stat().st_mtime_ns, Path(module_path).name, prefix])
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "evolforge" / CACHE_FOLDER
    return root / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def encode(structure: dict) -> list:
    """transformers' import structure ({frozenset of backends: {module: set of names}}) as JSON lists, sorted.

    >>> encode({frozenset({"torch"}): {"models.a.modeling_a": {"B", "A"}}, frozenset(): {}})
    [[[], {}], [['torch'], {'models.a.modeling_a': ['A', 'B']}]]
    """
    if not all(isinstance(k, frozenset) and isinstance(v, dict) and all(isinstance(n, set) for n in v.values())
               for k, v in structure.items()):
        raise TypeError("not an import structure of frozensets to dicts of sets")
    return sorted([sorted(k), {m: sorted(n) for m, n in sorted(v.items())}] for k, v in structure.items())


def decode(kept: list) -> dict:
    """:func:`encode`'s inverse."""
    return {frozenset(k): {m: set(n) for m, n in v.items()} for k, v in kept}


def kept_on_disk(define):
    """transformers' ``define_import_structure`` with the ``models`` folder's structure read from :func:`cache_file`
    when it is there, else computed by ``define`` and written there (atomically: concurrent stages each leave a whole
    file). The result is the one ``define`` returns; every other path goes to ``define`` as before."""

    @functools.lru_cache
    def define_import_structure(module_path, prefix=None):
        try:
            path = cache_file(module_path, prefix)
        except (OSError, ValueError, ImportError):
            path = None
        if path is None:
            return define(module_path, prefix)
        try:
            return decode(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError, AttributeError):
            pass  # not there yet, or unreadable: scan and write it again
        structure = define(module_path, prefix)
        try:
            _write(path, json.dumps(encode(structure)))
        except (OSError, TypeError):
            pass  # a read-only cache or another result type: this process scanned, the next one scans too
        return structure

    return define_import_structure


def _write(path: Path, text: str) -> None:
    """``text`` into ``path`` whole or not at all: a temporary file beside it, renamed over it (removed on failure)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def install() -> None:
    """Put the hook first on ``sys.meta_path`` (once), unless both changes are turned off or transformers' import
    utilities are loaded already (then they answer as they do)."""
    if (os.environ.get(KEEP_VAR) == "1" and os.environ.get(CACHE_VAR) == "0") or TARGET in sys.modules:
        return
    if not any(isinstance(finder, _TransformersImportUtils) for finder in sys.meta_path):
        sys.meta_path.insert(0, _TransformersImportUtils())
