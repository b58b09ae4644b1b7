"""Processes a sandbox run may have left behind: this process's descendants, and processes of the sandbox's uids."""

from __future__ import annotations

import os
import time
from pathlib import Path

from evolforge.eval.sandbox_process import UID_BASE, UID_SPAN

SETTLE_S = 3.0


def _parents() -> dict[int, int]:
    parents = {}
    for entry in os.listdir("/proc"):
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            parents[int(entry)] = int(fields[1])
        except (OSError, ValueError, IndexError):
            pass
    return parents


def _below(roots: set[int], parents: dict[int, int]) -> set[int]:
    found, frontier = set(), set(roots)
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def descendants() -> set[int]:
    """Live processes below this one (a run's survivors would be here, or in the run's uid range)."""
    return _below({os.getpid()}, _parents())


def sandbox_uid_processes() -> list[int]:
    """Live processes of the sandbox's uids. Under pytest-xdist (``make test`` runs two workers) the other
    worker's sandbox runs are going on too: processes inside its tree are not counted, and one outside
    every tree (a run's process reparented while that run kills its uid, e.g. after a timeout) counts only
    if it is still there after SETTLE_S. Run alone (``pytest tests/test_sandbox_hostile.py``) every such
    process counts at once."""
    found = _uid_processes()
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return found
    deadline = time.monotonic() + SETTLE_S
    while found and time.monotonic() < deadline:
        time.sleep(0.1)
        found = _uid_processes()
    return found


def _uid_processes() -> list[int]:
    parents = _parents()
    others: set[int] = set()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        workers = {pid for pid, ppid in parents.items() if ppid == os.getppid() and pid != os.getpid()}
        others = _below(workers, parents)
    out = []
    for entry in os.listdir("/proc"):
        try:
            uid = os.stat(f"/proc/{entry}").st_uid
        except OSError:
            continue
        if entry.isdigit() and UID_BASE <= uid < UID_BASE + UID_SPAN and int(entry) not in others:
            out.append(int(entry))
    return out
