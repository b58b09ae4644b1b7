"""glibc's malloc in a stage process: what it hands back to the system, and what a model stage keeps.

Every stage hands the memory it frees back at once (:func:`return_freed_memory`, from
:func:`evolforge.core.stage.run_stage`); a process that loads a torch model keeps a fixed pad of it at a heap's
top (:func:`keep_model_memory`, where transformers, the evaluation harness and the trainer load one). A value the
user set in glibc's own variables (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_``) is
kept; on any other C library both are no-ops. Polars' jemalloc is set by the package's ``__init__``, before polars
loads (docs/how-to/scale.md, "Memory handed back").
"""

from __future__ import annotations

import ctypes
import os
import platform

# a block of at least this many bytes is its own mapping, returned when freed; a heap top over it is trimmed
MALLOC_LIMIT = 1 << 20
# what a trim leaves at a heap's top in a process that runs a torch model, and what a heap grows by beyond its need
MODEL_TOP_PAD = 256 << 20
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # mallopt's parameter numbers (malloc.h)
_VARIABLE = {_M_TRIM_THRESHOLD: "MALLOC_TRIM_THRESHOLD_", _M_TOP_PAD: "MALLOC_TOP_PAD_",
             _M_MMAP_THRESHOLD: "MALLOC_MMAP_THRESHOLD_"}


def _mallopt(settings: dict[int, int]) -> None:
    """glibc's ``mallopt`` for each parameter whose variable the user did not set; nothing on another C library."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    libc = ctypes.CDLL(None)
    for number, value in settings.items():
        if _VARIABLE[number] not in os.environ:
            libc.mallopt(number, value)


def return_freed_memory() -> None:
    """Map blocks of :data:`MALLOC_LIMIT` bytes or more on their own and trim the heap beyond it (fixed values,
    so malloc no longer raises them).

    A streamed stage allocates and frees a chunk's worth of memory per chunk, for as many chunks as the table
    has. Both allocators in the process keep freed memory for reuse: polars' jemalloc for up to a second and
    a half (set in the package's ``__init__``), glibc's malloc (numpy's arrays) in its heap when a block is
    under its mmap threshold, which it raises up to 32 MiB as it sees large blocks freed. The retained memory
    then grew with the length of the run: dedup at 1.2M items peaked at 1.55x its peak at 150k with the
    allocators' defaults, 1.30x with these settings (docs/how-to/scale.md has the figures)."""
    _mallopt({_M_MMAP_THRESHOLD: MALLOC_LIMIT, _M_TRIM_THRESHOLD: MALLOC_LIMIT})


def keep_model_memory() -> None:
    """Leave :data:`MODEL_TOP_PAD` at a heap's top when it is trimmed.

    A torch model frees and allocates the same tensors at every token or batch (the key-value cache, the logits).
    A heap trimmed to its last MiB handed them back every time, for the kernel to zero fresh pages for the next:
    the evaluate stage spent about a third of its time in the kernel so (bench/heap_pad.py). The pad is a fixed
    amount, so the memory held still does not grow with the run; a stage that loads no model keeps none, and
    llama.cpp, which allocates its buffers once, gains nothing from it."""
    _mallopt({_M_TOP_PAD: MODEL_TOP_PAD})
