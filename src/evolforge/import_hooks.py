"""What evolforge changes in how other packages import, installed by importing the package (before any of them).

Two changes to transformers' import utilities, each made once they are loaded, and a read-ahead for torch:

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
- importing torch maps its shared libraries (``torch/lib``, about 450 MB on the CPU build) and touches their pages
  one fault at a time, each a small read where the pages are not in memory. They often are not: a run's torch
  stages are minutes apart, with llama.cpp's stages between, and a host that reclaims idle page cache (a VM whose
  kernel pages out what went unread for a minute, or simply a first run) has dropped them by then. On the first
  import of torch the hook asks the kernel to read those files ahead (``posix_fadvise(WILLNEED)``, from a
  background thread, largest first), so the faults find most pages read in large requests
  (``bench/cold_start.py``). It changes what is read when, never what is loaded; ``EVOLFORGE_READ_AHEAD=0`` turns
  it off, and where the call does not exist (not Linux) nothing is done.

The hooks cost nothing in a process that never imports transformers or torch.
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
import threading
from pathlib import Path

TARGET = "transformers.utils.import_utils"
KEEP_VAR = "EVOLFORGE_TRANSFORMERS_SKLEARN"
CACHE_VAR = "EVOLFORGE_TRANSFORMERS_IMPORT_CACHE"
CACHE_FOLDER = "transformers-imports"  # under $XDG_CACHE_HOME/evolforge or ~/.cache/evolforge
READ_AHEAD_VAR = "EVOLFORGE_READ_AHEAD"
READ_AHEAD_PACKAGE, READ_AHEAD_FOLDER = "torch", "lib"  # whose first import reads ahead, and the folder read


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


class _TorchReadAhead(importlib.abc.MetaPathFinder):
    """On the first import of torch, starts :func:`read_ahead` of its shared libraries and finds nothing: the
    path finder after it imports torch as before. ``thread`` is the read-ahead's (None until it starts)."""

    def __init__(self):
        self.started = False
        self.thread: threading.Thread | None = None

    def find_spec(self, fullname, path, target=None):
        if fullname != READ_AHEAD_PACKAGE or self.started:
            return None
        self.started = True
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        for location in (spec.submodule_search_locations or []) if spec is not None else []:
            self.thread = read_ahead(Path(location) / READ_AHEAD_FOLDER)
            break
        return None


def read_ahead(folder: Path) -> threading.Thread | None:
    """Ask the kernel to read every shared library in ``folder`` into the page cache, largest first, from a daemon
    thread (started and returned; None where ``os.posix_fadvise`` does not exist or the folder has none). The advice
    only schedules reads: a file that cannot be opened is skipped, and nothing waits for the thread."""
    if not hasattr(os, "posix_fadvise"):
        return None
    try:
        files = sorted((f for f in folder.iterdir() if ".so" in f.suffixes and f.is_file()),
                       key=lambda f: (-f.stat().st_size, f.name))
    except OSError:
        return None
    if not files:
        return None

    def advise():
        for file in files:
            with contextlib.suppress(OSError):
                handle = os.open(file, os.O_RDONLY)
                try:
                    os.posix_fadvise(handle, 0, 0, os.POSIX_FADV_WILLNEED)
                finally:
                    os.close(handle)

    thread = threading.Thread(target=advise, name="evolforge-read-ahead", daemon=True)
    thread.start()
    return thread


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
    """Put the hooks first on ``sys.meta_path`` (each once): transformers' unless both its changes are turned off or
    its import utilities are loaded already (then they answer as they do); torch's read-ahead unless turned off or
    torch is imported already."""
    if (os.environ.get(KEEP_VAR) != "1" or os.environ.get(CACHE_VAR) != "0") and TARGET not in sys.modules \
            and not any(isinstance(finder, _TransformersImportUtils) for finder in sys.meta_path):
        sys.meta_path.insert(0, _TransformersImportUtils())
    if os.environ.get(READ_AHEAD_VAR) != "0" and READ_AHEAD_PACKAGE not in sys.modules \
            and not any(isinstance(finder, _TorchReadAhead) for finder in sys.meta_path):
        sys.meta_path.insert(0, _TorchReadAhead())
