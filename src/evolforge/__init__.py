"""evolforge: declarative data builds for instruction tuning.

Seed data -> Auto Evol-Instruct method optimization -> multi-round evolution -> responses ->
difficulty, IFD and IC-IFD scoring -> selection -> fine-tuning -> evaluation, as a DVC pipeline.
The package holds the logic; the scripts under ``stages/`` are thin DVC wrappers around it.

Importing the package first sets polars' allocator to hand freed memory back at once (before any module
imports polars, which reads the setting once): a streamed stage frees a chunk's worth of memory per chunk, and
jemalloc keeps freed pages for up to a second and a half, so the memory retained grew with the number of
chunks (docs/how-to/scale.md, "Memory handed back"; glibc's side is :mod:`evolforge.core.heap`).
It changes how much memory a process holds, never what it writes.

It then installs :mod:`evolforge.import_hooks`: transformers, once imported, reports scikit-learn missing, so a
process that loads a model skips importing ``sklearn.metrics``, and reads the import structure of its ``models``
folder back from disk instead of scanning the folder's thousand files (together about 3 s a process); and the
first import of torch has the kernel read torch's shared libraries ahead, so a stage whose libraries left the page
cache does not fetch them a page at a time. What any step computes is the same.
"""

from __future__ import annotations

import os

__version__ = "0.1.0"

# polars appends the variable's value to its own jemalloc settings when first imported; these return
# freed pages at once
JEMALLOC_VAR = "_RJEM_MALLOC_CONF"
JEMALLOC_CONF = "dirty_decay_ms:0,muzzy_decay_ms:0"
POLARS_DEFAULT = "dirty_decay_ms:500,muzzy_decay_ms:1000"  # what polars writes into the variable (polars 2.1)


def jemalloc_conf(given: str) -> str:
    """The jemalloc settings for a process whose ``_RJEM_MALLOC_CONF`` is ``given``: the user's, with
    :data:`JEMALLOC_CONF` added unless they set a decay themselves. polars writes its own settings into the
    variable, so a process started by one that imported polars inherits them: those are not the user's.

    >>> jemalloc_conf(""), jemalloc_conf(POLARS_DEFAULT + ",narenas:2"), jemalloc_conf("dirty_decay_ms:2000")
    ('dirty_decay_ms:0,muzzy_decay_ms:0', 'narenas:2,dirty_decay_ms:0,muzzy_decay_ms:0', 'dirty_decay_ms:2000')
    """
    given = given.removeprefix(POLARS_DEFAULT).strip(",")
    return given if "decay_ms" in given else ",".join(filter(None, [given, JEMALLOC_CONF]))


def set_jemalloc_conf() -> None:
    """Set :func:`jemalloc_conf` for this process; works only before polars is first imported (below)."""
    os.environ[JEMALLOC_VAR] = jemalloc_conf(os.environ.get(JEMALLOC_VAR, ""))


set_jemalloc_conf()

# transformers answers "no scikit-learn" (its one use of it, assisted generation, evolforge never runs): a model
# load skips importing sklearn.metrics; and its models folder's import structure is read back from disk
# (evolforge/import_hooks.py)
from evolforge import import_hooks  # noqa: E402  (after the allocator setting, as polars reads it once)

import_hooks.install()
