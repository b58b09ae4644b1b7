"""CPU threads for in-process decoding (hf, llamacpp): the cores this process may use.

The thread count is part of the arithmetic: llama.cpp splits a one-token step's work by thread, and its logits
for the same tokens differ with the count (up to 0.3 on Qwen2.5-Coder-1.5B Q4_K_M, 1 against 2 to 4 threads;
torch's float32 ones by about 2e-5), enough to flip a near tie. So by default a backend decodes with every usable
core, a number that does not change while the machine is busy, and a rerun on the same machine decodes the same
tokens. A role's ``threads_follow_load`` trades that for speed on a shared machine (:func:`pick_threads`).
"""

from __future__ import annotations

import math
import os
import time
from typing import Mapping


def _cgroup_cpu_limit(root: str | os.PathLike = "/sys/fs/cgroup") -> float | None:
    """CPUs the container may use (cgroup v2 ``cpu.max``, else v1 ``cpu.cfs_quota_us``); None when unlimited."""
    root = os.fspath(root)
    try:
        quota, period = open(os.path.join(root, "cpu.max"), encoding="ascii").read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(open(os.path.join(root, "cpu", "cpu.cfs_quota_us"), encoding="ascii").read())
        period = int(open(os.path.join(root, "cpu", "cpu.cfs_period_us"), encoding="ascii").read())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def usable_cores(environ: Mapping[str, str] | None = None, cgroup_root: str | os.PathLike = "/sys/fs/cgroup") -> int:
    """Threads worth running here: ``OMP_NUM_THREADS`` when set (the user's explicit choice), otherwise the
    cores this process may run on (``sched_getaffinity``) capped by a cgroup CPU quota (rounded down, at
    least 1). More threads than that make torch's decoding much slower on a shared machine, not faster."""
    environ = os.environ if environ is None else environ
    omp = environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return int(omp)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = _cgroup_cpu_limit(cgroup_root)
    if limit is not None:
        cores = min(cores, max(1, math.floor(limit)))
    return max(1, cores)


def _cpu_times(stat: str = "/proc/stat") -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs from ``/proc/stat``; None where it cannot be read (not Linux)."""
    try:
        fields = [float(x) for x in open(stat, encoding="ascii").readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(window_s: float = 0.2, stat: str = "/proc/stat") -> float | None:
    """How many cores other processes keep busy right now, measured over ``window_s`` while this one
    sleeps; None where it cannot be measured."""
    import time

    before = _cpu_times(stat)
    time.sleep(window_s)
    after = _cpu_times(stat)
    if before is None or after is None or after[1] <= before[1]:
        return None
    cores = os.cpu_count() or 1
    return cores * (after[0] - before[0]) / (after[1] - before[1])


def pick_threads(environ: Mapping[str, str] | None = None, busy: float | None | object = ...) -> int:
    """torch threads for decoding now: :func:`usable_cores`, less the cores other processes keep busy
    (at least 1). Measured on a shared machine: with two threads, any other load made matrix
    products about 30x slower, while one thread stayed steady; so a busy machine gets fewer threads and
    degrades gracefully, an idle one gets them all. ``OMP_NUM_THREADS`` (the user's choice) is kept as is."""
    environ = os.environ if environ is None else environ
    usable = usable_cores(environ)
    omp = environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return usable
    busy = busy_cores() if busy is ... else busy
    if busy is None:
        return usable
    return max(1, min(usable, usable - math.floor(busy + 0.5)))


def decoding_threads(threads: int | None = None, follow_load: bool = False) -> int:
    """The threads a backend decodes with: the role's ``threads``; otherwise every usable core, or with
    ``follow_load`` :func:`pick_threads` (fewer while other processes keep cores busy)."""
    if threads:
        return threads
    return pick_threads() if follow_load else usable_cores()


REPICK_S = 30.0  # a call this long after the last pick of threads measures the machine again (follow_load)


class DecodingThreads:
    """A backend's decoding threads: :func:`decoding_threads` when it is built; with ``follow_load`` (and no
    ``threads`` of the role's own) picked again by :meth:`now` at a call :data:`REPICK_S` after the last pick."""

    def __init__(self, threads: int | None = None, follow_load: bool = False):
        self.follow_load = follow_load and not threads
        self.count = decoding_threads(threads, follow_load)
        self._picked = time.monotonic()

    def now(self) -> int:
        """The threads to decode with now (the machine may have got busy, or idle, since the last pick)."""
        if self.follow_load and time.monotonic() - self._picked > REPICK_S:
            self.count, self._picked = pick_threads(), time.monotonic()
        return self.count
