"""A stage process hands the memory it frees back to the system at once (docs/scale.md, "Memory handed back").

A streamed stage allocates and frees a chunk's worth of memory per chunk, for as many chunks as the table
has. Both allocators in the process keep freed memory for reuse: polars' jemalloc for up to a second and a
half, glibc's malloc (numpy's arrays) in its heap when a block is under its mmap threshold, which it raises
up to 32 MiB as it sees large blocks freed. The retained memory then grew with the length of the run, i.e.
with the number of items: dedup at 1.2M items peaked at 1.55x its peak at 150k with the allocators' defaults,
1.30x with these settings (docs/scale.md has the figures).
"""

from __future__ import annotations

import ctypes
import os
import platform
import resource

# polars appends the variable's value to its own jemalloc settings when first imported; these return
# freed pages at once
JEMALLOC_VAR = "_RJEM_MALLOC_CONF"
JEMALLOC_CONF = "dirty_decay_ms:0,muzzy_decay_ms:0"
POLARS_DEFAULT = "dirty_decay_ms:500,muzzy_decay_ms:1000"  # what polars writes into the variable (polars 2.1)
# glibc: a block of at least this many bytes is its own mapping, returned when freed; a heap top over it is trimmed
MALLOC_LIMIT = 1 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)


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
    """Set :func:`jemalloc_conf` for this process; works only before polars is first imported (the package's
    ``__init__`` calls it)."""
    os.environ[JEMALLOC_VAR] = jemalloc_conf(os.environ.get(JEMALLOC_VAR, ""))


def return_freed_memory() -> None:
    """glibc's malloc: map blocks of :data:`MALLOC_LIMIT` bytes or more on their own and trim the heap
    beyond it (fixed values, so malloc no longer raises them). A no-op on any other C library."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    libc = ctypes.CDLL(None)
    libc.mallopt(_M_MMAP_THRESHOLD, MALLOC_LIMIT)
    libc.mallopt(_M_TRIM_THRESHOLD, MALLOC_LIMIT)


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
